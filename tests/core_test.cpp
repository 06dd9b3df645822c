// Tests of runtime/core: arena layout, RNG determinism, error scopes, the BLAS wrapper.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/core/arena.h"
#include "runtime/core/blas.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "runtime/core/state_registry.h"

namespace moempi {

TEST(ParamArena, DenseFirstThenExpertsAligned) {
  ParamArena arena;
  auto e0 = arena.add("experts.0.w", {3, 5}, ParamKind::kExpert, true);
  auto d0 = arena.add("wte", {7}, ParamKind::kDense, true);
  auto d1 = arena.add("ln.w", {2, 2}, ParamKind::kDense, false);
  arena.allocate();
  EXPECT_EQ(arena.info(d0).offset, 0u);
  EXPECT_EQ(arena.info(d1).offset, 16u);
  EXPECT_EQ(arena.dense_numel(), 32u);
  EXPECT_EQ(arena.info(e0).offset, 32u);
  EXPECT_EQ(arena.expert_params().size(), 16u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(arena.param(e0)) % 64, 0u);
  arena.grad(e0)[3] = 1.0f;
  arena.zero_grads();
  EXPECT_EQ(arena.grad(e0)[3], 0.0f);
  EXPECT_FALSE(arena.find("nope").has_value());  // a miss is not an error (it may differ by rank)
  EXPECT_EQ(arena.find("experts.0.w"), e0);
}

TEST(ParamArena, DuplicateNameIsCollectiveError) {
  ParamArena arena;
  arena.add("a", {1}, ParamKind::kDense, true);
  EXPECT_THROW(arena.add("a", {1}, ParamKind::kDense, true), CollectiveError);
}

// 100,000 tensors (a model with 50,000 experts in one layer registers this many): names are
// indexed, so registering, rejecting a duplicate and finding each one stay linear overall. Before
// the index, add() compared every new name with all previous ones (E = 50,000 took 191 s).
TEST(ParamArena, HundredThousandTensorsRegisterFindAndRejectDuplicates) {
  const int n = 100000;
  ParamArena arena;
  for (int i = 0; i < n; ++i)
    ASSERT_EQ(arena.add(fmt::format("layers.0.moe.experts.{}.w{}", i / 2, 1 + i % 2), {2}, ParamKind::kExpert, true),
              static_cast<ParamArena::Id>(i));
  EXPECT_THROW(arena.add("layers.0.moe.experts.31415.w2", {2}, ParamKind::kExpert, true), CollectiveError);
  EXPECT_EQ(arena.infos().size(), static_cast<size_t>(n));  // the rejected one was not added
  arena.allocate();
  for (int i = 0; i < n; ++i) ASSERT_EQ(arena.find(fmt::format("layers.0.moe.experts.{}.w{}", i / 2, 1 + i % 2)), i);
  EXPECT_FALSE(arena.find("layers.0.moe.experts.50000.w1").has_value());  // a miss is not an error
  EXPECT_EQ(arena.numel(), static_cast<size_t>(n) * 16);  // each view padded to 16 floats
}

TEST(AllocationLabel, NamesWhatIsAllocatedAndRestoresTheOuterScope) {
  EXPECT_STREQ(AllocationLabel::current(), "");
  {
    AllocationLabel outer("the optimizer state");
    EXPECT_STREQ(AllocationLabel::current(), "the optimizer state");
    {
      AllocationLabel inner("activations");
      EXPECT_STREQ(AllocationLabel::current(), "activations");
    }
    EXPECT_STREQ(AllocationLabel::current(), "the optimizer state");
  }
  EXPECT_STREQ(AllocationLabel::current(), "");
}

TEST(Rng, SameKeySameStreamDifferentKeyDifferent) {
  Rng a(1, 0, 0, 7), b(1, 0, 0, 7), c(1, 1, 0, 7), d(1, 0, 1, 7);
  for (int i = 0; i < 100; ++i) {
    uint64_t x = a.next_u64();
    EXPECT_EQ(x, b.next_u64());
    EXPECT_NE(x, c.next_u64());
    EXPECT_NE(x, d.next_u64());
  }
}

TEST(Rng, NormalMoments) {
  Rng r(42, 0, 0, Rng::stream_of("normal"));
  double s = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double x = r.normal();
    s += x;
    s2 += x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.02);
  Rng u(42, 0, 0, 1);
  for (int i = 0; i < 1000; ++i) {
    float x = u.uniform();
    ASSERT_GE(x, 0.0f);
    ASSERT_LT(x, 1.0f);
  }
}

