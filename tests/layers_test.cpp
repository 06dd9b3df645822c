// Kernel tests for models/layers (ggml test-backend-ops style): for every kernel, the forward
// against a double-precision reference, and the backward against central differences of
// L = Σ out·w (random w) with the backward called twice to prove it adds. Test names carry the
// shapes. Attention also checks causality; cross-entropy that it returns Σ −log p(target).
// Timing at the reference shapes (run by hand):
//   layers_test --gtest_also_run_disabled_tests --gtest_filter='LayersTiming.*'
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "models/layers/activation.h"
#include "models/layers/attention.h"
#include "models/layers/cross_entropy.h"
#include "models/layers/embedding.h"
#include "models/layers/fast_math.h"
#include "models/layers/linear.h"
#include "models/layers/norm.h"
#include "runtime/core/arena.h"
#include "runtime/core/blas.h"
#include "runtime/core/rng.h"
#include "runtime/core/timer.h"

namespace moempi {
namespace {

using Vec = std::vector<float>;

Vec randn(size_t n, uint64_t stream, float scale = 1.0f, float shift = 0.0f) {
  Rng rng(1234, 0, 0, stream);
  Vec v(n);
  for (auto& x : v) x = shift + scale * rng.normal();
  return v;
}

std::vector<int32_t> rand_ids(size_t n, int V, uint64_t stream) {
  Rng rng(1234, 0, 0, stream);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = (int32_t)rng.below(V);
  return v;
}

double weighted_sum(const Vec& out, const Vec& w) {
  double s = 0.0;
  for (size_t i = 0; i < out.size(); ++i) s += (double)out[i] * w[i];
  return s;
}

// Forward values against a double reference: max_i |got − ref| / (|ref| + floor) <= tol.
::testing::AssertionResult values_match(const Vec& got, const std::vector<double>& ref, double tol,
                                        double floor = 1e-3) {
  double worst = 0.0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(got[i] - ref[i]) / (std::fabs(ref[i]) + floor);
    if (!(e <= worst)) worst = e, at = i;  // also catches NaN
  }
  if (worst <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << fmt::format("max rel err {:.3g} > tol {:.3g} at [{}]: got {:.9g}, ref {:.9g}", worst,
                        tol, at, got[at], ref[at]);
}

// A differentiable input of a kernel and the gradient buffer its backward adds into.
struct Input {
  const char* name;
  Vec* x;
  Vec* grad;
};

// Runs loss() once (the forward saves what backward needs), then backward() on zeroed grads
// twice: the second call must double every gradient (backward ADDS). Then compares the first
// call's gradients with central differences of loss() in x (step eps, the difference quotient
// uses the step actually representable in float), by the relative L2 error
// ‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖) <= tol, printing the worst element.
void check_gradients(const std::vector<Input>& inputs, const std::function<double()>& loss,
                     const std::function<void()>& backward, float eps, double tol) {
  loss();
  for (const auto& in : inputs) std::fill(in.grad->begin(), in.grad->end(), 0.0f);
  backward();
  std::vector<Vec> once;
  for (const auto& in : inputs) once.push_back(*in.grad);
  backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    // Sums added a second time round differently, so allow 1e-5 of the tensor's largest entry;
    // an overwrite would be off by the whole entry.
    const Vec& twice = *inputs[k].grad;
    float big = 0.0f;
    for (float g : once[k]) big = std::max(big, std::fabs(g));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < twice.size(); ++i)
      if (!(std::fabs(twice[i] - 2.0f * once[k][i]) <= 1e-5f * (std::fabs(2.0f * once[k][i]) + big)))
        if (bad++ == 0) first = i;
    EXPECT_EQ(bad, 0u) << inputs[k].name << ": backward called twice did not double the gradient"
                       << " (does it add?); first at [" << first << "]: once " << once[k][first]
                       << ", twice " << twice[first];
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    Vec& x = *inputs[k].x;
    std::vector<double> numeric(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const float x0 = x[i];
      const float xp = x0 + eps, xm = x0 - eps;
      x[i] = xp;
      const double lp = loss();
      x[i] = xm;
      const double lm = loss();
      x[i] = x0;
      numeric[i] = (lp - lm) / ((double)xp - (double)xm);
    }
    double diff2 = 0.0, a2 = 0.0, n2 = 0.0, worst = -1.0;
    size_t at = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double d = once[k][i] - numeric[i];
      diff2 += d * d;
      a2 += (double)once[k][i] * once[k][i];
      n2 += numeric[i] * numeric[i];
      if (std::fabs(d) > worst) worst = std::fabs(d), at = i;
    }
    const double scale = std::sqrt(std::max(a2, n2));
    const double err = scale > 1e-12 ? std::sqrt(diff2) / scale : std::sqrt(diff2);
    EXPECT_LE(err, tol) << fmt::format(
        "d{} ({} elements): relative L2 error {:.3g} > tol {:.3g}; worst [{}]: analytic {:.7g}, "
        "numeric {:.7g}; |analytic| {:.4g}",
        inputs[k].name, x.size(), err, tol, at, once[k][at], numeric[at], std::sqrt(a2));
  }
}

