// FlatDispatcher: a stable counting sort of slots by (destination, local expert at the
// destination), the count exchange, then one exchange of rows per call; see flat_dispatcher.h.
#include "parallel/flat_dispatcher.h"

#include <climits>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {

// Per-micro-batch state of one layer.
struct FlatDispatcher::Plan final : DispatchPlan {
  int L = 1;   // count-exchange stride: most local experts on any rank
  int El = 0;  // local experts on this rank
  // Source side: routed slots sorted by (destination p, local index at p, slot).
  std::vector<int64_t> key_begin;     // (P*L+1) first sorted index of key p*L+li
  std::vector<int64_t> slot_of_sorted;  // (S)
  std::vector<int64_t> peer_row;      // (P) first row of peer p in src_side (remote peers)
  int64_t src_rows = 0;               // rows this rank sends to other ranks
  // Where slot s's expert row is on the way back: a row of this rank's expert buffers (own
  // experts) or of src_side (rows that came back from other ranks).
  SlotRows slots;
  // Expert side.
  std::vector<int64_t> recv_rows;     // (P*L) rows from source p for local expert le
  std::vector<int64_t> out_row;       // (El*P) first row of block (le, p) in x_RD
  std::vector<int64_t> exp_row;       // (P*L) packed: first row of block (p, le) in expert_side_
  int64_t exp_rows = 0;               // rows this rank receives from other ranks
  std::vector<int> src_counts, src_displs, exp_counts, exp_displs;  // (P) rows, remote peers
  std::vector<int64_t> exch_send, exch_recv;
  FloatBuffer src_side;               // (src_rows, D) packed sends / rows back (y kept for dprobs)
  // Blocks: (peer, local expert at the expert side) runs of rows, as row offsets.
  struct Block {
    int peer, tag;
    int64_t first, count;
  };
  std::vector<Block> src_blocks;  // in src_side: what goes to / comes back from each peer
  std::vector<Block> exp_blocks;  // in the expert buffers: what comes from / goes back to each peer
  std::vector<RowBlock> sends, recvs;  // scratch
  RowBlockExchange inflight;           // blocks started and not yet waited for
  RowType row;
  PeerLayouts token_layout;   // typed dispatch: x[t] of each slot sent to each peer
  PeerLayouts src_layout;     // one run per peer in src_side
  PeerLayouts expert_layout;  // runs (le, p) in the expert buffers, per source p

  friend class FlatDispatcher;
};

namespace {
FlatDispatcher::Plan& as_flat(DispatchPlan& p) { return static_cast<FlatDispatcher::Plan&>(p); }

// Starts the blocks of one direction (p.inflight.wait() completes them): `from` blocks of `send_base` to `to` blocks of `recv_base`.
void exchange_blocks(FlatDispatcher::Plan& p, const std::vector<FlatDispatcher::Plan::Block>& from,
                     const float* send_base, const std::vector<FlatDispatcher::Plan::Block>& to, float* recv_base,
                     const Communicator& ep) {
  const int D = p.width();
  p.sends.clear();
  p.recvs.clear();
  for (const FlatDispatcher::Plan::Block& b : from)
    p.sends.push_back({b.peer, b.tag, const_cast<float*>(send_base) + b.first * D, b.count});
  for (const FlatDispatcher::Plan::Block& b : to) p.recvs.push_back({b.peer, b.tag, recv_base + b.first * D, b.count});
  p.inflight.start(p.sends, p.recvs, p.row, ep);
}

}  // namespace

FlatDispatcher::FlatDispatcher(const ProcessGroups& groups, FlatExchange exchange, WireDtype wire)
    : ep_(groups.ep.view()), node_of_rank_(groups.ep_rank_node), exchange_(exchange), wire_(wire) {
  MOEMPI_CHECK_ALL(!(exchange == FlatExchange::kTyped && wire == WireDtype::kBf16),
                   "moe.dispatch.wire_dtype bf16 is not supported by moe.dispatch.type flat_typed (MPI places its "
                   "fp32 rows by datatype); use flat or flat_packed, or wire_dtype fp32");
  P_ = ep_.size();
  me_ = ep_.rank();
  MOEMPI_CHECK_ALL(P_ >= 1, "moe.dispatch.type 'flat' needs an EP communicator (got a null one)");
  if ((int)node_of_rank_.size() != P_) node_of_rank_.assign(P_, 0);
}

