// The MoE layer: out_ND = Σ_shared FFN_j(x) + Σ_k p_tk · FFN_{e_tk}(x) (no residual), run as
// router -> Dispatcher::plan -> dispatch -> GroupedExperts -> combine (the dispatcher weights and
// sums; contract v2, parallel/dispatcher.h). The layer keeps its own DispatchPlan.
// Guarantees: exact gradients for x, router, routed and shared experts with routing held fixed
// (balancing losses included, scaled by loss_scale); every dispatcher call happens in the same
// order on every rank, zero rows or not. Test: tests/moe_test.cpp (MoeLayerGrad.*, MoeLayer.*).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "models/moe/balancing_pass.h"
#include "models/moe/grouped_experts.h"
#include "models/moe/router.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"

namespace moempi {

class MoeLayer {
 public:
  // Registers "layers.{l}.moe.router.w" (D, E; kDense), the local routed experts (kExpert, see
  // GroupedExperts) and the shared experts "layers.{l}.moe.shared.{j}.w1/.w2" (kDense).
  // env: services for balancing passes that communicate (default: one data-parallel rank).
  // placement: which experts this rank holds (their parameters are registered here).
  MoeLayer(const ModelSpec& model, const MoeSpec& moe, int layer, const Placement& placement,
           ParamArena& arena, const BalancingEnv& env = {});

  // After arena.allocate(). Each tensor from Rng(seed, 0, 0, stream_of(global name)): N(0,
  // init_std²), w2 of every FFN scaled by 1/sqrt(2·n_layers) (GPT-2 residual projections).
  void init_params(ParamArena& arena, uint64_t seed, float init_std);

  // Collective over the dispatcher's EP group. Overwrites out_ND (which must not alias x_ND). Keeps
  // what backward needs: this layer's DispatchPlan and a pointer to x_ND, which the caller leaves
  // unchanged until backward (GptMoe keeps each block's normed input). Passes update step state
  // only if training.
  // `placement` (this step's: the experts' set_local_experts() list, owners plus any replicas)
  // stays alive until backward.
  void forward(ParamArena& arena, float* out_ND, const float* x_ND, int N, Dispatcher& dispatcher,
               const Placement& placement, bool training);
  // Collective over the dispatcher's EP group; the same dispatcher as the forward. ADDS into dx_ND
  // (nullptr = not wanted) and into the arena grads; balancing-loss gradients are multiplied by
  // loss_scale.
  void backward(ParamArena& arena, float* dx_ND, const float* dout_ND, float loss_scale,
                Dispatcher& dispatcher);

  double aux_loss() const { return router_.balancing_loss(); }  // coefficients applied
  // (E) global-id counts of the last forward on this rank, after drops.
  const std::vector<int64_t>& tokens_per_expert() const { return router_.plan().tokens_per_expert_E; }
  int64_t dropped_slots() const { return router_.plan().dropped_slots; }
  // Where the next forward's tokens are (moe.force_routing draws; see Router::set_position).
  void set_position(uint64_t seed, int64_t step, int64_t first_token) {
    router_.set_position(seed, layer_, step, first_token);
  }
  // counts_E: this layer's step counts over all data ranks (RoutingStats::counts).
  void on_step_end(const int64_t* counts_E) { router_.on_step_end(counts_E); }
  void on_step_discarded() { router_.on_step_discarded(); }

  const Router& router() const { return router_; }
  const RoutingPlan& routing() const { return router_.plan(); }
  const GroupedExperts& experts() const { return experts_; }
  GroupedExperts& experts() { return experts_; }
  const DispatchPlan* dispatch_plan() const { return plan_.get(); }  // of the last forward
  ParamArena::Id router_w_id() const { return router_w_; }
  int num_shared() const { return (int)shared_w1_.size(); }
  ParamArena::Id shared_w1_id(int j) const { return shared_w1_[j]; }
  ParamArena::Id shared_w2_id(int j) const { return shared_w2_[j]; }

 private:
  int layer_, D_, F_, F1_, E_, K_, n_layers_, seq_len_;
  Activation act_;
  ParamArena::Id router_w_;
  std::vector<ParamArena::Id> shared_w1_, shared_w2_;
  Router router_;
  GroupedExperts experts_;

  int N_ = 0;
  const float* x_ND_ = nullptr;         // (N, D) the caller's input, alive until backward
  std::unique_ptr<DispatchPlan> plan_;  // this layer's routing plan and expert rows (R, D)
  uint64_t plan_owner_ = 0;            // Dispatcher::id() of the dispatcher that made plan_
  FloatBuffer dprobs_NK_;               // (N, K)
  FloatBuffer scratch_dx_ND_;           // dispatch backward's target when dx is not wanted
  std::vector<FloatBuffer> shared_pre_NF1_, shared_act_NF_;  // per shared expert
  FloatBuffer dact_NF_, dpre_NF1_;      // shared-expert backward scratch
};

}  // namespace moempi