// Test names are their parameters: Shapes/Attention.GradientsMatchFiniteDifferences/B2_T5_D12_H4.
struct ParamName {
  template <class P>
  std::string operator()(const ::testing::TestParamInfo<P>& p) const {
    return str(p.param);
  }
};

// ---------------------------------------------------------------------------------------------
// Embedding

struct EmbShape {
  int B, T, D, V;
};
std::string str(const EmbShape& s) {
  return fmt::format("B{}_T{}_D{}_V{}", s.B, s.T, s.D, s.V);
}
void PrintTo(const EmbShape& s, std::ostream* os) { *os << str(s); }
class Embedding : public ::testing::TestWithParam<EmbShape> {};

// exp_approx against std::exp: ~2 ulp on [-87.33, 88.0] (checked at 3 ulp of relative error over a
// dense grid), 0 below, +inf above 88.72, and NaN for any NaN (a payload must not leak into the
// exponent bits and come out finite).
TEST(FastMath, ExpApproxRangeAndSpecialValues) {
  double worst = 0;
  int checked = 0;
  for (double x = -87.33; x <= 88.0; x += 0.00731, ++checked) {
    const float xf = (float)x;
    const double want = std::exp((double)xf);
    worst = std::max(worst, std::fabs(exp_approx(xf) - want) / want);
  }
  EXPECT_GT(checked, 20000);
  EXPECT_LT(worst, 3 * 5.97e-8) << "relative error";
  EXPECT_EQ(exp_approx(-87.4f), 0.0f);
  EXPECT_EQ(exp_approx(-1e30f), 0.0f);
  EXPECT_EQ(exp_approx(-INFINITY), 0.0f);
  EXPECT_EQ(exp_approx(88.8f), INFINITY);
  EXPECT_EQ(exp_approx(INFINITY), INFINITY);
  for (uint32_t bits : {0x7FC00000u, 0xFFC00000u, 0x7FC00001u, 0x7FC001FFu, 0x7F800001u})
    EXPECT_TRUE(std::isnan(exp_approx(std::bit_cast<float>(bits)))) << std::hex << bits;
}

TEST_P(Embedding, ForwardMatchesReference) {
  const auto [B, T, D, V] = GetParam();
  const auto tokens = rand_ids((size_t)B * T, V, 1);
  Vec wte = randn((size_t)V * D, 2), wpe = randn((size_t)T * D, 3), out((size_t)B * T * D);
  embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, D);
  std::vector<double> ref(out.size());
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int d = 0; d < D; ++d)
        ref[((size_t)b * T + t) * D + d] =
            (double)wte[(size_t)tokens[b * T + t] * D + d] + wpe[(size_t)t * D + d];
  EXPECT_TRUE(values_match(out, ref, 1e-6));
}

// Linear in the weights (only rounding): measured <= 2e-6, tol 1e-4.
TEST_P(Embedding, GradientsMatchFiniteDifferences) {
  const auto [B, T, D, V] = GetParam();
  const auto tokens = rand_ids((size_t)B * T, V, 1);  // V small: repeated tokens accumulate
  Vec wte = randn((size_t)V * D, 2), wpe = randn((size_t)T * D, 3), out((size_t)B * T * D);
  Vec w = randn(out.size(), 4), dwte(wte.size()), dwpe(wpe.size());
  check_gradients(
      {{"wte", &wte, &dwte}, {"wpe", &wpe, &dwpe}},
      [&] {
        embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, D);
        return weighted_sum(out, w);
      },
      [&] { embedding_backward(dwte.data(), dwpe.data(), w.data(), tokens.data(), B, T, D); },
      1e-2f, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Embedding,
                         ::testing::Values(EmbShape{1, 1, 1, 1}, EmbShape{1, 1, 8, 5},
                                           EmbShape{2, 5, 7, 3}, EmbShape{3, 9, 16, 11},
                                           EmbShape{2, 17, 33, 4}),
                         ParamName());

// ---------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm

struct NormShape {
  int N, D;
};
std::string str(const NormShape& s) { return fmt::format("N{}_D{}", s.N, s.D); }
void PrintTo(const NormShape& s, std::ostream* os) { *os << str(s); }
class LayerNorm : public ::testing::TestWithParam<NormShape> {};
class RmsNorm : public ::testing::TestWithParam<NormShape> {};

