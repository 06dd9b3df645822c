// MoE layer forward/backward over a Dispatcher. Test: tests/moe_test.cpp.
#include "models/moe/moe_layer.h"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace moempi {
namespace {
// <a, b> with 16 independent partial sums, so the loop vectorises without -ffast-math.
float dot(const float* a, const float* b, int n) {
  float acc[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}
}  // namespace

MoeLayer::MoeLayer(const ModelSpec& model, const MoeSpec& moe, int layer,
                   const ExpertPlacement& placement, ParamArena& arena, const BalancingEnv& env)
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
  MOEMPI_CHECK_ALL(placement.num_experts == moe.num_experts,
                   "expert placement has {} experts, moe.num_experts is {}",
                   placement.num_experts, moe.num_experts);
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
                       Dispatcher& dispatcher, bool training) {
  const int D = D_, K = K_;
  N_ = N;
  x_ND_.resize((size_t)N * D);
  if (N) std::memcpy(x_ND_.data(), x_ND, sizeof(float) * (size_t)N * D);

  // 1. route
  const int seq_len = (seq_len_ > 0 && N % seq_len_ == 0) ? seq_len_ : N;
  router_.forward(x_ND_.data(), arena.param(router_w_), N, seq_len, training);
  const RoutingPlan& plan = router_.plan();

  // 2. dispatch (collective), 3. experts, 4. combine (collective)
  dispatcher.plan(plan.topk_ids_NK.data(), N, K);
  const int64_t R = dispatcher.rows();
  x_RD_.resize((size_t)R * D);
  y_RD_.resize((size_t)R * D);
  dispatcher.to_experts(x_RD_.data(), x_ND_.data(), /*per_slot=*/false, D);
  experts_.forward(arena, y_RD_.data(), x_RD_.data(), dispatcher.rows_per_local_expert());
  y_NKD_.resize((size_t)N * K * D);
  dispatcher.from_experts(y_NKD_.data(), y_RD_.data(), D);

  // 5. out_t = Σ_k p_tk · y_tk (dropped slots hold zero rows)
  for (int t = 0; t < N; ++t) {
    float* o = out_ND + (size_t)t * D;
    const float* y = y_NKD_.data() + (size_t)t * K * D;
    const float* p = plan.probs_NK.data() + (size_t)t * K;
    for (int d = 0; d < D; ++d) o[d] = p[0] * y[d];
    for (int k = 1; k < K; ++k)
      for (int d = 0; d < D; ++d) o[d] += p[k] * y[(size_t)k * D + d];
  }
  // 6. + shared experts, on every token
  for (size_t j = 0; j < shared_w1_.size(); ++j) {
    shared_pre_NF1_[j].resize((size_t)N * F1_);
    shared_act_NF_[j].resize((size_t)N * F_);
    expert_ffn_forward(out_ND, shared_pre_NF1_[j].data(), shared_act_NF_[j].data(), x_ND_.data(),
                       arena.param(shared_w1_[j]), arena.param(shared_w2_[j]), N, D, F_, act_,
                       /*accumulate_y=*/true);
  }
}

void MoeLayer::backward(ParamArena& arena, float* dx_ND, const float* dout_ND, float loss_scale,
                        Dispatcher& dispatcher) {
  const int D = D_, K = K_, N = N_;
  const RoutingPlan& plan = router_.plan();

  // out_t = Σ_k p_tk y_tk:  dp_tk = <dout_t, y_tk>,  dy_tk = p_tk · dout_t.
  dprobs_NK_.resize((size_t)N * K);
  dy_NKD_.resize((size_t)N * K * D);
  for (int t = 0; t < N; ++t) {
    const float* g = dout_ND + (size_t)t * D;
    for (int k = 0; k < K; ++k) {
      const size_t s = (size_t)t * K + k;
      const float* y = y_NKD_.data() + s * D;
      float* dy = dy_NKD_.data() + s * D;
      const float p = plan.probs_NK[s];
      for (int d = 0; d < D; ++d) dy[d] = p * g[d];
      dprobs_NK_[s] = dot(g, y, D);
    }
  }

  // Combine backward = to_experts per slot; experts backward; dispatch backward = from_experts.
  // The dispatcher still holds this layer's plan (one dispatcher per MoE layer).
  const int64_t R = dispatcher.rows();
  MOEMPI_CHECK_ONE(R == experts_.rows(),
                   "layer {}: the dispatcher holds {} expert rows in backward, {} in forward; it "
                   "was re-planned in between (use one dispatcher per MoE layer)",
                   layer_, R, experts_.rows());
  FloatBuffer& dy_RD = y_RD_;  // y_RD is not needed any more
  dy_RD.resize((size_t)R * D);
  dx_RD_.resize((size_t)R * D);
  dispatcher.to_experts(dy_RD.data(), dy_NKD_.data(), /*per_slot=*/true, D);
  experts_.backward(arena, dx_RD_.data(), dy_RD.data(), x_RD_.data());
  FloatBuffer& dx_NKD = y_NKD_;  // y_NKD was consumed by dprobs above
  dispatcher.from_experts(dx_NKD.data(), dx_RD_.data(), D);
  if (dx_ND) {
    for (int t = 0; t < N; ++t) {
      float* dx = dx_ND + (size_t)t * D;
      const float* src = dx_NKD.data() + (size_t)t * K * D;
      for (int k = 0; k < K; ++k)
        for (int d = 0; d < D; ++d) dx[d] += src[(size_t)k * D + d];
    }
  }

  // Router: dprobs (and the balancing losses) -> scores -> logits -> W_r, x.
  router_.backward(dx_ND, arena.grad(router_w_), dprobs_NK_.data(), x_ND_.data(),
                   arena.param(router_w_), loss_scale);

  // Shared experts see dout directly.
  if (!shared_w1_.empty()) {
    dact_NF_.resize((size_t)N * F_);
    dpre_NF1_.resize((size_t)N * F1_);
  }
  for (size_t j = 0; j < shared_w1_.size(); ++j)
    expert_ffn_backward(dx_ND, arena.grad(shared_w1_[j]), arena.grad(shared_w2_[j]),
                        dact_NF_.data(), dpre_NF1_.data(), dout_ND, x_ND_.data(),
                        shared_pre_NF1_[j].data(), shared_act_NF_[j].data(),
                        arena.param(shared_w1_[j]), arena.param(shared_w2_[j]), N, D, F_, act_,
                        /*accumulate_dx=*/true);
}

}  // namespace moempi
