#include "models/layers/activation.h"

#include <cmath>

namespace moempi {
namespace {
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
}

void gelu_forward(float* out_N, const float* x_N, size_t N) {
  for (size_t i = 0; i < N; ++i) {
    const float x = x_N[i];
    const float u = kGeluC * (x + 0.044715f * x * x * x);
    out_N[i] = 0.5f * x * (1.0f + std::tanh(u));
  }
}

void gelu_backward(float* dx_N, const float* dout_N, const float* x_N, size_t N) {
  for (size_t i = 0; i < N; ++i) {
    const float x = x_N[i];
    const float u = kGeluC * (x + 0.044715f * x * x * x);
    const float th = std::tanh(u);
    const float sech2 = 1.0f - th * th;
    const float d = 0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluC * (1.0f + 3.0f * 0.044715f * x * x);
    dx_N[i] += d * dout_N[i];
  }
}

void swiglu_forward(float* out_NF, const float* gate_up_N2F, int N, int F) {
  for (int n = 0; n < N; ++n) {
    const float* g = gate_up_N2F + (size_t)n * 2 * F;
    const float* u = g + F;
    float* o = out_NF + (size_t)n * F;
    for (int f = 0; f < F; ++f) {
      const float s = 1.0f / (1.0f + std::exp(-g[f]));
      o[f] = g[f] * s * u[f];
    }
  }
}

void swiglu_backward(float* dgate_up_N2F, const float* dout_NF, const float* gate_up_N2F, int N,
                     int F) {
  for (int n = 0; n < N; ++n) {
    const float* g = gate_up_N2F + (size_t)n * 2 * F;
    const float* u = g + F;
    const float* d = dout_NF + (size_t)n * F;
    float* dg = dgate_up_N2F + (size_t)n * 2 * F;
    float* du = dg + F;
    for (int f = 0; f < F; ++f) {
      const float s = 1.0f / (1.0f + std::exp(-g[f]));
      const float silu = g[f] * s;
      dg[f] += d[f] * u[f] * s * (1.0f + g[f] * (1.0f - s));
      du[f] += d[f] * silu;
    }
  }
}

}  // namespace moempi