TEST_P(LayerNorm, ForwardMatchesReference) {
  const auto [N, D] = GetParam();
  Vec x = randn((size_t)N * D, 1, 2.0f, 0.7f), w = randn(D, 2, 0.5f, 1.0f), b = randn(D, 3);
  Vec out(x.size()), mean(N), rstd(N);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D);
  std::vector<double> ref(out.size()), ref_mean(N), ref_rstd(N);
  for (int n = 0; n < N; ++n) {
    double m = 0, v = 0;
    for (int d = 0; d < D; ++d) m += x[(size_t)n * D + d];
    m /= D;
    for (int d = 0; d < D; ++d) v += (x[(size_t)n * D + d] - m) * (x[(size_t)n * D + d] - m);
    v /= D;
    const double r = 1.0 / std::sqrt(v + 1e-5);
    ref_mean[n] = m, ref_rstd[n] = r;
    for (int d = 0; d < D; ++d)
      ref[(size_t)n * D + d] = (x[(size_t)n * D + d] - m) * r * w[d] + b[d];
  }
  EXPECT_TRUE(values_match(out, ref, 1e-6, 1.0));  // outputs are O(1): 1e-6 absolute
  EXPECT_TRUE(values_match(mean, ref_mean, 1e-5));
  EXPECT_TRUE(values_match(rstd, ref_rstd, 1e-5));
}

// eps 1e-2 on inputs of scale ~2: measured <= 1.5e-4 (dx), tol 1e-3.
TEST_P(LayerNorm, GradientsMatchFiniteDifferences) {
  const auto [N, D] = GetParam();
  Vec x = randn((size_t)N * D, 1, 2.0f, 0.7f), w = randn(D, 2, 0.5f, 1.0f), b = randn(D, 3);
  Vec out(x.size()), mean(N), rstd(N), wo = randn(out.size(), 4);
  Vec dx(x.size()), dw(D), db(D);
  check_gradients(
      {{"x", &x, &dx}, {"w", &w, &dw}, {"b", &b, &db}},
      [&] {
        layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, D);
        return weighted_sum(out, wo);
      },
      [&] {
        layernorm_backward(dx.data(), dw.data(), db.data(), wo.data(), x.data(), w.data(),
                           mean.data(), rstd.data(), N, D);
      },
      1e-2f, 1e-3);
}

TEST_P(RmsNorm, ForwardMatchesReference) {
  const auto [N, D] = GetParam();
  Vec x = randn((size_t)N * D, 1, 2.0f, 0.7f), w = randn(D, 2, 0.5f, 1.0f);
  Vec out(x.size()), rstd(N);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D);
  std::vector<double> ref(out.size()), ref_rstd(N);
  for (int n = 0; n < N; ++n) {
    double ms = 0;
    for (int d = 0; d < D; ++d) ms += (double)x[(size_t)n * D + d] * x[(size_t)n * D + d];
    const double r = 1.0 / std::sqrt(ms / D + 1e-5);
    ref_rstd[n] = r;
    for (int d = 0; d < D; ++d) ref[(size_t)n * D + d] = x[(size_t)n * D + d] * r * w[d];
  }
  EXPECT_TRUE(values_match(out, ref, 1e-6, 1.0));
  EXPECT_TRUE(values_match(rstd, ref_rstd, 1e-5));
}

// eps 1e-2 on inputs of scale ~2: measured <= 1.3e-4 (dx), tol 1e-3.
TEST_P(RmsNorm, GradientsMatchFiniteDifferences) {
  const auto [N, D] = GetParam();
  Vec x = randn((size_t)N * D, 1, 2.0f, 0.7f), w = randn(D, 2, 0.5f, 1.0f);
  Vec out(x.size()), rstd(N), wo = randn(out.size(), 4), dx(x.size()), dw(D);
  check_gradients(
      {{"x", &x, &dx}, {"w", &w, &dw}},
      [&] {
        rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D);
        return weighted_sum(out, wo);
      },
      [&] {
        rmsnorm_backward(dx.data(), dw.data(), wo.data(), x.data(), w.data(), rstd.data(), N, D);
      },
      1e-2f, 1e-3);
}

// D >= 3: with D of 1 or 2 the normalised row is ±1 whatever x is, dx is 0 up to eps effects
// and the relative error measures only rounding.
const auto kNormShapes = ::testing::Values(NormShape{1, 3}, NormShape{1, 7}, NormShape{3, 16},
                                           NormShape{5, 33}, NormShape{4, 256});
INSTANTIATE_TEST_SUITE_P(Shapes, LayerNorm, kNormShapes, ParamName());
INSTANTIATE_TEST_SUITE_P(Shapes, RmsNorm, kNormShapes, ParamName());

// ---------------------------------------------------------------------------------------------
// Linear

struct LinearShape {
  int N, I, O;
  bool bias;
};
std::string str(const LinearShape& s) {
  return fmt::format("N{}_I{}_O{}_{}", s.N, s.I, s.O, s.bias ? "bias" : "nobias");
}
void PrintTo(const LinearShape& s, std::ostream* os) { *os << str(s); }
class Linear : public ::testing::TestWithParam<LinearShape> {};

