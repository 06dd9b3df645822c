// Optimizers and schedules against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>

#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

ParamArena two_params() {
  ParamArena arena;
  arena.add("w", {2}, ParamKind::kDense, /*decay=*/true);
  arena.add("ln.w", {1}, ParamKind::kDense, /*decay=*/false);
  arena.allocate();
  arena.param(0)[0] = 1.0f;
  arena.param(0)[1] = -2.0f;
  arena.param(1)[0] = 0.5f;
  arena.grad(0)[0] = 0.1f;
  arena.grad(0)[1] = -0.3f;
  arena.grad(1)[0] = 0.2f;
  return arena;
}

TEST(AdamW, TwoStepsMatchHandComputedAndSkipDecayOnNorms) {
  OptimSpec spec;
  spec.lr = 0.1f;
  spec.weight_decay = 0.5f;
  spec.beta1 = 0.9f;
  spec.beta2 = 0.99f;
  spec.eps = 1e-8f;
  ParamArena arena = two_params();
  auto opt = make_optimizer(spec, arena);
  double p[3] = {1.0, -2.0, 0.5}, g[3] = {0.1, -0.3, 0.2}, m[3] = {}, v[3] = {};
  const bool decay[3] = {true, true, false};
  for (int t = 1; t <= 2; ++t) {
    opt->step(arena, spec.lr);
    for (int i = 0; i < 3; ++i) {
      m[i] = 0.9 * m[i] + 0.1 * g[i];
      v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
      double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.99, t));
      p[i] -= 0.1 * (mh / (std::sqrt(vh) + 1e-8) + (decay[i] ? 0.5 * p[i] : 0.0));
    }
  }
  EXPECT_NEAR(arena.param(0)[0], p[0], 1e-5);
  EXPECT_NEAR(arena.param(0)[1], p[1], 1e-5);
  EXPECT_NEAR(arena.param(1)[0], p[2], 1e-5);
}

TEST(Sgd, MomentumTwoSteps) {
  OptimSpec spec;
  spec.type = "sgd";
  spec.momentum = 0.5f;
  ParamArena arena = two_params();
  auto opt = make_optimizer(spec, arena);
  opt->step(arena, 0.1f);
  opt->step(arena, 0.1f);
  // buf = g, then 1.5 g: p -= 0.1 * 2.5 g
  EXPECT_NEAR(arena.param(0)[0], 1.0f - 0.25f * 0.1f, 1e-6);
  EXPECT_NEAR(arena.param(1)[0], 0.5f - 0.25f * 0.2f, 1e-6);
}

TEST(Optimizer, UnknownTypeNamesPath) {
  OptimSpec spec;
  spec.type = "lion";
  ParamArena arena = two_params();
  try {
    make_optimizer(spec, arena);
    FAIL();
  } catch (const CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("optim.type: 'lion'"), std::string::npos);
  }
}

TEST(Clip, FactorAndScale) {
  EXPECT_FLOAT_EQ(clip_factor(0.5, 1.0f), 1.0f);
  EXPECT_FLOAT_EQ(clip_factor(4.0, 1.0f), 0.25f);
  EXPECT_FLOAT_EQ(clip_factor(4.0, 0.0f), 1.0f);  // off
  ParamArena arena = two_params();
  scale_grads(arena, 0.5f);
  EXPECT_FLOAT_EQ(arena.grad(0)[1], -0.15f);
}

TEST(LrSchedule, WarmupCosineAndLinearEndpoints) {
  OptimSpec spec;
  spec.lr = 1.0f;
  spec.schedule.type = "warmup_cosine";
  spec.schedule.warmup_steps = 10;
  spec.schedule.min_lr_ratio = 0.1f;
  LrSchedule cosine(spec, 110);
  EXPECT_FLOAT_EQ(cosine.lr_at(0), 0.1f);
  EXPECT_FLOAT_EQ(cosine.lr_at(9), 1.0f);
  EXPECT_FLOAT_EQ(cosine.lr_at(10), 1.0f);
  EXPECT_NEAR(cosine.lr_at(109), 0.1f, 1e-6);
  EXPECT_NEAR(cosine.lr_at(10 + 99 / 2), 0.55f, 0.01f);
  spec.schedule.type = "warmup_linear";
  LrSchedule linear(spec, 110);
  EXPECT_NEAR(linear.lr_at(109), 0.1f, 1e-6);
  spec.schedule.type = "constant";
  EXPECT_FLOAT_EQ(LrSchedule(spec, 5).lr_at(3), 1.0f);
  spec.schedule.type = "cosine";
  EXPECT_THROW(LrSchedule(spec, 5), CollectiveError);
}

}  // namespace
}  // namespace moempi