std::unique_ptr<DispatchPlan> FlatDispatcher::new_plan() const { return std::make_unique<Plan>(); }

std::string FlatDispatcher::name() const {
  switch (exchange_) {
    case FlatExchange::kBlocks: return "flat";
    case FlatExchange::kTyped: return "flat_typed";
    case FlatExchange::kPacked: return "flat_packed";
  }
  return "flat";
}

void FlatDispatcher::plan(DispatchPlan& base, const Routing& r, const float*, int D,
                          const Placement& placement) {
  DispatchTimer timer(stats_, kCallPlan);
  Plan& p = as_flat(base);
  MOEMPI_CHECK_ALL(placement.group_size() == P_,
                   "flat dispatcher: placement over {} ranks does not match the ep group '{}' of {}",
                   placement.group_size(), ep_.name(), P_);
  MOEMPI_CHECK_ONE(placement.rank() == me_, "flat dispatcher: placement for rank {} used on ep rank {}",
                   placement.rank(), me_);
  p.reset(r, D);
  const int P = P_, L = placement.max_local(), El = placement.num_local();
  const int64_t slots = static_cast<int64_t>(r.T) * r.K;
  p.L = L;
  p.El = El;
  p.local_experts_ = placement.local_experts();

  // Counting sort of slots by key (destination, local index there); stable within a key.
  p.key_begin.assign(static_cast<size_t>(P) * L + 1, 0);
  p.slots.row_of_slot.assign(slots, -1);
  for (int64_t s = 0; s < slots; ++s) {
    const int e = r.topk_ids_TK[s];
    if (e < 0) continue;
    MOEMPI_CHECK_ONE(e < placement.num_experts(), "expert id {} out of range [0, {})", e,
                     placement.num_experts());
    const int dest = placement.destination(e, me_);
    ++p.key_begin[static_cast<size_t>(dest) * L + placement.local_index(dest, e) + 1];
  }
  for (size_t k = 1; k < p.key_begin.size(); ++k) p.key_begin[k] += p.key_begin[k - 1];
  const int64_t S = p.key_begin.back();
  p.slot_of_sorted.resize(S);
  {
    std::vector<int64_t> next(p.key_begin.begin(), p.key_begin.end() - 1);
    for (int64_t s = 0; s < slots; ++s) {
      const int e = r.topk_ids_TK[s];
      if (e < 0) continue;
      const int dest = placement.destination(e, me_);
      p.slot_of_sorted[next[static_cast<size_t>(dest) * L + placement.local_index(dest, e)]++] = s;
    }
  }

  // Count exchange: per peer, its local experts' counts (stride L) then this rank's slot total.
  const int stride = L + 1;
  p.exch_send.assign(static_cast<size_t>(P) * stride, 0);
  p.exch_recv.assign(static_cast<size_t>(P) * stride, 0);
  for (int q = 0; q < P; ++q) {
    for (int li = 0; li < L; ++li)
      p.exch_send[q * stride + li] = p.key_begin[q * L + li + 1] - p.key_begin[q * L + li];
    p.exch_send[q * stride + L] = slots;
  }
  alltoall_i64(p.exch_send.data(), p.exch_recv.data(), stride, ep_);
  int64_t group_slots = 0;
  for (int q = 0; q < P; ++q) group_slots += p.exch_recv[q * stride + L];
  MOEMPI_CHECK_ALL(group_slots <= INT_MAX,
                   "flat dispatcher: {} routed slots in ep group '{}' exceed INT_MAX rows per "
                   "exchange; lower train.micro_batch or model.seq_len",
                   group_slots, ep_.name());

  // Expert side: blocks (le, source q) in x_RD; packed receives (q, le) blocks.
  p.recv_rows.assign(static_cast<size_t>(P) * L, 0);
  for (int q = 0; q < P; ++q)
    for (int le = 0; le < El; ++le) p.recv_rows[q * L + le] = p.exch_recv[q * stride + le];
  p.out_row.assign(static_cast<size_t>(El) * P, 0);
  p.rows_per_local_expert_.assign(El, 0);
  int64_t out = 0;
  for (int le = 0; le < El; ++le)
    for (int q = 0; q < P; ++q) {
      p.out_row[le * P + q] = out;
      out += p.recv_rows[q * L + le];
      p.rows_per_local_expert_[le] += p.recv_rows[q * L + le];
    }
  p.rows_ = out;
  p.exp_row.assign(static_cast<size_t>(P) * L, 0);
  p.exp_counts.assign(P, 0);
  p.exp_displs.assign(P, 0);
  int64_t at = 0;
  for (int q = 0; q < P; ++q) {
    p.exp_displs[q] = static_cast<int>(at);
    int64_t n = 0;
    for (int le = 0; le < El; ++le) {
      p.exp_row[q * L + le] = at + n;
      n += p.recv_rows[q * L + le];
    }
    if (q == me_) continue;  // own rows bypass MPI
    p.exp_counts[q] = static_cast<int>(n);
    at += n;
  }
  p.exp_rows = at;

  // Source side: remote rows contiguous per peer in src_side; own rows map to x_RD rows.
  p.peer_row.assign(P, 0);
  p.src_counts.assign(P, 0);
  p.src_displs.assign(P, 0);
  at = 0;
  for (int q = 0; q < P; ++q) {
    const int64_t b = p.key_begin[q * L], n = p.key_begin[(q + 1) * L] - b;
    p.peer_row[q] = at;
    p.src_displs[q] = static_cast<int>(at);
    if (q == me_) {
      for (int li = 0; li < El; ++li)
        for (int64_t i = p.key_begin[q * L + li]; i < p.key_begin[q * L + li + 1]; ++i)
          p.slots.row_of_slot[p.slot_of_sorted[i]] = p.out_row[li * P + me_] + (i - p.key_begin[q * L + li]);
      continue;
    }
    p.src_counts[q] = static_cast<int>(n);
    for (int64_t i = b; i < b + n; ++i) p.slots.row_of_slot[p.slot_of_sorted[i]] = SlotRows::encode_back(at + (i - b));
    at += n;
  }
  p.src_rows = at;
  p.src_side.resize(static_cast<size_t>(p.src_rows) * D);
  p.use_own_buffers();

  p.row.reset(D, wire_);
  if (exchange_ == FlatExchange::kBlocks) {
    p.src_blocks.clear();
    p.exp_blocks.clear();
    for (int q = 0; q < P; ++q) {
      if (q == me_) continue;
      for (int li = 0; li < L; ++li) {
        const int64_t n = p.key_begin[q * L + li + 1] - p.key_begin[q * L + li];
        if (n) p.src_blocks.push_back({q, li, p.peer_row[q] + p.key_begin[q * L + li] - p.key_begin[q * L], n});
      }
      for (int le = 0; le < El; ++le) {
        const int64_t n = p.recv_rows[q * L + le];
        if (n) p.exp_blocks.push_back({q, le, p.out_row[le * P + q], n});
      }
    }
  }
  if (exchange_ == FlatExchange::kTyped) {
    p.token_layout.reset(P);
    p.src_layout.reset(P);
    p.expert_layout.reset(P);
    std::vector<int64_t> rows, first(El), count(El);
    for (int q = 0; q < P; ++q) {
      const int64_t b = p.key_begin[q * L], n = p.key_begin[(q + 1) * L] - b;
      if (q == me_ || n == 0) {
        p.token_layout.set_empty(q);
        p.src_layout.set_empty(q);
      } else {
        rows.resize(n);
        for (int64_t i = 0; i < n; ++i) rows[i] = p.slot_of_sorted[b + i] / r.K;
        p.token_layout.set_rows(q, rows.data(), n, p.row);
        const int64_t f = p.peer_row[q];
        p.src_layout.set_runs(q, &f, &n, 1, p.row);
      }
      if (q == me_ || p.exp_counts[q] == 0) {
        p.expert_layout.set_empty(q);
        continue;
      }
      for (int le = 0; le < El; ++le) {
        first[le] = p.out_row[le * P + q];
        count[le] = p.recv_rows[q * L + le];
      }
      p.expert_layout.set_runs(q, first.data(), count.data(), El, p.row);
    }
  }
}

