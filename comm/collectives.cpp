// Checked collectives: int64 counts at the API, int (or row-typed) counts at Open MPI.
#include "comm/collectives.h"

#include <algorithm>
#include <climits>
#include <utility>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/wire_dtype.h"
#include "comm/watchdog.h"

namespace moempi {
namespace {

constexpr int64_t kChunk = int64_t{1} << 30;  // elements per MPI call when a count exceeds INT_MAX

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kMax: return MPI_MAX;
  }
  return MPI_SUM;
}

template <class T>
void allreduce_chunked(T* data, int64_t count, MPI_Datatype type, MPI_Op op,
                       const Communicator& group) {
  watchdog::Pending pending("MPI_Allreduce", group.name().c_str());
  for (int64_t off = 0; off < count; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - off));
    MOEMPI_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + off, n, type, op, group.comm()));
  }
}

template <class T>
void bcast_chunked(T* data, int64_t count, MPI_Datatype type, int root, const Communicator& group) {
  watchdog::Pending pending("MPI_Bcast", group.name().c_str());
  for (int64_t off = 0; off < count; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - off));
    MOEMPI_MPI_CHECK(MPI_Bcast(data + off, n, type, root, group.comm()));
  }
}

}  // namespace

void allreduce_sum(float* data, int64_t count, const Communicator& group) {
  allreduce_chunked(data, count, MPI_FLOAT, MPI_SUM, group);
}
void allreduce_sum(double* data, int64_t count, const Communicator& group) {
  allreduce_chunked(data, count, MPI_DOUBLE, MPI_SUM, group);
}
void allreduce_sum(int64_t* data, int64_t count, const Communicator& group) {
  allreduce_chunked(data, count, MPI_INT64_T, MPI_SUM, group);
}

void allreduce(double* data, int64_t count, ReduceOp op, const Communicator& group) {
  allreduce_chunked(data, count, MPI_DOUBLE, mpi_op(op), group);
}
void allreduce(int64_t* data, int64_t count, ReduceOp op, const Communicator& group) {
  allreduce_chunked(data, count, MPI_INT64_T, mpi_op(op), group);
}

void reduce(double* data, int64_t count, ReduceOp op, int root, const Communicator& group) {
  watchdog::Pending pending("MPI_Reduce", group.name().c_str());
  for (int64_t off = 0; off < count; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - off));
    void* send = group.rank() == root ? MPI_IN_PLACE : static_cast<void*>(data + off);
    MOEMPI_MPI_CHECK(MPI_Reduce(send, data + off, n, MPI_DOUBLE, mpi_op(op), root, group.comm()));
  }
}

void alltoall_i64(const int64_t* send, int64_t* recv, int per_peer, const Communicator& group) {
  watchdog::Pending pending("MPI_Alltoall", group.name().c_str());
  MOEMPI_MPI_CHECK(
      MPI_Alltoall(send, per_peer, MPI_INT64_T, recv, per_peer, MPI_INT64_T, group.comm()));
}

void allgather_i64(const int64_t* send, int64_t* recv, int per_rank, const Communicator& group) {
  watchdog::Pending pending("MPI_Allgather", group.name().c_str());
  MOEMPI_MPI_CHECK(
      MPI_Allgather(send, per_rank, MPI_INT64_T, recv, per_rank, MPI_INT64_T, group.comm()));
}

