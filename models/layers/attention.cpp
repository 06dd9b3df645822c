// Causal multi-head self-attention core on the BLAS wrapper: per (b, h), P = causal softmax of
// Q·Kᵀ/√Dh (saved, exact zeros above the diagonal), out = P·V; Q, K, V read in place from
// qkv_BT3D; GEMMs run on row blocks of kBlock so blocks above the diagonal are skipped.
// Guarantees: output at t reads only positions <= t; backward adds into dqkv.
// Test: tests/layers_test.cpp (Attention.*: reference, finite differences, causality).
#include "models/layers/attention.h"

#include "models/layers/fast_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/core/blas.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

constexpr int kLanes = 16;
// Row-block size for the causal block skipping: blocks entirely above the diagonal are never
// computed. Smaller blocks skip more but make smaller GEMM calls.
constexpr int kBlock = 64;


// In place: s[0..n) <- softmax(s[0..n)), and s[n..end) <- 0 (the masked future).
inline void causal_softmax_row(float* __restrict s, int n, int end) {
  float mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = s[0];
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) mx[l] = s[j + l] > mx[l] ? s[j + l] : mx[l];
  float m = s[0];
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  for (int l = 0; l < kLanes; ++l) m = mx[l] > m ? mx[l] : m;

  float acc[kLanes] = {};
  for (j = 0; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      s[j + l] = exp_approx(s[j + l] - m);
      acc[l] += s[j + l];
    }
  float sum = 0.0f;
  for (; j < n; ++j) {
    s[j] = exp_approx(s[j] - m);
    sum += s[j];
  }
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  const float inv = 1.0f / sum;
  for (j = 0; j < n; ++j) s[j] *= inv;
  for (; j < end; ++j) s[j] = 0.0f;
}

// Softmax backward of one row, dP in, dS out (in place): dS = P∘(dP − Σ_j P_j·dP_j).
// Entries n..end (above the diagonal) become 0.
inline void softmax_backward_row(float* __restrict dp, const float* __restrict p, int n, int end) {
  float acc[kLanes] = {};
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += p[j + l] * dp[j + l];
  float dot = 0.0f;
  for (; j < n; ++j) dot += p[j] * dp[j];
  for (int l = 0; l < kLanes; ++l) dot += acc[l];
  for (j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - dot);
  for (; j < end; ++j) dp[j] = 0.0f;
}

}  // namespace

void attention_forward(float* out_BTD, float* att_BHTT, const float* qkv_BT3D, int B, int T, int D,
                       int H) {
  MOEMPI_CHECK_ALL(H > 0 && D % H == 0, "attention: d_model ({}) is not divisible by n_heads ({})",
                   D, H);
  const int Dh = D / H;
  const int ld = 3 * D;  // row stride of q, k, v inside qkv_BT3D
  const float scale = 1.0f / std::sqrt((float)Dh);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      const float* q = qkv_BT3D + (size_t)b * T * ld + (size_t)h * Dh;  // (T, Dh) stride ld
      const float* k = q + D;
      const float* v = q + 2 * D;
      float* att = att_BHTT + ((size_t)b * H + h) * T * T;  // (T, T)
      float* out = out_BTD + (size_t)b * T * D + (size_t)h * Dh;  // (T, Dh) stride D
      for (int i0 = 0; i0 < T; i0 += kBlock) {
        const int rows = std::min(kBlock, T - i0), cols = i0 + rows;  // keys 0..cols-1 only
        float* s = att + (size_t)i0 * T;
        blas::gemm(false, true, rows, cols, Dh, scale, q + (size_t)i0 * ld, ld, k, ld, 0.0f, s, T);
        for (int r = 0; r < rows; ++r) causal_softmax_row(s + (size_t)r * T, i0 + r + 1, T);
        blas::gemm(false, false, rows, Dh, cols, 1.0f, s, T, v, ld, 0.0f, out + (size_t)i0 * D, D);
      }
    }
  }
}

// Per (b, h), with P the saved probabilities and dO the head's slice of dout:
//   dP = dO·Vᵀ,  dV += Pᵀ·dO,  dS = P∘(dP − rowsum(dP∘P)),  dQ += dS·K·scale,  dK += dSᵀ·Q·scale.
// Row blocks give dP, dS, dQ (row t needs keys <= t); column blocks give dV, dK (key j gets
// contributions from queries >= j), so no block above the diagonal is touched.
void attention_backward(float* dqkv_BT3D, const float* dout_BTD, const float* qkv_BT3D,
                        const float* att_BHTT, int B, int T, int D, int H) {
  const int Dh = D / H;
  const int ld = 3 * D;
  const float scale = 1.0f / std::sqrt((float)Dh);
  thread_local std::vector<float> ds_scratch;
  if (ds_scratch.size() < (size_t)T * T) ds_scratch.resize((size_t)T * T);
  float* ds = ds_scratch.data();  // (T, T): dP, then dS in place
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < H; ++h) {
      const size_t off = (size_t)b * T * ld + (size_t)h * Dh;
      const float* q = qkv_BT3D + off;
      const float* k = q + D;
      const float* v = q + 2 * D;
      float* dq = dqkv_BT3D + off;
      float* dk = dq + D;
      float* dv = dq + 2 * D;
      const float* p = att_BHTT + ((size_t)b * H + h) * T * T;
      const float* dout = dout_BTD + (size_t)b * T * D + (size_t)h * Dh;
      for (int i0 = 0; i0 < T; i0 += kBlock) {
        const int rows = std::min(kBlock, T - i0), cols = i0 + rows;
        float* ds_rows = ds + (size_t)i0 * T;
        blas::gemm(false, true, rows, cols, Dh, 1.0f, dout + (size_t)i0 * D, D, v, ld, 0.0f,
                   ds_rows, T);
        for (int r = 0; r < rows; ++r)
          softmax_backward_row(ds_rows + (size_t)r * T, p + (size_t)(i0 + r) * T, i0 + r + 1, cols);
        blas::gemm(false, false, rows, Dh, cols, scale, ds_rows, T, k, ld, 1.0f,
                   dq + (size_t)i0 * ld, ld);
      }
      for (int j0 = 0; j0 < T; j0 += kBlock) {
        const int cols = std::min(kBlock, T - j0), rows = T - j0;  // queries j0..T-1
        blas::gemm(true, false, cols, Dh, rows, 1.0f, p + (size_t)j0 * T + j0, T,
                   dout + (size_t)j0 * D, D, 1.0f, dv + (size_t)j0 * ld, ld);
        blas::gemm(true, false, cols, Dh, rows, scale, ds + (size_t)j0 * T + j0, T,
                   q + (size_t)j0 * ld, ld, 1.0f, dk + (size_t)j0 * ld, ld);
      }
    }
  }
}

}  // namespace moempi