TEST_P(Linear, ForwardMatchesReference) {
  const auto [N, I, O, bias] = GetParam();
  Vec x = randn((size_t)N * I, 1), w = randn((size_t)I * O, 2), b = randn(O, 3);
  Vec out((size_t)N * O, 123.0f);  // garbage: the forward must overwrite, not add
  linear_forward(out.data(), x.data(), w.data(), bias ? b.data() : nullptr, N, I, O);
  std::vector<double> ref(out.size());
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      double s = bias ? b[o] : 0.0;
      for (int i = 0; i < I; ++i) s += (double)x[(size_t)n * I + i] * w[(size_t)i * O + o];
      ref[(size_t)n * O + o] = s;
    }
  EXPECT_TRUE(values_match(out, ref, 1e-5, 1.0));  // sums of O(1) products: 1e-5 absolute
}

// Linear in each input (only rounding): measured <= 1.5e-5, tol 1e-4.
TEST_P(Linear, GradientsMatchFiniteDifferences) {
  const auto [N, I, O, bias] = GetParam();
  Vec x = randn((size_t)N * I, 1), w = randn((size_t)I * O, 2), b = randn(O, 3);
  Vec out((size_t)N * O), wo = randn(out.size(), 4), dx(x.size()), dw(w.size()), db(O);
  std::vector<Input> inputs = {{"x", &x, &dx}, {"w", &w, &dw}};
  if (bias) inputs.push_back({"b", &b, &db});
  check_gradients(
      inputs,
      [&] {
        linear_forward(out.data(), x.data(), w.data(), bias ? b.data() : nullptr, N, I, O);
        return weighted_sum(out, wo);
      },
      [&] {
        linear_backward(dx.data(), dw.data(), bias ? db.data() : nullptr, wo.data(), x.data(),
                        w.data(), N, I, O);
      },
      1e-2f, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Linear,
                         ::testing::Values(LinearShape{1, 1, 1, true}, LinearShape{1, 1, 1, false},
                                           LinearShape{3, 5, 7, true}, LinearShape{3, 5, 7, false},
                                           LinearShape{17, 33, 9, true},
                                           LinearShape{17, 33, 9, false},
                                           LinearShape{64, 16, 48, true}),
                         ParamName());

// nullptr means "not wanted": dx skipped, dw and db still added.
TEST(Linear, NullDxSkipsInputGradient) {
  const int N = 4, I = 3, O = 5;
  Vec x = randn(N * I, 1), w = randn(I * O, 2), dout = randn(N * O, 3);
  Vec dw1(I * O), db1(O), dw2(I * O), db2(O), dx(N * I);
  linear_backward(dx.data(), dw1.data(), db1.data(), dout.data(), x.data(), w.data(), N, I, O);
  linear_backward(nullptr, dw2.data(), db2.data(), dout.data(), x.data(), w.data(), N, I, O);
  EXPECT_EQ(dw1, dw2);
  EXPECT_EQ(db1, db2);
}

// ---------------------------------------------------------------------------------------------
// GELU and SwiGLU

// 0.5·x·(1 + tanh u) and its derivative in double, with 1 + tanh u = 2/(1 + e^(−2u)) and
// 1 − tanh²u = 4e^(−2u)/(1 + e^(−2u))² so the negative tail does not cancel to 0.
double gelu_ref(double x) {
  const double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
  return 0.5 * x * (2.0 / (1.0 + std::exp(-2.0 * u)));
}
double gelu_grad_ref(double x) {
  const double c = std::sqrt(2.0 / M_PI);
  const double e = std::exp(-2.0 * c * (x + 0.044715 * x * x * x));
  const double one_plus_th = 2.0 / (1.0 + e), sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e));
  return 0.5 * one_plus_th + 0.5 * x * sech2 * c * (1.0 + 3.0 * 0.044715 * x * x);
}