void alltoallv_float(const float* send, std::span<const int64_t> send_counts,
                     std::span<const int64_t> send_displs, float* recv,
                     std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                     const Communicator& group) {
  watchdog::Pending pending("MPI_Alltoallv", group.name().c_str());
  const size_t n = static_cast<size_t>(group.size());
  MOEMPI_CHECK_ONE(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
                       recv_displs.size() == n,
                   "alltoallv over '{}': counts/displacements need {} entries (got {}, {}, {}, {})",
                   group.name(), n, send_counts.size(), send_displs.size(), recv_counts.size(),
                   recv_displs.size());
  // Thread-local scratch so repeated calls do not allocate.
  thread_local std::vector<int> sc, sd, rc, rd;
  sc.resize(n), sd.resize(n), rc.resize(n), rd.resize(n);
  int64_t worst = 0;
  for (size_t p = 0; p < n; ++p) {
    worst = std::max({worst, send_counts[p], send_displs[p], recv_counts[p], recv_displs[p]});
    MOEMPI_CHECK_ONE(send_counts[p] >= 0 && send_displs[p] >= 0 && recv_counts[p] >= 0 &&
                         recv_displs[p] >= 0,
                     "alltoallv over '{}': negative count or displacement for peer {}",
                     group.name(), p);
  }
  int overflow = worst > INT_MAX ? 1 : 0;
  MOEMPI_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &overflow, 1, MPI_INT, MPI_MAX, group.comm()));
  MOEMPI_CHECK_ALL(!overflow,
                   "alltoallv over group '{}': a count or displacement exceeds INT_MAX ({}) floats "
                   "on some rank (largest here: {}); Open MPI 4.1 takes int counts — exchange in "
                   "rows (alltoallv_rows) or in several rounds",
                   group.name(), INT_MAX, worst);
  for (size_t p = 0; p < n; ++p) {
    sc[p] = static_cast<int>(send_counts[p]);
    sd[p] = static_cast<int>(send_displs[p]);
    rc[p] = static_cast<int>(recv_counts[p]);
    rd[p] = static_cast<int>(recv_displs[p]);
  }
  MOEMPI_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(),
                                 MPI_FLOAT, group.comm()));
}

RowType::~RowType() { release(); }

RowType::RowType(RowType&& other) noexcept
    : type_(std::exchange(other.type_, MPI_DATATYPE_NULL)),
      width_(std::exchange(other.width_, 0)),
      wire_(other.wire_) {}

RowType& RowType::operator=(RowType&& other) noexcept {
  if (this != &other) {
    release();
    type_ = std::exchange(other.type_, MPI_DATATYPE_NULL);
    width_ = std::exchange(other.width_, 0);
    wire_ = other.wire_;
  }
  return *this;
}

void RowType::reset(int width, WireDtype wire) {
  if (width == width_ && wire == wire_ && type_ != MPI_DATATYPE_NULL) return;
  MOEMPI_CHECK_ONE(width > 0, "row width must be positive (got {})", width);
  release();
  MOEMPI_MPI_CHECK(MPI_Type_contiguous(width, wire == WireDtype::kBf16 ? MPI_UINT16_T : MPI_FLOAT, &type_));
  MOEMPI_MPI_CHECK(MPI_Type_commit(&type_));
  width_ = width;
  wire_ = wire;
}

void RowType::release() {
  if (type_ != MPI_DATATYPE_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MOEMPI_MPI_CHECK(MPI_Type_free(&type_));
  }
  type_ = MPI_DATATYPE_NULL;
  width_ = 0;
}

void alltoallv_rows(const float* send, const int* send_counts, const int* send_displs, float* recv,
                    const int* recv_counts, const int* recv_displs, const RowType& row,
                    const Communicator& group) {
  watchdog::Pending pending("MPI_Alltoallv", group.name().c_str());
  if (row.wire() == WireDtype::kBf16) {
    // Stage rows [0, end) of each side, end = the furthest displacement + count.
    int64_t send_end = 0, recv_end = 0;
    for (int q = 0; q < group.size(); ++q) {
      if (send_counts[q]) send_end = std::max<int64_t>(send_end, int64_t{send_displs[q]} + send_counts[q]);
      if (recv_counts[q]) recv_end = std::max<int64_t>(recv_end, int64_t{recv_displs[q]} + recv_counts[q]);
    }
    const int W = row.width();
    static thread_local std::vector<uint16_t> send_stage, recv_stage;
    send_stage.resize(static_cast<size_t>(send_end) * W);
    recv_stage.resize(static_cast<size_t>(recv_end) * W);
    for (int q = 0; q < group.size(); ++q)
      if (send_counts[q])
        floats_to_bf16(send_stage.data() + static_cast<size_t>(send_displs[q]) * W,
                       send + static_cast<size_t>(send_displs[q]) * W, int64_t{send_counts[q]} * W);
    MOEMPI_MPI_CHECK(MPI_Alltoallv(send_stage.data(), send_counts, send_displs, row.type(), recv_stage.data(),
                                   recv_counts, recv_displs, row.type(), group.comm()));
    for (int q = 0; q < group.size(); ++q)
      if (recv_counts[q])
        bf16_to_floats(recv + static_cast<size_t>(recv_displs[q]) * W,
                       recv_stage.data() + static_cast<size_t>(recv_displs[q]) * W, int64_t{recv_counts[q]} * W);
    return;
  }
  MOEMPI_MPI_CHECK(MPI_Alltoallv(send, send_counts, send_displs, row.type(), recv, recv_counts,
                                 recv_displs, row.type(), group.comm()));
}

