// LinkModelDispatcher: inner call, then the modelled delay of its inter-node traffic.
#include "parallel/link_model_dispatcher.h"

#include "comm/link_model.h"

namespace moempi {

template <class F>
void LinkModelDispatcher::run(F&& call) {
  const DispatchStats before = inner_->stats();
  call();
  const DispatchStats& after = inner_->stats();
  sync(link_delay(after.messages_inter - before.messages_inter, after.bytes_inter - before.bytes_inter));
}

void LinkModelDispatcher::sync(double slept) {
  delayed_ += slept;
  stats_ = inner_->stats();
  stats_.seconds += delayed_;
}

void LinkModelDispatcher::plan(DispatchPlan& p, const Routing& r, const float* x_TD, int D, const Placement& pl) {
  run([&] { inner_->plan(p, r, x_TD, D, pl); });
}
void LinkModelDispatcher::dispatch(DispatchPlan& p, const float* x_TD) { run([&] { inner_->dispatch(p, x_TD); }); }
void LinkModelDispatcher::combine(DispatchPlan& p, float* out_TD) { run([&] { inner_->combine(p, out_TD); }); }
void LinkModelDispatcher::combine_backward(DispatchPlan& p, const float* dout_TD) {
  run([&] { inner_->combine_backward(p, dout_TD); });
}
void LinkModelDispatcher::dispatch_backward(DispatchPlan& p, float* dx_TD, float* dprobs_TK) {
  run([&] { inner_->dispatch_backward(p, dx_TD, dprobs_TK); });
}

}  // namespace moempi
