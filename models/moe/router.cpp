// Router forward/backward; the backward derivation sits next to each step.
// Test: tests/moe_test.cpp (Router.*, MoeLayerGrad.*).
#include "models/moe/router.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi {

std::string parse_force_routing(const std::string& text, ForcedRouting* out) {
  ForcedRouting f;
  const size_t colon = text.find(':');
  const std::string kind = text.substr(0, colon);
  const std::string arg = colon == std::string::npos ? "" : text.substr(colon + 1);
  const char* allowed = "none, balanced, zipf:S (0 < S <= 16), hot:F (0 < F <= 0.99) or rotating";
  double v = 0;
  if (colon != std::string::npos) {
    char* end = nullptr;
    v = std::strtod(arg.c_str(), &end);
    if (arg.empty() || *end != '\0' || !std::isfinite(v))
      return fmt::format("'{}': '{}' is not a number; use {}", text, arg, allowed);
  }
  const bool has_arg = colon != std::string::npos;
  if (kind == "none" && !has_arg) f.kind = ForcedRouting::kNone;
  else if (kind == "balanced" && !has_arg) f.kind = ForcedRouting::kBalanced;
  else if (kind == "rotating" && !has_arg) f.kind = ForcedRouting::kRotating, f.param = 0.5;
  else if (kind == "zipf" && has_arg && v > 0 && v <= 16) f.kind = ForcedRouting::kZipf, f.param = v;
  else if (kind == "hot" && has_arg && v > 0 && v <= 0.99) f.kind = ForcedRouting::kHot, f.param = v;
  else return fmt::format("'{}' is not one of {}", text, allowed);
  if (out) *out = f;
  return "";
}

std::string node_limit_problem(const MoeSpec& moe) {
  const int E = moe.num_experts, K = moe.top_k, M = moe.max_nodes_per_token, G = moe.routing_nodes;
  if (M <= 0) return "";
  if (G < 2)
    return fmt::format("moe.max_nodes_per_token ({}) limits the nodes a token's experts live on, but the "
                       "experts are on {} node(s): spread them over nodes (parallel.ep across nodes, or "
                       "virtual nodes with parallel.ranks_per_node) or set moe.routing_nodes to route as on "
                       "that many nodes",
                       M, G);
  if (E % G != 0)
    return fmt::format("moe.num_experts ({}) is not divisible by moe.routing_nodes ({})", E, G);
  if (M >= G)
    return fmt::format("moe.max_nodes_per_token ({}) must be below the {} routing nodes (moe.routing_nodes) to "
                       "limit anything; use 1..{}, or 0 = off",
                       M, G, G - 1);
  if ((int64_t)M * (E / G) < K)
    return fmt::format("moe.max_nodes_per_token ({}) nodes of {} experts each hold fewer than moe.top_k ({}) "
                       "experts; use at least {}",
                       M, E / G, K, (K + E / G - 1) / (E / G));
  return "";
}

// Node-limited routing: allowed_E[e] = 1 for the experts of the M groups of G whose top `per_group`
// selection scores sum highest (sums in descending-score order; ties -> lower group).
static void choose_groups(const float* v_E, int E, int G, int M, int per_group, uint8_t* allowed_E,
                          float* score_G, float* top_scratch) {
  const int size = E / G;
  for (int g = 0; g < G; ++g) {
    std::copy(v_E + (size_t)g * size, v_E + (size_t)(g + 1) * size, top_scratch);
    std::partial_sort(top_scratch, top_scratch + per_group, top_scratch + size, std::greater<float>());
    float sum = 0.0f;
    for (int i = 0; i < per_group; ++i) sum += top_scratch[i];
    score_G[g] = sum;
  }
  std::fill(allowed_E, allowed_E + E, uint8_t{0});
  for (int m = 0; m < M; ++m) {  // M passes of argmax over the groups not yet taken
    int best = -1;
    for (int g = 0; g < G; ++g)
      if (!allowed_E[(size_t)g * size] && (best < 0 || score_G[g] > score_G[best])) best = g;
    std::fill(allowed_E + (size_t)best * size, allowed_E + (size_t)(best + 1) * size, uint8_t{1});
  }
}

Router::Router(const MoeSpec& moe, int D, const BalancingEnv& env)
    : Router(moe, D, make_balancing_passes(moe.balancing, moe.num_experts, env)) {}

Router::Router(const MoeSpec& moe, int D, std::vector<std::unique_ptr<BalancingPass>> passes)
    : moe_(moe), D_(D), passes_(std::move(passes)) {
  MOEMPI_CHECK_ALL(moe.num_experts >= 1, "moe.num_experts ({}) must be >= 1", moe.num_experts);
  MOEMPI_CHECK_ALL(moe.top_k >= 1 && moe.top_k <= moe.num_experts,
                   "moe.top_k ({}) must be in [1, moe.num_experts ({})]", moe.top_k,
                   moe.num_experts);
  MOEMPI_CHECK_ALL(moe.capacity_factor >= 0.0f,
                   "moe.capacity_factor ({}) must be >= 0 (0 = dropless)", moe.capacity_factor);
  if (const std::string why = node_limit_problem(moe); !why.empty()) fail_collective(why);
  if (const std::string why = parse_force_routing(moe.force_routing, &forced_); !why.empty())
    fail_collective("moe.force_routing: " + why);
  losses_.assign(passes_.size(), 0.0);
}