void RowBlockExchange::start(const std::vector<RowBlock>& sends, const std::vector<RowBlock>& recvs,
                             const RowType& row, const Communicator& group) {
  MOEMPI_CHECK_ONE(requests_.empty(), "row block exchange over '{}' started twice", group.name());
  group_ = &group;
  requests_.reserve(sends.size() + recvs.size());
  recv_blocks_.clear();
  if (row.wire() == WireDtype::kBf16) {  // convert at the edges; see collectives.h
    const int W = width_ = row.width();
    int64_t n = 0;
    recv_blocks_ = recvs;
    recv_offsets_.clear();
    for (const RowBlock& b : recvs) recv_offsets_.push_back(n), n += b.count;
    recv_stage_.resize(static_cast<size_t>(n) * W);
    for (size_t i = 0; i < recvs.size(); ++i) {
      const RowBlock& b = recvs[i];
      MOEMPI_CHECK_ONE(b.count > 0 && b.count <= INT_MAX, "row block of {} rows from peer {}", b.count, b.peer);
      requests_.push_back(MPI_REQUEST_NULL);
      MOEMPI_MPI_CHECK(MPI_Irecv(recv_stage_.data() + recv_offsets_[i] * W, static_cast<int>(b.count), row.type(),
                                 b.peer, b.tag, group.comm(), &requests_.back()));
    }
    n = 0;
    for (const RowBlock& b : sends) n += b.count;
    send_stage_.resize(static_cast<size_t>(n) * W);
    n = 0;
    for (const RowBlock& b : sends) {
      MOEMPI_CHECK_ONE(b.count > 0 && b.count <= INT_MAX, "row block of {} rows to peer {}", b.count, b.peer);
      uint16_t* stage = send_stage_.data() + n * W;
      floats_to_bf16(stage, b.rows, b.count * W);
      n += b.count;
      requests_.push_back(MPI_REQUEST_NULL);
      MOEMPI_MPI_CHECK(
          MPI_Isend(stage, static_cast<int>(b.count), row.type(), b.peer, b.tag, group.comm(), &requests_.back()));
    }
    return;
  }
  for (const RowBlock& b : recvs) {
    MOEMPI_CHECK_ONE(b.count > 0 && b.count <= INT_MAX, "row block of {} rows from peer {}", b.count, b.peer);
    requests_.push_back(MPI_REQUEST_NULL);
    MOEMPI_MPI_CHECK(MPI_Irecv(b.rows, static_cast<int>(b.count), row.type(), b.peer, b.tag, group.comm(),
                               &requests_.back()));
  }
  for (const RowBlock& b : sends) {
    MOEMPI_CHECK_ONE(b.count > 0 && b.count <= INT_MAX, "row block of {} rows to peer {}", b.count, b.peer);
    requests_.push_back(MPI_REQUEST_NULL);
    MOEMPI_MPI_CHECK(MPI_Isend(b.rows, static_cast<int>(b.count), row.type(), b.peer, b.tag, group.comm(),
                               &requests_.back()));
  }
}

void RowBlockExchange::wait() {
  if (requests_.empty()) return;
  watchdog::Pending pending("MPI_Waitall (row blocks)", group_->name().c_str());
  MOEMPI_MPI_CHECK(MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
  requests_.clear();
  for (size_t i = 0; i < recv_blocks_.size(); ++i)  // bf16 wire: widen into the fp32 rows
    bf16_to_floats(recv_blocks_[i].rows, recv_stage_.data() + recv_offsets_[i] * width_,
                   recv_blocks_[i].count * width_);
  recv_blocks_.clear();
}

PeerLayouts::~PeerLayouts() { reset(0); }

PeerLayouts::PeerLayouts(PeerLayouts&& other) noexcept
    : types_(std::move(other.types_)),
      owned_(std::move(other.owned_)),
      counts_(std::move(other.counts_)),
      zeros_(std::move(other.zeros_)) {
  other.types_.clear(), other.owned_.clear(), other.counts_.clear(), other.zeros_.clear();
}

PeerLayouts& PeerLayouts::operator=(PeerLayouts&& other) noexcept {
  if (this != &other) {
    reset(0);
    types_ = std::move(other.types_);
    owned_ = std::move(other.owned_);
    counts_ = std::move(other.counts_);
    zeros_ = std::move(other.zeros_);
    other.types_.clear(), other.owned_.clear(), other.counts_.clear(), other.zeros_.clear();
  }
  return *this;
}

void PeerLayouts::free_type(int peer) {
  if (owned_[peer]) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MOEMPI_MPI_CHECK(MPI_Type_free(&types_[peer]));
  }
  types_[peer] = MPI_BYTE;
  owned_[peer] = false;
  counts_[peer] = 0;
}