// The vectorised GELU against the double tanh formula on a fine grid over [-9, 10]. Forward:
// relative error <= 1e-6 + |2u|·2e-7, where |2u|·ulp is the float rounding of u = c(x + ax³)
// amplified by exp(−2u) in the negative tail (the condition number of exp is its argument).
// Backward: within 1e-6 of max(1, |ref|). Tails: finite, 0 below -10, x above 20.
TEST(Gelu, AccuracyAgainstDoubleTanhFormula) {
  Vec x;
  for (int i = -90000; i <= 100000; ++i) x.push_back(i * 1e-4f);
  Vec out(x.size()), dx(x.size()), ones(x.size(), 1.0f);
  gelu_forward(out.data(), x.data(), x.size());
  gelu_backward(dx.data(), ones.data(), x.data(), x.size());
  size_t bad = 0, at = 0;
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double ref = gelu_ref(x[i]), xi = x[i];
    const double two_u = 2.0 * std::sqrt(2.0 / M_PI) * std::fabs(xi + 0.044715 * xi * xi * xi);
    const double err = std::fabs(out[i] - ref) / (std::fabs(ref) + 1e-38);
    worst = std::max(worst, err);
    if (!(err <= 1e-6 + two_u * 2e-7) && bad++ == 0) at = i;
  }
  EXPECT_EQ(bad, 0u) << "gelu_forward: first at x = " << x[at] << ": got " << out[at] << ", ref "
                     << gelu_ref(x[at]) << " (worst relative error " << worst << ")";
  std::vector<double> dref(x.size());
  for (size_t i = 0; i < x.size(); ++i) dref[i] = gelu_grad_ref(x[i]);
  EXPECT_TRUE(values_match(dx, dref, 1e-6, 1.0)) << "gelu_backward";

  Vec tails = {-1e30f, -200.0f, -20.0f, -10.5f, 0.0f, 20.0f, 200.0f, 1e30f};
  Vec tout(tails.size()), tdx(tails.size()), tones(tails.size(), 1.0f);
  gelu_forward(tout.data(), tails.data(), tails.size());
  gelu_backward(tdx.data(), tones.data(), tails.data(), tails.size());
  for (size_t i = 0; i < tails.size(); ++i) {
    EXPECT_TRUE(std::isfinite(tout[i]) && std::isfinite(tdx[i])) << "x = " << tails[i];
    if (tails[i] <= -10.0f) {
      EXPECT_LE(std::fabs(tout[i]), 1e-30f) << "x = " << tails[i];
    }
    if (tails[i] >= 20.0f) {
      EXPECT_EQ(tout[i], tails[i]);
    }
  }
}

struct GeluShape {
  int N;
};
std::string str(const GeluShape& s) { return fmt::format("N{}", s.N); }
void PrintTo(const GeluShape& s, std::ostream* os) { *os << str(s); }
class Gelu : public ::testing::TestWithParam<GeluShape> {};

// eps 1e-2 on inputs in ~[-4, 4]: measured <= 2e-5, tol 1e-4.
TEST_P(Gelu, GradientsMatchFiniteDifferences) {
  const int N = GetParam().N;
  Vec x = randn(N, 1, 1.5f), out(N), wo = randn(N, 2), dx(N);
  check_gradients(
      {{"x", &x, &dx}},
      [&] {
        gelu_forward(out.data(), x.data(), N);
        return weighted_sum(out, wo);
      },
      [&] { gelu_backward(dx.data(), wo.data(), x.data(), N); }, 1e-2f, 1e-4);
}
INSTANTIATE_TEST_SUITE_P(Shapes, Gelu, ::testing::Values(GeluShape{1}, GeluShape{17}, GeluShape{1000}),
                         ParamName());

struct SwigluShape {
  int N, F;
};
std::string str(const SwigluShape& s) { return fmt::format("N{}_F{}", s.N, s.F); }
void PrintTo(const SwigluShape& s, std::ostream* os) { *os << str(s); }
class Swiglu : public ::testing::TestWithParam<SwigluShape> {};

TEST_P(Swiglu, ForwardMatchesReference) {
  const auto [N, F] = GetParam();
  Vec gu = randn((size_t)N * 2 * F, 1, 2.0f), out((size_t)N * F);
  swiglu_forward(out.data(), gu.data(), N, F);
  std::vector<double> ref(out.size());
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < F; ++f) {
      const double g = gu[(size_t)n * 2 * F + f], u = gu[(size_t)n * 2 * F + F + f];
      ref[(size_t)n * F + f] = g / (1.0 + std::exp(-g)) * u;
    }
  EXPECT_TRUE(values_match(out, ref, 1e-6, 1e-6));
}

// eps 1e-2 on gate/up of scale 2: measured <= 1e-5, tol 1e-4.
TEST_P(Swiglu, GradientsMatchFiniteDifferences) {
  const auto [N, F] = GetParam();
  Vec gu = randn((size_t)N * 2 * F, 1, 2.0f), out((size_t)N * F), wo = randn(out.size(), 2);
  Vec dgu(gu.size());
  check_gradients(
      {{"gate_up", &gu, &dgu}},
      [&] {
        swiglu_forward(out.data(), gu.data(), N, F);
        return weighted_sum(out, wo);
      },
      [&] { swiglu_backward(dgu.data(), wo.data(), gu.data(), N, F); }, 1e-2f, 1e-4);
}
INSTANTIATE_TEST_SUITE_P(Shapes, Swiglu,
                         ::testing::Values(SwigluShape{1, 1}, SwigluShape{3, 7},
                                           SwigluShape{5, 33}, SwigluShape{2, 64}),
                         ParamName());

// ---------------------------------------------------------------------------------------------
// Attention

struct AttnShape {
  int B, T, D, H;
};
std::string str(const AttnShape& s) {
  return fmt::format("B{}_T{}_D{}_H{}", s.B, s.T, s.D, s.H);
}
void PrintTo(const AttnShape& s, std::ostream* os) { *os << str(s); }
class Attention : public ::testing::TestWithParam<AttnShape> {};

