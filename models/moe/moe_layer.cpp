// MoE layer forward/backward over a Dispatcher. Test: tests/moe_test.cpp.
#include "models/moe/moe_layer.h"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace moempi {

MoeLayer::MoeLayer(const ModelSpec& model, const MoeSpec& moe, int layer,
                   const Placement& placement, ParamArena& arena, const BalancingEnv& env)
    : layer_(layer),
      D_(model.d_model),
      F_(moe.d_ff_expert),
      F1_(model.activation == Activation::kSwiglu ? 2 * moe.d_ff_expert : moe.d_ff_expert),
      E_(moe.num_experts),
      K_(moe.top_k),
      n_layers_(model.n_layers),
      seq_len_(model.seq_len),
      act_(model.activation),
      router_w_(arena.add(fmt::format("layers.{}.moe.router.w", layer),
                          {model.d_model, moe.num_experts}, ParamKind::kDense, true)),
      router_(moe, model.d_model, env),
      experts_(model, moe, layer, placement, arena) {
  MOEMPI_CHECK_ALL(moe.num_shared_experts >= 0, "moe.num_shared_experts ({}) must be >= 0",
                   moe.num_shared_experts);
  for (int j = 0; j < moe.num_shared_experts; ++j) {
    const std::string base = fmt::format("layers.{}.moe.shared.{}", layer, j);
    shared_w1_.push_back(arena.add(base + ".w1", {D_, F1_}, ParamKind::kDense, true));
    shared_w2_.push_back(arena.add(base + ".w2", {F_, D_}, ParamKind::kDense, true));
  }
  shared_pre_NF1_.resize(shared_w1_.size());
  shared_act_NF_.resize(shared_w1_.size());
}

void MoeLayer::init_params(ParamArena& arena, uint64_t seed, float init_std) {
  const float w2_scale = 1.0f / std::sqrt(2.0f * (float)n_layers_);
  init_param_normal(arena, router_w_, seed, init_std);
  experts_.init_params(arena, seed, init_std, w2_scale);
  for (size_t j = 0; j < shared_w1_.size(); ++j) {
    init_param_normal(arena, shared_w1_[j], seed, init_std);
    init_param_normal(arena, shared_w2_[j], seed, init_std * w2_scale);
  }
}

void MoeLayer::forward(ParamArena& arena, float* out_ND, const float* x_ND, int N,
                       Dispatcher& dispatcher, const Placement& placement, bool training) {
  const int D = D_, K = K_;
  N_ = N;
  x_ND_ = x_ND;  // the caller keeps it until backward (no copy)

  MOEMPI_CHECK_ONE(placement.local_experts() == experts_.local_experts(),
                   "layer {}: the step placement's local experts differ from the experts' (set_local_experts)",
                   layer_);
  // 1. route
  const int seq_len = (seq_len_ > 0 && N % seq_len_ == 0) ? seq_len_ : N;
  router_.forward(x_ND_, arena.param(router_w_), N, seq_len, training);
  const RoutingPlan& routing = router_.plan();

  // 2. plan + dispatch (collective), 3. experts, 4. combine: out_t = Σ_k p_tk · y_tk (collective)
  if (!plan_ || plan_owner_ != dispatcher.id()) {  // a plan is of its dispatcher's kind
    plan_ = dispatcher.new_plan();
    plan_owner_ = dispatcher.id();
  }
  DispatchPlan& plan = *plan_;
  dispatcher.plan(plan, Routing{routing.topk_ids_NK.data(), routing.probs_NK.data(), N, K}, x_ND_, D,
                  placement);
  dispatcher.dispatch(plan, x_ND_);
  experts_.forward(arena, plan.y_RD(), plan.x_RD(), plan.rows_per_local_expert());
  dispatcher.combine(plan, out_ND);
  // 6. + shared experts, on every token
  for (size_t j = 0; j < shared_w1_.size(); ++j) {
    shared_pre_NF1_[j].resize((size_t)N * F1_);
    shared_act_NF_[j].resize((size_t)N * F_);
    expert_ffn_forward(out_ND, shared_pre_NF1_[j].data(), shared_act_NF_[j].data(), x_ND_,
                       arena.param(shared_w1_[j]), arena.param(shared_w2_[j]), N, D, F_, act_,
                       /*accumulate_y=*/true);
  }
}

void MoeLayer::backward(ParamArena& arena, float* dx_ND, const float* dout_ND, float loss_scale,
                        Dispatcher& dispatcher) {
  const int D = D_, N = N_;
  MOEMPI_CHECK_ONE(plan_ && plan_owner_ == dispatcher.id(),
                   "layer {}: backward with a dispatcher other than the forward's", layer_);
  DispatchPlan& plan = *plan_;
  MOEMPI_CHECK_ONE(plan.rows() == experts_.rows(),
                   "layer {}: the plan holds {} expert rows in backward, the experts {} in forward",
                   layer_, plan.rows(), experts_.rows());

  // Combine backward (dy_RD = p·dout per row, dprobs where y lives); experts backward; dispatch
  // backward adds Σ_k dx_tk into dx_ND and hands out the dprobs (they may return with the dx rows).
  dprobs_NK_.resize((size_t)N * K_);
  dispatcher.combine_backward(plan, dout_ND);
  experts_.backward(arena, plan.dx_RD(), plan.dy_RD(), plan.x_RD());
  if (dx_ND) {
    dispatcher.dispatch_backward(plan, dx_ND, dprobs_NK_.data());
  } else {
    scratch_dx_ND_.resize((size_t)N * D);
    dispatcher.dispatch_backward(plan, scratch_dx_ND_.data(), dprobs_NK_.data());  // collective: every rank calls it
  }

  // Router: dprobs (and the balancing losses) -> scores -> logits -> W_r, x.
  router_.backward(dx_ND, arena.grad(router_w_), dprobs_NK_.data(), x_ND_,
                   arena.param(router_w_), loss_scale);

  // Shared experts see dout directly.
  if (!shared_w1_.empty()) {
    dact_NF_.resize((size_t)N * F_);
    dpre_NF1_.resize((size_t)N * F1_);
  }
  for (size_t j = 0; j < shared_w1_.size(); ++j)
    expert_ffn_backward(dx_ND, arena.grad(shared_w1_[j]), arena.grad(shared_w2_[j]),
                        dact_NF_.data(), dpre_NF1_.data(), dout_ND, x_ND_,
                        shared_pre_NF1_[j].data(), shared_act_NF_[j].data(),
                        arena.param(shared_w1_[j]), arena.param(shared_w2_[j]), N, D, F_, act_,
                        /*accumulate_dx=*/true);
}

}  // namespace moempi
