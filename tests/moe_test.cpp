// Tests of models/moe: router (ties, capacity drops, bias hook), balancing passes (formulas and
// finite differences), grouped experts (naive reference, rank-independent init), the local
// dispatcher round trip, and finite-difference gradients of the whole MoE layer with routing
// held fixed, over score fn × normalize × activation × k × capacity × shared experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <cstring>
#include <string>
#include <vector>

#include "models/moe/expert_reference.h"
#include "models/moe/balancing_pass.h"
#include "models/moe/grouped_experts.h"
#include "models/moe/moe_layer.h"
#include "models/moe/router.h"
#include "models/moe/router_kernels.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi {
namespace {

std::vector<float> randn(size_t n, uint64_t stream, float std = 1.0f) {
  Rng r(99, 0, 0, stream);
  std::vector<float> v(n);
  for (auto& x : v) x = std * r.normal();
  return v;
}

MoeSpec small_moe(ScoreFn score, bool normalize, int k, float cf, int shared) {
  MoeSpec moe;
  moe.num_experts = 4;
  moe.top_k = k;
  moe.d_ff_expert = 5;
  moe.score = score;
  moe.normalize_topk = normalize;
  moe.num_shared_experts = shared;
  moe.capacity_factor = cf;
  return moe;
}

ModelSpec small_model(Activation act) {
  ModelSpec model;
  model.d_model = 6;
  model.n_layers = 2;
  model.seq_len = 4;
  model.activation = act;
  return model;
}

// A router whose logits are x itself: D = E, W_r = identity.
struct IdentityRouter {
  MoeSpec moe;
  std::vector<float> w;
  Router router;
  IdentityRouter(const MoeSpec& m, std::vector<std::unique_ptr<BalancingPass>> passes = {})
      : moe(m), w((size_t)m.num_experts * m.num_experts, 0.0f),
        router(m, m.num_experts, std::move(passes)) {
    for (int i = 0; i < m.num_experts; ++i) w[(size_t)i * m.num_experts + i] = 1.0f;
  }
  const RoutingPlan& route(const std::vector<float>& logits_NE) {
    const int N = (int)(logits_NE.size() / moe.num_experts);
    router.forward(logits_NE.data(), w.data(), N, N, true);
    return router.plan();
  }
};

// ---------------------------------------------------------------- router

TEST(Router, TopkTiesGoToLowerExpertId) {
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.0f, 0);
  IdentityRouter r(moe);
  const auto& p = r.route({1, 3, 3, 0,   // tie between 1 and 2
                           2, 2, 2, 2,   // all tied
                           0, 0, 5, 5,   // tie at the top, later pair
                           -1, 4, 0, 4});
  const std::vector<int32_t> want = {1, 2, 0, 1, 2, 3, 1, 3};
  EXPECT_EQ(p.selected_NK, want);
  EXPECT_EQ(p.topk_ids_NK, want);
  EXPECT_EQ(p.selected_per_expert_E, (std::vector<int64_t>{1, 3, 2, 2}));
  for (int t = 0; t < 4; ++t) EXPECT_NEAR(p.probs_NK[t * 2] + p.probs_NK[t * 2 + 1], 1.0f, 1e-6f);
}

TEST(Router, ProbsAreUnbiasedScoresOfChosenExperts_sigmoid_nonorm) {
  MoeSpec moe = small_moe(ScoreFn::kSigmoid, false, 2, 0.0f, 0);
  IdentityRouter r(moe);
  const auto& p = r.route({0.5f, -1.0f, 2.0f, 0.0f});
  EXPECT_EQ(p.selected_NK, (std::vector<int32_t>{2, 0}));
  EXPECT_NEAR(p.probs_NK[0], 1.0 / (1.0 + std::exp(-2.0)), 1e-6);
  EXPECT_NEAR(p.probs_NK[1], 1.0 / (1.0 + std::exp(-0.5)), 1e-6);
}

// A bias-style pass as loss_free_bias will be: +10 on expert 3 for selection only.
// Node-limited routing against a brute-force rule: groups ranked by the sum of their top
// ceil(k/M) scores (stable: ties -> lower group), the best M kept, then top-k among their experts.
TEST(Router, NodeLimitedChoicesObeyTheLimitAndMatchBruteForce_softmax_and_sigmoid) {
  for (ScoreFn score : {ScoreFn::kSoftmax, ScoreFn::kSigmoid}) {
    const int E = 8, G = 4, M = 2, K = 3, N = 300, size = E / G, per = (K + M - 1) / M;
    MoeSpec moe = small_moe(score, true, K, 0.0f, 0);
    moe.num_experts = E;
    moe.max_nodes_per_token = M;
    moe.routing_nodes = G;
    IdentityRouter r(moe);
    const auto& p = r.route(randn((size_t)N * E, 77));
    const float* s = r.router.scores_NE();
    int limited = 0;
    for (int t = 0; t < N; ++t) {
      const float* v = s + (size_t)t * E;
      std::vector<std::pair<float, int>> groups;
      for (int g = 0; g < G; ++g) {
        std::vector<float> top(v + g * size, v + (g + 1) * size);
        std::sort(top.begin(), top.end(), std::greater<float>());
        float sum = 0.0f;
        for (int i = 0; i < per; ++i) sum += top[i];
        groups.push_back({sum, g});
      }
      std::stable_sort(groups.begin(), groups.end(), [](auto a, auto b) { return a.first > b.first; });
      std::vector<std::pair<float, int>> cand, all;
      for (int e = 0; e < E; ++e) {
        all.push_back({v[e], e});
        for (int m = 0; m < M; ++m)
          if (e / size == groups[m].second) cand.push_back({v[e], e});
      }
      auto by_score = [](auto a, auto b) { return a.first > b.first; };
      std::stable_sort(cand.begin(), cand.end(), by_score);
      std::stable_sort(all.begin(), all.end(), by_score);
      std::vector<int> nodes;
      bool differs = false;
      for (int k = 0; k < K; ++k) {
        const int e = p.selected_NK[(size_t)t * K + k];
        ASSERT_EQ(e, cand[k].second) << "token " << t << " slot " << k;
        nodes.push_back(e / size);
        differs |= all[k].second != e;
      }
      std::sort(nodes.begin(), nodes.end());
      EXPECT_LE(std::unique(nodes.begin(), nodes.end()) - nodes.begin(), M) << "token " << t;
      limited += differs;
    }
    EXPECT_GT(limited, N / 10) << "the limit should change many tokens' choices";
  }
}

TEST(Router, NodeLimitProblemsAreNamed) {
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.0f, 0);
  moe.num_experts = 8;
  moe.max_nodes_per_token = 1;
  auto problem = [&](int G) {
    moe.routing_nodes = G;
    return node_limit_problem(moe);
  };
  EXPECT_NE(problem(1).find("experts are on 1 node"), std::string::npos) << problem(1);
  EXPECT_NE(problem(3).find("not divisible by moe.routing_nodes (3)"), std::string::npos) << problem(3);
  EXPECT_NE(problem(8).find("fewer than moe.top_k (2)"), std::string::npos) << problem(8);
  EXPECT_EQ(problem(4), "");
  moe.max_nodes_per_token = 4;
  EXPECT_NE(problem(4).find("use 1..3"), std::string::npos) << problem(4);
  moe.max_nodes_per_token = 0;
  EXPECT_EQ(problem(1), "");
}