void PeerLayouts::reset(int peers) {
  for (int p = 0; p < static_cast<int>(types_.size()); ++p) free_type(p);
  types_.assign(peers, MPI_BYTE);
  owned_.assign(peers, false);
  counts_.assign(peers, 0);
  zeros_.assign(peers, 0);
}

void PeerLayouts::set_empty(int peer) { free_type(peer); }

void PeerLayouts::set_rows(int peer, const int64_t* row_index, int64_t n, const RowType& row) {
  free_type(peer);
  if (n == 0) return;
  MOEMPI_CHECK_ONE(n <= INT_MAX, "PeerLayouts: {} rows for one peer exceed INT_MAX", n);
  const MPI_Aint row_bytes = static_cast<MPI_Aint>(row.width()) * sizeof(float);
  byte_offsets_.resize(n);
  for (int64_t i = 0; i < n; ++i) byte_offsets_[i] = row_index[i] * row_bytes;
  MOEMPI_MPI_CHECK(MPI_Type_create_hindexed_block(static_cast<int>(n), 1, byte_offsets_.data(),
                                                  row.type(), &types_[peer]));
  MOEMPI_MPI_CHECK(MPI_Type_commit(&types_[peer]));
  owned_[peer] = true;
  counts_[peer] = 1;
}

void PeerLayouts::set_runs(int peer, const int64_t* first_row, const int64_t* n_rows, int blocks,
                           const RowType& row) {
  free_type(peer);
  const MPI_Aint row_bytes = static_cast<MPI_Aint>(row.width()) * sizeof(float);
  byte_offsets_.clear();
  run_lengths_.clear();
  for (int b = 0; b < blocks; ++b) {
    if (n_rows[b] == 0) continue;
    MOEMPI_CHECK_ONE(n_rows[b] <= INT_MAX, "PeerLayouts: a run of {} rows exceeds INT_MAX", n_rows[b]);
    byte_offsets_.push_back(first_row[b] * row_bytes);
    run_lengths_.push_back(static_cast<int>(n_rows[b]));
  }
  if (run_lengths_.empty()) return;
  MOEMPI_MPI_CHECK(MPI_Type_create_hindexed(static_cast<int>(run_lengths_.size()), run_lengths_.data(),
                                            byte_offsets_.data(), row.type(), &types_[peer]));
  MOEMPI_MPI_CHECK(MPI_Type_commit(&types_[peer]));
  owned_[peer] = true;
  counts_[peer] = 1;
}

void alltoallw_rows(const float* send, const PeerLayouts& send_layout, float* recv,
                    const PeerLayouts& recv_layout, const Communicator& group) {
  watchdog::Pending pending("MPI_Alltoallw", group.name().c_str());
  MOEMPI_MPI_CHECK(MPI_Alltoallw(send, send_layout.counts(), send_layout.displs(), send_layout.types(),
                                 recv, recv_layout.counts(), recv_layout.displs(), recv_layout.types(),
                                 group.comm()));
}

void barrier(const Communicator& group) {
  watchdog::Pending pending("MPI_Barrier", group.name().c_str());
  MOEMPI_MPI_CHECK(MPI_Barrier(group.comm()));
}

void bcast(float* data, int64_t count, int root, const Communicator& group) {
  bcast_chunked(data, count, MPI_FLOAT, root, group);
}
void bcast(double* data, int64_t count, int root, const Communicator& group) {
  bcast_chunked(data, count, MPI_DOUBLE, root, group);
}
void bcast(int64_t* data, int64_t count, int root, const Communicator& group) {
  bcast_chunked(data, count, MPI_INT64_T, root, group);
}
void bcast_bytes(void* data, int64_t bytes, int root, const Communicator& group) {
  bcast_chunked(static_cast<char*>(data), bytes, MPI_BYTE, root, group);
}

}  // namespace moempi
