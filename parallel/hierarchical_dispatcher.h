// `hierarchical` (moe.dispatch.type; keys moe.dispatch.algorithm: 2dh | leader, moe.dispatch.dedup):
// the dispatcher over the hierarchical all-to-all of comm/hierarchical_alltoall.h (ALGORITHMS.md
// 3.2). The ep group must be N nodes x G ranks with ep rank = node * G + local index (nodes from
// the hosts, or virtual nodes of parallel.ranks_per_node ranks); any other layout is a collective
// error at construction naming moe.dispatch.type.
//
// Without dedup a row is a routed slot (t, k): it takes the hops of the algorithm (2dh: to its
// destination's local index inside the source node, then across to the destination node; leader:
// to the source node's leader, across among leaders, then to the destination rank) and lands in
// the contract's expert-side order. Combine and the backward run the same hops in reverse; the
// weighting, dprobs and the sums use the shared arithmetic of dispatcher.h on the same rows as
// `flat`, so every output is bit-identical to flat and local.
//
// With dedup (DeepEP / HierMoE) a row is a (token, destination node) unit: x_t crosses to a node
// once however many of its k experts live there (2dh: straight to the same local index on that
// node; leader: through both leaders), and the last hop fans it out to the ranks holding the
// experts. Combine reduces Σ p_tk · y_tk over the token's experts on that node before the return
// trip, and the source adds the per-node partial sums (node order). Backward mirrors it: dout_t
// crosses once per node; on the node, dprobs_tk = <dout_t, y_tk> is computed where y_tk was kept
// (the fan-out rank) and dy = p_tk · dout_t is formed there; dx is summed per node before the
// return, and the k dprobs scalars of each unit ride back with that dx row (a side message in the
// same round, not an exchange of their own: contract v2 hands dprobs out in dispatch_backward). x_RD, dy_RD and dprobs stay bit-identical to
// local; out and dx differ only by summation order (tests: relative 1e-6 of the row scale).
// Every hop is one MPI message per peer with rows (MPI_Isend/MPI_Irecv of contiguous blocks); inside
// a node Open MPI carries them over shared memory (vader, single copy with CMA), not through the
// shm dispatcher's window (comm/shm_window.h), which would need its own synchronisation per hop.
// Routing records (8·(3+3k) bytes per unit with dedup, 32 bytes per slot row without) travel once
// per hop in plan() and are not in the statistics; the x rows travel in the same round as their
// records (a second message per peer), so plan() does dispatch()'s exchanges and dispatch() only
// checks it was given the same x_TD. Exchanges per layer (rounds in which ranks wait for peers),
// 2dh + dedup: plan/dispatch 2, combine 2, combine_backward 2, dispatch_backward 2 (with the
// dprobs); flat: 3 and 2.
// Traffic statistics count every hop (a row crossing two hops counts twice); the inter-node
// bytes are those of the one hop between nodes. Test: tests/dispatcher_mpitest.cpp.
#pragma once
#include <string>
#include <vector>

#include "comm/hierarchical_alltoall.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher.h"

namespace moempi {

// "2dh" | "leader" (the spec's values); anything else is a collective error naming the key.
HierAlgorithm parse_hier_algorithm(const std::string& name);
const char* hier_algorithm_name(HierAlgorithm a);

class HierarchicalDispatcher final : public Dispatcher {
 public:
  // Collective over groups.world (one allreduce: the layout check). Non-owning views of
  // groups.ep / ep_node / ep_inter (the ProcessGroups must outlive the dispatcher).
  HierarchicalDispatcher(const ProcessGroups& groups, HierAlgorithm algorithm, bool dedup);
  // This rank's ep group is a layout the constructor accepts: ep rank = node * G + local index, the
  // same G on every node, nodes in ascending order. Local (no communication).
  static bool layout_ok(const ProcessGroups& groups);
  std::string name() const override { return "hierarchical"; }
  std::unique_ptr<DispatchPlan> new_plan() const override;

  // Collective over ep_node and ep_inter (per hop: a count and record exchange).
  void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
            const Placement& placement) override;
  // Each: collective over the hops' groups, one exchange of rows per hop.
  void dispatch(DispatchPlan& plan, const float* x_TD) override;
  void combine(DispatchPlan& plan, float* out_TD) override;
  void combine_backward(DispatchPlan& plan, const float* dout_TD) override;
  void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) override;

  HierAlgorithm algorithm() const { return algorithm_; }
  bool dedup() const { return dedup_; }
  int nodes() const { return N_; }
  int ranks_per_node() const { return G_; }

  struct Plan;

 private:
  void count(const RoutedHop& hop, const HopTraffic& t);
  // Hops after hop 0 (records of the rows hop 0 delivered): appended to p.hops.
  void exchange_forward(Plan& p, const float* in, float* x_RD);
  void exchange_reverse(Plan& p, const float* RD, bool weighted, bool dprobs);

  Communicator ep_, node_, inter_;
  HierAlgorithm algorithm_;
  bool dedup_;
  int P_ = 1, me_ = 0, G_ = 1, N_ = 1;
};

}  // namespace moempi