// moe.force_routing: the draws follow the stated weights, do not depend on how the tokens are
// split into forwards (layout independence), and the combine weights stay the router's scores.
TEST(Router, ForcedRoutingFollowsItsWeightsAndIsLayoutIndependent) {
  const int E = 8, K = 2, N = 20000;
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, K, 0.0f, 0);
  moe.num_experts = E;
  for (const std::string f : {"zipf:1.2", "hot:0.6", "balanced"}) {
    moe.force_routing = f;
    IdentityRouter r(moe);
    r.router.set_position(5, 1, 3, 0);
    const std::vector<float> logits = randn((size_t)N * E, 13);
    const RoutingPlan& p = r.route(logits);
    std::vector<double> first(E, 0.0), w(E, 1.0);
    for (int t = 0; t < N; ++t) {
      first[p.selected_NK[(size_t)t * K]] += 1.0 / N;
      ASSERT_NE(p.selected_NK[(size_t)t * K], p.selected_NK[(size_t)t * K + 1]) << f << " token " << t;
    }
    if (f == "zipf:1.2")
      for (int e = 0; e < E; ++e) w[e] = std::pow(e + 1.0, -1.2);
    if (f == "hot:0.6") w[0] = 0.6 / 0.4 * (E - 1);
    double sum = 0;
    for (double x : w) sum += x;
    for (int e = 0; e < E; ++e) EXPECT_NEAR(first[e], w[e] / sum, 0.015) << f << " expert " << e;
    // The same tokens in two forwards of N/2 (first_token 0 and N/2): the same draws.
    IdentityRouter a(moe);
    for (int half = 0; half < 2; ++half) {
      a.router.set_position(5, 1, 3, (int64_t)half * N / 2);
      const std::vector<float> part(logits.begin() + (size_t)half * N / 2 * E,
                                    logits.begin() + (size_t)(half + 1) * N / 2 * E);
      const RoutingPlan& q = a.route(part);
      for (size_t i = 0; i < q.selected_NK.size(); ++i)
        ASSERT_EQ(q.selected_NK[i], p.selected_NK[(size_t)half * N / 2 * K + i]) << f << " half " << half;
    }
    // Combine weights: the softmax scores of the drawn experts, renormalised over the two.
    const float* s = r.router.scores_NE();
    for (int t = 0; t < 5; ++t) {
      const int32_t* ids = p.selected_NK.data() + (size_t)t * K;
      const float g0 = s[(size_t)t * E + ids[0]], g1 = s[(size_t)t * E + ids[1]];
      EXPECT_NEAR(p.probs_NK[(size_t)t * K], g0 / (g0 + g1), 1e-6f) << f;
    }
  }
  // Extreme weights (zipf:16 underflows to 0 past expert ~1e19^(1/16), hot:0.99 dwarfs the rest):
  // every draw is still k distinct experts in range.
  for (const std::string f : {"zipf:16", "hot:0.99"}) {
    MoeSpec m = small_moe(ScoreFn::kSoftmax, true, 4, 0.0f, 0);
    m.num_experts = 64;
    m.force_routing = f;
    IdentityRouter r(m);
    r.router.set_position(1, 0, 0, 0);
    const RoutingPlan& p = r.route(randn((size_t)500 * 64, 3));
    for (int t = 0; t < 500; ++t) {
      std::vector<int32_t> ids(p.selected_NK.begin() + t * 4, p.selected_NK.begin() + (t + 1) * 4);
      for (int32_t e : ids) ASSERT_TRUE(e >= 0 && e < 64) << f;
      std::sort(ids.begin(), ids.end());
      ASSERT_EQ(std::unique(ids.begin(), ids.end()), ids.end()) << f << " token " << t;
    }
  }
  EXPECT_NE(parse_force_routing("zipf:17", nullptr), "");
  EXPECT_NE(parse_force_routing("hot:1", nullptr), "");
  EXPECT_NE(parse_force_routing("zipf:0", nullptr), "");
  EXPECT_NE(parse_force_routing("rotating:2", nullptr), "");
  EXPECT_EQ(parse_force_routing("rotating", nullptr), "");
}

class FavourLastExpert final : public BalancingPass {
 public:
  std::string name() const override { return "favour_last"; }
  void adjust_scores(float* scores_NE, int N, int E) override {
    for (int t = 0; t < N; ++t) scores_NE[(size_t)t * E + E - 1] += 10.0f;
  }
  double forward(const RouterState&, bool) override { return 0.0; }
};

TEST(Router, AdjustScoresChoosesButDoesNotWeigh) {
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, false, 2, 0.0f, 0);
  std::vector<std::unique_ptr<BalancingPass>> passes;
  passes.push_back(std::make_unique<FavourLastExpert>());
  IdentityRouter r(moe, std::move(passes));
  const std::vector<float> z = {3.0f, 1.0f, 0.0f, -2.0f};
  const auto& p = r.route(z);
  EXPECT_EQ(p.selected_NK, (std::vector<int32_t>{3, 0}));
  double sum = 0;
  for (float v : z) sum += std::exp(v);
  EXPECT_NEAR(p.probs_NK[0], std::exp(-2.0) / sum, 1e-6);  // unbiased score of expert 3
  EXPECT_NEAR(p.probs_NK[1], std::exp(3.0) / sum, 1e-6);
  EXPECT_NEAR(r.router.scores_NE()[3], std::exp(-2.0) / sum, 1e-6);  // scores stay unbiased
}

TEST(Router, CapacityDropsByTokenIndex_k1) {
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 1, 1.0f, 0);
  moe.num_experts = 2;
  IdentityRouter r(moe);
  // Six tokens, all prefer expert 0; C = ceil(6·1/2 · 1.0) = 3.
  const auto& p = r.route({1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0});
  EXPECT_EQ(p.capacity, 3);
  EXPECT_EQ(p.topk_ids_NK, (std::vector<int32_t>{0, 0, 0, -1, -1, -1}));
  EXPECT_EQ(p.tokens_per_expert_E, (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(p.selected_per_expert_E, (std::vector<int64_t>{6, 0}));
  EXPECT_EQ(p.dropped_slots, 3);
}

TEST(Router, CapacityDropsTokenOrderThenSlotOrder_k2) {
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.5f, 0);
  moe.num_experts = 3;
  IdentityRouter r(moe);
  // C = ceil(3·2/3 · 0.5) = 1. Token 0 takes experts 0 and 1 (both its slots) before token 1's
  // first slot is looked at; slot-major order would have given token 1 expert 1 instead.
  const auto& p = r.route({2, 1, 0,  1, 2, 0,  0, 1, 2});
  EXPECT_EQ(p.capacity, 1);
  EXPECT_EQ(p.topk_ids_NK, (std::vector<int32_t>{0, 1, -1, -1, 2, -1}));
  EXPECT_EQ(p.dropped_slots, 3);
  // Deterministic: the same input routes the same way again.
  const std::vector<int32_t> first = p.topk_ids_NK;
  EXPECT_EQ(r.route({2, 1, 0, 1, 2, 0, 0, 1, 2}).topk_ids_NK, first);
}

TEST(Router, CapacityDeterministicOnRandomBatch_cf1p0) {
  MoeSpec moe = small_moe(ScoreFn::kSigmoid, true, 2, 1.0f, 0);
  moe.num_experts = 8;
  IdentityRouter r(moe);
  const int N = 64;
  auto z = randn((size_t)N * 8, 5);
  const auto plan = r.route(z).topk_ids_NK;
  // Check the rule directly: a slot is kept iff its expert had < C kept slots before it.
  std::vector<int64_t> seen(8, 0);
  const auto& p = r.router.plan();
  for (int s = 0; s < N * 2; ++s) {
    const int e = p.selected_NK[s];
    const int want = seen[e] < p.capacity ? e : -1;
    if (want >= 0) ++seen[e];
    ASSERT_EQ(plan[s], want) << "slot " << s;
  }
  EXPECT_GT(p.dropped_slots, 0);
  EXPECT_EQ(r.route(z).topk_ids_NK, plan);
}

// ---------------------------------------------------------------- balancing passes

struct StateBuf {
  int N, K, E;
  std::vector<float> logits, scores;
  std::vector<int32_t> selected;
  std::vector<int64_t> counts;
  int seq = 0;  // tokens per sequence; 0 = one sequence
  RouterState view(ScoreFn fn) const {
    RouterState s;
    s.N = N;
    s.K = K;
    s.E = E;
    s.seq_len = seq > 0 ? seq : N;
    s.score_fn = fn;
    s.logits_NE = logits.data();
    s.scores_NE = scores.data();
    s.selected_NK = selected.data();
    s.selected_per_expert_E = counts.data();
    return s;
  }
};

std::unique_ptr<BalancingPass> pass_of(const std::string& type, float coeff, int E) {
  BalancingSpec spec;
  spec.type = type;
  spec.coeff = coeff;
  return make_balancing_pass(spec, E);
}

