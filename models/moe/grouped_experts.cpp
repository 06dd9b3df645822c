// Grouped expert FFNs: per local expert one GEMM, activation, one GEMM; backward mirrors it.
// Test: tests/moe_test.cpp (GroupedExperts.*, MoeLayerGrad.*).
#include "models/moe/grouped_experts.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "models/layers/activation.h"
#include "runtime/core/blas.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi {

void expert_ffn_forward(float* y_ND, float* pre_NF1, float* act_NF, const float* x_ND,
                        const float* w1_DF1, const float* w2_FD, int N, int D, int F,
                        Activation act, bool accumulate_y) {
  if (N == 0) return;
  const int F1 = act == Activation::kSwiglu ? 2 * F : F;
  blas::matmul(pre_NF1, x_ND, w1_DF1, N, F1, D, false, false, false);
  if (act == Activation::kSwiglu)
    swiglu_forward(act_NF, pre_NF1, N, F);
  else
    gelu_forward(act_NF, pre_NF1, (size_t)N * F);
  blas::matmul(y_ND, act_NF, w2_FD, N, D, F, false, false, accumulate_y);
}

void expert_ffn_backward(float* dx_ND, float* dw1_DF1, float* dw2_FD, float* dact_NF,
                         float* dpre_NF1, const float* dy_ND, const float* x_ND,
                         const float* pre_NF1, const float* act_NF, const float* w1_DF1,
                         const float* w2_FD, int N, int D, int F, Activation act,
                         bool accumulate_dx) {
  if (N == 0) return;
  const int F1 = act == Activation::kSwiglu ? 2 * F : F;
  // y = a · w2: da = dy · w2ᵀ, dw2 += aᵀ · dy
  blas::matmul(dact_NF, dy_ND, w2_FD, N, F, D, false, true, false);
  blas::matmul(dw2_FD, act_NF, dy_ND, F, D, N, true, false, true);
  // a = act(pre): the activation backward adds, so start from zero
  std::memset(dpre_NF1, 0, sizeof(float) * (size_t)N * F1);
  if (act == Activation::kSwiglu)
    swiglu_backward(dpre_NF1, dact_NF, pre_NF1, N, F);
  else
    gelu_backward(dpre_NF1, dact_NF, pre_NF1, (size_t)N * F);
  // pre = x · w1: dw1 += xᵀ · dpre, dx (+)= dpre · w1ᵀ
  blas::matmul(dw1_DF1, x_ND, dpre_NF1, D, F1, N, true, false, true);
  if (dx_ND) blas::matmul(dx_ND, dpre_NF1, w1_DF1, N, D, F1, false, true, accumulate_dx);
}

void init_param_normal(ParamArena& arena, ParamArena::Id id, uint64_t seed, float std) {
  const ParamInfo& info = arena.info(id);
  Rng rng(seed, 0, 0, Rng::stream_of(info.name));
  float* p = arena.param(id);
  for (size_t i = 0; i < info.numel; ++i) p[i] = std * rng.normal();
}

GroupedExperts::GroupedExperts(const ModelSpec& model, const MoeSpec& moe, int layer,
                               const Placement& placement, ParamArena& arena)
    : layer_(layer),
      D_(model.d_model),
      F_(moe.d_ff_expert),
      F1_(model.activation == Activation::kSwiglu ? 2 * moe.d_ff_expert : moe.d_ff_expert),
      act_(model.activation) {
  MOEMPI_CHECK_ALL(moe.d_ff_expert >= 1, "moe.d_ff_expert ({}) must be >= 1", moe.d_ff_expert);
  MOEMPI_CHECK_ALL(placement.num_experts() == moe.num_experts,
                   "expert placement has {} experts, moe.num_experts is {}", placement.num_experts(),
                   moe.num_experts);
  const int n_local = placement.num_local();
  for (int e : placement.local_experts()) {
    const std::string base = fmt::format("layers.{}.moe.experts.{}", layer, e);
    w1_.push_back(arena.add(base + ".w1", {D_, F1_}, ParamKind::kExpert, true));
    w2_.push_back(arena.add(base + ".w2", {F_, D_}, ParamKind::kExpert, true));
    owned_[e] = (int)w1_.size() - 1;
  }
  step_experts_ = placement.local_experts();
  rows_.assign(n_local, 0);
}

void GroupedExperts::init_params(ParamArena& arena, uint64_t seed, float init_std,
                                 float w2_scale) {
  for (size_t j = 0; j < w1_.size(); ++j) {
    init_param_normal(arena, w1_[j], seed, init_std);
    init_param_normal(arena, w2_[j], seed, init_std * w2_scale);
  }
}

void GroupedExperts::set_local_experts(const std::vector<int>& local_experts) {
  for (const auto& [e, j] : owned_)
    MOEMPI_CHECK_ONE(std::binary_search(local_experts.begin(), local_experts.end(), e),
                     "expert {} is owned here but missing from the step's local experts", e);
  for (auto it = replicas_.begin(); it != replicas_.end();)
    it = std::binary_search(local_experts.begin(), local_experts.end(), it->first) ? std::next(it)
                                                                                    : replicas_.erase(it);
  for (int e : local_experts)
    if (!owned_.count(e)) replicas_.try_emplace(e);
  step_experts_ = local_experts;
}

