// `flat`: the baseline dispatcher over the EP group (ALGORITHMS.md 3.1): one MPI_Alltoall of int64
// counts per micro-batch, then one all-to-all of rows per direction, regrouped by local expert.
// Three exchanges, same result (docs/RESULTS.md measures them side by side; each stays selectable):
//   kBlocks (`flat`):        one contiguous message per (peer, local expert) block, posted at once
//                            (MPI_Irecv/MPI_Isend): the expert side receives each block straight
//                            into its place and sends y/dx blocks straight from it, so MPI can use
//                            its single-copy path (CMA) or send from the user buffer; own rows are
//                            copied while the blocks are in flight. No derived datatypes, so it does
//                            not depend on how well an MPI handles them (Open MPI 4.1's Alltoallw
//                            over TCP was 1.7-7x slower than raw across emulated nodes);
//   kTyped  (`flat_typed`):  MPI_Alltoallw with per-peer datatypes, so MPI gathers the token rows and
//                            places them by (local expert, source) itself (no pack, no regroup copy);
//   kPacked (`flat_packed`): pack with memcpy, MPI_Alltoallv of contiguous rows, regroup with memcpy.
// The source side always sees contiguous rows per peer in (peer, local expert, slot) order: y rows
// come back there, stay in the plan for dprobs, and the weighting is fused into the combine pass
// (weighted_sum_rows) and into the pack of dy = p·dout. Rows a rank routes to itself bypass MPI.
// Guarantee: bit-identical to `local` on the same global problem, any Placement (replicas too).
// Test: tests/dispatcher_mpitest.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "comm/collectives.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher.h"

namespace moempi {

enum class FlatExchange { kBlocks, kTyped, kPacked };

class FlatDispatcher final : public Dispatcher {
 public:
  // Non-owning view of groups.ep (the ProcessGroups must outlive the dispatcher); the node of each
  // ep rank (groups.ep_rank_node) splits the traffic statistics into intra- and inter-node.
  // `wire` (moe.dispatch.wire_dtype): bf16 rows between ranks for kBlocks and kPacked (converted in
  // comm/collectives' RowBlockExchange and alltoallv_rows; own rows never convert); kTyped refuses
  // bf16 with a collective error (MPI places its fp32 rows by datatype, nothing to convert).
  FlatDispatcher(const ProcessGroups& groups, FlatExchange exchange = FlatExchange::kBlocks,
                 WireDtype wire = WireDtype::kFp32);
  std::string name() const override;
  std::unique_ptr<DispatchPlan> new_plan() const override;

  // Collective over ep: one MPI_Alltoall of (max local experts + 1) int64 per peer.
  void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
            const Placement& placement) override;
  // Each: collective over ep, one exchange of rows.
  void dispatch(DispatchPlan& plan, const float* x_TD) override;
  void combine(DispatchPlan& plan, float* out_TD) override;
  void combine_backward(DispatchPlan& plan, const float* dout_TD) override;
  void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) override;

  struct Plan;  // this dispatcher's DispatchPlan (defined in the .cpp)

 private:
  void exchange_to_experts(Plan& p, const float* src_rows, float* dst_RD);
  void exchange_from_experts(Plan& p, const float* src_RD, float* dst_rows);
  void count_traffic(const Plan& p, bool to_experts);

  Communicator ep_;  // view of the EP group
  std::vector<int> node_of_rank_;
  FlatExchange exchange_;
  WireDtype wire_;
  int P_ = 1, me_ = 0;
  FloatBuffer expert_side_;  // packed: rows in (source, local expert) order; scratch for all layers
};

}  // namespace moempi