// The router's skinny products against double-precision sums, over E on both sides of the vector
// width (1..8 in the kernels, 9 and more through OpenBLAS), D with and without a 16- or 64-column tail, N with
// and without a partial token block; accumulate semantics of the backward; and each token's logits
// and dx row bit-identical to the same token computed alone (the layout independence parallel
// invariance relies on); the portable backward bit-identical to the AVX-512 one.
TEST(RouterProducts, MatchDoubleReferenceAndAreRowIndependent) {
  int cases = 0;
  for (int E : {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 24})
    for (int D : {3, 64, 100, 256})
      for (int N : {1, 7, 8, 13, 70}) {
        SCOPED_TRACE(::testing::Message() << "E " << E << " D " << D << " N " << N);
        const auto x = randn((size_t)N * D, 1), w = randn((size_t)D * E, 2, 0.3f), dz = randn((size_t)N * E, 3);
        const auto dx0 = randn((size_t)N * D, 4), dw0 = randn((size_t)D * E, 5);
        RouterProducts prod;
        std::vector<float> z((size_t)N * E, -7.0f), dx = dx0, dw = dw0;
        prod.forward(z.data(), x.data(), w.data(), N, D, E);
        prod.backward(dx.data(), dw.data(), dz.data(), x.data(), w.data(), N, D, E);
        double worst = 0;
        auto check = [&](double got, double want, double scale) { worst = std::max(worst, std::fabs(got - want) / scale); };
        for (int t = 0; t < N; ++t)
          for (int e = 0; e < E; ++e) {
            double want = 0;
            for (int d = 0; d < D; ++d) want += (double)x[(size_t)t * D + d] * w[(size_t)d * E + e];
            check(z[(size_t)t * E + e], want, 1 + std::sqrt((double)D));
          }
        for (int t = 0; t < N; ++t)
          for (int d = 0; d < D; ++d) {
            double want = dx0[(size_t)t * D + d];
            for (int e = 0; e < E; ++e) want += (double)dz[(size_t)t * E + e] * w[(size_t)d * E + e];
            check(dx[(size_t)t * D + d], want, 1 + std::sqrt((double)E));
          }
        for (int d = 0; d < D; ++d)
          for (int e = 0; e < E; ++e) {
            double want = dw0[(size_t)d * E + e];
            for (int t = 0; t < N; ++t) want += (double)x[(size_t)t * D + d] * dz[(size_t)t * E + e];
            check(dw[(size_t)d * E + e], want, 1 + std::sqrt((double)N));
          }
        EXPECT_LT(worst, 1e-5);
        // dx not wanted: dW alone, the same sums.
        std::vector<float> dw2 = dw0;
        prod.backward(nullptr, dw2.data(), dz.data(), x.data(), w.data(), N, D, E);
        EXPECT_EQ(dw2, dw);
        if (E > RouterProducts::kMaxVectorExperts) continue;  // OpenBLAS makes no such promise
        // The portable 8-lane backward (the only one without AVX-512, where this compares it with
        // itself): the same bits.
        RouterProducts portable(true);
        std::vector<float> dx3 = dx0, dw3 = dw0;
        portable.backward(dx3.data(), dw3.data(), dz.data(), x.data(), w.data(), N, D, E);
        ASSERT_EQ(0, std::memcmp(dx3.data(), dx.data(), sizeof(float) * dx.size()));
        ASSERT_EQ(0, std::memcmp(dw3.data(), dw.data(), sizeof(float) * dw.size()));
        for (int t = 0; t < N; ++t) {
          std::vector<float> z1(E), dx1(dx0.begin() + (size_t)t * D, dx0.begin() + (size_t)(t + 1) * D), dw1 = dw0;
          prod.forward(z1.data(), x.data() + (size_t)t * D, w.data(), 1, D, E);
          prod.backward(dx1.data(), dw1.data(), dz.data() + (size_t)t * E, x.data() + (size_t)t * D, w.data(), 1, D, E);
          ASSERT_EQ(0, std::memcmp(z1.data(), z.data() + (size_t)t * E, sizeof(float) * E)) << "token " << t;
          ASSERT_EQ(0, std::memcmp(dx1.data(), dx.data() + (size_t)t * D, sizeof(float) * D)) << "token " << t;
        }
        ++cases;
      }
  EXPECT_EQ(cases, RouterProducts::kMaxVectorExperts * 4 * 5);  // every E of the kernels was compared
}

// topk_rows against insertion into a best-first list (the reference semantics) on rows with many
// ties and, in some rows, NaNs, for E across the one- and two-vector widths and past them.
TEST(RouterTopk, MatchesInsertionWithTiesAndNaNs) {
  Rng r(7, 0, 0, 0);
  int rows = 0, nan_rows = 0;
  for (int E : {1, 2, 3, 7, 8, 9, 15, 16, 17, 32})
    for (int K = 1; K <= E; ++K) {
      const int N = 50;
      std::vector<float> v((size_t)N * E);
      for (int t = 0; t < N; ++t)
        for (int e = 0; e < E; ++e) {
          const double u = r.uniform();
          float x = (float)std::floor(u * 4) * 0.25f;  // 4 levels: many ties
          if (t % 5 == 1) x = (float)u;                  // distinct scores
          if (t % 7 == 3 && e % 3 == 1) x = NAN;
          if (t % 11 == 4) x = -INFINITY;                // a whole row of equal -inf
          v[(size_t)t * E + e] = x;
        }
      std::vector<int32_t> got((size_t)N * K, -5), want((size_t)N * K, -5);
      topk_rows(got.data(), v.data(), N, E, K);
      for (int t = 0; t < N; ++t) {
        topk_insertion(want.data() + (size_t)t * K, v.data() + (size_t)t * E, E, K, nullptr);
        nan_rows += std::any_of(v.begin() + (size_t)t * E, v.begin() + (size_t)(t + 1) * E,
                                [](float x) { return std::isnan(x); });
        ++rows;
      }
      ASSERT_EQ(got, want) << "E " << E << " K " << K;
    }
  EXPECT_GT(nan_rows, 0);
  // Spot check of the reference itself: ties to the lower id, best first.
  const float v[6] = {0.5f, 0.9f, 0.5f, 0.9f, 0.1f, 0.7f};
  int32_t ids[4];
  topk_rows(ids, v, 1, 6, 4);
  EXPECT_EQ(std::vector<int32_t>(ids, ids + 4), (std::vector<int32_t>{1, 3, 5, 0}));
  EXPECT_GT(rows, 0);
}

TEST(AuxLoss, EqualsAlphaAtPerfectBalance_softmax_and_sigmoid_k2) {
  // N=4, K=2, E=4: every expert selected twice; scores arbitrary.
  StateBuf b{4, 2, 4, {}, randn(16, 1), {0, 1, 2, 3, 1, 0, 3, 2}, {2, 2, 2, 2}};
  for (auto fn : {ScoreFn::kSoftmax, ScoreFn::kSigmoid}) {
    b.scores = b.logits;
    for (int t = 0; t < 4; ++t) {
      float* s = b.scores.data() + t * 4;
      if (fn == ScoreFn::kSigmoid) {
        for (int i = 0; i < 4; ++i) s[i] = 1.0f / (1.0f + std::exp(-s[i]));
      } else {
        float sum = 0;
        for (int i = 0; i < 4; ++i) sum += (s[i] = std::exp(s[i]));
        for (int i = 0; i < 4; ++i) s[i] /= sum;
      }
    }
    auto pass = pass_of("aux_loss", 0.03f, 4);
    EXPECT_NEAR(pass->forward(b.view(fn), true), 0.03, 1e-7);
  }
}