TEST(Error, CollectiveCarriesMessage) {
  try {
    MOEMPI_CHECK_ALL(1 + 1 == 3, "moe.num_experts ({}) is not divisible by parallel.ep ({})", 63, 8);
    FAIL() << "no throw";
  } catch (const CollectiveError& e) {
    EXPECT_STREQ(e.what(), "moe.num_experts (63) is not divisible by parallel.ep (8)");
  }
}

TEST(Blas, GemmAllTransposesAgainstNaive) {
  const int M = 5, N = 7, K = 3;
  std::vector<float> A(M * K), B(K * N);
  Rng r(1, 0, 0, 0);
  for (auto& x : A) x = r.normal();
  for (auto& x : B) x = r.normal();
  std::vector<float> At(K * M), Bt(N * K);
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) At[k * M + i] = A[i * K + k];
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) Bt[j * K + k] = B[k * N + j];
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      std::vector<float> C(M * N, 1.0f);
      blas::matmul(C.data(), ta ? At.data() : A.data(), tb ? Bt.data() : B.data(), M, N, K, ta, tb,
                   /*accumulate=*/true);
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
          double ref = 1.0;
          for (int k = 0; k < K; ++k) ref += A[i * K + k] * B[k * N + j];
          EXPECT_NEAR(C[i * N + j], ref, 1e-5) << "ta=" << ta << " tb=" << tb;
        }
    }
}

TEST(BlasEnv, FastKernelSelectedWhenCpuAllowsIt) {
  // The test main calls ensure_fast_kernel(); on a CPU with a known better kernel OpenBLAS
  // must now report it (PLATFORM.md item 1), and run one thread.
  EXPECT_TRUE(blas::is_fast_enough(blas::corename())) << blas::kernel_note();
  EXPECT_FALSE(blas::preferred_coretype()[0] != 0 && blas::is_fast_enough("Prescott"));
  EXPECT_EQ(blas::num_threads(), 1);
}

}  // namespace moempi

namespace moempi {

// Views under global names with this rank's slice; a miss returns nullptr (no error on one rank).
TEST(StateRegistry, RegistersViewsAndFindsByName) {
  StateRegistry reg;
  std::vector<float> w(6, 1.5f);
  std::vector<int64_t> step = {7};
  reg.add_f32("param/w", {4, 3}, {w.data(), w.size()}, 6, true);  // elements [6, 12) of 12
  reg.add_i64("train/step", {1}, {step.data(), 1}, false);
  ASSERT_EQ(reg.size(), 2u);
  const StateTensor* t = reg.find("param/w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->global_numel(), 12);
  EXPECT_EQ(t->begin, 6);
  EXPECT_EQ(t->count, 6);
  EXPECT_EQ(t->bytes(), 24u);
  EXPECT_EQ(t->data, w.data());
  EXPECT_FALSE(reg.find("train/step")->writer);
  EXPECT_EQ(reg.find("param/nope"), nullptr);
}

// The arena registers every parameter; experts are written by the expert writer only.
TEST(StateRegistry, ArenaRegistersParamsWithWriters) {
  ParamArena arena;
  arena.add("experts.0.w", {3, 5}, ParamKind::kExpert, true);
  arena.add("wte", {7}, ParamKind::kDense, true);
  arena.allocate();
  StateRegistry reg;
  arena.register_state(reg, {.dense = false, .experts = true});
  ASSERT_EQ(reg.size(), 2u);
  EXPECT_TRUE(reg.find("param/experts.0.w")->writer);
  EXPECT_FALSE(reg.find("param/wte")->writer);
  EXPECT_EQ(reg.find("param/experts.0.w")->data, arena.param(*arena.find("experts.0.w")));
  EXPECT_EQ(reg.find("param/experts.0.w")->global_shape, (std::vector<int64_t>{3, 5}));
}

}  // namespace moempi
