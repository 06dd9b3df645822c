// LayerNorm and RMSNorm over the last dimension (eps 1e-5), forward saving mean/rstd per row.
// Guarantees: two-pass variance (no E[x²]-E[x]² cancellation); backward adds into dx, dw, db
// (any may be nullptr). Test: tests/layers_test.cpp (LayerNorm.*, RmsNorm.*).
#include "models/layers/norm.h"

#include <cmath>
#include <cstddef>

namespace moempi {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kLanes = 16;

// Σ_i term(i), i < n, in kLanes independent partial sums: without -ffast-math GCC will not
// reorder a float reduction, but it does vectorise these kLanes parallel chains.
template <class F>
inline float lane_sum(int n, F term) {
  float acc[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(i + l);
  float s = 0.0f;
  for (; i < n; ++i) s += term(i);
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

}  // namespace

void layernorm_forward(float* out_ND, float* mean_N, float* rstd_N, const float* x_ND,
                       const float* w_D, const float* b_D, int N, int D) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict x = x_ND + (size_t)n * D;
    float* __restrict out = out_ND + (size_t)n * D;
    const float mean = lane_sum(D, [&](int i) { return x[i]; }) / (float)D;
    const float var = lane_sum(D, [&](int i) { return (x[i] - mean) * (x[i] - mean); }) / (float)D;
    const float rstd = 1.0f / std::sqrt(var + kEps);
    if (b_D) {
      for (int i = 0; i < D; ++i) out[i] = (x[i] - mean) * rstd * w_D[i] + b_D[i];
    } else {
      for (int i = 0; i < D; ++i) out[i] = (x[i] - mean) * rstd * w_D[i];
    }
    if (mean_N) mean_N[n] = mean;
    if (rstd_N) rstd_N[n] = rstd;
  }
}

// With norm = (x - mean)·rstd and dnorm = w∘dout (llm.c):
//   dx = rstd · (dnorm − mean(dnorm) − norm · mean(dnorm∘norm)),  dw += dout∘norm,  db += dout.
void layernorm_backward(float* dx_ND, float* dw_D, float* db_D, const float* dout_ND,
                        const float* x_ND, const float* w_D, const float* mean_N,
                        const float* rstd_N, int N, int D) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict x = x_ND + (size_t)n * D;
    const float* __restrict dout = dout_ND + (size_t)n * D;
    const float mean = mean_N[n], rstd = rstd_N[n];
    if (dx_ND) {
      float* __restrict dx = dx_ND + (size_t)n * D;
      const float dnorm_mean = lane_sum(D, [&](int i) { return w_D[i] * dout[i]; }) / (float)D;
      const float dnorm_norm_mean =
          lane_sum(D, [&](int i) { return w_D[i] * dout[i] * (x[i] - mean) * rstd; }) / (float)D;
      for (int i = 0; i < D; ++i) {
        const float norm = (x[i] - mean) * rstd;
        dx[i] += rstd * (w_D[i] * dout[i] - dnorm_mean - norm * dnorm_norm_mean);
      }
    }
    if (dw_D)
      for (int i = 0; i < D; ++i) dw_D[i] += dout[i] * (x[i] - mean) * rstd;
    if (db_D)
      for (int i = 0; i < D; ++i) db_D[i] += dout[i];
  }
}

void rmsnorm_forward(float* out_ND, float* rstd_N, const float* x_ND, const float* w_D, int N,
                     int D) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict x = x_ND + (size_t)n * D;
    float* __restrict out = out_ND + (size_t)n * D;
    const float ms = lane_sum(D, [&](int i) { return x[i] * x[i]; }) / (float)D;
    const float rstd = 1.0f / std::sqrt(ms + kEps);
    for (int i = 0; i < D; ++i) out[i] = x[i] * rstd * w_D[i];
    if (rstd_N) rstd_N[n] = rstd;
  }
}

// out = w∘x·r with r = (mean(x²) + eps)^(-1/2), dr/dx_j = −r³·x_j / D. With norm = x·r and
// dnorm = w∘dout:  dx = r · (dnorm − norm · mean(dnorm∘norm)),  dw += dout∘norm.
void rmsnorm_backward(float* dx_ND, float* dw_D, const float* dout_ND, const float* x_ND,
                      const float* w_D, const float* rstd_N, int N, int D) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict x = x_ND + (size_t)n * D;
    const float* __restrict dout = dout_ND + (size_t)n * D;
    const float rstd = rstd_N[n];
    if (dx_ND) {
      float* __restrict dx = dx_ND + (size_t)n * D;
      const float dnorm_norm_mean =
          lane_sum(D, [&](int i) { return w_D[i] * dout[i] * x[i] * rstd; }) / (float)D;
      for (int i = 0; i < D; ++i)
        dx[i] += rstd * (w_D[i] * dout[i] - x[i] * rstd * dnorm_norm_mean);
    }
    if (dw_D)
      for (int i = 0; i < D; ++i) dw_D[i] += dout[i] * x[i] * rstd;
  }
}

}  // namespace moempi