void FlatDispatcher::count_traffic(const Plan& p, bool to_experts) {
  const int64_t row_bytes = p.row.wire_bytes();  // 2 bytes per value on a bf16 wire
  auto add = [&](int q, int64_t rows, int64_t messages) {
    const bool intra = node_of_rank_[q] == node_of_rank_[me_];
    stats_.rows += rows;
    (intra ? stats_.bytes_intra : stats_.bytes_inter) += rows * row_bytes;
    (intra ? stats_.messages_intra : stats_.messages_inter) += messages;
  };
  if (exchange_ == FlatExchange::kBlocks) {  // one message per block
    for (const Plan::Block& b : to_experts ? p.src_blocks : p.exp_blocks) add(b.peer, b.count, 1);
    return;
  }
  for (int q = 0; q < P_; ++q) {
    const int64_t n = to_experts ? p.src_counts[q] : p.exp_counts[q];
    if (n) add(q, n, 1);
  }
}

// src_side (rows per peer) -> expert buffer dst_RD in (le, source) blocks; own rows not touched.
// kBlocks only starts the transfer (finish_exchange() completes it), so own-row work overlaps it.
void FlatDispatcher::exchange_to_experts(Plan& p, const float* src_rows, float* dst_RD) {
  count_traffic(p, true);
  if (exchange_ == FlatExchange::kBlocks) return exchange_blocks(p, p.src_blocks, src_rows, p.exp_blocks, dst_RD, ep_);
  if (exchange_ == FlatExchange::kTyped) {
    alltoallw_rows(src_rows, p.src_layout, dst_RD, p.expert_layout, ep_);
    return;
  }
  const int D = p.D_;
  expert_side_.resize(static_cast<size_t>(p.exp_rows) * D);
  alltoallv_rows(src_rows, p.src_counts.data(), p.src_displs.data(), expert_side_.data(),
                 p.exp_counts.data(), p.exp_displs.data(), p.row, ep_);
  for (int q = 0; q < P_; ++q) {
    if (q == me_) continue;
    for (int le = 0; le < p.El; ++le) {
      const int64_t n = p.recv_rows[q * p.L + le];
      if (n)
        std::memcpy(dst_RD + p.out_row[le * P_ + q] * D, expert_side_.data() + p.exp_row[q * p.L + le] * D,
                    sizeof(float) * n * D);
    }
  }
}

