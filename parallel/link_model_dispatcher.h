// A dispatcher wrapped in the software link model (comm/link_model.h): after each collective call
// of the inner dispatcher, this rank sleeps for the modelled time of the inter-node messages and
// bytes that call sent (read from the inner dispatcher's statistics), so flat, shm and
// hierarchical pay for their own inter-node traffic on virtual nodes. make_dispatcher wraps every
// dispatcher in it when comm.link_model is set. name(), plans and statistics are the inner
// dispatcher's (seconds include the delay). Test: tests/hierarchical_mpitest.cpp.
#pragma once
#include <memory>

#include "parallel/dispatcher.h"

namespace moempi {

class LinkModelDispatcher final : public Dispatcher {
 public:
  explicit LinkModelDispatcher(std::unique_ptr<Dispatcher> inner) : inner_(std::move(inner)) { sync(0.0); }
  std::string name() const override { return inner_->name(); }
  std::unique_ptr<DispatchPlan> new_plan() const override { return inner_->new_plan(); }
  void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
            const Placement& placement) override;
  void dispatch(DispatchPlan& plan, const float* x_TD) override;
  void combine(DispatchPlan& plan, float* out_TD) override;
  void combine_backward(DispatchPlan& plan, const float* dout_TD) override;
  void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) override;
  void begin_step(int64_t step) override { inner_->begin_step(step); }  // e.g. LSH's rotation
  void set_evaluating(bool evaluating) override { inner_->set_evaluating(evaluating); }
  const Dispatcher& inner() const { return *inner_; }
  double delayed_seconds() const { return delayed_; }

 private:
  template <class F>
  void run(F&& call);
  void sync(double slept);
  std::unique_ptr<Dispatcher> inner_;
  double delayed_ = 0.0;
};

}  // namespace moempi
