// Pointwise activations: GELU (tanh approximation, GPT-2) and SwiGLU, forward and backward.
// Guarantees: branch-free loops that vectorise (exp_approx, ~2 ulp; no std::tanh/std::exp), and
// GELU within 1e-6 relative of the double-precision formula (the far negative tail adds exp's
// conditioning); backward adds into dx.
// Test: tests/layers_test.cpp (Gelu.*, Swiglu.*: finite differences, accuracy vs reference).
#include "models/layers/activation.h"

#include "models/layers/fast_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace moempi {
namespace {

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;


inline float sigmoid(float z) { return 1.0f / (1.0f + exp_approx(-z)); }

// GELU evaluates u (and its derivative's polynomial) at x clamped to ±20, where s(2u) is 0 or 1
// to below 1e-38 already, so no |x| up to FLT_MAX makes an inf·0.
inline float clamp20(float x) { return std::min(std::max(x, -20.0f), 20.0f); }

}  // namespace

// 0.5·(1 + tanh(u)) = sigmoid(2u), so gelu(x) = x·sigmoid(2u), u = c·(x + a·x³). This form has
// no 1 + tanh cancellation for negative x (relative accuracy holds in the tail too).
void gelu_forward(float* out_N, const float* x_N, size_t N) {
  float* __restrict out = out_N;
  const float* __restrict xs = x_N;
  for (size_t i = 0; i < N; ++i) {
    const float x = xs[i], xc = clamp20(x);
    const float u = kGeluC * (xc + kGeluA * xc * xc * xc);
    out[i] = x * sigmoid(2.0f * u);
  }
}

// d/dx [x·s(2u)] = s + x·s'(2u)·2u' = s + 2x·s(1−s)·c·(1 + 3a·x²)
// (equal to 0.5(1+tanh u) + 0.5x·sech²u·u' since sech²u = 4s(1−s)).
void gelu_backward(float* dx_N, const float* dout_N, const float* x_N, size_t N) {
  float* __restrict dx = dx_N;
  const float* __restrict dout = dout_N;
  const float* __restrict xs = x_N;
  for (size_t i = 0; i < N; ++i) {
    const float x = clamp20(xs[i]);
    const float x2 = x * x;
    const float u = kGeluC * (x + kGeluA * x2 * x);
    const float s = sigmoid(2.0f * u);
    const float d = s + 2.0f * x * s * (1.0f - s) * kGeluC * (1.0f + 3.0f * kGeluA * x2);
    dx[i] += d * dout[i];
  }
}

void swiglu_forward(float* out_NF, const float* gate_up_N2F, int N, int F) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict g = gate_up_N2F + (size_t)n * 2 * F;
    const float* __restrict u = g + F;
    float* __restrict o = out_NF + (size_t)n * F;
    for (int f = 0; f < F; ++f) o[f] = g[f] * sigmoid(g[f]) * u[f];
  }
}

// out = silu(g)·u with silu(g) = g·s(g):  dg += dout·u·s·(1 + g(1−s)),  du += dout·silu(g).
void swiglu_backward(float* dgate_up_N2F, const float* dout_NF, const float* gate_up_N2F, int N,
                     int F) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict g = gate_up_N2F + (size_t)n * 2 * F;
    const float* __restrict u = g + F;
    const float* __restrict d = dout_NF + (size_t)n * F;
    float* __restrict dg = dgate_up_N2F + (size_t)n * 2 * F;
    float* __restrict du = dg + F;
    for (int f = 0; f < F; ++f) {
      const float s = sigmoid(g[f]);
      dg[f] += d[f] * u[f] * s * (1.0f + g[f] * (1.0f - s));
      du[f] += d[f] * g[f] * s;
    }
  }
}

}  // namespace moempi
