// LocalDispatcher: a stable counting sort of slots by expert; combine and its backward read the
// expert rows in place (no per-slot copies), weighting fused into the same pass.
#include "parallel/local_dispatcher.h"

#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {
namespace {

struct LocalPlan final : DispatchPlan {
  std::vector<int64_t> slot_of_row;   // (R) slot t*K+k of each expert row
  SlotRows slots;                     // expert row of each slot (all rows are this rank's)
  friend class ::moempi::LocalDispatcher;
};

LocalPlan& as_local(DispatchPlan& p) { return static_cast<LocalPlan&>(p); }

}  // namespace

std::unique_ptr<DispatchPlan> LocalDispatcher::new_plan() const { return std::make_unique<LocalPlan>(); }

void LocalDispatcher::plan(DispatchPlan& base, const Routing& r, const float*, int D,
                           const Placement& placement) {
  DispatchTimer timer(stats_, kCallPlan);
  LocalPlan& p = as_local(base);
  MOEMPI_CHECK_ONE(placement.group_size() == 1,
                   "moe.dispatch.type 'local' needs every expert on this rank (a group of 1, got {})",
                   placement.group_size());
  p.reset(r, D);
  const int E = placement.num_experts();
  const int64_t slots = static_cast<int64_t>(r.T) * r.K;
  count_slots(r.topk_ids_TK, slots, E, p.rows_per_local_expert_);
  p.local_experts_ = placement.local_experts();
  std::vector<int64_t> next(E, 0);
  for (int e = 1; e < E; ++e) next[e] = next[e - 1] + p.rows_per_local_expert_[e - 1];
  p.rows_ = E ? next[E - 1] + p.rows_per_local_expert_[E - 1] : 0;
  p.slot_of_row.resize(p.rows_);
  p.slots.row_of_slot.assign(slots, -1);
  for (int64_t s = 0; s < slots; ++s) {
    const int e = r.topk_ids_TK[s];
    if (e < 0) continue;
    p.slots.row_of_slot[s] = next[e];
    p.slot_of_row[next[e]++] = s;
  }
  p.use_own_buffers();
}

void LocalDispatcher::dispatch(DispatchPlan& base, const float* x_TD) {
  DispatchTimer timer(stats_, kCallDispatch);
  LocalPlan& p = as_local(base);
  const int D = p.D_, K = p.K_;
  for (int64_t r = 0; r < p.rows_; ++r)
    std::memcpy(p.x_RD_ + r * D, x_TD + p.slot_of_row[r] / K * D, sizeof(float) * D);
}

void LocalDispatcher::combine(DispatchPlan& base, float* out_TD) {
  DispatchTimer timer(stats_, kCallCombine);
  LocalPlan& p = as_local(base);
  p.slots.weighted_sum(out_TD, p.y_RD_, nullptr, p.probs_TK_.data(), p.T_, p.K_, p.D_);
}

void LocalDispatcher::combine_backward(DispatchPlan& base, const float* dout_TD) {
  DispatchTimer timer(stats_, kCallCombineBackward);
  LocalPlan& p = as_local(base);
  float* dprobs_TK = p.pending_dprobs();
  const int D = p.D_, K = p.K_;
  const int64_t slots = static_cast<int64_t>(p.T_) * K;
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t r = p.slots.row_of_slot[s];
    if (r < 0) {
      dprobs_TK[s] = 0.0f;
      continue;
    }
    const float* g = dout_TD + s / K * D;
    dprobs_TK[s] = dot_row(g, p.y_RD_ + r * D, D);
    scale_row(p.dy_RD_ + r * D, g, p.probs_TK_[s], D);
  }
}

void LocalDispatcher::dispatch_backward(DispatchPlan& base, float* dx_TD, float* dprobs_TK) {
  DispatchTimer timer(stats_, kCallDispatchBackward);
  LocalPlan& p = as_local(base);
  p.slots.add(dx_TD, p.dx_RD(), nullptr, p.T_, p.K_, p.D_);
  p.take_pending_dprobs(dprobs_TK);
}

}  // namespace moempi