RouterState Router::state() const {
  RouterState s;
  s.N = plan_.N;
  s.K = plan_.K;
  s.E = plan_.E;
  s.seq_len = seq_len_;
  s.score_fn = moe_.score;
  s.logits_NE = logits_NE_.data();
  s.scores_NE = scores_NE_.data();
  s.selected_NK = plan_.selected_NK.data();
  s.selected_per_expert_E = plan_.selected_per_expert_E.data();
  return s;
}

double Router::balancing_loss() const {
  double sum = 0.0;
  for (double l : losses_) sum += l;
  return sum;
}

void Router::set_position(uint64_t seed, int layer, int64_t step, int64_t first_token) {
  draw_seed_ = seed;
  draw_layer_ = layer;
  draw_step_ = step;
  draw_first_ = first_token;
}

void Router::on_step_end(const int64_t* counts_E) {
  for (auto& p : passes_) p->on_step_end(counts_E, moe_.num_experts);
}

void Router::on_step_discarded() {
  for (auto& p : passes_) p->on_step_discarded();
}

void Router::forward(const float* x_ND, const float* w_DE, int N, int seq_len, bool training) {
  const int E = moe_.num_experts, K = moe_.top_k;
  const size_t NE = (size_t)N * E;
  seq_len_ = seq_len;
  RoutingPlan& p = plan_;
  p.N = N;
  p.K = K;
  p.E = E;
  logits_NE_.resize(NE);
  scores_NE_.resize(NE);
  select_NE_.resize(NE);
  p.selected_NK.resize((size_t)N * K);
  p.topk_ids_NK.resize((size_t)N * K);
  p.probs_NK.resize((size_t)N * K);
  p.selected_per_expert_E.assign(E, 0);
  p.tokens_per_expert_E.assign(E, 0);
  p.dropped_slots = 0;

  // logits (N, E) = x (N, D) · W_r (D, E)
  products_.forward(logits_NE_.data(), x_ND, w_DE, N, D_, E);
  if (moe_.score == ScoreFn::kSoftmax) softmax_rows(scores_NE_.data(), logits_NE_.data(), N, E);
  else sigmoid_rows(scores_NE_.data(), logits_NE_.data(), N, E);

  // Selection scores: the passes may shift them (bias); they choose, they do not weigh.
  std::memcpy(select_NE_.data(), scores_NE_.data(), NE * sizeof(float));
  for (auto& pass : passes_) pass->adjust_scores(select_NE_.data(), N, E);

  // Node-limited routing narrows each token's candidates to the experts of M groups first.
  const int M = moe_.max_nodes_per_token, G = moe_.routing_nodes;
  // Top-k per token (best first, ties to the lower id); node-limited: among the allowed experts.
  if (M > 0) {
    allowed_E_.assign(E, uint8_t{1});
    group_score_G_.resize(G);
    group_top_.resize(E / G);
    for (int t = 0; t < N; ++t) {
      const float* v = select_NE_.data() + (size_t)t * E;
      choose_groups(v, E, G, M, std::min(E / G, (K + M - 1) / M), allowed_E_.data(), group_score_G_.data(),
                    group_top_.data());
      topk_insertion(p.selected_NK.data() + (size_t)t * K, v, E, K, allowed_E_.data());
    }
  } else {
    topk_rows(p.selected_NK.data(), select_NE_.data(), N, E, K);
  }

  // Forced routing (benchmarks): K distinct experts per token drawn by weight, in draw order.
  if (forced_.kind != ForcedRouting::kNone) {
    draw_w_E_.assign(E, 1.0);
    const int hot = forced_.kind == ForcedRouting::kRotating ? (int)(((draw_step_ % E) + E) % E) : 0;
    if (forced_.kind == ForcedRouting::kZipf)
      for (int e = 0; e < E; ++e) draw_w_E_[e] = std::pow(e + 1.0, -forced_.param);
    if ((forced_.kind == ForcedRouting::kHot || forced_.kind == ForcedRouting::kRotating) && E > 1)
      draw_w_E_[hot] = forced_.param / (1.0 - forced_.param) * (E - 1);  // first draw: P(hot) = F
    std::vector<double> w(E);
    for (int t = 0; t < N; ++t) {
      Rng rng(draw_seed_, (uint64_t)draw_layer_, (uint64_t)draw_step_, (uint64_t)(draw_first_ + t));
      w = draw_w_E_;
      int32_t* ids = p.selected_NK.data() + (size_t)t * K;
      for (int k = 0; k < K; ++k) {
        double mass = 0;  // summed afresh each draw (no cancellation after a heavy expert)
        for (double x : w) mass += std::max(x, 0.0);
        const double u = rng.uniform() * mass;
        double acc = 0;
        int pick = -1;
        for (int e = 0; e < E; ++e) {
          if (w[e] < 0) continue;  // drawn already
          pick = e;  // the last one left if rounding runs past the end
          if ((acc += w[e]) > u) break;
        }
        ids[k] = pick;
        w[pick] = -1;  // weights are >= 0 (zipf weights may underflow to 0): -1 marks taken
      }
    }
  }

  // Combine weights: unbiased scores of the chosen experts, renormalised over the k if asked.
  for (int t = 0; t < N; ++t) {
    const float* s = scores_NE_.data() + (size_t)t * E;
    const int32_t* ids = p.selected_NK.data() + (size_t)t * K;
    float* pr = p.probs_NK.data() + (size_t)t * K;
    float sum = 0.0f;
    for (int k = 0; k < K; ++k) sum += (pr[k] = s[ids[k]]);
    if (moe_.normalize_topk) {
      const float inv = 1.0f / std::max(sum, 1e-20f);
      for (int k = 0; k < K; ++k) pr[k] *= inv;
    }
    for (int k = 0; k < K; ++k) ++p.selected_per_expert_E[ids[k]];
  }

  // Capacity C = ceil(N·K/E · cf) per expert; slots are admitted in token order, then slot
  // order, so what is dropped depends only on token indices (never on timing or ranks).
  p.capacity = -1;
  if (moe_.capacity_factor > 0.0f)  // clamped to N·K in double: a huge factor is just dropless
    p.capacity = (int64_t)std::min((double)N * K, std::ceil((double)N * K / E * (double)moe_.capacity_factor));
  for (size_t s = 0; s < (size_t)N * K; ++s) {
    const int32_t e = p.selected_NK[s];
    if (p.capacity >= 0 && p.tokens_per_expert_E[e] >= p.capacity) {
      p.topk_ids_NK[s] = -1;
      ++p.dropped_slots;
    } else {
      p.topk_ids_NK[s] = e;
      ++p.tokens_per_expert_E[e];
    }
  }

  const RouterState st = state();
  for (size_t i = 0; i < passes_.size(); ++i) losses_[i] = passes_[i]->forward(st, training);
}