// Expert buffer src_RD -> src_side rows per peer (the mirror); own rows stay in src_RD. kBlocks
// only starts the transfer.
void FlatDispatcher::exchange_from_experts(Plan& p, const float* src_RD, float* dst_rows) {
  count_traffic(p, false);
  if (exchange_ == FlatExchange::kBlocks) return exchange_blocks(p, p.exp_blocks, src_RD, p.src_blocks, dst_rows, ep_);
  if (exchange_ == FlatExchange::kTyped) {
    alltoallw_rows(src_RD, p.expert_layout, dst_rows, p.src_layout, ep_);
    return;
  }
  const int D = p.D_;
  expert_side_.resize(static_cast<size_t>(p.exp_rows) * D);
  for (int q = 0; q < P_; ++q) {
    if (q == me_) continue;
    for (int le = 0; le < p.El; ++le) {
      const int64_t n = p.recv_rows[q * p.L + le];
      if (n)
        std::memcpy(expert_side_.data() + p.exp_row[q * p.L + le] * D, src_RD + p.out_row[le * P_ + q] * D,
                    sizeof(float) * n * D);
    }
  }
  alltoallv_rows(expert_side_.data(), p.exp_counts.data(), p.exp_displs.data(), dst_rows,
                 p.src_counts.data(), p.src_displs.data(), p.row, ep_);
}