void GroupedExperts::set_replica_buffers(bool params, bool grads) {
  for (auto& [e, r] : replicas_) {
    // FloatBuffer::resize zeroes what it allocates; an empty FloatBuffer holds no memory.
    if (params && r.w1.size() == 0) {
      r.w1.resize((size_t)part_numel(0));
      r.w2.resize((size_t)part_numel(1));
    }
    if (!params) r.w1 = FloatBuffer(), r.w2 = FloatBuffer();
    if (grads && r.dw1.size() == 0) {
      r.dw1.resize((size_t)part_numel(0));
      r.dw2.resize((size_t)part_numel(1));
    }
    if (!grads) r.dw1 = FloatBuffer(), r.dw2 = FloatBuffer();
  }
}

void GroupedExperts::set_owned_experts(ParamArena& arena, const std::vector<int>& owned) {
  MOEMPI_CHECK_ONE(owned.size() == w1_.size() && std::is_sorted(owned.begin(), owned.end()),
                   "layer {}: {} owned experts given (ascending), the arena has {} slots", layer_, owned.size(),
                   w1_.size());
  std::map<int, int> next;
  std::vector<bool> taken(w1_.size(), false);
  for (int e : owned)
    if (auto it = owned_.find(e); it != owned_.end()) {
      next[e] = it->second;
      taken[it->second] = true;
    }
  size_t slot = 0;
  for (int e : owned) {
    if (next.count(e)) continue;
    while (taken[slot]) ++slot;
    taken[slot] = true;
    next[e] = static_cast<int>(slot);
  }
  // Two passes so that a name freed by one slot can be taken by another in the same call.
  for (auto& [e, j] : next)
    if (!owned_.count(e)) arena.rename(w1_[j], fmt::format("~moving.{}.w1", j)), arena.rename(w2_[j], fmt::format("~moving.{}.w2", j));
  for (auto& [e, j] : next)
    if (!owned_.count(e)) {
      const std::string base = fmt::format("layers.{}.moe.experts.{}", layer_, e);
      arena.rename(w1_[j], base + ".w1");
      arena.rename(w2_[j], base + ".w2");
    }
  owned_ = std::move(next);
  replicas_.clear();
  step_experts_ = owned;
}

float* GroupedExperts::param(ParamArena& arena, int e, int part) {
  if (auto it = owned_.find(e); it != owned_.end()) return arena.param(part == 0 ? w1_[it->second] : w2_[it->second]);
  auto it = replicas_.find(e);
  MOEMPI_CHECK_ONE(it != replicas_.end(), "expert {} is not held on this rank", e);
  MOEMPI_CHECK_ONE(it->second.w1.size() > 0, "replica of expert {}: parameters not materialised", e);
  return part == 0 ? it->second.w1.data() : it->second.w2.data();
}

float* GroupedExperts::grad(ParamArena& arena, int e, int part) {
  if (auto it = owned_.find(e); it != owned_.end()) return arena.grad(part == 0 ? w1_[it->second] : w2_[it->second]);
  auto it = replicas_.find(e);
  MOEMPI_CHECK_ONE(it != replicas_.end(), "expert {} is not held on this rank", e);
  MOEMPI_CHECK_ONE(it->second.dw1.size() > 0, "replica of expert {}: gradients not materialised", e);
  return part == 0 ? it->second.dw1.data() : it->second.dw2.data();
}

int64_t GroupedExperts::replica_floats() const {
  int64_t n = 0;
  for (const auto& [e, r] : replicas_) n += (int64_t)(r.w1.size() + r.w2.size() + r.dw1.size() + r.dw2.size());
  return n;
}

void GroupedExperts::forward(ParamArena& arena, float* y_RD, const float* x_RD,
                             const std::vector<int64_t>& rows_per_local_expert) {
  MOEMPI_CHECK_ONE(rows_per_local_expert.size() == step_experts_.size(),
                   "dispatcher reports {} local experts, the layer runs {}",
                   rows_per_local_expert.size(), step_experts_.size());
  rows_ = rows_per_local_expert;
  rows_total_ = 0;
  rows_max_ = 0;
  for (int64_t n : rows_) {
    rows_total_ += n;
    rows_max_ = std::max(rows_max_, n);
  }
  pre_RF1_.resize((size_t)rows_total_ * F1_);
  act_RF_.resize((size_t)rows_total_ * F_);
  int64_t r0 = 0;
  for (size_t j = 0; j < step_experts_.size(); ++j) {
    const int n = (int)rows_[j], e = step_experts_[j];
    expert_ffn_forward(y_RD + r0 * D_, pre_RF1_.data() + r0 * F1_, act_RF_.data() + r0 * F_,
                       x_RD + r0 * D_, param(arena, e, 0), param(arena, e, 1), n, D_, F_, act_, false);
    r0 += n;
  }
}

void GroupedExperts::backward(ParamArena& arena, float* dx_RD, const float* dy_RD,
                              const float* x_RD) {
  // Scratch for one block at a time: it stays in cache between the GEMMs and the activation.
  dact_F_.resize((size_t)rows_max_ * F_);
  dpre_F1_.resize((size_t)rows_max_ * F1_);
  int64_t r0 = 0;
  for (size_t j = 0; j < step_experts_.size(); ++j) {
    const int n = (int)rows_[j], e = step_experts_[j];
    expert_ffn_backward(dx_RD + r0 * D_, grad(arena, e, 0), grad(arena, e, 1), dact_F_.data(),
                        dpre_F1_.data(), dy_RD + r0 * D_, x_RD + r0 * D_,
                        pre_RF1_.data() + r0 * F1_, act_RF_.data() + r0 * F_,
                        param(arena, e, 0), param(arena, e, 1), n, D_, F_, act_, false);
    r0 += n;
  }
}

}  // namespace moempi
