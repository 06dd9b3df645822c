// `shm`: a single-copy dispatcher for an EP group inside one node (DESIGN.md "The pluggable
// pieces"). Each plan owns an MPI-3 shared-memory window (comm/shm_window.h) holding this rank's
// expert-side rows x_RD, y_RD (= dx_RD) and dy_RD; every rank knows every rank's row layout from one
// int64 allgather in plan(), so a sender stores each row x[t] straight into its final place in the
// receiver's segment and a source reads y / dx rows straight from the peers' segments: one copy per
// row, no pack/unpack, no MPI message for rows. Synchronisation is an MPI barrier (fence) per
// direction, never a spin on shared flags. Guarantee: outputs, dprobs, dy_RD and dx are bit-identical
// to `local` on the same global problem (same rows, same arithmetic helpers, same k order).
// Test: tests/shm_mpitest.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher.h"

namespace moempi {

class ShmDispatcher final : public Dispatcher {
 public:
  // Collective over groups.world (one MPI_Allreduce of three int64) and groups.ep (one
  // MPI_Comm_split_type): collective error unless every ep group lies within one (real or
  // virtual) node and on one host. Keeps a view of groups.ep: `groups` must outlive the
  // dispatcher. `headroom` (>= 1) is the growth factor of the plans' shared segments.
  ShmDispatcher(const ProcessGroups& groups, float headroom = 1.25f);
  std::string name() const override { return "shm"; }
  // Not collective; the plan's window is made by its first plan(). Destroying a plan that has been
  // planned is collective over ep (MPI_Win_free): every rank destroys its plans in the same order.
  std::unique_ptr<DispatchPlan> new_plan() const override;

  // Collective over ep: one MPI_Allgather of E+2 int64 per rank (counts per global expert, D and the placement's
  // fingerprint: ranks whose placements differ get a collective error);
  // on the first call, or when some rank's rows outgrow its segment, the plan's window is
  // (re)allocated collectively.
  void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
            const Placement& placement) override;
  // Collective over ep: stores rows into the receivers' segments, then one barrier.
  void dispatch(DispatchPlan& plan, const float* x_TD) override;
  // Collective over ep: one barrier, then reads y rows from the peers' segments.
  void combine(DispatchPlan& plan, float* out_TD) override;
  // Collective over ep: reads y rows (dprobs) and stores dy rows into the peers' segments, then one
  // barrier.
  void combine_backward(DispatchPlan& plan, const float* dout_TD) override;
  // Collective over ep: one barrier, then reads dx rows from the peers' segments.
  void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) override;

  // Tests only: when set, every phase calls `delay()` at a few points (before its stores, before
  // its barrier, between its loads) and sleeps that many seconds, to shuffle the ranks' timing.
  // Not thread-safe; pass an empty function to turn it off.
  static void set_test_delay(std::function<double()> delay);

 private:
  Communicator ep_;  // view of the EP group (the window duplicates it per plan)
  double headroom_;
};

}  // namespace moempi
