// MPI tests of LSH-compressed dispatch (parallel/lsh_dispatcher.h, parallel/lsh_hash.h), run at
// 1-4 ranks by ctest:
//   - every bucket a singleton (min_tokens above every count, a hash so fine that no two tokens
//     share a bucket, a max_residual below every token's spread, or a validation pass without
//     compress_eval) => bit-identical to `local` (and so to the inner dispatcher alone), over every
//     registered inner dispatcher that accepts the layout;
//   - max_residual splits exactly the slots farther than max_residual·|c| from their bucket's
//     centroid c out of the bucket, and nothing else;
//   - lsh over flat, flat_packed and shm at W ranks equals lsh over `local` on each rank's own
//     problem bit for bit (compression is per sender, so the result may not depend on W or the
//     transport);
//   - finite differences of the global loss w.r.t. inputs, router probabilities and expert weights
//     (experts y = tanh(W_e x)) with the buckets held fixed (a coordinate whose perturbation moves a
//     bucket is skipped and counted), with and without the residual;
//   - hash codes and bucket assignment identical on every rank and across reruns, new projections
//     at a new rotation epoch, and the compression counters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "comm/collectives.h"
#include "comm/payload.h"
#include "comm/wire_dtype.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/local_dispatcher.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/lsh_hash.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "tests/dispatch_problem.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

using test_util::DispatchProblem;
using test_util::make_dispatch_problem;
using test_util::world_size;

constexpr int kExperts = 12;  // divisible by 1, 2, 3, 4

CompressionSpec lsh_spec(int H, int b, int min_tokens, bool residual) {
  CompressionSpec c;
  c.type = "lsh";
  c.num_hashes = H;
  c.buckets_per_hash = b;
  c.min_tokens = min_tokens;
  c.residual = residual;
  c.rotation_seed = 7;
  return c;
}

// lsh over the named inner dispatcher, ep over the world; nullptr when the layout refuses it.
std::unique_ptr<Dispatcher> make_lsh(const std::string& inner, const CompressionSpec& c, const ProcessGroups& g) {
  DispatchSpec s;
  s.type = inner;
  s.compression = c;
  try {
    return make_dispatcher(s, g);
  } catch (const CollectiveError& e) {
    test_util::expect_contains(e.what(), {"moe.dispatch.type"});
    return nullptr;
  }
}

// ---------------------------------------------------------------------------------------------
// Singletons: bit-identical to local.

struct SingletonCase {
  std::string inner, pattern, how;  // how: min_tokens | fine_hash | max_residual | evaluating
};

class LshSingletons : public ::testing::TestWithParam<SingletonCase> {};

TEST_P(LshSingletons, BitIdenticalToUncompressed) {
  const SingletonCase c = GetParam();
  const int W = world_size();
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  // fine_hash: 8 hashes of 2*D codes each; payload rows are distinct random vectors, so two tokens
  // share all 8 codes with negligible probability (checked below: every bucket has one slot).
  // max_residual: coarse buckets, but no token lies within 1e-6·|c| of its bucket's centroid.
  // evaluating: coarse buckets, but a validation pass without compress_eval runs exact.
  CompressionSpec spec = c.how == "min_tokens" ? lsh_spec(2, 2, 1 << 30, true)
                         : c.how == "fine_hash" ? lsh_spec(8, 32, 0, true)
                                                : lsh_spec(1, 2, 0, true);
  if (c.how == "max_residual") spec.max_residual = 1e-6;
  auto d = make_lsh(c.inner, spec, groups);
  if (!d) GTEST_SKIP() << c.inner << " refuses ep " << W;
  if (c.how == "evaluating") d->set_evaluating(true);
  const Placement placement = make_placement(kExperts, groups);
  auto plan = d->new_plan();
  for (int round = 0; round < 2; ++round) {
    const int D = round == 0 ? 24 : 16;
    std::vector<DispatchProblem> group;
    for (int q = 0; q < W; ++q) group.push_back(make_dispatch_problem(c.pattern, kExperts, 2, D, q, W, round));
    const DispatchProblem& p = group[groups.ep.rank()];
    test_util::Result got;
    test_util::run_forward(*d, *plan, p, placement, got);
    for (int32_t n : LshDispatcher::bucket_sizes(*plan)) ASSERT_EQ(n, 1) << "a bucket with more than one slot";
    test_util::run_backward(*d, *plan, p, got);
    std::string what;
    EXPECT_EQ(test_util::check_against_local(got, group, placement, &what), 0) << what;
    int64_t routed = 0;
    for (int32_t e : p.topk) routed += e >= 0;
    EXPECT_EQ(static_cast<int64_t>(LshDispatcher::bucket_sizes(*plan).size()), routed);
  }
  EXPECT_EQ(d->stats().slot_rows, d->stats().exchange_rows);  // ratio 1
}