void FlatDispatcher::dispatch(DispatchPlan& base, const float* x_TD) {
  DispatchTimer timer(stats_, kCallDispatch);
  Plan& p = as_flat(base);
  const int D = p.D_, K = p.K_, L = p.L;
  const size_t row_bytes = sizeof(float) * D;
  auto copy_own_rows = [&] {  // own rows straight to their expert rows
    for (int li = 0; li < p.El; ++li) {
      float* out = p.x_RD_ + p.out_row[li * P_ + me_] * D;
      for (int64_t i = p.key_begin[me_ * L + li]; i < p.key_begin[me_ * L + li + 1]; ++i, out += D)
        std::memcpy(out, x_TD + p.slot_of_sorted[i] / K * D, row_bytes);
    }
  };
  if (exchange_ == FlatExchange::kTyped) {  // MPI gathers the token rows itself
    copy_own_rows();
    count_traffic(p, true);
    alltoallw_rows(x_TD, p.token_layout, p.x_RD_, p.expert_layout, ep_);
    return;
  }
  // Blocks and packed: gather the remote rows into src_side (contiguous per peer), exchange, and
  // copy the own rows while the blocks are in flight.
  for (int q = 0; q < P_; ++q) {
    if (q == me_) continue;
    float* out = p.src_side.data() + p.peer_row[q] * D;
    for (int64_t i = p.key_begin[q * L]; i < p.key_begin[(q + 1) * L]; ++i, out += D)
      std::memcpy(out, x_TD + p.slot_of_sorted[i] / K * D, row_bytes);
  }
  exchange_to_experts(p, p.src_side.data(), p.x_RD_);
  copy_own_rows();
  p.inflight.wait();
}

void FlatDispatcher::combine(DispatchPlan& base, float* out_TD) {
  DispatchTimer timer(stats_, kCallCombine);
  Plan& p = as_flat(base);
  exchange_from_experts(p, p.y_RD_, p.src_side.data());  // y rows back; kept for dprobs
  p.inflight.wait();
  p.slots.weighted_sum(out_TD, p.y_RD_, p.src_side.data(), p.probs_TK_.data(), p.T_, p.K_, p.D_);
}

void FlatDispatcher::combine_backward(DispatchPlan& base, const float* dout_TD) {
  DispatchTimer timer(stats_, kCallCombineBackward);
  Plan& p = as_flat(base);
  float* dprobs_TK = p.pending_dprobs();
  const int D = p.D_, K = p.K_;
  const int64_t slots = static_cast<int64_t>(p.T_) * K;
  // dprobs from the y rows this rank holds (the rows that came back in combine, and its own expert
  // rows); dy = p·dout written over them (remote: the weighting is the pack) or straight into
  // dy_RD (own, while the remote blocks are in flight).
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t v = p.slots.row_of_slot[s];
    if (v >= 0) continue;
    if (v == -1) {
      dprobs_TK[s] = 0.0f;
      continue;
    }
    const float* g = dout_TD + s / K * D;
    float* row = p.src_side.data() + SlotRows::back_row(v) * D;
    dprobs_TK[s] = dot_row(g, row, D);
    scale_row(row, g, p.probs_TK_[s], D);
  }
  exchange_to_experts(p, p.src_side.data(), p.dy_RD_);
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t v = p.slots.row_of_slot[s];
    if (v < 0) continue;
    const float* g = dout_TD + s / K * D;
    dprobs_TK[s] = dot_row(g, p.y_RD_ + v * D, D);
    scale_row(p.dy_RD_ + v * D, g, p.probs_TK_[s], D);
  }
  p.inflight.wait();
}

void FlatDispatcher::dispatch_backward(DispatchPlan& base, float* dx_TD, float* dprobs_TK) {
  DispatchTimer timer(stats_, kCallDispatchBackward);
  Plan& p = as_flat(base);
  exchange_from_experts(p, p.dx_RD(), p.src_side.data());
  p.inflight.wait();
  p.slots.add(dx_TD, p.dx_RD(), p.src_side.data(), p.T_, p.K_, p.D_);
  p.take_pending_dprobs(dprobs_TK);
}

}  // namespace moempi