TEST(AuxLoss, HandComputed_softmax_and_sigmoid) {
  // Both tokens choose expert 0 (K=1): f = [1, 0].
  StateBuf b{2, 1, 2, {0, 0, 0, 0}, {0.7f, 0.3f, 0.6f, 0.4f}, {0, 0}, {2, 0}};
  // softmax: P = [0.65, 0.35], L = α·2·(1·0.65) = 1.3α
  EXPECT_NEAR(pass_of("aux_loss", 0.01f, 2)->forward(b.view(ScoreFn::kSoftmax), true), 0.013, 1e-8);
  // sigmoid: normalised rows [0.75, 0.25], [0.2, 0.8]: P0 = 0.475, L = α·2·0.475 = 0.95α
  b.scores = {0.9f, 0.3f, 0.2f, 0.8f};
  EXPECT_NEAR(pass_of("aux_loss", 0.01f, 2)->forward(b.view(ScoreFn::kSigmoid), true), 0.0095, 1e-8);
}

TEST(ZLoss, MatchesFormula) {
  // lse = ln 2 and ln 4: L = α·((ln2)² + (2 ln2)²)/2 = 2.5·α·(ln2)²
  StateBuf b{2, 1, 2, {0.0f, 0.0f, std::log(3.0f), 0.0f}, {0.5f, 0.5f, 0.75f, 0.25f}, {0, 0},
             {2, 0}};
  const double ln2 = std::log(2.0);
  EXPECT_NEAR(pass_of("z_loss", 0.001f, 2)->forward(b.view(ScoreFn::kSoftmax), true),
              0.001 * 2.5 * ln2 * ln2, 1e-9);
}

// d(loss_scale · L)/d(scores or logits) of one pass against central differences in double.
// seq: tokens per sequence (N = 6 = 3 sequences of 2, or 2 of 3; 0 = one sequence).
void check_pass_gradient(const std::string& type, ScoreFn fn, int seq = 0) {
  const int N = 6, K = 2, E = 4;
  StateBuf b{N, K, E, randn(N * E, 11), {}, {}, {}, seq};
  b.scores = b.logits;
  for (auto& s : b.scores) s = 1.0f / (1.0f + std::exp(-s));  // positive; any scores do
  b.selected = {0, 1, 1, 2, 0, 3, 0, 1, 2, 0, 1, 0};
  b.counts = {5, 4, 2, 1};
  auto pass = pass_of(type, 0.2f, E);
  const float scale = 0.7f;
  pass->forward(b.view(fn), true);
  std::vector<float> ds(N * E, 0.0f), dz(N * E, 0.0f);
  pass->backward(ds.data(), dz.data(), b.view(fn), scale);
  const bool wrt_logits = type == "z_loss";
  std::vector<float>& v = wrt_logits ? b.logits : b.scores;
  const std::vector<float>& g = wrt_logits ? dz : ds;
  double max_g = 0;
  for (int i = 0; i < N * E; ++i) {
    const float save = v[i], h = 1e-2f;
    v[i] = save + h;
    const double lp = pass->forward(b.view(fn), true);
    v[i] = save - h;
    const double lm = pass->forward(b.view(fn), true);
    v[i] = save;
    const double num = scale * (lp - lm) / (2.0 * h);
    EXPECT_NEAR(g[i], num, 1e-4 + 1e-3 * std::fabs(num)) << type << " element " << i;
    max_g = std::max(max_g, std::fabs(num));
  }
  EXPECT_GT(max_g, 1e-3);  // the check compared something
  // The other buffer is left alone.
  for (float x : wrt_logits ? ds : dz) EXPECT_EQ(x, 0.0f);
}

TEST(AuxLoss, GradientMatchesFiniteDifferences_softmax) { check_pass_gradient("aux_loss", ScoreFn::kSoftmax); }
TEST(AuxLoss, GradientMatchesFiniteDifferences_sigmoid) { check_pass_gradient("aux_loss", ScoreFn::kSigmoid); }
TEST(ZLoss, GradientMatchesFiniteDifferences) { check_pass_gradient("z_loss", ScoreFn::kSoftmax); }
TEST(SeqAuxLoss, GradientMatchesFiniteDifferences_softmax_seq2) {
  check_pass_gradient("seq_aux_loss", ScoreFn::kSoftmax, 2);
}
TEST(SeqAuxLoss, GradientMatchesFiniteDifferences_sigmoid_seq3) {
  check_pass_gradient("seq_aux_loss", ScoreFn::kSigmoid, 3);
}
// Training forwards add the same counts again and again: f̄ stays the same ratio (routing fixed).
TEST(GlobalBatchAuxLoss, GradientMatchesFiniteDifferences_softmax) {
  check_pass_gradient("global_batch_aux_loss", ScoreFn::kSoftmax);
}
TEST(GlobalBatchAuxLoss, GradientMatchesFiniteDifferences_sigmoid) {
  check_pass_gradient("global_batch_aux_loss", ScoreFn::kSigmoid);
}

// Softmax scores of the logits in place.
void softmax_rows(std::vector<float>& v, int E) {
  for (size_t t = 0; t < v.size() / E; ++t) {
    float* s = v.data() + t * E;
    float sum = 0;
    for (int i = 0; i < E; ++i) sum += (s[i] = std::exp(s[i]));
    for (int i = 0; i < E; ++i) s[i] /= sum;
  }
}

TEST(SeqAuxLoss, HandComputed_two_sequences) {
  // K=1, E=2, two sequences of 2 tokens. Sequence 0 picks [0, 0]: f = [1, 0], P0 = (0.7+0.6)/2;
  // sequence 1 picks [0, 1]: f = [.5, .5], ΣP = 1 → term 1. L = α·(2·0.65 + 2·0.5)/2 = 1.15α.
  StateBuf b{4, 1, 2, {}, {0.7f, 0.3f, 0.6f, 0.4f, 0.9f, 0.1f, 0.2f, 0.8f}, {0, 0, 0, 1}, {3, 1}, 2};
  EXPECT_NEAR(pass_of("seq_aux_loss", 0.01f, 2)->forward(b.view(ScoreFn::kSoftmax), true), 0.0115, 1e-8);
  // The micro-batch aux loss of the same tokens differs: f = [.75, .25], P = [.6, .4] → 2·(.45+.1) = 1.1α.
  EXPECT_NEAR(pass_of("aux_loss", 0.01f, 2)->forward(b.view(ScoreFn::kSoftmax), true), 0.011, 1e-8);
  // One sequence: equal to aux_loss.
  b.seq = 4;
  EXPECT_NEAR(pass_of("seq_aux_loss", 0.01f, 2)->forward(b.view(ScoreFn::kSoftmax), true), 0.011, 1e-8);
}

// With one rank (no all-reduce installed) and one micro-batch, global_batch_aux_loss is aux_loss:
// the same value and the same gradient, bit for bit.
TEST(GlobalBatchAuxLoss, OneRankOneMicroBatchEqualsAuxLoss_softmax_and_sigmoid) {
  const int N = 6, K = 2, E = 4;
  StateBuf b{N, K, E, randn(N * E, 5), {}, {0, 1, 1, 2, 0, 3, 0, 1, 2, 0, 1, 0}, {5, 4, 2, 1}};
  b.scores = b.logits;
  softmax_rows(b.scores, E);
  for (auto fn : {ScoreFn::kSoftmax, ScoreFn::kSigmoid}) {
    auto aux = pass_of("aux_loss", 0.05f, E), glob = pass_of("global_batch_aux_loss", 0.05f, E);
    EXPECT_EQ(aux->forward(b.view(fn), true), glob->forward(b.view(fn), true));
    std::vector<float> da(N * E, 0.0f), dg(N * E, 0.0f), dz(N * E, 0.0f);
    aux->backward(da.data(), dz.data(), b.view(fn), 0.25f);
    glob->backward(dg.data(), dz.data(), b.view(fn), 0.25f);
    EXPECT_EQ(da, dg);
  }
}