std::vector<SingletonCase> singleton_cases() {
  std::vector<SingletonCase> out;
  for (const std::string& inner : dispatcher_names())
    for (const char* pattern : {"balanced", "hot_expert", "dropped", "zero_rank"})
      for (const char* how : {"min_tokens", "fine_hash", "max_residual", "evaluating"})
        out.push_back({inner, pattern, how});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Inner, LshSingletons, ::testing::ValuesIn(singleton_cases()),
                         [](const ::testing::TestParamInfo<SingletonCase>& i) {
                           return i.param.inner + "_" + i.param.pattern + "_" + i.param.how;
                         });

// ---------------------------------------------------------------------------------------------
// Compressed: the same bits at any W and over any transport as on one rank with `local`.

TEST(LshConsistency, EveryTransportEqualsLocalOnOwnProblem) {
  const int W = world_size();
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  const Placement placement = make_placement(kExperts, groups);
  const int me = groups.ep.rank();
  for (bool residual : {true, false}) {
    const CompressionSpec spec = lsh_spec(2, 4, 2, residual);
    for (const std::string inner : {"flat", "flat_packed", "flat_typed", "shm", "auto"}) {
      SCOPED_TRACE(inner + (residual ? " residual" : " no residual"));
      auto d = make_lsh(inner, spec, groups);
      ASSERT_TRUE(d) << inner << " refused a single-node ep group";
      auto plan = d->new_plan();
      for (const char* pattern : {"balanced", "hot_expert", "dropped"}) {
        const DispatchProblem p = make_dispatch_problem(pattern, kExperts, 2, 16, me, W, 3);
        test_util::Result got;
        test_util::run_forward(*d, *plan, p, placement, got);
        test_util::run_backward(*d, *plan, p, got);
        const auto buckets = LshDispatcher::bucket_sizes(*plan);
        // The reference: lsh over `local` on this rank's problem alone.
        LshDispatcher ref(std::make_unique<LocalDispatcher>(), spec);
        auto ref_plan = ref.new_plan();
        test_util::Result want;
        test_util::run_forward(ref, *ref_plan, p, Placement::contiguous(kExperts, 1, 0), want);
        test_util::run_backward(ref, *ref_plan, p, want);
        EXPECT_EQ(LshDispatcher::bucket_sizes(*ref_plan), buckets);
        EXPECT_EQ(test_util::differing(got.out, want.out), 0) << pattern;
        EXPECT_EQ(test_util::differing(got.dprobs, want.dprobs), 0) << pattern;
        EXPECT_EQ(test_util::differing(got.dx, want.dx), 0) << pattern;
        int64_t shared = 0;
        for (int32_t n : buckets) shared += n > 1;
        if (p.T > 0 && std::string(pattern) != "dropped") {
          EXPECT_GT(shared, 0) << "nothing was compressed";
        }
      }
      EXPECT_LT(d->stats().exchange_rows, d->stats().slot_rows);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Finite differences with experts that have weights: y = tanh(W_e x), W_e (D, D) on its owner.

struct WeightedExperts {
  int D = 0;
  std::vector<std::vector<float>> W;   // [local expert] (D, D) row-major: y_i = tanh(Σ_j W_ij x_j)
  std::vector<std::vector<double>> dW;

  void forward(DispatchPlan& plan) const {
    int64_t at = 0;
    for (size_t le = 0; le < plan.local_experts().size(); ++le)
      for (int64_t n = plan.rows_per_local_expert()[le]; n > 0; --n, ++at)
        for (int i = 0; i < D; ++i) {
          double a = 0;
          for (int j = 0; j < D; ++j) a += W[le][i * D + j] * plan.x_RD()[at * D + j];
          plan.y_RD()[at * D + i] = static_cast<float>(std::tanh(a));
        }
  }
  void backward(DispatchPlan& plan) {
    int64_t at = 0;
    std::vector<double> pre(D);
    for (size_t le = 0; le < plan.local_experts().size(); ++le)
      for (int64_t n = plan.rows_per_local_expert()[le]; n > 0; --n, ++at) {
        const float* x = plan.x_RD() + at * D;
        const float* dy = plan.dy_RD() + at * D;
        for (int i = 0; i < D; ++i) {
          double a = 0;
          for (int j = 0; j < D; ++j) a += W[le][i * D + j] * x[j];
          const double t = std::tanh(a);
          pre[i] = dy[i] * (1 - t * t);
        }
        float* dx = plan.dx_RD() + at * D;  // overwrites y (dead after combine_backward)
        for (int j = 0; j < D; ++j) {
          double s = 0;
          for (int i = 0; i < D; ++i) s += W[le][i * D + j] * pre[i];
          dx[j] = static_cast<float>(s);
        }
        for (int i = 0; i < D; ++i)
          for (int j = 0; j < D; ++j) dW[le][i * D + j] += pre[i] * x[j];
      }
  }
};

class LshGradients : public ::testing::TestWithParam<bool> {};

TEST_P(LshGradients, MatchFiniteDifferencesWithBucketsFixed) {
  const bool residual = GetParam();
  const int W = world_size(), D = 6, K = 2;
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  const Placement placement = make_placement(kExperts, groups);
  const int me = groups.ep.rank();
  auto d = make_lsh("flat", lsh_spec(1, 2, 2, residual), groups);
  ASSERT_TRUE(d);
  auto plan = d->new_plan();
  DispatchProblem p = make_dispatch_problem("balanced", kExperts, K, D, me, W, 5);
  // O(1) values, so that fp32 rounding stays far below the differences.
  Rng rng(99, me, 0, 1);
  for (float& v : p.x) v = rng.normal();
  for (float& v : p.dout) v = rng.normal();
  WeightedExperts ex;
  ex.D = D;
  for (size_t le = 0; le < placement.local_experts().size(); ++le) {
    ex.W.emplace_back(D * D);
    for (float& w : ex.W.back()) w = 0.5f * rng.normal();
    ex.dW.emplace_back(D * D, 0.0);
  }
  // Global loss L = Σ_ranks Σ_t <dout_t, out_t> (collective).
  std::vector<int32_t> buckets0;
  auto loss = [&](std::vector<int32_t>* buckets) {
    d->plan(*plan, Routing{p.topk.data(), p.probs.data(), p.T, K}, p.x.data(), D, placement);
    d->dispatch(*plan, p.x.data());
    ex.forward(*plan);
    std::vector<float> out(static_cast<size_t>(p.T) * D);
    d->combine(*plan, out.data());
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += static_cast<double>(p.dout[i]) * out[i];
    allreduce_sum(&l, 1, groups.world);
    if (buckets) *buckets = LshDispatcher::bucket_of_slot(*plan);
    return l;
  };
  loss(&buckets0);
  int64_t shared = 0;
  for (int32_t n : LshDispatcher::bucket_sizes(*plan)) shared += n > 1;
  EXPECT_GT(shared, 0) << "no bucket holds two slots: the test would not exercise the 1/N_j term";
  std::vector<float> dprobs(p.topk.size()), dx(p.x.size(), 0.0f);
  d->combine_backward(*plan, p.dout.data());
  ex.backward(*plan);
  d->dispatch_backward(*plan, dx.data(), dprobs.data());

  // Central differences; every rank takes part in every evaluation (the loss is collective), the
  // perturbing rank takes turns. A perturbation that changes this rank's buckets is skipped.
  const float eps = 1e-2f;
  int checked = 0, skipped = 0;
  double worst = 0;
  auto check = [&](float* v, double analytic, int owner, const char* what) {
    const float v0 = *v;
    std::vector<int32_t> b1, b2;
    if (me == owner) *v = v0 + eps;
    const double lp = loss(&b1);
    if (me == owner) *v = v0 - eps;
    const double lm = loss(&b2);
    if (me == owner) *v = v0;
    int64_t moved = (b1 != buckets0 || b2 != buckets0) ? 1 : 0;
    allreduce_sum(&moved, 1, groups.world);
    if (me != owner) return;
    if (moved) {
      ++skipped;
      return;
    }
    const double fd = (lp - lm) / (2.0 * eps);
    const double err = std::fabs(fd - analytic) / std::max(1.0, std::fabs(fd));
    worst = std::max(worst, err);
    ++checked;
    EXPECT_LT(err, 1e-2) << what << ": fd " << fd << " analytic " << analytic;
  };
  for (int owner = 0; owner < W; ++owner) {
    int64_t T = p.T;
    bcast(&T, 1, owner, groups.world);
    for (int64_t i = 0; i < std::min<int64_t>(T * D, 30); ++i) {
      const int64_t idx = (i * 7) % (T * D);
      check(&p.x[me == owner ? idx : 0], me == owner ? dx[idx] : 0, owner, "x");
    }
    for (int64_t i = 0; i < std::min<int64_t>(T * K, 12); ++i) {
      const int64_t idx = (i * 5) % (T * K);
      check(&p.probs[me == owner ? idx : 0], me == owner ? dprobs[idx] : 0, owner, "probs");
    }
    int64_t El = static_cast<int64_t>(placement.local_experts().size());
    bcast(&El, 1, owner, groups.world);
    for (int64_t le = 0; le < El; ++le)
      for (int i = 0; i < 4; ++i) {
        const int idx = (i * 11 + 3) % (D * D);
        check(&ex.W[me == owner ? le : 0][idx], me == owner ? ex.dW[le][idx] : 0, owner, "expert weight");
      }
  }
  EXPECT_GT(checked, 3 * skipped) << "too many perturbations moved a bucket";
  EXPECT_GT(checked, 0);
  std::printf("rank %d: %d coordinates checked, %d skipped (bucket moved), worst relative error %.2e\n", me,
              checked, skipped, worst);
}

INSTANTIATE_TEST_SUITE_P(Residual, LshGradients, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "residual" : "no_residual"; });

// ---------------------------------------------------------------------------------------------
// max_residual and validation passes.

// 200 tokens of width 16 over 4 experts, k = 2, on one rank.
DispatchProblem spread_problem() {
  DispatchProblem p;
  p.T = 200, p.K = 2, p.D = 16;
  Rng rng(11, 0, 0, 0);
  for (int t = 0; t < p.T; ++t) {
    const int a = static_cast<int>(rng.below(4)), b = (a + 1 + static_cast<int>(rng.below(3))) % 4;
    p.topk.insert(p.topk.end(), {a, b});
    p.probs.insert(p.probs.end(), {0.6f, 0.4f});
  }
  for (int i = 0; i < p.T * p.D; ++i) p.x.push_back(rng.normal() + (i % p.D < 4 ? 2.0f : 0.0f));
  p.dout.assign(p.x.size(), 1.0f);
  return p;
}

// The buckets (slot lists) of the last plan.
std::vector<std::vector<int64_t>> buckets_of(const DispatchPlan& plan) {
  const auto& bos = LshDispatcher::bucket_of_slot(plan);
  std::vector<std::vector<int64_t>> out(LshDispatcher::bucket_sizes(plan).size());
  for (size_t s = 0; s < bos.size(); ++s)
    if (bos[s] >= 0) out[bos[s]].push_back(static_cast<int64_t>(s));
  return out;
}

TEST(LshSpread, MaxResidualSplitsOffExactlyTheFarSlots) {
  const DispatchProblem p = spread_problem();
  const Placement one = Placement::contiguous(4, 1, 0);
  CompressionSpec spec = lsh_spec(1, 2, 0, false);  // 2 buckets per expert: wide ones
  LshDispatcher coarse(std::make_unique<LocalDispatcher>(), spec);
  auto plan0 = coarse.new_plan();
  test_util::Result r0;
  test_util::run_forward(coarse, *plan0, p, one, r0);
  const auto wide = buckets_of(*plan0);
  // |x_t - c| / |c| of every slot against its wide bucket's centroid (double).
  std::vector<double> spread(p.topk.size(), 0.0);
  for (const auto& b : wide) {
    std::vector<double> c(p.D, 0.0);
    for (int64_t s : b)
      for (int d = 0; d < p.D; ++d) c[d] += p.x[s / p.K * p.D + d] / static_cast<double>(b.size());
    double c2 = 0;
    for (double v : c) c2 += v * v;
    for (int64_t s : b) {
      double r2 = 0;
      for (int d = 0; d < p.D; ++d) r2 += (p.x[s / p.K * p.D + d] - c[d]) * (p.x[s / p.K * p.D + d] - c[d]);
      spread[s] = std::sqrt(r2 / c2);
    }
  }
  std::vector<double> sorted = spread;
  std::sort(sorted.begin(), sorted.end());
  spec.max_residual = sorted[sorted.size() / 2] * (1 + 1e-9);  // about half the slots are near
  LshDispatcher gated(std::make_unique<LocalDispatcher>(), spec);
  auto plan1 = gated.new_plan();
  test_util::Result r1;
  test_util::run_forward(gated, *plan1, p, one, r1);
  const auto& bos = LshDispatcher::bucket_of_slot(*plan1);
  int split = 0, kept_shared = 0;
  for (const auto& b : wide) {
    // The near slots of a wide bucket share one bucket (alone when just one), the far ones go alone.
    std::vector<int64_t> near;
    for (int64_t s : b) {
      if (spread[s] <= spec.max_residual) {
        near.push_back(s);
        continue;
      }
      EXPECT_EQ(LshDispatcher::bucket_sizes(*plan1)[bos[s]], 1) << "far slot " << s << " shares a bucket";
      ++split;
    }
    if (near.empty()) continue;
    const auto bucket = buckets_of(*plan1)[bos[near[0]]];
    EXPECT_EQ(bucket, near) << "the near slots of a wide bucket form one bucket, nothing else";
    kept_shared += near.size() > 1;
  }
  EXPECT_GT(split, 0);
  EXPECT_GT(kept_shared, 0);
  // Backward runs on the gated buckets as on any (centroid gradient checks: LshGradients).
  test_util::run_backward(gated, *plan1, p, r1);
  for (float v : r1.dx) ASSERT_TRUE(std::isfinite(v));
}

TEST(LshSpread, ValidationCompressesOnlyWithCompressEval) {
  const DispatchProblem p = spread_problem();
  const Placement one = Placement::contiguous(4, 1, 0);
  for (bool compress_eval : {false, true}) {
    CompressionSpec spec = lsh_spec(1, 2, 0, true);
    spec.compress_eval = compress_eval;
    LshDispatcher d(std::make_unique<LocalDispatcher>(), spec);
    auto plan = d.new_plan();
    auto shared = [&] {
      test_util::Result r;
      test_util::run_forward(d, *plan, p, one, r);
      const auto sizes = LshDispatcher::bucket_sizes(*plan);
      return std::count_if(sizes.begin(), sizes.end(), [](int32_t n) { return n > 1; });
    };
    EXPECT_GT(shared(), 0);  // training
    d.set_evaluating(true);
    if (compress_eval)
      EXPECT_GT(shared(), 0);
    else
      EXPECT_EQ(shared(), 0);
    d.set_evaluating(false);
    EXPECT_GT(shared(), 0) << "training compresses again after validation";
  }
}

// ---------------------------------------------------------------------------------------------
// Hashing: shared projections, deterministic codes, rotation.

TEST(LshHash, CodesIdenticalOnEveryRankAndAcrossReruns) {
  const int W = world_size(), D = 32, T = 200, H = 6, b = 4;
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  std::vector<float> x(static_cast<size_t>(T) * D);
  payload_fill(x.data(), x.size(), 5, 0, 0);  // the same tokens on every rank
  CrossPolytopeHash h(D, H, b, 42);
  std::vector<uint16_t> codes(static_cast<size_t>(T) * H);
  h.hash(x.data(), T, codes.data());
  // Cross-polytope code: argmax over [Rx; -Rx], recomputed directly in double.
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < H; ++k) {
      double best = -1;
      int code = -1;
      for (int j = 0; j < b; ++j) {
        double v = 0;
        for (int dd = 0; dd < D; ++dd) v += h.projections()[(static_cast<size_t>(k) * b / 2 + j % (b / 2)) * D + dd] * x[t * D + dd];
        if (j >= b / 2) v = -v;
        if (v > best + 1e-5) best = v, code = j;
      }
      ASSERT_EQ(codes[t * H + k], code) << "token " << t << " hash " << k;
    }
  // Every rank, and a second object (a rerun), get the same codes.
  std::vector<int64_t> mine(codes.begin(), codes.end()), all(mine.size() * W);
  allgather_i64(mine.data(), all.data(), static_cast<int>(mine.size()), groups.world);
  for (int q = 0; q < W; ++q)
    EXPECT_TRUE(std::equal(mine.begin(), mine.end(), all.begin() + q * mine.size())) << "rank " << q << " differs";
  CrossPolytopeHash again(D, H, b, 42);
  std::vector<uint16_t> codes2(codes.size());
  again.hash(x.data(), T, codes2.data());
  EXPECT_EQ(codes, codes2);
  // A new rotation epoch draws new projections; going back restores the old codes.
  again.set_epoch(1);
  again.hash(x.data(), T, codes2.data());
  EXPECT_NE(codes, codes2);
  again.set_epoch(0);
  again.hash(x.data(), T, codes2.data());
  EXPECT_EQ(codes, codes2);
  // Every code is used at b = 4 over 200 random tokens.
  std::vector<int> used(b, 0);
  for (uint16_t c : codes) ++used.at(c);
  for (int c = 0; c < b; ++c) EXPECT_GT(used[c], 0);
}

TEST(LshHash, BucketsIdenticalOnEveryRankAndRotateWithTheStep) {
  const int W = world_size(), D = 16;
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  // Every rank plans the same problem (rank 0's) on lsh over local: the same buckets everywhere.
  const DispatchProblem p = make_dispatch_problem("balanced", kExperts, 2, D, 0, W, 0);
  CompressionSpec spec = lsh_spec(3, 2, 2, true);
  spec.rotation_interval = 10;
  LshDispatcher d(std::make_unique<LocalDispatcher>(), spec);
  auto plan = d.new_plan();
  auto buckets_at = [&](int step) {
    d.begin_step(step);
    test_util::Result r;
    test_util::run_forward(d, *plan, p, Placement::contiguous(kExperts, 1, 0), r);
    return LshDispatcher::bucket_of_slot(*plan);
  };
  const std::vector<int32_t> b0 = buckets_at(0);
  std::vector<int64_t> mine(b0.begin(), b0.end()), all(mine.size() * W);
  allgather_i64(mine.data(), all.data(), static_cast<int>(mine.size()), groups.world);
  for (int q = 0; q < W; ++q)
    EXPECT_TRUE(std::equal(mine.begin(), mine.end(), all.begin() + q * mine.size())) << "rank " << q << " differs";
  EXPECT_EQ(buckets_at(9), b0);   // the same epoch
  EXPECT_EQ(d.hash()->epoch(), 0);
  buckets_at(10);                 // a new epoch: new projections
  EXPECT_EQ(d.hash()->epoch(), 1);
  EXPECT_EQ(buckets_at(3), b0);   // back to epoch 0: the same buckets again
  // At most b^H buckets per expert, and fewer rows than slots.
  const auto sizes = LshDispatcher::bucket_sizes(*plan);
  EXPECT_LT(sizes.size(), p.topk.size());
  const auto& bos = LshDispatcher::bucket_of_slot(*plan);
  std::vector<std::vector<int32_t>> seen(kExperts);
  for (size_t s = 0; s < p.topk.size(); ++s)
    if (std::find(seen[p.topk[s]].begin(), seen[p.topk[s]].end(), bos[s]) == seen[p.topk[s]].end())
      seen[p.topk[s]].push_back(bos[s]);
  for (int e = 0; e < kExperts; ++e) EXPECT_LE(seen[e].size(), 8u) << "expert " << e;
  EXPECT_GT(d.stats().slot_rows, d.stats().exchange_rows);
}

}  // namespace
}  // namespace moempi