// Naive causal attention in double: out (B, T, D), probabilities (B, H, T, T).
void attention_ref(std::vector<double>& out, std::vector<double>& att, const Vec& qkv, int B,
                   int T, int D, int H) {
  const int Dh = D / H;
  out.assign((size_t)B * T * D, 0.0);
  att.assign((size_t)B * H * T * T, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < T; ++t) {
        const float* q = &qkv[((size_t)b * T + t) * 3 * D + h * Dh];
        double* p = &att[(((size_t)b * H + h) * T + t) * T];
        double mx = -1e300, sum = 0.0;
        for (int s = 0; s <= t; ++s) {
          const float* k = &qkv[((size_t)b * T + s) * 3 * D + D + h * Dh];
          double dot = 0.0;
          for (int d = 0; d < Dh; ++d) dot += (double)q[d] * k[d];
          p[s] = dot / std::sqrt((double)Dh);
          mx = std::max(mx, p[s]);
        }
        for (int s = 0; s <= t; ++s) sum += (p[s] = std::exp(p[s] - mx));
        for (int s = 0; s <= t; ++s) {
          p[s] /= sum;
          const float* v = &qkv[((size_t)b * T + s) * 3 * D + 2 * D + h * Dh];
          for (int d = 0; d < Dh; ++d) out[((size_t)b * T + t) * D + h * Dh + d] += p[s] * v[d];
        }
      }
}

TEST_P(Attention, ForwardMatchesReference) {
  const auto [B, T, D, H] = GetParam();
  Vec qkv = randn((size_t)B * T * 3 * D, 1), out((size_t)B * T * D);
  Vec att((size_t)B * H * T * T, 123.0f);  // garbage: every entry must be written
  attention_forward(out.data(), att.data(), qkv.data(), B, T, D, H);
  std::vector<double> ref_out, ref_att;
  attention_ref(ref_out, ref_att, qkv, B, T, D, H);
  EXPECT_TRUE(values_match(out, ref_out, 1e-5, 1e-2)) << "out";
  EXPECT_TRUE(values_match(att, ref_att, 1e-5, 1e-2)) << "att (zeros above the diagonal)";
}

// eps 1e-2 on unit-scale q, k, v: measured <= 5e-5, tol 5e-4.
TEST_P(Attention, GradientsMatchFiniteDifferences) {
  const auto [B, T, D, H] = GetParam();
  Vec qkv = randn((size_t)B * T * 3 * D, 1), out((size_t)B * T * D), att((size_t)B * H * T * T);
  Vec wo = randn(out.size(), 2), dqkv(qkv.size());
  check_gradients(
      {{"qkv", &qkv, &dqkv}},
      [&] {
        attention_forward(out.data(), att.data(), qkv.data(), B, T, D, H);
        return weighted_sum(out, wo);
      },
      [&] { attention_backward(dqkv.data(), wo.data(), qkv.data(), att.data(), B, T, D, H); },
      1e-2f, 5e-4);
}

// Output at t must not change (bit for bit) when q, k, v at any t' > t change.
TEST_P(Attention, OutputIgnoresFuturePositions) {
  const auto [B, T, D, H] = GetParam();
  const Vec qkv = randn((size_t)B * T * 3 * D, 1);
  Vec out0((size_t)B * T * D), out1(out0.size()), att((size_t)B * H * T * T);
  attention_forward(out0.data(), att.data(), qkv.data(), B, T, D, H);
  const Vec noise = randn(qkv.size(), 2, 3.0f);
  for (int cut : {0, T / 2, T - 1}) {
    Vec changed = qkv;
    for (int b = 0; b < B; ++b)
      for (size_t i = ((size_t)b * T + cut + 1) * 3 * D; i < (size_t)(b + 1) * T * 3 * D; ++i)
        changed[i] += noise[i];
    attention_forward(out1.data(), att.data(), changed.data(), B, T, D, H);
    size_t bad = 0;
    for (int b = 0; b < B; ++b)
      for (size_t i = (size_t)b * T * D; i < ((size_t)b * T + cut + 1) * D; ++i)
        bad += out0[i] != out1[i];
    EXPECT_EQ(bad, 0u) << "outputs at t <= " << cut << " changed with inputs at t > " << cut;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Attention,
                         ::testing::Values(AttnShape{1, 1, 4, 1}, AttnShape{1, 1, 8, 4},
                                           AttnShape{2, 5, 12, 4}, AttnShape{2, 7, 6, 1},
                                           AttnShape{1, 9, 9, 3}, AttnShape{1, 67, 8, 4},
                                           AttnShape{2, 130, 4, 1}),
                         ParamName());

// ---------------------------------------------------------------------------------------------
// Cross-entropy

struct CeShape {
  int N, V;
};
std::string str(const CeShape& s) { return fmt::format("N{}_V{}", s.N, s.V); }
void PrintTo(const CeShape& s, std::ostream* os) { *os << str(s); }
class CrossEntropy : public ::testing::TestWithParam<CeShape> {};

// The return value is Σ_n −log softmax(logits_n)[target_n] (double reference), the per-row
// losses and probabilities match, and a +1000 shift of the logits changes nothing (stability).
TEST_P(CrossEntropy, ReturnsSumOfNegLogProbOfTarget) {
  const auto [N, V] = GetParam();
  Vec logits = randn((size_t)N * V, 1, 3.0f);
  const auto targets = rand_ids(N, V, 2);
  Vec losses(N), probs(logits.size());
  const double total =
      cross_entropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V);
  std::vector<double> ref_losses(N), ref_probs(probs.size());
  double ref_total = 0.0;
  for (int n = 0; n < N; ++n) {
    double lse = 0.0;
    for (int v = 0; v < V; ++v) lse += std::exp((double)logits[(size_t)n * V + v]);
    for (int v = 0; v < V; ++v)
      ref_probs[(size_t)n * V + v] = std::exp((double)logits[(size_t)n * V + v]) / lse;
    ref_losses[n] = std::log(lse) - logits[(size_t)n * V + targets[n]];
    ref_total += ref_losses[n];
  }
  EXPECT_NEAR(total, ref_total, 1e-6 * (std::fabs(ref_total) + 1.0));
  EXPECT_TRUE(values_match(losses, ref_losses, 1e-5, 1e-3));
  EXPECT_TRUE(values_match(probs, ref_probs, 1e-5, 1e-6));

  for (auto& x : logits) x += 1000.0f;
  Vec losses2(N);
  const double total2 =
      cross_entropy_forward(losses2.data(), probs.data(), logits.data(), targets.data(), N, V);
  // A logit of ~1000 carries ~6e-5 absolute rounding, so the loss moves by about that much.
  EXPECT_NEAR(total2, ref_total, 1e-4 * N + 1e-6 * std::fabs(ref_total));
  EXPECT_TRUE(values_match(probs, ref_probs, 1e-3, 1e-6));
}

