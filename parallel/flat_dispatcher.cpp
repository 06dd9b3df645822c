// FlatDispatcher: counting sort by global expert (same as `local`), count exchange, then per
// direction either one Alltoallw over per-peer row datatypes (typed) or pack with whole-row memcpy,
// one Alltoallv of row-typed data and a regroup by (local expert, source, slot) (packed).
#include "parallel/flat_dispatcher.h"

#include <algorithm>
#include <climits>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {
namespace {

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

FlatDispatcher::FlatDispatcher(ExpertPlacement placement, const Communicator& ep, FlatExchange exchange)
    : Dispatcher(placement), ep_(ep.view()), exchange_(exchange) {
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
  token_layout_.reset(P_);
  slot_layout_.reset(P_);
  expert_layout_.reset(P_);
}

void FlatDispatcher::plan(const int32_t* topk_ids_TK, int T, int K) {
  ScopedTimer timer(exchange_seconds_);
  MOEMPI_CHECK_ONE(T >= 0 && K >= 1, "flat dispatcher: bad shape T={} K={}", T, K);
  T_ = T;
  K_ = K;
  const int64_t slots = static_cast<int64_t>(T) * K;

  // Rows per global expert; global expert order is (destination rank, local expert).
  count_slots(topk_ids_TK, slots, send_rows_per_expert_, dropped_slots_);

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
  token_layout_ok_ = slot_layout_ok_ = expert_layout_ok_ = false;
}

void FlatDispatcher::copy_own_rows_to_experts(float* dst_RD, const float* src, bool per_slot,
                                              int D) const {
  const size_t row_bytes = sizeof(float) * D;
  const int64_t K = K_;
  for (int le = 0; le < El_; ++le) {
    const int e = me_ * El_ + le;
    float* out = dst_RD + out_row_[le * P_ + me_] * D;
    for (int64_t i = expert_begin_[e]; i < expert_begin_[e + 1]; ++i, out += D) {
      const int64_t s = slot_of_send_row_[i];
      std::memcpy(out, src + (per_slot ? s : s / K) * D, row_bytes);
    }
  }
}

void FlatDispatcher::copy_own_rows_from_experts(float* dst_TKD, const float* src_RD, int D) const {
  const size_t row_bytes = sizeof(float) * D;
  for (int le = 0; le < El_; ++le) {
    const int e = me_ * El_ + le;
    const float* in = src_RD + out_row_[le * P_ + me_] * D;
    for (int64_t i = expert_begin_[e]; i < expert_begin_[e + 1]; ++i, in += D)
      std::memcpy(dst_TKD + slot_of_send_row_[i] * D, in, row_bytes);
  }
}

void FlatDispatcher::zero_dropped(float* dst_TKD, int D) const {
  for (const int64_t s : dropped_slots_) std::memset(dst_TKD + s * D, 0, sizeof(float) * D);
}

// Typed exchange: builds the datatypes a direction needs, at most once per plan and row width.
// per_token: the token-row layout (dispatch); otherwise the slot-row layout (per-slot dispatch,
// combine). The expert-side layout serves both directions.
void FlatDispatcher::prepare_layouts(int D, bool per_token) {
  if (layout_width_ != D) {
    token_layout_ok_ = slot_layout_ok_ = expert_layout_ok_ = false;
    layout_width_ = D;
  }
  row_.reset(D);
  PeerLayouts& send = per_token ? token_layout_ : slot_layout_;
  bool& send_ok = per_token ? token_layout_ok_ : slot_layout_ok_;
  if (!send_ok) {
    for (int p = 0; p < P_; ++p) {
      const int64_t b = expert_begin_[p * El_], n = expert_begin_[(p + 1) * El_] - b;
      if (p == me_ || n == 0) {
        send.set_empty(p);  // own rows bypass MPI
      } else if (!per_token) {
        send.set_rows(p, slot_of_send_row_.data() + b, n, row_);
      } else {
        scratch_rows_.resize(n);
        for (int64_t i = 0; i < n; ++i) scratch_rows_[i] = slot_of_send_row_[b + i] / K_;
        send.set_rows(p, scratch_rows_.data(), n, row_);
      }
    }
    send_ok = true;
  }
  if (!expert_layout_ok_) {
    scratch_first_.resize(El_);
    scratch_count_.resize(El_);
    for (int p = 0; p < P_; ++p) {
      if (p == me_) {
        expert_layout_.set_empty(p);
        continue;
      }
      for (int le = 0; le < El_; ++le) {
        scratch_first_[le] = out_row_[le * P_ + p];
        scratch_count_[le] = recv_rows_[p * El_ + le];
      }
      expert_layout_.set_runs(p, scratch_first_.data(), scratch_count_.data(), El_, row_);
    }
    expert_layout_ok_ = true;
  }
}

void FlatDispatcher::to_experts(float* dst_RD, const float* src, bool per_slot, int D) {
  ScopedTimer timer(exchange_seconds_);
  if (exchange_ == FlatExchange::kTyped) {
    prepare_layouts(D, /*per_token=*/!per_slot);
    copy_own_rows_to_experts(dst_RD, src, per_slot, D);
    alltoallw_rows(src, per_slot ? slot_layout_ : token_layout_, dst_RD, expert_layout_, ep_);
    return;
  }

  // Packed: remote rows into send_buf_ in (destination, local expert, slot) order.
  row_.reset(D);
  const size_t row_bytes = sizeof(float) * D;
  grow(send_buf_, static_cast<size_t>(send_remote_rows_) * D);
  grow(recv_buf_, static_cast<size_t>(recv_remote_rows_) * D);
  const int64_t K = K_;
  for (int p = 0; p < P_; ++p) {
    if (p == me_) continue;
    float* out = send_buf_.data() + send_buf_row_[p] * D;
    for (int64_t i = expert_begin_[p * El_]; i < expert_begin_[(p + 1) * El_]; ++i, out += D) {
      const int64_t s = slot_of_send_row_[i];
      std::memcpy(out, src + (per_slot ? s : s / K) * D, row_bytes);
    }
  }
  copy_own_rows_to_experts(dst_RD, src, per_slot, D);
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
  ScopedTimer timer(exchange_seconds_);
  if (exchange_ == FlatExchange::kTyped) {
    // The mirror: expert-side runs go back to the slots they came from.
    prepare_layouts(D, /*per_token=*/false);
    alltoallw_rows(src_RD, expert_layout_, dst_TKD, slot_layout_, ep_);
    copy_own_rows_from_experts(dst_TKD, src_RD, D);
    zero_dropped(dst_TKD, D);
    return;
  }

  // Packed: output block (le, p) -> (p, le) in send_buf_ (mirror of the regroup).
  row_.reset(D);
  const size_t row_bytes = sizeof(float) * D;
  grow(send_buf_, static_cast<size_t>(recv_remote_rows_) * D);
  grow(recv_buf_, static_cast<size_t>(send_remote_rows_) * D);
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
    if (p == me_) continue;
    const float* in = recv_buf_.data() + send_buf_row_[p] * D;
    for (int64_t i = expert_begin_[p * El_]; i < expert_begin_[(p + 1) * El_]; ++i, in += D)
      std::memcpy(dst_TKD + slot_of_send_row_[i] * D, in, row_bytes);
  }
  copy_own_rows_from_experts(dst_TKD, src_RD, D);
  zero_dropped(dst_TKD, D);
}

}  // namespace moempi
