// RoutedHop: a counting sort of sends by peer, the count and record exchange, and row moves as one
// contiguous message per peer (RowBlockExchange); see hierarchical_alltoall.h.
#include "comm/hierarchical_alltoall.h"

#include <climits>
#include <cstring>

#include "comm/mpi_check.h"
#include "comm/watchdog.h"
#include "runtime/core/error.h"

namespace moempi {

void RoutedHop::plan(const Communicator& group, bool inter, int64_t in_rows, const std::vector<int64_t>& from,
                     const std::vector<int>& peer, const std::vector<int64_t>& records, int width,
                     std::vector<int64_t>& recv_records, const HopRows* rows, HopTraffic* traffic) {
  view_ = group.view();
  inter_ = inter;
  in_rows_ = in_rows;
  const int P = group.size();
  const size_t n = from.size();
  MOEMPI_CHECK_ONE(peer.size() == n && records.size() == n * width, "routed hop: {} sends, {} peers, {} records",
                   n, peer.size(), records.size());
  send_first_.assign(P + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    MOEMPI_CHECK_ONE(peer[i] >= 0 && peer[i] < P, "routed hop over '{}': peer {} of {}", group.name(), peer[i], P);
    ++send_first_[peer[i] + 1];
  }
  for (int q = 0; q < P; ++q) send_first_[q + 1] += send_first_[q];
  from_.resize(n);
  position_.resize(n);
  std::vector<int64_t> send_records(n * width);
  {
    std::vector<int64_t> next(send_first_.begin(), send_first_.end() - 1);
    for (size_t i = 0; i < n; ++i) {
      const int64_t at = next[peer[i]]++;
      from_[at] = from[i];
      position_[i] = at;
      std::memcpy(&send_records[at * width], &records[i * width], sizeof(int64_t) * width);
    }
  }
  // One message of records to every peer (empty ones too); the receiver learns the count from the
  // message itself (MPI_Mprobe), so counts and records cost one exchange, not two (on a slow
  // network every exchange pays its latency).
  recv_first_.assign(P + 1, 0);
  const int W = rows ? rows->width : 0;
  if (rows) {
    MOEMPI_CHECK_ONE(rows->in != nullptr || n == 0, "routed hop over '{}': {} rows to send and no input",
                     group.name(), n);
    rows->send->resize(n * W);
    if (n) gather(rows->in, rows->send->data(), W);
  }
  if (P == 1) {
    recv_records = send_records;
    recv_first_[1] = static_cast<int64_t>(n);
    if (rows) {
      rows->recv->resize(n * W);
      if (n) std::memcpy(rows->recv->data(), rows->send->data(), sizeof(float) * n * W);
    }
    return;
  }
  MOEMPI_CHECK_ONE(static_cast<int64_t>(n) * width <= INT_MAX, "routed hop over '{}': {} rows exceed one exchange",
                   group.name(), n);
  const int me = group.rank();
  constexpr int kRecordTag = 1, kPlanRowTag = 3;  // exchange() uses tag 0, its side payload 2
  std::vector<MPI_Request> sends;
  sends.reserve(3 * P);
  for (int q = 0; q < P; ++q) {
    if (q == me) continue;
    sends.push_back(MPI_REQUEST_NULL);
    MOEMPI_MPI_CHECK(MPI_Isend(send_records.data() + send_first_[q] * width,
                               static_cast<int>((send_first_[q + 1] - send_first_[q]) * width), MPI_INT64_T, q,
                               kRecordTag, group.comm(), &sends.back()));
  }
  // Counted in rows (one MPI datatype per row), so a message holds up to INT_MAX rows at any width.
  if (rows) plan_row_.reset(W);  // re-created only when the width changes
  if (rows) {  // the rows follow their records; the receiver posts for them once it knows the count
    for (int q = 0; q < P; ++q) {
      const int64_t ns = send_first_[q + 1] - send_first_[q];
      if (q == me || ns == 0) continue;
      MOEMPI_CHECK_ONE(ns <= INT_MAX, "routed hop over '{}': {} rows to peer {} exceed one message", group.name(),
                       ns, q);
      sends.push_back(MPI_REQUEST_NULL);
      MOEMPI_MPI_CHECK(MPI_Isend(rows->send->data() + send_first_[q] * W, static_cast<int>(ns), plan_row_.type(), q,
                                 kPlanRowTag, group.comm(), &sends.back()));
      if (traffic) {
        traffic->rows += ns;
        traffic->bytes += ns * W * static_cast<int64_t>(sizeof(float));
        ++traffic->messages;
      }
    }
  }
  std::vector<MPI_Message> messages(P, MPI_MESSAGE_NULL);
  {
    watchdog::Pending pending("MPI_Mprobe (hop records)", group.name().c_str());
    for (int q = 0; q < P; ++q) {
      int64_t count = send_first_[me + 1] - send_first_[me];
      if (q != me) {
        MPI_Status status;
        MOEMPI_MPI_CHECK(MPI_Mprobe(q, kRecordTag, group.comm(), &messages[q], &status));
        int elements = 0;
        MOEMPI_MPI_CHECK(MPI_Get_count(&status, MPI_INT64_T, &elements));
        count = elements / width;
      }
      recv_first_[q + 1] = recv_first_[q] + count;
    }
  }
  recv_records.resize(static_cast<size_t>(recv_first_[P]) * width);
  if (rows) {
    rows->recv->resize(static_cast<size_t>(recv_first_[P]) * W);
    for (int q = 0; q < P; ++q) {
      const int64_t nr = recv_first_[q + 1] - recv_first_[q];
      float* at = rows->recv->data() + recv_first_[q] * W;
      if (q == me) {
        if (nr) std::memcpy(at, rows->send->data() + send_first_[me] * W, sizeof(float) * nr * W);
        continue;
      }
      if (nr == 0) continue;
      MOEMPI_CHECK_ONE(nr <= INT_MAX, "routed hop over '{}': {} rows from peer {} exceed one message",
                       group.name(), nr, q);
      sends.push_back(MPI_REQUEST_NULL);
      MOEMPI_MPI_CHECK(
          MPI_Irecv(at, static_cast<int>(nr), plan_row_.type(), q, kPlanRowTag, group.comm(), &sends.back()));
    }
  }
  watchdog::Pending pending("MPI_Mrecv (hop records)", group.name().c_str());  // the data may still be on its way
  for (int q = 0; q < P; ++q) {
    int64_t* at = recv_records.data() + recv_first_[q] * width;
    const int64_t count = recv_first_[q + 1] - recv_first_[q];
    if (q == me) {
      if (count) std::memcpy(at, send_records.data() + send_first_[me] * width, sizeof(int64_t) * count * width);
      continue;
    }
    MOEMPI_MPI_CHECK(MPI_Mrecv(at, static_cast<int>(count * width), MPI_INT64_T, &messages[q], MPI_STATUS_IGNORE));
  }
  watchdog::Pending waitall(rows ? "MPI_Waitall (hop records and rows)" : "MPI_Waitall (hop records)",
                            group.name().c_str());
  MOEMPI_MPI_CHECK(MPI_Waitall(static_cast<int>(sends.size()), sends.data(), MPI_STATUSES_IGNORE));
}

void RoutedHop::gather(const float* in, float* send, int width, const float* scale) const {
  const size_t row = sizeof(float) * width;
  for (size_t i = 0; i < from_.size(); ++i) {
    const float* src = in + from_[i] * width;
    float* dst = send + i * width;
    if (scale) {
      const float p = scale[i];
      for (int d = 0; d < width; ++d) dst[d] = p * src[d];
    } else {
      std::memcpy(dst, src, row);
    }
  }
}

void RoutedHop::move_rows(const float* from_buf, const std::vector<int64_t>& from_first, float* to_buf,
                          const std::vector<int64_t>& to_first, int width, HopTraffic& traffic,
                          const float* from_side, float* to_side, int side_width) {
  const int P = view_.size(), me = view_.rank();
  const bool side = side_width > 0;
  constexpr int kSideTag = 2;  // the rows use tag 0, plan()'s records tag 1
  sends_.clear();
  recvs_.clear();
  side_sends_.clear();
  side_recvs_.clear();
  for (int q = 0; q < P; ++q) {
    if (q == me) continue;
    const int64_t ns = from_first[q + 1] - from_first[q], nr = to_first[q + 1] - to_first[q];
    if (ns) {
      sends_.push_back({q, 0, const_cast<float*>(from_buf) + from_first[q] * width, ns});
      traffic.rows += ns;
      traffic.bytes += ns * width * static_cast<int64_t>(sizeof(float));
      ++traffic.messages;
      if (side) {
        side_sends_.push_back({q, kSideTag, const_cast<float*>(from_side) + from_first[q] * side_width, ns});
        traffic.bytes += ns * side_width * static_cast<int64_t>(sizeof(float));
      }
    }
    if (nr) {
      recvs_.push_back({q, 0, to_buf + to_first[q] * width, nr});
      if (side) side_recvs_.push_back({q, kSideTag, to_side + to_first[q] * side_width, nr});
    }
  }
  row_.reset(width);
  if (!sends_.empty() || !recvs_.empty()) blocks_.start(sends_, recvs_, row_, view_);
  if (side) {
    side_row_.reset(side_width);
    if (!side_sends_.empty() || !side_recvs_.empty()) side_blocks_.start(side_sends_, side_recvs_, side_row_, view_);
  }
  const int64_t own = from_first[me + 1] - from_first[me];
  if (own) std::memcpy(to_buf + to_first[me] * width, from_buf + from_first[me] * width, sizeof(float) * own * width);
  if (own && side)
    std::memcpy(to_side + to_first[me] * side_width, from_side + from_first[me] * side_width,
                sizeof(float) * own * side_width);
  blocks_.wait();
  if (side) side_blocks_.wait();
}

void RoutedHop::exchange(const float* send, float* recv, int width, HopTraffic& traffic) {
  move_rows(send, send_first_, recv, recv_first_, width, traffic);
}

void RoutedHop::exchange_back(const float* recv, float* send, int width, HopTraffic& traffic, const float* recv_side,
                              float* send_side, int side_width) {
  move_rows(recv, recv_first_, send, send_first_, width, traffic, recv_side, send_side, side_width);
}

void RoutedHop::scatter(const float* send, float* in, int width) const {
  const size_t row = sizeof(float) * width;
  for (size_t i = 0; i < from_.size(); ++i) std::memcpy(in + from_[i] * width, send + i * width, row);
}

void RoutedHop::reduce(const float* send, float* in, int width, const float* scale, bool accumulate) const {
  if (!accumulate && in_rows_ > 0) std::memset(in, 0, sizeof(float) * in_rows_ * width);  // `in` may be null
  for (size_t i = 0; i < from_.size(); ++i) {
    float* dst = in + from_[i] * width;
    const float* src = send + i * width;
    if (scale) {
      const float p = scale[i];
      for (int d = 0; d < width; ++d) dst[d] += p * src[d];
    } else {
      for (int d = 0; d < width; ++d) dst[d] += src[d];
    }
  }
}

}  // namespace moempi