// ---------------------------------------------------------------------------------------------
// bf16 wire (moe.dispatch.wire_dtype).

namespace moempi {
namespace {

TEST(WireDtype, Bf16RoundsToNearestEvenWithinTwoToTheMinusEight) {
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);  // tie -> even (1.0)
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));  // tie -> even
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.5f * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -7));  // nearest
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);  // representable: exact
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_EQ(bf16_to_float(float_to_bf16(INFINITY)), INFINITY);
  Rng rng(3, 0, 0, 0);
  double worst = 0;
  for (int i = 0; i < 100000; ++i) {
    const float x = rng.normal() * std::ldexp(1.0f, static_cast<int>(rng.below(60)) - 30);
    const float y = bf16_to_float(float_to_bf16(x));
    worst = std::max(worst, std::fabs(static_cast<double>(y) - x) / std::fabs(static_cast<double>(x)));
  }
  EXPECT_LE(worst, std::ldexp(1.0, -8));
  EXPECT_GT(worst, std::ldexp(1.0, -10));  // it does round
}

// flat and flat_packed with a bf16 wire: rows that cross ranks arrive as bf16(x) (within 2^-8
// relative, exactly the rounded value), own rows exact, half the bytes; the layout rules: auto picks
// flat, shm and flat_typed refuse with one error naming moe.dispatch.wire_dtype.
TEST(WireDtype, FlatExchangesCarryBf16Rows) {
  const int W = world_size(), D = 20;
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  const Placement placement = make_placement(kExperts, groups);
  const int me = groups.ep.rank();
  std::vector<DispatchProblem> group;
  for (int q = 0; q < W; ++q) group.push_back(make_dispatch_problem("balanced", kExperts, 2, D, q, W, 0));
  std::vector<int64_t> rows;
  const std::vector<float> want_x = test_util::expected_rows(group, placement, me, false, &rows);
  const std::vector<float> want_dy = test_util::expected_rows(group, placement, me, true, &rows);
  for (const char* type : {"flat", "flat_packed", "auto"}) {
    SCOPED_TRACE(type);
    DispatchSpec s;
    s.type = type;
    s.wire_dtype = WireDtype::kBf16;
    if (W > 1 && std::string(type) == "auto") {
      EXPECT_EQ(resolve_dispatcher(s, groups).name, "flat");
    }
    std::unique_ptr<Dispatcher> d = make_dispatcher(s, groups);
    auto plan = d->new_plan();
    test_util::Result got;
    test_util::run_forward(*d, *plan, group[me], placement, got);
    test_util::run_backward(*d, *plan, group[me], got);
    ASSERT_EQ(got.x_RD.size(), want_x.size());
    int64_t rounded = 0, beyond = 0, not_bf16 = 0;
    for (const auto* pair : {&got.x_RD, &got.dy_RD}) {
      const std::vector<float>& want = pair == &got.x_RD ? want_x : want_dy;
      for (size_t i = 0; i < want.size(); ++i) {
        const float g = (*pair)[i], w = want[i];
        if (g == w) continue;
        ++rounded;
        beyond += std::fabs(g - w) > std::ldexp(std::fabs(w), -8);
        not_bf16 += g != bf16_to_float(float_to_bf16(w));
      }
    }
    EXPECT_EQ(beyond, 0) << "elements off by more than 2^-8 relative";
    EXPECT_EQ(not_bf16, 0) << "elements that are not the bf16 rounding of the fp32 value";
    if (W > 1) {
      EXPECT_GT(rounded, 0) << "nothing crossed a bf16 wire";
    }
    if (W > 1) {
      EXPECT_EQ(d->stats().bytes_intra + d->stats().bytes_inter, d->stats().rows * D * 2);
    }
  }
  DispatchSpec shm;
  shm.type = "shm";
  shm.wire_dtype = WireDtype::kBf16;
  test_util::expect_contains(test_util::error_of([&] { make_dispatcher(shm, groups); }),
                             {"moe.dispatch.wire_dtype bf16", "shm"});
  shm.type = "flat_typed";
  test_util::expect_contains(test_util::error_of([&] { make_dispatcher(shm, groups); }),
                             {"moe.dispatch.wire_dtype bf16", "flat_typed"});
}

}  // namespace
}  // namespace moempi
