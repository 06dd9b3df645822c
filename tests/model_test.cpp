// Whole-model gradient check on a tiny GPT-MoE: the analytic gradient of J = LM loss + balancing
// losses (what backward(1) computes) against central finite differences, for sampled entries of
// EVERY parameter tensor, with routing held fixed (an entry whose perturbation changes any
// layer's expert loads is skipped; the test requires almost none are). Also: determinism.
#include <gtest/gtest.h>

#include <cmath>

#include <fmt/format.h>

#include "models/gpt_moe.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/rng.h"

namespace moempi {
namespace {

struct Case {
  NormType norm;
  Activation act;
  ScoreFn score;
  int every_n_layers;
  int shared;
  std::string name;
};

class ModelGrad : public ::testing::TestWithParam<Case> {};

std::unique_ptr<GptMoe> tiny_model(const Case& c, ModelSpec& m, MoeSpec& moe) {
  m.vocab_size = 11;
  m.d_model = 8;
  m.n_layers = 2;
  m.n_heads = 2;
  m.seq_len = 5;
  m.d_ff = 12;
  m.norm = c.norm;
  m.activation = c.act;
  m.init_std = 0.3f;  // large enough that every path carries gradient
  moe.num_experts = 4;
  moe.top_k = 2;
  moe.d_ff_expert = 6;
  moe.score = c.score;
  moe.normalize_topk = true;
  moe.every_n_layers = c.every_n_layers;
  moe.num_shared_experts = c.shared;
  moe.balancing = {{.type = "aux_loss", .coeff = 0.1f}, {.type = "z_loss", .coeff = 0.01f}};
  auto model = std::make_unique<GptMoe>(m, moe, Placement::contiguous(moe.num_experts, 1, 0),
                                        std::make_unique<LocalDispatcher>());
  model->init_params(7);
  return model;
}

TEST_P(ModelGrad, MatchesFiniteDifferences) {
  const Case c = GetParam();
  ModelSpec m;
  MoeSpec moe;
  auto model = tiny_model(c, m, moe);
  const int B = 2, N = B * m.seq_len;
  std::vector<int32_t> tokens(N), targets(N);
  Rng rng(3, 0, 0, 0);
  for (int i = 0; i < N; ++i) {
    tokens[i] = static_cast<int32_t>(rng.below(m.vocab_size));
    targets[i] = static_cast<int32_t>(rng.below(m.vocab_size));
  }
  auto loads = [&] {
    std::vector<int64_t> all;
    for (auto* l : model->moe_layers()) all.insert(all.end(), l->tokens_per_expert().begin(), l->tokens_per_expert().end());
    return all;
  };
  auto objective = [&] {
    double loss = model->forward(tokens.data(), targets.data(), B, /*training=*/true);
    return loss + model->aux_loss();
  };
  ParamArena& arena = model->arena();
  arena.zero_grads();
  objective();
  const auto base_loads = loads();
  model->backward(1.0f);
  std::vector<float> grad(arena.grads().begin(), arena.grads().end());

  int checked = 0, skipped = 0;
  double worst = 0;
  std::string worst_name;
  const float eps = 1e-2f;
  for (size_t id = 0; id < arena.infos().size(); ++id) {
    const ParamInfo& info = arena.info(id);
    for (int sample = 0; sample < 4; ++sample) {
      const size_t i = rng.below(info.numel);
      float* p = arena.param(id) + i;
      const float orig = *p;
      *p = orig + eps;
      const double jp = objective();
      const bool same_p = loads() == base_loads;
      *p = orig - eps;
      const double jm = objective();
      const bool same_m = loads() == base_loads;
      *p = orig;
      if (!same_p || !same_m) {
        ++skipped;
        continue;
      }
      const double num = (jp - jm) / (2 * eps);
      const double ana = grad[info.offset + i];
      const double err = std::abs(num - ana) / std::max(1e-2, std::abs(num) + std::abs(ana));
      if (err > worst) {
        worst = err;
        worst_name = fmt::format("{}[{}]: analytic {:.6g} numeric {:.6g}", info.name, i, ana, num);
      }
      ++checked;
    }
  }
  EXPECT_LT(worst, 2e-2) << worst_name;
  EXPECT_GT(checked, 10 * skipped) << "routing changed too often to check";
  EXPECT_GT(checked, 40);
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, ModelGrad,
    ::testing::Values(Case{NormType::kLayerNorm, Activation::kGelu, ScoreFn::kSoftmax, 1, 0, "layernorm_gelu_softmax"},
                      Case{NormType::kRmsNorm, Activation::kSwiglu, ScoreFn::kSigmoid, 1, 1, "rmsnorm_swiglu_sigmoid_shared1"},
                      Case{NormType::kLayerNorm, Activation::kGelu, ScoreFn::kSoftmax, 2, 0, "every2_dense_ffn"}),
    [](const auto& info) { return info.param.name; });

TEST(Model, SameSeedSameLossesBitIdentical) {
  auto run = [] {
    ModelSpec m;
    MoeSpec moe;
    auto model = tiny_model({NormType::kLayerNorm, Activation::kGelu, ScoreFn::kSoftmax, 1, 0, ""}, m, moe);
    std::vector<int32_t> tokens(10, 3), targets(10, 4);
    std::vector<double> out;
    for (int s = 0; s < 3; ++s) {
      model->arena().zero_grads();
      out.push_back(model->forward(tokens.data(), targets.data(), 2, true));
      model->backward(1.0f);
      for (size_t i = 0; i < model->arena().numel(); ++i) model->arena().params()[i] -= 0.1f * model->arena().grads()[i];
    }
    return out;
  };
  const auto a = run(), b = run();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);
  EXPECT_LT(a.back(), a.front());  // plain SGD on a repeated batch lowers its loss
}

TEST(Model, FlopsPerTokenOfReferenceModel) {
  // The small reference model (configs/small.yaml): ~20.9 MFLOP per training token.
  ModelSpec m;
  m.vocab_size = 256; m.d_model = 256; m.n_layers = 4; m.n_heads = 4; m.seq_len = 128;
  MoeSpec moe;
  moe.num_experts = 8; moe.top_k = 2; moe.d_ff_expert = 512;
  GptMoe model(m, moe, Placement::contiguous(8, 1, 0), std::make_unique<LocalDispatcher>());
  EXPECT_NEAR(model.flops_per_token() / 1e6, 20.9, 0.1);
}

}  // namespace
}  // namespace moempi