// L = scale·Σ losses, so dlogits = scale·(probs − onehot). eps 1e-2 on logits of scale 3:
// measured <= 4e-5, tol 3e-4.
TEST_P(CrossEntropy, GradientsMatchFiniteDifferences) {
  const auto [N, V] = GetParam();
  const float scale = 0.37f;
  Vec logits = randn((size_t)N * V, 1, 3.0f), losses(N), probs(logits.size());
  Vec dlogits(logits.size());
  const auto targets = rand_ids(N, V, 2);
  check_gradients(
      {{"logits", &logits, &dlogits}},
      [&] {
        return scale * cross_entropy_forward(losses.data(), probs.data(), logits.data(),
                                             targets.data(), N, V);
      },
      [&] { cross_entropy_backward(dlogits.data(), probs.data(), targets.data(), scale, N, V); },
      1e-2f, 3e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropy,
                         ::testing::Values(CeShape{1, 1}, CeShape{1, 2}, CeShape{3, 5},
                                           CeShape{7, 33}, CeShape{4, 256}),
                         ParamName());

// ---------------------------------------------------------------------------------------------
// Timing at the reference shapes (B=16, T=128, D=256, H=4, V=256, N=2048), run by hand. Checks
// that outputs are finite before it reports; prints best-of-reps ms per kernel, and the qkv
// projection GEMM (N×D·D×3D) fwd+bwd as the dense baseline the kernels compare with.

template <class F>
double best_ms(F f, int reps = 20) {
  f();  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    f();
    best = std::min(best, now_seconds() - t0);
  }
  return best * 1e3;
}

bool all_finite(const FloatBuffer& b) {
  for (size_t i = 0; i < b.size(); ++i)
    if (!std::isfinite(b[i])) return false;
  return true;
}

FloatBuffer filled(size_t n, uint64_t stream, float scale = 1.0f) {
  FloatBuffer b(n);
  Rng rng(99, 0, 0, stream);
  for (size_t i = 0; i < n; ++i) b[i] = scale * rng.normal();
  return b;
}