// The running buffer accumulates over the step's training micro-batches (ms-swift #6787 let it
// fall back to the micro-batch loss), is reset at step end, and evaluation forwards leave it alone.
TEST(GlobalBatchAuxLoss, BufferAccumulatesOverMicroBatchesAndResetsAtStepEnd) {
  // K=1, E=2, softmax, the same scores P = [0.5, 0.5]... with different choices per micro-batch.
  StateBuf mb1{2, 1, 2, {}, {0.8f, 0.2f, 0.6f, 0.4f}, {0, 0}, {2, 0}};  // P = [0.7, 0.3]
  StateBuf mb2{2, 1, 2, {}, {0.3f, 0.7f, 0.5f, 0.5f}, {1, 1}, {0, 2}};  // P = [0.4, 0.6]
  auto pass = pass_of("global_batch_aux_loss", 1.0f, 2);
  // Micro-batch 1: C = [2, 0], f̄ = [1, 0]: L = 2·0.7 = 1.4.
  EXPECT_NEAR(pass->forward(mb1.view(ScoreFn::kSoftmax), true), 1.4, 1e-7);
  // Micro-batch 2: C = [2, 2], f̄ = [.5, .5]: L = 2·(.5·.4 + .5·.6) = 1.0 (the micro-batch loss would be 1.2).
  EXPECT_NEAR(pass->forward(mb2.view(ScoreFn::kSoftmax), true), 1.0, 1e-7);
  EXPECT_NEAR(pass_of("aux_loss", 1.0f, 2)->forward(mb2.view(ScoreFn::kSoftmax), true), 1.2, 1e-7);
  // Its gradient uses f̄: α·E·f̄_i/N = 2·0.5/2 = 0.5 for every element.
  std::vector<float> ds(4, 0.0f), dz(4, 0.0f);
  pass->backward(ds.data(), dz.data(), mb2.view(ScoreFn::kSoftmax), 1.0f);
  for (float v : ds) EXPECT_FLOAT_EQ(v, 0.5f);
  auto buffer = [&] {
    const auto st = pass->state();
    EXPECT_EQ(st.size(), 1u);
    EXPECT_EQ(st[0].name, "counts_E");
    return std::vector<int64_t>(st[0].i64.begin(), st[0].i64.end());
  };
  EXPECT_EQ(buffer(), (std::vector<int64_t>{2, 2}));
  // Evaluation: its own counts, buffer untouched.
  EXPECT_NEAR(pass->forward(mb1.view(ScoreFn::kSoftmax), false), 1.4, 1e-7);
  EXPECT_EQ(buffer(), (std::vector<int64_t>{2, 2}));
  const int64_t step_counts[2] = {2, 2};
  pass->on_step_end(step_counts, 2);
  EXPECT_EQ(buffer(), (std::vector<int64_t>{0, 0}));
  // Next step starts afresh: micro-batch 2 alone gives f̄ = [0, 1].
  EXPECT_NEAR(pass->forward(mb2.view(ScoreFn::kSoftmax), true), 1.2, 1e-7);
  // A skipped step (train.nonfinite: skip) drops its counts too: the step after it starts afresh.
  EXPECT_EQ(buffer(), (std::vector<int64_t>{0, 2}));
  pass->on_step_discarded();
  EXPECT_EQ(buffer(), (std::vector<int64_t>{0, 0}));
  EXPECT_NEAR(pass->forward(mb1.view(ScoreFn::kSoftmax), true), 1.4, 1e-7);
}

// The all-reduce the pass is given is called once per training forward, never in evaluation.
TEST(GlobalBatchAuxLoss, ReducesCountsThroughTheEnvOnlyWhenTraining) {
  int calls = 0;
  BalancingEnv env;
  env.allreduce_counts_data = [&](int64_t* c, int n) {
    ++calls;
    for (int i = 0; i < n; ++i) c[i] *= 3;  // as if two more ranks had the same counts
  };
  BalancingSpec spec;
  spec.type = "global_batch_aux_loss";
  spec.coeff = 1.0f;
  auto pass = make_balancing_pass(spec, 2, "moe.balancing.0", env);
  StateBuf mb{2, 1, 2, {}, {0.8f, 0.2f, 0.6f, 0.4f}, {0, 1}, {1, 1}};
  pass->forward(mb.view(ScoreFn::kSoftmax), true);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(pass->state()[0].i64[0], 3);
  pass->forward(mb.view(ScoreFn::kSoftmax), false);
  EXPECT_EQ(calls, 1);
}

BalancingSpec bias_spec(BiasUpdate update, float rate, int freeze_after = 0) {
  BalancingSpec spec;
  spec.type = "loss_free_bias";
  spec.bias.rate = rate;
  spec.bias.update = update;
  spec.bias.freeze_after = freeze_after;
  return spec;
}
std::vector<float> bias_of(BalancingPass& pass) {
  for (const auto& t : pass.state())
    if (t.name == "bias_E") return {t.f32.begin(), t.f32.end()};
  return {};
}

TEST(LossFreeBias, UpdateMatchesTheRuleOnHandMadeCounts_sign_and_proportional) {
  // c = [10, 30, 20, 20]: mean 20, e = [10, -10, 0, 0].
  const int64_t c[4] = {10, 30, 20, 20};
  auto sign = make_balancing_pass(bias_spec(BiasUpdate::kSign, 1e-3f), 4);
  sign->on_step_end(c, 4);
  EXPECT_EQ(bias_of(*sign), (std::vector<float>{1e-3f, -1e-3f, 0.0f, 0.0f}));
  sign->on_step_end(c, 4);
  EXPECT_EQ(bias_of(*sign), (std::vector<float>{2e-3f, -2e-3f, 0.0f, 0.0f}));
  // proportional: u · e_i / mean = 0.01 · [0.5, -0.5, 0, 0]
  auto prop = make_balancing_pass(bias_spec(BiasUpdate::kProportional, 0.01f), 4);
  prop->on_step_end(c, 4);
  EXPECT_EQ(bias_of(*prop), (std::vector<float>{0.005f, -0.005f, 0.0f, 0.0f}));
  // No tokens: no update.
  const int64_t none[4] = {0, 0, 0, 0};
  prop->on_step_end(none, 4);
  EXPECT_EQ(bias_of(*prop), (std::vector<float>{0.005f, -0.005f, 0.0f, 0.0f}));
}

TEST(LossFreeBias, FreezeAfterStopsUpdates) {
  const int64_t c[2] = {1, 3};
  auto pass = make_balancing_pass(bias_spec(BiasUpdate::kSign, 0.5f, 2), 2);
  for (int s = 0; s < 5; ++s) pass->on_step_end(c, 2);
  EXPECT_EQ(bias_of(*pass), (std::vector<float>{1.0f, -1.0f}));  // two updates, then frozen
  EXPECT_EQ(pass->state()[1].name, "steps");
  EXPECT_EQ(pass->state()[1].i64[0], 5);
}

TEST(LossFreeBias, BiasChoosesButAddsNoLossAndNoGradient) {
  auto pass = make_balancing_pass(bias_spec(BiasUpdate::kSign, 1.0f), 2);
  const int64_t c[2] = {5, 1};  // expert 0 overloaded: b = [-1, +1]
  pass->on_step_end(c, 2);
  std::vector<float> s = {0.9f, 0.1f};
  pass->adjust_scores(s.data(), 1, 2);
  EXPECT_FLOAT_EQ(s[0], -0.1f);
  EXPECT_FLOAT_EQ(s[1], 1.1f);
  StateBuf b{1, 1, 2, {0.0f, 0.0f}, {0.9f, 0.1f}, {1}, {0, 1}};
  EXPECT_EQ(pass->forward(b.view(ScoreFn::kSoftmax), true), 0.0);
  std::vector<float> ds(2, 0.0f), dz(2, 0.0f);
  pass->backward(ds.data(), dz.data(), b.view(ScoreFn::kSoftmax), 1.0f);
  EXPECT_EQ(ds, (std::vector<float>(2, 0.0f)));
  EXPECT_EQ(dz, (std::vector<float>(2, 0.0f)));
}

