// `flat`: the baseline dispatcher over the EP group (ALGORITHMS.md 3.1): one MPI_Alltoall of int64
// counts per micro-batch, then one all-to-all of rows per direction, regrouped by local expert.
// Two exchanges, same result:
//   kTyped  (`flat`):        one MPI_Alltoallw whose per-peer datatypes name the source rows and
//                            their destination rows, so MPI gathers, moves and regroups in one
//                            pass (no pack/regroup copies; see bench/bench_dispatch.cpp);
//   kPacked (`flat_packed`): pack rows with memcpy, one MPI_Alltoallv of contiguous rows, regroup
//                            with memcpy (the textbook form, for MPIs weak at derived datatypes).
// Rows a rank routes to its own experts bypass MPI in both. Guarantee: outputs are bit-identical
// to `local` on the same global problem, in the exact row order parallel/dispatcher.h specifies.
// Test: tests/dispatcher_mpitest.cpp (FlatVsLocal.*).
#pragma once
#include <cstdint>
#include <vector>

#include "comm/collectives.h"
#include "comm/communicator.h"
#include "parallel/dispatcher.h"

namespace moempi {

enum class FlatExchange { kTyped, kPacked };

class FlatDispatcher final : public Dispatcher {
 public:
  // `ep` is the EP group (ProcessGroups::ep); the dispatcher keeps a non-owning view of it, so
  // the ProcessGroups must outlive the dispatcher. Collective error if the placement does not
  // match the group or moe.num_experts is not divisible by parallel.ep.
  FlatDispatcher(ExpertPlacement placement, const Communicator& ep,
                 FlatExchange exchange = FlatExchange::kTyped);
  std::string name() const override { return exchange_ == FlatExchange::kTyped ? "flat" : "flat_packed"; }

  // Collective over ep: one MPI_Alltoall of (local experts + 1) int64 per peer.
  void plan(const int32_t* topk_ids_TK, int T, int K) override;
  int64_t rows() const override { return rows_; }
  const std::vector<int64_t>& rows_per_local_expert() const override { return rows_per_local_expert_; }
  // Collective over ep: one MPI_Alltoallw (typed) or MPI_Alltoallv (packed) of rows of D floats.
  void to_experts(float* dst_RD, const float* src, bool per_slot, int D) override;
  // Collective over ep: the mirror of to_experts, one exchange of the same kind.
  void from_experts(float* dst_TKD, const float* src_RD, int D) override;

 private:
  void copy_own_rows_to_experts(float* dst_RD, const float* src, bool per_slot, int D) const;
  void copy_own_rows_from_experts(float* dst_TKD, const float* src_RD, int D) const;
  void zero_dropped(float* dst_TKD, int D) const;
  void prepare_layouts(int D, bool per_token);

  Communicator ep_;  // view of the EP group
  FlatExchange exchange_;
  int P_ = 1, me_ = 0, E_ = 1, El_ = 1;
  int T_ = 0, K_ = 0;
  // Send side, in (destination rank, local expert, slot) order = global expert order.
  std::vector<int64_t> send_rows_per_expert_;  // (E)
  std::vector<int64_t> expert_begin_;          // (E+1) first entry of each expert in slot_of_send_row_
  std::vector<int64_t> slot_of_send_row_;      // (S) slot t*K+k of every routed slot, sorted
  std::vector<int64_t> dropped_slots_;         // slots with id -1: zero rows in from_experts
  std::vector<int64_t> send_buf_row_;          // (P) first row of each destination in send_buf_
  // Receive side. Rows from this rank to itself bypass MPI (count 0) and go straight to place.
  std::vector<int64_t> recv_rows_;             // (P*El) rows from source p for local expert le
  std::vector<int64_t> out_row_;               // (El*P) first output row of (le, source p)
  std::vector<int64_t> recv_buf_row_;          // (P*El) first row of (source p, le) in recv_buf_
  std::vector<int64_t> rows_per_local_expert_; // (El)
  int64_t rows_ = 0;
  int64_t send_remote_rows_ = 0, recv_remote_rows_ = 0;
  // MPI arguments in rows (int: plan() checks collectively that every total fits).
  std::vector<int> send_counts_, send_displs_, recv_counts_, recv_displs_;
  std::vector<int64_t> exchange_send_, exchange_recv_;  // (P*(El+1)) count exchange
  std::vector<float> send_buf_, recv_buf_;              // packed: reused, grow only
  RowType row_;
  // Typed: per-peer datatypes, built lazily after each plan() for the row width in use.
  PeerLayouts token_layout_;   // rows x[t] of the slots sent to each peer (dispatch)
  PeerLayouts slot_layout_;    // rows [t*K+k] of those slots (per-slot dispatch, combine)
  PeerLayouts expert_layout_;  // (local expert, source) runs at the expert side
  bool token_layout_ok_ = false, slot_layout_ok_ = false, expert_layout_ok_ = false;
  int layout_width_ = 0;
  std::vector<int64_t> scratch_rows_, scratch_first_, scratch_count_;
};

}  // namespace moempi