TEST(LayersTiming, DISABLED_ReferenceShapes) {
  const int B = 16, T = 128, D = 256, H = 4, V = 256, N = B * T;
  const size_t n_gelu = (size_t)N * 4 * D;  // d_ff = 4D: 2,097,152 elements
  struct Row {
    std::string kernel, shape;
    double fwd, bwd;
  };
  std::vector<Row> rows;

  {  // attention
    FloatBuffer qkv = filled((size_t)N * 3 * D, 1), out((size_t)N * D), att((size_t)B * H * T * T);
    FloatBuffer dout = filled(out.size(), 2), dqkv(qkv.size());
    const double f = best_ms([&] { attention_forward(out.data(), att.data(), qkv.data(), B, T, D, H); });
    const double b = best_ms([&] {
      attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), B, T, D, H);
    });
    EXPECT_TRUE(all_finite(out) && all_finite(dqkv));
    rows.push_back({"attention", fmt::format("B{} T{} D{} H{}", B, T, D, H), f, b});
  }
  {  // layernorm, rmsnorm
    FloatBuffer x = filled((size_t)N * D, 3), w = filled(D, 4), bias = filled(D, 5);
    FloatBuffer out(x.size()), mean(N), rstd(N), dout = filled(x.size(), 6), dx(x.size()), dw(D),
        db(D);
    double f = best_ms([&] {
      layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bias.data(), N, D);
    });
    double b = best_ms([&] {
      layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                         mean.data(), rstd.data(), N, D);
    });
    EXPECT_TRUE(all_finite(out) && all_finite(dx));
    rows.push_back({"layernorm", fmt::format("N{} D{}", N, D), f, b});
    f = best_ms([&] { rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D); });
    b = best_ms([&] {
      rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, D);
    });
    EXPECT_TRUE(all_finite(out) && all_finite(dx));
    rows.push_back({"rmsnorm", fmt::format("N{} D{}", N, D), f, b});
  }
  {  // gelu, swiglu
    FloatBuffer x = filled(n_gelu, 7), out(n_gelu), dout = filled(n_gelu, 8), dx(n_gelu);
    double f = best_ms([&] { gelu_forward(out.data(), x.data(), n_gelu); });
    double b = best_ms([&] { gelu_backward(dx.data(), dout.data(), x.data(), n_gelu); });
    EXPECT_TRUE(all_finite(out) && all_finite(dx));
    rows.push_back({"gelu", fmt::format("{} elements", n_gelu), f, b});
    const int F = (int)(n_gelu / N / 2);
    f = best_ms([&] { swiglu_forward(out.data(), x.data(), N, F); });
    b = best_ms([&] { swiglu_backward(dx.data(), dout.data(), x.data(), N, F); });
    EXPECT_TRUE(all_finite(out) && all_finite(dx));
    rows.push_back({"swiglu", fmt::format("N{} F{}", N, F), f, b});
  }
  {  // embedding
    const auto tokens = rand_ids((size_t)N, V, 9);
    FloatBuffer wte = filled((size_t)V * D, 10), wpe = filled((size_t)T * D, 11);
    FloatBuffer out((size_t)N * D), dout = filled(out.size(), 12), dwte(wte.size()), dwpe(wpe.size());
    const double f = best_ms(
        [&] { embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, D); });
    const double b = best_ms([&] {
      embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, D);
    });
    EXPECT_TRUE(all_finite(out) && all_finite(dwte));
    rows.push_back({"embedding", fmt::format("B{} T{} D{} V{}", B, T, D, V), f, b});
  }
  {  // cross-entropy
    FloatBuffer logits = filled((size_t)N * V, 13, 3.0f), losses(N), probs(logits.size()),
        dlogits(logits.size());
    const auto targets = rand_ids((size_t)N, V, 14);
    double total = 0.0;
    const double f = best_ms([&] {
      total = cross_entropy_forward(losses.data(), probs.data(), logits.data(), targets.data(), N, V);
    });
    const double b = best_ms([&] {
      cross_entropy_backward(dlogits.data(), probs.data(), targets.data(), 1.0f / N, N, V);
    });
    EXPECT_TRUE(std::isfinite(total) && all_finite(dlogits));
    rows.push_back({"cross_entropy", fmt::format("N{} V{}", N, V), f, b});
  }
  {  // dense baseline: the qkv projection
    FloatBuffer x = filled((size_t)N * D, 15), w = filled((size_t)D * 3 * D, 16, 0.05f),
        bias = filled(3 * D, 17), out((size_t)N * 3 * D), dout = filled(out.size(), 18),
        dx(x.size()), dw(w.size()), db(3 * D);
    const double f = best_ms(
        [&] { linear_forward(out.data(), x.data(), w.data(), bias.data(), N, D, 3 * D); });
    const double b = best_ms([&] {
      linear_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), N, D, 3 * D);
    });
    EXPECT_TRUE(all_finite(out) && all_finite(dx));
    rows.push_back({"linear (qkv)", fmt::format("N{} I{} O{}", N, D, 3 * D), f, b});
  }
  const double base = rows.back().fwd + rows.back().bwd;
  fmt::print("# best of 20 runs; OpenBLAS core {}, {} thread(s)\n", blas::corename(),
             blas::num_threads());
  fmt::print("# {:<14} {:<22} {:>9} {:>9} {:>9} {:>8}\n", "kernel", "shape", "fwd", "bwd",
             "fwd+bwd", "vs qkv");
  fmt::print("# {:<14} {:<22} {:>9} {:>9} {:>9} {:>8}\n", "", "", "(ms)", "(ms)", "(ms)", "gemm");
  for (const auto& r : rows)
    fmt::print("  {:<14} {:<22} {:>9.3f} {:>9.3f} {:>9.3f} {:>8.2f}\n", r.kernel, r.shape, r.fwd,
               r.bwd, r.fwd + r.bwd, (r.fwd + r.bwd) / base);
}

}  // namespace
}  // namespace moempi
