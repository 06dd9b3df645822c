// FlatDispatcher: counting sort by global expert (same as `local`), count exchange, pack with
// whole-row memcpy, one Alltoallv of row-typed data, regroup by (local expert, source, slot).
#include "parallel/flat_dispatcher.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "runtime/core/error.h"

namespace moempi {
namespace {

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

FlatDispatcher::FlatDispatcher(ExpertPlacement placement, const Communicator& ep)
    : Dispatcher(placement), ep_(ep.view()) {
  P_ = ep_.size();
  me_ = ep_.rank();
  E_ = placement_.num_experts;
  MOEMPI_CHECK_ALL(P_ >= 1, "moe.dispatch.type 'flat' needs an EP communicator (got a null one)");
  MOEMPI_CHECK_ALL(placement_.ep_size == P_ && placement_.ep_rank == me_,
                   "flat dispatcher: placement (ep_size {}, ep_rank {}) does not match the ep "
                   "group (size {}, rank {})",
                   placement_.ep_size, placement_.ep_rank, P_, me_);
  MOEMPI_CHECK_ALL(E_ >= 1 && E_ % P_ == 0,
                   "moe.num_experts ({}) is not divisible by parallel.ep ({})", E_, P_);
  El_ = E_ / P_;
  send_rows_per_expert_.assign(E_, 0);
  expert_begin_.assign(E_ + 1, 0);
  send_buf_row_.assign(P_, 0);
  recv_rows_.assign(static_cast<size_t>(P_) * El_, 0);
  out_row_.assign(static_cast<size_t>(P_) * El_, 0);
  recv_buf_row_.assign(static_cast<size_t>(P_) * El_, 0);
  rows_per_local_expert_.assign(El_, 0);
  send_counts_.assign(P_, 0), send_displs_.assign(P_, 0);
  recv_counts_.assign(P_, 0), recv_displs_.assign(P_, 0);
  exchange_send_.assign(static_cast<size_t>(P_) * (El_ + 1), 0);
  exchange_recv_.assign(static_cast<size_t>(P_) * (El_ + 1), 0);
}

void FlatDispatcher::plan(const int32_t* topk_ids_TK, int T, int K) {
  MOEMPI_CHECK_ONE(T >= 0 && K >= 1, "flat dispatcher: bad shape T={} K={}", T, K);
  T_ = T;
  K_ = K;
  const int64_t slots = static_cast<int64_t>(T) * K;

  // Rows per global expert; global expert order is (destination rank, local expert).
  std::fill(send_rows_per_expert_.begin(), send_rows_per_expert_.end(), 0);
  dropped_slots_.clear();
  for (int64_t s = 0; s < slots; ++s) {
    const int e = topk_ids_TK[s];
    if (e < 0) {
      dropped_slots_.push_back(s);
      continue;
    }
    MOEMPI_CHECK_ONE(e < E_, "expert id {} out of range [0, {})", e, E_);
    ++send_rows_per_expert_[e];
  }

  // Count exchange over ep: per peer, its local experts' counts then this rank's slot total.
  // Every rank receives every rank's slot total, so the INT_MAX check below is collective.
  const int stride = El_ + 1;
  for (int p = 0; p < P_; ++p) {
    for (int le = 0; le < El_; ++le) exchange_send_[p * stride + le] = send_rows_per_expert_[p * El_ + le];
    exchange_send_[p * stride + El_] = slots;
  }
  alltoall_i64(exchange_send_.data(), exchange_recv_.data(), stride, ep_);
  int64_t group_slots = 0;
  for (int p = 0; p < P_; ++p) group_slots += exchange_recv_[p * stride + El_];
  MOEMPI_CHECK_ALL(group_slots <= INT_MAX,
                   "flat dispatcher: {} routed slots in ep group '{}' exceed INT_MAX rows per "
                   "exchange; lower train.micro_batch or model.seq_len",
                   group_slots, ep_.name());

  // Stable counting sort of slots by global expert (within an expert: slot order).
  expert_begin_[0] = 0;
  for (int e = 0; e < E_; ++e) expert_begin_[e + 1] = expert_begin_[e] + send_rows_per_expert_[e];
  slot_of_send_row_.resize(expert_begin_[E_]);
  {
    // expert_begin_ doubles as the running cursor, then is restored.
    for (int64_t s = 0; s < slots; ++s) {
      const int e = topk_ids_TK[s];
      if (e >= 0) slot_of_send_row_[expert_begin_[e]++] = s;
    }
    for (int e = E_; e > 0; --e) expert_begin_[e] = expert_begin_[e - 1];
    expert_begin_[0] = 0;
  }

  // Send layout: rows for each remote destination, contiguous in send_buf_; self rows bypass.
  int64_t at = 0;
  for (int p = 0; p < P_; ++p) {
    const int64_t n = expert_begin_[(p + 1) * El_] - expert_begin_[p * El_];
    send_buf_row_[p] = at;
    send_counts_[p] = p == me_ ? 0 : static_cast<int>(n);
    send_displs_[p] = static_cast<int>(at);
    if (p != me_) at += n;
  }
  send_remote_rows_ = at;

  // Receive layout: MPI delivers (source, local expert, slot); the output is (local expert,
  // source, slot).
  for (int p = 0; p < P_; ++p)
    for (int le = 0; le < El_; ++le) recv_rows_[p * El_ + le] = exchange_recv_[p * stride + le];
  int64_t out = 0;
  for (int le = 0; le < El_; ++le) {
    int64_t expert_rows = 0;
    for (int p = 0; p < P_; ++p) {
      out_row_[le * P_ + p] = out;
      out += recv_rows_[p * El_ + le];
      expert_rows += recv_rows_[p * El_ + le];
    }
    rows_per_local_expert_[le] = expert_rows;
  }
  rows_ = out;
  at = 0;
  for (int p = 0; p < P_; ++p) {
    recv_displs_[p] = static_cast<int>(at);
    int64_t n = 0;
    for (int le = 0; le < El_; ++le) {
      recv_buf_row_[p * El_ + le] = at + n;
      n += recv_rows_[p * El_ + le];
    }
    recv_counts_[p] = p == me_ ? 0 : static_cast<int>(n);
    if (p != me_) at += n;
  }
  recv_remote_rows_ = at;
}

void FlatDispatcher::to_experts(float* dst_RD, const float* src, bool per_slot, int D) {
  row_.reset(D);
  const size_t row_bytes = sizeof(float) * D;
  grow(send_buf_, static_cast<size_t>(send_remote_rows_) * D);
  grow(recv_buf_, static_cast<size_t>(recv_remote_rows_) * D);
  const int64_t K = K_;

  // Pack: remote rows into send_buf_ in (destination, local expert, slot) order; this rank's own
  // rows straight to their output place (local expert le, source me).
  for (int p = 0; p < P_; ++p) {
    if (p == me_) {
      for (int le = 0; le < El_; ++le) {
        const int e = p * El_ + le;
        float* out = dst_RD + out_row_[le * P_ + me_] * D;
        for (int64_t i = expert_begin_[e]; i < expert_begin_[e + 1]; ++i, out += D) {
          const int64_t s = slot_of_send_row_[i];
          std::memcpy(out, src + (per_slot ? s : s / K) * D, row_bytes);
        }
      }
      continue;
    }
    float* out = send_buf_.data() + send_buf_row_[p] * D;
    for (int64_t i = expert_begin_[p * El_]; i < expert_begin_[(p + 1) * El_]; ++i, out += D) {
      const int64_t s = slot_of_send_row_[i];
      std::memcpy(out, src + (per_slot ? s : s / K) * D, row_bytes);
    }
  }

  alltoallv_rows(send_buf_.data(), send_counts_.data(), send_displs_.data(), recv_buf_.data(),
                 recv_counts_.data(), recv_displs_.data(), row_, ep_);

  // Regroup: block (source p, local expert le) -> output block (le, p), one memcpy each.
  for (int p = 0; p < P_; ++p) {
    if (p == me_) continue;
    for (int le = 0; le < El_; ++le) {
      const int64_t n = recv_rows_[p * El_ + le];
      if (n)
        std::memcpy(dst_RD + out_row_[le * P_ + p] * D, recv_buf_.data() + recv_buf_row_[p * El_ + le] * D,
                    n * row_bytes);
    }
  }
}

void FlatDispatcher::from_experts(float* dst_TKD, const float* src_RD, int D) {
  row_.reset(D);
  const size_t row_bytes = sizeof(float) * D;
  grow(send_buf_, static_cast<size_t>(recv_remote_rows_) * D);
  grow(recv_buf_, static_cast<size_t>(send_remote_rows_) * D);

  // Pack (mirror of the regroup): output block (le, p) -> (p, le) in send_buf_.
  for (int p = 0; p < P_; ++p) {
    if (p == me_) continue;
    for (int le = 0; le < El_; ++le) {
      const int64_t n = recv_rows_[p * El_ + le];
      if (n)
        std::memcpy(send_buf_.data() + recv_buf_row_[p * El_ + le] * D, src_RD + out_row_[le * P_ + p] * D,
                    n * row_bytes);
    }
  }

  // The mirror exchange: what this rank received in to_experts it now sends back.
  alltoallv_rows(send_buf_.data(), recv_counts_.data(), recv_displs_.data(), recv_buf_.data(),
                 send_counts_.data(), send_displs_.data(), row_, ep_);

  // Scatter rows back to their slots; this rank's own rows come straight from src_RD.
  for (int p = 0; p < P_; ++p) {
    if (p == me_) {
      for (int le = 0; le < El_; ++le) {
        const int e = p * El_ + le;
        const float* in = src_RD + out_row_[le * P_ + me_] * D;
        for (int64_t i = expert_begin_[e]; i < expert_begin_[e + 1]; ++i, in += D)
          std::memcpy(dst_TKD + slot_of_send_row_[i] * D, in, row_bytes);
      }
      continue;
    }
    const float* in = recv_buf_.data() + send_buf_row_[p] * D;
    for (int64_t i = expert_begin_[p * El_]; i < expert_begin_[(p + 1) * El_]; ++i, in += D)
      std::memcpy(dst_TKD + slot_of_send_row_[i] * D, in, row_bytes);
  }
  for (const int64_t s : dropped_slots_) std::memset(dst_TKD + s * D, 0, row_bytes);
}

}  // namespace moempi