void Router::backward(float* dx_ND, float* dw_DE, const float* dprobs_NK, const float* x_ND,
                      const float* w_DE, float loss_scale) {
  const RoutingPlan& p = plan_;
  const int N = p.N, K = p.K, E = p.E;
  const size_t NE = (size_t)N * E;
  dscores_NE_.resize(NE);
  dlogits_NE_.resize(NE);
  dscores_NE_.zero();
  dlogits_NE_.zero();
  const RouterState st = state();
  for (auto& pass : passes_) pass->backward(dscores_NE_.data(), dlogits_NE_.data(), st, loss_scale);

  for (int t = 0; t < N; ++t) {
    const int32_t* ids = p.selected_NK.data() + (size_t)t * K;
    const float* pr = p.probs_NK.data() + (size_t)t * K;
    const float* dp = dprobs_NK + (size_t)t * K;
    const float* s = scores_NE_.data() + (size_t)t * E;
    float* ds = dscores_NE_.data() + (size_t)t * E;
    // probs -> chosen scores g_k = s[ids[k]].
    // Normalised: p_k = g_k / G, G = Σ_j g_j, ∂p_k/∂g_j = (δ_kj − p_k) / G, so
    //   dg_j = (dp_j − Σ_k dp_k p_k) / G.   Otherwise p_k = g_k and dg_k = dp_k.
    if (moe_.normalize_topk) {
      float G = 0.0f, dot = 0.0f;
      for (int k = 0; k < K; ++k) {
        G += s[ids[k]];
        dot += dp[k] * pr[k];
      }
      const float inv = 1.0f / std::max(G, 1e-20f);
      for (int k = 0; k < K; ++k) ds[ids[k]] += (dp[k] - dot) * inv;
    } else {
      for (int k = 0; k < K; ++k) ds[ids[k]] += dp[k];
    }
    // scores -> logits.
    // softmax: ∂s_i/∂z_j = s_i (δ_ij − s_j), so dz_j = s_j (ds_j − Σ_i ds_i s_i).
    // sigmoid: ∂s_i/∂z_i = s_i (1 − s_i), elementwise.
    float* dz = dlogits_NE_.data() + (size_t)t * E;
    if (moe_.score == ScoreFn::kSoftmax) {
      float dot = 0.0f;
      for (int i = 0; i < E; ++i) dot += ds[i] * s[i];
      for (int i = 0; i < E; ++i) dz[i] += s[i] * (ds[i] - dot);
    } else {
      for (int i = 0; i < E; ++i) dz[i] += ds[i] * s[i] * (1.0f - s[i]);
    }
  }
  // logits -> W_r and x: dW_r (D, E) += xᵀ · dz, dx (N, D) += dz · W_rᵀ.
  products_.backward(dx_ND, dw_DE, dlogits_NE_.data(), x_ND, w_DE, N, D_, E);
}

}  // namespace moempi
