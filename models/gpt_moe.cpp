// GPT-MoE forward/backward over one micro-batch. The backward walks the blocks in reverse with
// one residual-gradient buffer (dresid_), into which every norm backward adds (the residual
// path), exactly mirroring the forward. Test: tests/model_test.cpp.
#include "models/gpt_moe.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "models/layers/activation.h"
#include "models/layers/attention.h"
#include "models/layers/cross_entropy.h"
#include "models/layers/embedding.h"
#include "models/layers/linear.h"
#include "models/layers/norm.h"
#include "runtime/core/blas.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "runtime/core/timer.h"

namespace moempi {
namespace {
constexpr ParamArena::Id kNoParam = std::numeric_limits<ParamArena::Id>::max();

bool is_moe_layer(const MoeSpec& moe, int layer) { return (layer + 1) % moe.every_n_layers == 0; }
int ffn_in_width(const ModelSpec& m, int F) { return m.activation == Activation::kSwiglu ? 2 * F : F; }

void add_into(float* y, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}
}  // namespace

GptMoe::GptMoe(const ModelSpec& model, const MoeSpec& moe, const Placement& placement,
               std::unique_ptr<Dispatcher> dispatcher, const BalancingEnv& env)
    : model_(model), moe_(moe), placement_(placement), dispatcher_(std::move(dispatcher)) {
  const int64_t V = model.vocab_size, D = model.d_model, T = model.seq_len, F = model.d_ff;
  const bool ln = model.norm == NormType::kLayerNorm;
  wte_ = arena_.add("wte", {V, D}, ParamKind::kDense, true);
  wpe_ = arena_.add("wpe", {T, D}, ParamKind::kDense, true);
  blocks_.resize(model.n_layers);
  for (int l = 0; l < model.n_layers; ++l) {
    Block& b = blocks_[l];
    const std::string p = fmt::format("layers.{}.", l);
    b.ln1_w = arena_.add(p + "ln1.w", {D}, ParamKind::kDense, false);
    b.ln1_b = ln ? arena_.add(p + "ln1.b", {D}, ParamKind::kDense, false) : kNoParam;
    b.qkv_w = arena_.add(p + "attn.qkv.w", {D, 3 * D}, ParamKind::kDense, true);
    b.qkv_b = arena_.add(p + "attn.qkv.b", {3 * D}, ParamKind::kDense, false);
    b.proj_w = arena_.add(p + "attn.proj.w", {D, D}, ParamKind::kDense, true);
    b.proj_b = arena_.add(p + "attn.proj.b", {D}, ParamKind::kDense, false);
    b.ln2_w = arena_.add(p + "ln2.w", {D}, ParamKind::kDense, false);
    b.ln2_b = ln ? arena_.add(p + "ln2.b", {D}, ParamKind::kDense, false) : kNoParam;
    b.is_moe = is_moe_layer(moe, l);
    if (b.is_moe) {
      b.moe = std::make_unique<MoeLayer>(model, moe, l, placement_, arena_, env);
      b.moe_index = (int)layer_placements_.size();
      layer_placements_.push_back(placement_);
      layer_owners_.push_back(placement_);
    } else {
      b.ffn_w1 = arena_.add(p + "ffn.w1", {D, ffn_in_width(model, F)}, ParamKind::kDense, true);
      b.ffn_b1 = arena_.add(p + "ffn.b1", {ffn_in_width(model, F)}, ParamKind::kDense, false);
      b.ffn_w2 = arena_.add(p + "ffn.w2", {F, D}, ParamKind::kDense, true);
      b.ffn_b2 = arena_.add(p + "ffn.b2", {D}, ParamKind::kDense, false);
    }
  }
  lnf_w_ = arena_.add("lnf.w", {D}, ParamKind::kDense, false);
  lnf_b_ = ln ? arena_.add("lnf.b", {D}, ParamKind::kDense, false) : kNoParam;
  arena_.allocate();
}

void GptMoe::set_position(uint64_t seed, int64_t step, int64_t first_seq) {
  for (MoeLayer* layer : moe_layers()) layer->set_position(seed, step, first_seq * model_.seq_len);
}

void GptMoe::init_params(uint64_t seed) {
  const float std = model_.init_std;
  const float resid_scale = 1.0f / std::sqrt(2.0f * model_.n_layers);
  for (size_t id = 0; id < arena_.infos().size(); ++id) {
    const ParamInfo& info = arena_.info(id);
    if (info.kind == ParamKind::kExpert || info.name.find(".moe.") != std::string::npos) continue;
    float* p = arena_.param(id);
    const bool is_norm = info.name.find("ln") != std::string::npos &&
                         (info.name.ends_with("ln1.w") || info.name.ends_with("ln2.w") ||
                          info.name == "lnf.w");
    const bool is_bias = info.shape.size() == 1 && !is_norm;
    if (is_norm) {
      for (size_t i = 0; i < info.numel; ++i) p[i] = 1.0f;
    } else if (is_bias) {
      std::memset(p, 0, info.numel * sizeof(float));
    } else {
      const bool resid = info.name.ends_with("attn.proj.w") || info.name.ends_with("ffn.w2");
      Rng rng(seed, 0, 0, Rng::stream_of(info.name));
      const float s = resid ? std * resid_scale : std;
      for (size_t i = 0; i < info.numel; ++i) p[i] = s * rng.normal();
    }
  }
  for (auto& b : blocks_)
    if (b.is_moe) b.moe->init_params(arena_, seed, std);
}

void GptMoe::register_state(StateRegistry& registry, const StateWriters& writers) {
  arena_.register_state(registry, writers);
  for (int l = 0; l < model_.n_layers; ++l) {
    if (!blocks_[l].is_moe) continue;
    for (const auto& pass : blocks_[l].moe->router().passes())
      for (const PassTensor& t : pass->state()) {
        const std::string name = fmt::format("balancing/layers.{}.{}.{}", l, pass->name(), t.name);
        if (!t.f32.empty())
          registry.add_f32(name, {(int64_t)t.f32.size()}, t.f32, writers.dense);
        else
          registry.add_i64(name, {(int64_t)t.i64.size()}, t.i64, writers.dense);
      }
  }
}

void GptMoe::norm_forward(float* out, float* mean, float* rstd, const float* x, ParamArena::Id w,
                          ParamArena::Id b, int N) {
  const int D = model_.d_model;
  if (model_.norm == NormType::kLayerNorm)
    layernorm_forward(out, mean, rstd, x, arena_.param(w), arena_.param(b), N, D);
  else
    rmsnorm_forward(out, rstd, x, arena_.param(w), N, D);
}

void GptMoe::norm_backward(float* dx, const float* dout, const float* x, ParamArena::Id w,
                           ParamArena::Id b, const float* mean, const float* rstd, int N) {
  const int D = model_.d_model;
  if (model_.norm == NormType::kLayerNorm)
    layernorm_backward(dx, arena_.grad(w), arena_.grad(b), dout, x, arena_.param(w), mean, rstd, N, D);
  else
    rmsnorm_backward(dx, arena_.grad(w), dout, x, arena_.param(w), rstd, N, D);
}

void GptMoe::dense_ffn_forward(Block& blk, float* out, const float* x, int N) {
  const int D = model_.d_model, F = model_.d_ff, FI = ffn_in_width(model_, F);
  blk.ffn_pre.resize(static_cast<size_t>(N) * FI);
  blk.ffn_act.resize(static_cast<size_t>(N) * F);
  linear_forward(blk.ffn_pre.data(), x, arena_.param(blk.ffn_w1), arena_.param(blk.ffn_b1), N, D, FI);
  if (model_.activation == Activation::kSwiglu)
    swiglu_forward(blk.ffn_act.data(), blk.ffn_pre.data(), N, F);
  else
    gelu_forward(blk.ffn_act.data(), blk.ffn_pre.data(), static_cast<size_t>(N) * F);
  linear_forward(out, blk.ffn_act.data(), arena_.param(blk.ffn_w2), arena_.param(blk.ffn_b2), N, F, D);
}

void GptMoe::dense_ffn_backward(Block& blk, float* dx, const float* dout, const float* x, int N) {
  const int D = model_.d_model, F = model_.d_ff, FI = ffn_in_width(model_, F);
  dffn_hidden_.resize(static_cast<size_t>(N) * F);
  dffn_hidden_.zero();
  linear_backward(dffn_hidden_.data(), arena_.grad(blk.ffn_w2), arena_.grad(blk.ffn_b2), dout,
                  blk.ffn_act.data(), arena_.param(blk.ffn_w2), N, F, D);
  dtmp2_.resize(static_cast<size_t>(N) * FI);
  dtmp2_.zero();
  if (model_.activation == Activation::kSwiglu)
    swiglu_backward(dtmp2_.data(), dffn_hidden_.data(), blk.ffn_pre.data(), N, F);
  else
    gelu_backward(dtmp2_.data(), dffn_hidden_.data(), blk.ffn_pre.data(), static_cast<size_t>(N) * F);
  linear_backward(dx, arena_.grad(blk.ffn_w1), arena_.grad(blk.ffn_b1), dtmp2_.data(), x,
                  arena_.param(blk.ffn_w1), N, D, FI);
}

double GptMoe::forward(const int32_t* tokens_BT, const int32_t* targets_BT, int B, bool training) {
  const int T = model_.seq_len, D = model_.d_model, V = model_.vocab_size, H = model_.n_heads;
  const int N = B * T;
  const size_t ND = static_cast<size_t>(N) * D;
  const int L = model_.n_layers;
  B_ = B;
  tokens_.assign(tokens_BT, tokens_BT + N);
  targets_.assign(targets_BT, targets_BT + N);
  resid_.resize(L + 1);
  for (auto& r : resid_) r.resize(ND);
  {
    ScopedTimer t(phase_seconds_[kPhaseOther]);
    embedding_forward(resid_[0].data(), tokens_BT, arena_.param(wte_), arena_.param(wpe_), B, T, D);
  }
  for (int l = 0; l < L; ++l) {
    Block& b = blocks_[l];
    const float* x = resid_[l].data();
    b.ln1_out.resize(ND);
    b.ln1_mean.resize(N);
    b.ln1_rstd.resize(N);
    b.qkv.resize(3 * ND);
    b.att.resize(static_cast<size_t>(B) * H * T * T);
    b.attn_out.resize(ND);
    b.resid_mid.resize(ND);
    b.ln2_out.resize(ND);
    b.ln2_mean.resize(N);
    b.ln2_rstd.resize(N);
    b.ffn_out.resize(ND);
    {
      ScopedTimer t(phase_seconds_[kPhaseAttention]);
      norm_forward(b.ln1_out.data(), b.ln1_mean.data(), b.ln1_rstd.data(), x, b.ln1_w, b.ln1_b, N);
      linear_forward(b.qkv.data(), b.ln1_out.data(), arena_.param(b.qkv_w), arena_.param(b.qkv_b), N, D, 3 * D);
      attention_forward(b.attn_out.data(), b.att.data(), b.qkv.data(), B, T, D, H);
      linear_forward(b.resid_mid.data(), b.attn_out.data(), arena_.param(b.proj_w), arena_.param(b.proj_b), N, D, D);
      add_into(b.resid_mid.data(), x, ND);
      norm_forward(b.ln2_out.data(), b.ln2_mean.data(), b.ln2_rstd.data(), b.resid_mid.data(), b.ln2_w, b.ln2_b, N);
    }
    if (b.is_moe) {
      ScopedTimer t(phase_seconds_[kPhaseMoe]);
      if (hooks_) hooks_->before_forward(b.moe_index);
      b.moe->forward(arena_, b.ffn_out.data(), b.ln2_out.data(), N, *dispatcher_, layer_placements_[b.moe_index],
                     training);
      if (hooks_) hooks_->after_forward(b.moe_index);
    } else {
      ScopedTimer t(phase_seconds_[kPhaseDenseFfn]);
      dense_ffn_forward(b, b.ffn_out.data(), b.ln2_out.data(), N);
    }
    float* y = resid_[l + 1].data();
    for (size_t i = 0; i < ND; ++i) y[i] = b.resid_mid[i] + b.ffn_out[i];
  }
  ScopedTimer t(phase_seconds_[kPhaseOther]);
  lnf_out_.resize(ND);
  lnf_mean_.resize(N);
  lnf_rstd_.resize(N);
  logits_.resize(static_cast<size_t>(N) * V);
  probs_.resize(static_cast<size_t>(N) * V);
  losses_.resize(N);
  norm_forward(lnf_out_.data(), lnf_mean_.data(), lnf_rstd_.data(), resid_[L].data(), lnf_w_, lnf_b_, N);
  // Tied LM head: logits (N,V) = lnf_out (N,D) · wteᵀ
  blas::matmul(logits_.data(), lnf_out_.data(), arena_.param(wte_), N, V, D, false, true, false);
  const double loss_sum =
      cross_entropy_forward(losses_.data(), probs_.data(), logits_.data(), targets_BT, N, V);
  return loss_sum / N;
}

void GptMoe::backward(float grad_scale) {
  const int B = B_, T = model_.seq_len, D = model_.d_model, V = model_.vocab_size, H = model_.n_heads;
  const int N = B * T;
  const size_t ND = static_cast<size_t>(N) * D;
  const int L = model_.n_layers;
  dresid_.resize(ND);
  dtmp_.resize(ND);
  dqkv_.resize(3 * ND);
  {
    ScopedTimer t(phase_seconds_[kPhaseOther]);
    float* dlogits = logits_.data();  // logits are not needed any more: reuse as dlogits (N,V)
    std::memset(dlogits, 0, sizeof(float) * N * V);
    cross_entropy_backward(dlogits, probs_.data(), targets_.data(), grad_scale / N, N, V);
    // dwte (V,D) += dlogitsᵀ · lnf_out ; dlnf_out (N,D) = dlogits · wte
    blas::matmul(arena_.grad(wte_), dlogits, lnf_out_.data(), V, D, N, true, false, true);
    blas::matmul(dtmp_.data(), dlogits, arena_.param(wte_), N, D, V, false, false, false);
    dresid_.zero();
    norm_backward(dresid_.data(), dtmp_.data(), resid_[L].data(), lnf_w_, lnf_b_, lnf_mean_.data(),
                  lnf_rstd_.data(), N);
  }
  for (int l = L - 1; l >= 0; --l) {
    Block& b = blocks_[l];
    // dresid_ = d resid_[l+1] = d resid_mid (residual path) + d ffn_out
    dtmp_.zero();
    if (b.is_moe) {
      ScopedTimer t(phase_seconds_[kPhaseMoe]);
      if (hooks_) hooks_->before_backward(b.moe_index);
      b.moe->backward(arena_, dtmp_.data(), dresid_.data(), grad_scale, *dispatcher_);
      if (hooks_) hooks_->after_backward(b.moe_index);
    } else {
      ScopedTimer t(phase_seconds_[kPhaseDenseFfn]);
      dense_ffn_backward(b, dtmp_.data(), dresid_.data(), b.ln2_out.data(), N);
    }
    ScopedTimer t(phase_seconds_[kPhaseAttention]);
    norm_backward(dresid_.data(), dtmp_.data(), b.resid_mid.data(), b.ln2_w, b.ln2_b,
                  b.ln2_mean.data(), b.ln2_rstd.data(), N);
    // dresid_ = d resid_mid = d resid_[l] (residual path) + d proj_out
    dtmp_.zero();
    linear_backward(dtmp_.data(), arena_.grad(b.proj_w), arena_.grad(b.proj_b), dresid_.data(),
                    b.attn_out.data(), arena_.param(b.proj_w), N, D, D);
    dqkv_.zero();
    attention_backward(dqkv_.data(), dtmp_.data(), b.qkv.data(), b.att.data(), B, T, D, H);
    dtmp_.zero();
    linear_backward(dtmp_.data(), arena_.grad(b.qkv_w), arena_.grad(b.qkv_b), dqkv_.data(),
                    b.ln1_out.data(), arena_.param(b.qkv_w), N, D, 3 * D);
    norm_backward(dresid_.data(), dtmp_.data(), resid_[l].data(), b.ln1_w, b.ln1_b,
                  b.ln1_mean.data(), b.ln1_rstd.data(), N);
  }
  ScopedTimer t(phase_seconds_[kPhaseOther]);
  embedding_backward(arena_.grad(wte_), arena_.grad(wpe_), dresid_.data(), tokens_.data(), B, T, D);
}

double GptMoe::aux_loss() const {
  double s = 0;
  for (const auto& b : blocks_)
    if (b.is_moe) s += b.moe->aux_loss();
  return s;
}

std::vector<MoeLayer*> GptMoe::moe_layers() {
  std::vector<MoeLayer*> out;
  for (auto& b : blocks_)
    if (b.is_moe) out.push_back(b.moe.get());
  return out;
}

void GptMoe::set_placement(int layer, const Placement& placement) {
  MoeLayer* moe = moe_layers().at(layer);
  moe->experts().set_local_experts(placement.local_experts());
  layer_placements_[layer] = placement;
}

void GptMoe::set_owners(int layer, const std::vector<int>& owner_E) {
  const Placement& now = layer_owners_.at(layer);
  Placement next = Placement::with_owners(owner_E, now.group_size(), now.rank());
  moe_layers().at(layer)->experts().set_owned_experts(arena_, next.local_experts());
  layer_placements_[layer] = next;
  layer_owners_[layer] = std::move(next);
}

void GptMoe::set_replica_buffers(int layer, bool params, bool grads) {
  moe_layers().at(layer)->experts().set_replica_buffers(params, grads);
}

int64_t GptMoe::part_numel(int part) const {
  for (const auto& b : blocks_)
    if (b.is_moe) return b.moe->experts().part_numel(part);
  return 0;
}

float* GptMoe::expert_param(int layer, int e, int part) {
  return moe_layers().at(layer)->experts().param(arena_, e, part);
}

float* GptMoe::expert_grad(int layer, int e, int part) {
  return moe_layers().at(layer)->experts().grad(arena_, e, part);
}

int64_t GptMoe::replica_floats() const {
  int64_t n = 0;
  for (const auto& b : blocks_)
    if (b.is_moe) n += b.moe->experts().replica_floats();
  return n;
}

void GptMoe::add_routing(RoutingStats& stats) {
  const auto layers = moe_layers();
  for (size_t l = 0; l < layers.size(); ++l) stats.add(static_cast<int>(l), layers[l]->routing());
}

void GptMoe::on_step_end(const RoutingStats& global) {
  const auto layers = moe_layers();
  for (size_t l = 0; l < layers.size(); ++l) layers[l]->on_step_end(global.counts(static_cast<int>(l)));
}

void GptMoe::on_step_discarded() {
  for (MoeLayer* layer : moe_layers()) layer->on_step_discarded();
}

int64_t GptMoe::active_params() const {
  const int64_t D = model_.d_model, V = model_.vocab_size;
  const int64_t act = model_.activation == Activation::kSwiglu ? 3 : 2;
  int64_t n = V * D;  // tied LM head (the embedding lookup itself is no matmul)
  for (const auto& b : blocks_) {
    n += 4 * D * D;
    if (b.is_moe)
      n += D * moe_.num_experts +
           static_cast<int64_t>(moe_.top_k + moe_.num_shared_experts) * act * D * moe_.d_ff_expert;
    else
      n += act * D * model_.d_ff;
  }
  return n;
}

double GptMoe::routed_flops_per_token() const {
  const int64_t act = model_.activation == Activation::kSwiglu ? 3 : 2;
  int64_t n = 0;
  for (const auto& b : blocks_)
    if (b.is_moe) n += static_cast<int64_t>(moe_.top_k) * act * model_.d_model * moe_.d_ff_expert;
  return 6.0 * static_cast<double>(n);
}

double GptMoe::flops_per_token() const {
  return 6.0 * static_cast<double>(active_params()) +
         12.0 * model_.n_layers * model_.seq_len * model_.d_model;
}

}  // namespace moempi