// Router gradients with and without loss_free_bias are identical bit for bit whenever the bias
// leaves the choice unchanged (it never enters the combine weights or a loss).
TEST(LossFreeBias, RouterGradientsIdenticalWithAndWithoutIt_softmax_and_sigmoid) {
  for (auto fn : {ScoreFn::kSoftmax, ScoreFn::kSigmoid}) {
    MoeSpec moe = small_moe(fn, true, 2, 0.0f, 0);
    const int N = 8, D = 4, E = 4;
    BalancingSpec aux;
    aux.type = "aux_loss";
    aux.coeff = 0.1f;
    std::vector<std::unique_ptr<BalancingPass>> plain, biased;
    plain.push_back(make_balancing_pass(aux, E));
    biased.push_back(make_balancing_pass(aux, E));
    biased.push_back(make_balancing_pass(bias_spec(BiasUpdate::kSign, 1e-4f), E));
    const int64_t c[4] = {9, 3, 1, 3};
    biased[1]->on_step_end(c, 4);
    Router a(moe, D, std::move(plain)), b(moe, D, std::move(biased));
    const auto x = randn(N * D, 21), w = randn(D * E, 22), dprobs = randn(N * 2, 23);
    a.forward(x.data(), w.data(), N, N, true);
    b.forward(x.data(), w.data(), N, N, true);
    ASSERT_EQ(a.plan().selected_NK, b.plan().selected_NK);  // the tiny bias did not change the choice
    std::vector<float> dxa(N * D, 0.0f), dxb(N * D, 0.0f), dwa(D * E, 0.0f), dwb(D * E, 0.0f);
    a.backward(dxa.data(), dwa.data(), dprobs.data(), x.data(), w.data(), 0.5f);
    b.backward(dxb.data(), dwb.data(), dprobs.data(), x.data(), w.data(), 0.5f);
    EXPECT_EQ(dxa, dxb);
    EXPECT_EQ(dwa, dwb);
    EXPECT_EQ(a.balancing_loss(), b.balancing_loss());
  }
}

TEST(BalancingRegistry, EveryPassIsRegisteredWithItsOwnKeys) {
  EXPECT_EQ(balancing_pass_types(), (std::vector<std::string>{"aux_loss", "z_loss", "seq_aux_loss",
                                                               "global_batch_aux_loss", "loss_free_bias"}));
  for (const auto& e : balancing_pass_registry().entries()) {
    std::vector<std::string> keys;
    for (const auto& k : e.keys) keys.push_back(k.key);
    if (e.name == "loss_free_bias")
      EXPECT_EQ(keys, (std::vector<std::string>{"rate", "update", "freeze_after"}));
    else
      EXPECT_EQ(keys, (std::vector<std::string>{"coeff"})) << e.name;
  }
}

TEST(BalancingRegistry, UnknownTypeIsCollectiveErrorNamingPath) {
  std::vector<BalancingSpec> specs(2);
  specs[0].type = "aux_loss";
  specs[1].type = "aux_los";
  try {
    make_balancing_passes(specs, 4);
    FAIL() << "no throw";
  } catch (const CollectiveError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("moe.balancing.1.type"), std::string::npos) << msg;
    EXPECT_NE(msg.find("aux_los'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("aux_loss, z_loss"), std::string::npos) << msg;
  }
  // Through the layer too.
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.0f, 0);
  moe.balancing = specs;
  ParamArena arena;
  const Placement placement = Placement::contiguous(4, 1, 0);
  EXPECT_THROW(MoeLayer(small_model(Activation::kGelu), moe, 0, placement, arena),
               CollectiveError);
  specs[1].type = "z_loss";
  auto passes = make_balancing_passes(specs, 4);
  ASSERT_EQ(passes.size(), 2u);
  EXPECT_EQ(passes[0]->name(), "aux_loss");
  EXPECT_EQ(passes[1]->name(), "z_loss");
}

// ---------------------------------------------------------------- dispatcher, experts

TEST(LocalDispatcher, RoundTripWithProbsOneOverKReturnsX_k1_k2_k3) {
  for (int K : {1, 2, 3}) {
    const int N = 9, D = 5, E = 4;
    LocalDispatcher disp;
    const Placement placement = Placement::contiguous(E, 1, 0);
    auto plan = disp.new_plan();
    std::vector<int32_t> ids(N * K);
    for (int t = 0; t < N; ++t)  // K distinct experts per token (offsets 0, 3, 6 mod 4)
      for (int k = 0; k < K; ++k) ids[t * K + k] = (int32_t)((t * 7 + k * 3) % E);
    std::vector<float> probs(N * K, 1.0f / K);
    auto x = randn(N * D, 21);
    disp.plan(*plan, Routing{ids.data(), probs.data(), N, K}, x.data(), D, placement);
    ASSERT_EQ(plan->rows(), N * K);
    disp.dispatch(*plan, x.data());
    // rows grouped by expert: every row in block e belongs to a slot routed to e
    int64_t r0 = 0;
    for (int e = 0; e < E; ++e) r0 += plan->rows_per_local_expert()[e];
    EXPECT_EQ(r0, N * K);
    std::copy(plan->x_RD(), plan->x_RD() + plan->rows() * D, plan->y_RD());  // identity experts
    std::vector<float> out(N * D), dprobs(N * K), dx(N * D, 0.0f);
    disp.combine(*plan, out.data());
    for (int i = 0; i < N * D; ++i) EXPECT_NEAR(out[i], x[i], 1e-6f) << "K=" << K << " i=" << i;
    // Backward with dout = x: dprobs = |x_t|², dy rows = x_t / K, and with dx rows = dy rows
    // dispatch backward sums K of them back to x_t (and hands out the dprobs).
    disp.combine_backward(*plan, x.data());
    std::copy(plan->dy_RD(), plan->dy_RD() + plan->rows() * D, plan->dx_RD());
    disp.dispatch_backward(*plan, dx.data(), dprobs.data());
    for (int t = 0; t < N; ++t) {
      float n2 = 0;
      for (int d = 0; d < D; ++d) n2 += x[t * D + d] * x[t * D + d];
      for (int k = 0; k < K; ++k) EXPECT_NEAR(dprobs[t * K + k], n2, 1e-5f);
    }
    for (int i = 0; i < N * D; ++i) EXPECT_NEAR(dx[i], x[i], 1e-6f) << "K=" << K << " i=" << i;
  }
}

TEST(GroupedExperts, MatchesNaivePerTokenReference_gelu_swiglu_with_empty_expert) {
  for (auto act : {Activation::kGelu, Activation::kSwiglu}) {
    ModelSpec model = small_model(act);
    MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.0f, 0);
    ParamArena arena;
    GroupedExperts ex(model, moe, 1, Placement::contiguous(4, 1, 0), arena);
    arena.allocate();
    ex.init_params(arena, 5, 0.5f, 0.5f);
    const std::vector<int64_t> rows = {3, 0, 5, 2};
    const int R = 10, D = model.d_model, F = moe.d_ff_expert;
    auto x = randn(R * D, 8);
    std::vector<float> y(R * D);
    ex.forward(arena, y.data(), x.data(), rows);
    int r = 0;
    for (int e = 0; e < 4; ++e)
      for (int i = 0; i < rows[e]; ++i, ++r) {
        auto want = expert_ffn_reference(x.data() + r * D, arena.param(ex.w1_id(e)), arena.param(ex.w2_id(e)),
                            D, F, act);
        for (int d = 0; d < D; ++d) EXPECT_NEAR(y[r * D + d], want[d], 1e-5) << "row " << r;
      }
  }
}

TEST(GroupedExperts, GlobalNamesAndRankIndependentInit_ep2) {
  ModelSpec model = small_model(Activation::kSwiglu);
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.0f, 0);
  ParamArena a1, a2;
  GroupedExperts all(model, moe, 3, Placement::contiguous(4, 1, 0), a1);
  GroupedExperts half(model, moe, 3, Placement::contiguous(4, 2, 1), a2);
  a1.allocate();
  a2.allocate();
  all.init_params(a1, 17, 0.1f, 0.5f);
  half.init_params(a2, 17, 0.1f, 0.5f);
  ASSERT_EQ(half.num_local(), 2);
  EXPECT_EQ(a2.info(half.w1_id(0)).name, "layers.3.moe.experts.2.w1");
  EXPECT_EQ(a2.info(half.w2_id(1)).name, "layers.3.moe.experts.3.w2");
  EXPECT_EQ(a2.info(half.w1_id(0)).kind, ParamKind::kExpert);
  EXPECT_EQ(a2.info(half.w1_id(0)).shape, (std::vector<int64_t>{6, 10}));
  for (int j = 0; j < 2; ++j)
    for (auto id : {std::pair{all.w1_id(2 + j), half.w1_id(j)}, std::pair{all.w2_id(2 + j), half.w2_id(j)}}) {
      const size_t n = a1.info(id.first).numel;
      EXPECT_EQ(std::memcmp(a1.param(id.first), a2.param(id.second), n * sizeof(float)), 0);
    }
  EXPECT_NE(a1.param(all.w1_id(0))[0], a1.param(all.w1_id(1))[0]);
}

