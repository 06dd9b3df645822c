// `local`: the reference dispatcher. No communication; every expert is on this rank (a placement
// over a group of one). Every other dispatcher is tested against it (tests/dispatcher_mpitest.cpp).
#pragma once
#include "parallel/dispatcher.h"

namespace moempi {

class LocalDispatcher final : public Dispatcher {
 public:
  std::string name() const override { return "local"; }
  std::unique_ptr<DispatchPlan> new_plan() const override;
  // Local error unless placement.group_size() == 1 (the spec check names moe.dispatch.type).
  void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
            const Placement& placement) override;
  void dispatch(DispatchPlan& plan, const float* x_TD) override;
  void combine(DispatchPlan& plan, float* out_TD) override;
  void combine_backward(DispatchPlan& plan, const float* dout_TD) override;
  void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) override;
};

}  // namespace moempi