// ---------------------------------------------------------------- the layer

struct LayerCase {
  ScoreFn score;
  bool normalize;
  Activation act;
  int k;
  float cf;
  int shared;
  int max_nodes = 0;  // > 0: node-limited routing over 2 routing nodes of 2 experts each
};

std::string case_name(const LayerCase& c);
void PrintTo(const LayerCase& c, std::ostream* os) { *os << case_name(c); }

std::string case_name(const LayerCase& c) {
  std::string cf = c.cf == 0.0f ? "dropless" : "cap" + std::to_string((int)std::lround(c.cf * 100));
  return std::string(c.score == ScoreFn::kSoftmax ? "softmax" : "sigmoid") +
         (c.normalize ? "_norm" : "_nonorm") + (c.act == Activation::kGelu ? "_gelu" : "_swiglu") +
         "_k" + std::to_string(c.k) + "_" + cf + "_shared" + std::to_string(c.shared) +
         (c.max_nodes ? "_nodes" + std::to_string(c.max_nodes) + "of2" : "");
}

struct LayerFixture {
  static constexpr int N = 12;
  ModelSpec model;
  MoeSpec moe;
  ParamArena arena;
  std::unique_ptr<MoeLayer> layer;
  Placement placement;
  std::unique_ptr<LocalDispatcher> disp;
  std::vector<float> x, dout, out;

  explicit LayerFixture(const LayerCase& c) {
    model = small_model(c.act);
    moe = small_moe(c.score, c.normalize, c.k, c.cf, c.shared);
    moe.max_nodes_per_token = c.max_nodes;
    moe.routing_nodes = c.max_nodes ? 2 : 0;
    BalancingSpec aux, z;
    aux.type = "aux_loss";
    aux.coeff = 0.1f;
    z.type = "z_loss";
    z.coeff = 0.05f;
    moe.balancing = {aux, z};
    placement = Placement::contiguous(moe.num_experts, 1, 0);
    layer = std::make_unique<MoeLayer>(model, moe, 1, placement, arena);
    arena.allocate();
    layer->init_params(arena, 7, 0.5f);
    disp = std::make_unique<LocalDispatcher>();
    // Draw inputs until no token is near a top-k tie (margin between its k-th and (k+1)-th
    // score >= 0.02), so that finite differences leave the routing alone, and every expert
    // gets a row, so that every expert's gradient is exercised.
    bool found = false;
    for (uint64_t stream = 31; !found && stream < 31 + 100 * 200; stream += 100) {
      x = randn((size_t)N * model.d_model, stream);
      out.resize(x.size());
      layer->forward(arena, out.data(), x.data(), N, *disp, placement, true);
      const auto& counts = layer->tokens_per_expert();
      const bool all_used = std::find(counts.begin(), counts.end(), 0) == counts.end();
      found = all_used && min_topk_margin() >= 0.02f;
    }
    if (!found) ADD_FAILURE() << "no input without near-ties in 200 draws";
    dout = randn((size_t)N * model.d_model, 32);
    out.resize(x.size());
  }
  // The smallest gap at a routing decision: between the k-th and (k+1)-th candidate score, and
  // with node-limited routing also between the kept and the best dropped group's score (the
  // top ceil(k/M) of each group of 2, summed).
  float min_topk_margin() const {
    const int E = moe.num_experts, K = moe.top_k, M = moe.max_nodes_per_token;
    float margin = 1.0f;
    const float* s = layer->router().scores_NE();
    for (int t = 0; t < N; ++t) {
      std::vector<float> row(s + t * E, s + (t + 1) * E);
      if (M > 0) {
        const int per = (K + M - 1) / M;
        std::vector<float> g(2);
        for (int i = 0; i < 2; ++i) {
          std::vector<float> grp(row.begin() + 2 * i, row.begin() + 2 * i + 2);
          std::sort(grp.begin(), grp.end(), std::greater<float>());
          g[i] = per == 1 ? grp[0] : grp[0] + grp[1];
        }
        margin = std::min(margin, std::fabs(g[0] - g[1]));
        const int keep = g[1] > g[0] ? 1 : 0;
        row.assign(s + t * E + 2 * keep, s + t * E + 2 * keep + 2);
      }
      std::sort(row.begin(), row.end(), std::greater<float>());
      if (K < (int)row.size()) margin = std::min(margin, row[K - 1] - row[K]);
    }
    return margin;
  }
  // J = <out, dout> + loss_scale · aux_loss: backward(dout, loss_scale) is its gradient.
  double objective(float loss_scale) {
    layer->forward(arena, out.data(), x.data(), N, *disp, placement, true);
    double j = 0;
    for (size_t i = 0; i < out.size(); ++i) j += (double)out[i] * dout[i];
    return j + loss_scale * layer->aux_loss();
  }
};

class MoeLayerGrad : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeLayerGrad, MatchesFiniteDifferencesWithRoutingFixed) {
  const LayerCase c = GetParam();
  LayerFixture f(c);
  const float loss_scale = 0.7f;
  f.objective(loss_scale);
  const std::vector<int32_t> selected = f.layer->routing().selected_NK;
  const std::vector<int32_t> kept = f.layer->routing().topk_ids_NK;
  if (c.cf > 0.0f) {
    ASSERT_GT(f.layer->dropped_slots(), 0) << "the case should exercise drops";
  } else {
    ASSERT_EQ(f.layer->dropped_slots(), 0);
  }
  f.arena.zero_grads();
  std::vector<float> dx(f.x.size(), 0.0f);
  f.layer->backward(f.arena, dx.data(), f.dout.data(), loss_scale, *f.disp);
  const std::vector<float> grads(f.arena.grads().begin(), f.arena.grads().end());

  // Every coordinate of x and of every parameter tensor, central differences.
  struct Target {
    std::string name;
    float* v;
    const float* g;
    size_t n;
  };
  std::vector<Target> targets = {{"x", f.x.data(), dx.data(), f.x.size()}};
  for (size_t id = 0; id < f.arena.infos().size(); ++id) {
    const ParamInfo& info = f.arena.info(id);
    targets.push_back({info.name, f.arena.param(id), grads.data() + info.offset, info.numel});
  }
  const float h = 1e-2f;
  int checked = 0, skipped = 0;
  for (const auto& tg : targets) {
    double max_num = 0;
    for (size_t i = 0; i < tg.n; ++i) {
      const float save = tg.v[i];
      tg.v[i] = save + h;
      const double jp = f.objective(loss_scale);
      const bool same_p = f.layer->routing().selected_NK == selected && f.layer->routing().topk_ids_NK == kept;
      tg.v[i] = save - h;
      const double jm = f.objective(loss_scale);
      const bool same_m = f.layer->routing().selected_NK == selected && f.layer->routing().topk_ids_NK == kept;
      tg.v[i] = save;
      if (!same_p || !same_m) {  // top-k is piecewise constant: only compare where it held
        ++skipped;
        continue;
      }
      ++checked;
      const double num = (jp - jm) / (2.0 * h);
      max_num = std::max(max_num, std::fabs(num));
      EXPECT_NEAR(tg.g[i], num, 3e-3 + 1e-2 * std::fabs(num)) << tg.name << "[" << i << "]";
    }
    EXPECT_GT(max_num, 1e-3) << tg.name << ": the objective must depend on it";
  }
  EXPECT_LE(skipped, checked / 50) << "too many coordinates changed the routing";
  RecordProperty("checked", checked);
  RecordProperty("skipped", skipped);
}

const LayerCase kLayerCases[] = {
    {ScoreFn::kSoftmax, true, Activation::kGelu, 2, 0.0f, 0},
    {ScoreFn::kSoftmax, true, Activation::kGelu, 1, 0.0f, 1},
    {ScoreFn::kSoftmax, false, Activation::kGelu, 1, 0.0f, 0},
    {ScoreFn::kSoftmax, false, Activation::kSwiglu, 2, 0.0f, 1},
    {ScoreFn::kSoftmax, true, Activation::kSwiglu, 2, 0.75f, 0},
    {ScoreFn::kSoftmax, false, Activation::kGelu, 2, 0.75f, 1},
    {ScoreFn::kSoftmax, true, Activation::kSwiglu, 1, 0.75f, 1},
    {ScoreFn::kSigmoid, true, Activation::kGelu, 2, 0.0f, 0},
    {ScoreFn::kSigmoid, true, Activation::kSwiglu, 1, 0.0f, 1},
    {ScoreFn::kSigmoid, false, Activation::kGelu, 2, 0.0f, 1},
    {ScoreFn::kSigmoid, false, Activation::kSwiglu, 1, 0.0f, 0},
    {ScoreFn::kSigmoid, true, Activation::kGelu, 2, 0.75f, 1},
    {ScoreFn::kSigmoid, false, Activation::kSwiglu, 2, 0.75f, 0},
    {ScoreFn::kSigmoid, false, Activation::kGelu, 1, 0.75f, 1},
    {ScoreFn::kSoftmax, true, Activation::kGelu, 2, 0.0f, 0, 1},
    {ScoreFn::kSigmoid, false, Activation::kSwiglu, 2, 0.0f, 1, 1},
    {ScoreFn::kSoftmax, false, Activation::kGelu, 1, 0.75f, 0, 1},
};

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayerGrad, ::testing::ValuesIn(kLayerCases),
                         [](const auto& info) { return case_name(info.param); });

class MoeLayerForward : public ::testing::TestWithParam<LayerCase> {};

// out_t = Σ_shared FFN_j(x_t) + Σ_k p_tk FFN_{e_tk}(x_t), by hand from the layer's own routing.
TEST_P(MoeLayerForward, MatchesNaiveReference) {
  const LayerCase c = GetParam();
  LayerFixture f(c);
  f.layer->forward(f.arena, f.out.data(), f.x.data(), f.N, *f.disp, f.placement, true);
  const RoutingPlan& p = f.layer->routing();
  const int D = f.model.d_model, F = f.moe.d_ff_expert, K = c.k;
  for (int t = 0; t < f.N; ++t) {
    std::vector<double> want(D, 0.0);
    for (int k = 0; k < K; ++k) {
      const int e = p.topk_ids_NK[t * K + k];
      if (e < 0) continue;
      auto y = expert_ffn_reference(f.x.data() + t * D, f.arena.param(f.layer->experts().w1_id(e)),
                       f.arena.param(f.layer->experts().w2_id(e)), D, F, c.act);
      for (int d = 0; d < D; ++d) want[d] += p.probs_NK[t * K + k] * y[d];
    }
    for (int j = 0; j < f.layer->num_shared(); ++j) {
      auto y = expert_ffn_reference(f.x.data() + t * D, f.arena.param(f.layer->shared_w1_id(j)),
                       f.arena.param(f.layer->shared_w2_id(j)), D, F, c.act);
      for (int d = 0; d < D; ++d) want[d] += y[d];
    }
    for (int d = 0; d < D; ++d) EXPECT_NEAR(f.out[t * D + d], want[d], 2e-5) << "t=" << t;
  }
  // Bookkeeping: counts after drops, per-pass losses summed.
  int64_t routed = 0;
  for (auto n : f.layer->tokens_per_expert()) routed += n;
  EXPECT_EQ(routed + f.layer->dropped_slots(), (int64_t)f.N * K);
  const auto& losses = f.layer->router().balancing_losses();
  ASSERT_EQ(losses.size(), 2u);
  EXPECT_GT(losses[0], 0.0);
  EXPECT_GT(losses[1], 0.0);
  EXPECT_DOUBLE_EQ(f.layer->aux_loss(), losses[0] + losses[1]);
  // An eval forward computes the same output.
  std::vector<float> out2(f.out.size());
  f.layer->forward(f.arena, out2.data(), f.x.data(), f.N, *f.disp, f.placement, false);
  EXPECT_EQ(out2, f.out);
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayerForward, ::testing::ValuesIn(kLayerCases),
                         [](const auto& info) { return case_name(info.param); });

TEST(MoeLayer, RegistersNamedParamsOfEachKind_shared2_ep2) {
  ModelSpec model = small_model(Activation::kGelu);
  MoeSpec moe = small_moe(ScoreFn::kSoftmax, true, 2, 0.0f, 2);
  ParamArena arena;
  MoeLayer layer(model, moe, 4, Placement::contiguous(4, 2, 0), arena);
  arena.allocate();
  layer.init_params(arena, 1, 0.02f);
  EXPECT_EQ(arena.info(*arena.find("layers.4.moe.router.w")).kind, ParamKind::kDense);
  EXPECT_EQ(arena.info(*arena.find("layers.4.moe.router.w")).shape, (std::vector<int64_t>{6, 4}));
  EXPECT_EQ(arena.info(*arena.find("layers.4.moe.shared.1.w2")).kind, ParamKind::kDense);
  EXPECT_EQ(arena.info(*arena.find("layers.4.moe.experts.1.w1")).kind, ParamKind::kExpert);
  EXPECT_FALSE(arena.find("layers.4.moe.experts.2.w1").has_value());  // on ep rank 1
  EXPECT_EQ(arena.infos().size(), 1u + 2 * 2 + 2 * 2);
  // w2 std is init_std / sqrt(2 · n_layers) = 0.01: check the sample std is near it.
  const auto id = *arena.find("layers.4.moe.shared.0.w2");
  double s2 = 0;
  for (size_t i = 0; i < arena.info(id).numel; ++i) s2 += arena.param(id)[i] * arena.param(id)[i];
  EXPECT_NEAR(std::sqrt(s2 / arena.info(id).numel), 0.01, 0.004);
}

TEST(MoeLayer, ZeroTokensStillCallsEveryCollective) {
  // A dispatcher that counts calls: a rank with no tokens must make the same calls.
  struct Counting final : Dispatcher {
    LocalDispatcher inner;
    std::vector<std::string> calls;
    std::string name() const override { return "counting"; }
    std::unique_ptr<DispatchPlan> new_plan() const override { return inner.new_plan(); }
    void plan(DispatchPlan& p, const Routing& r, const float* x, int D, const Placement& pl) override {
      calls.push_back("plan");
      inner.plan(p, r, x, D, pl);
    }
    void dispatch(DispatchPlan& p, const float* x) override {
      calls.push_back("dispatch");
      inner.dispatch(p, x);
    }
    void combine(DispatchPlan& p, float* out) override {
      calls.push_back("combine");
      inner.combine(p, out);
    }
    void combine_backward(DispatchPlan& p, const float* dout) override {
      calls.push_back("combine_backward");
      inner.combine_backward(p, dout);
    }
    void dispatch_backward(DispatchPlan& p, float* dx, float* dprobs) override {
      calls.push_back("dispatch_backward");
      inner.dispatch_backward(p, dx, dprobs);
    }
  };
  std::vector<std::string> seen[2];
  for (int N : {0, 5}) {
    LayerFixture f({ScoreFn::kSoftmax, true, Activation::kGelu, 2, 0.0f, 1});
    Counting disp;
    f.layer->forward(f.arena, f.out.data(), f.x.data(), N, disp, f.placement, true);
    std::vector<float> dx(f.x.size(), 0.0f);
    f.layer->backward(f.arena, dx.data(), f.dout.data(), 1.0f, disp);
    f.layer->backward(f.arena, nullptr, f.dout.data(), 1.0f, disp);  // dx not wanted: same calls
    EXPECT_TRUE(std::isfinite(f.layer->aux_loss()));
    seen[N ? 1 : 0] = disp.calls;
  }
  EXPECT_EQ(seen[0], seen[1]);
  EXPECT_EQ(seen[1], (std::vector<std::string>{"plan", "dispatch", "combine", "combine_backward",
                                               "dispatch_backward", "combine_backward",
                                               "dispatch_backward"}));
}

}  // namespace
}  // namespace moempi
