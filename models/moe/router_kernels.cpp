// Router products on 8-float vectors (GCC vector extensions: AVX on x86, pairs of SSE or NEON
// elsewhere). Every multiply-add is explicit (fma8) and the file is built with -ffp-contract=off,
// so the compiler cannot fuse one token's chain and not another's: the row independence holds by
// construction, not by how GCC happened to schedule a block. Test: tests/moe_test.cpp
// (RouterProducts.*).
#include "models/moe/router_kernels.h"

#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <cstring>
#include <utility>

#include "models/layers/fast_math.h"
#include "runtime/core/blas.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

using v8 = float __attribute__((vector_size(32)));
using i8 = int32_t __attribute__((vector_size(32)));
constexpr int kLanes = 8;
constexpr int kMaxRankExperts = 2 * kLanes;  // topk_by_rank: one or two vectors

// Unaligned loads and stores of a whole vector (v8 here, v16 with AVX-512), and a broadcast.
template <class V>
inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class V>
inline void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
template <class V>
inline V splat(float a) { return V{} + a; }
// c + a·b: one fused instruction where the CPU has it, else a multiply and an add (never mixed).
inline v8 fma8(v8 a, v8 b, v8 c) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}
inline float fma1(float a, float b, float c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// logits of TB tokens (rows of x_ND) from w_D8 (D, 8 lanes): one FMA chain per token, d ascending.
// With prefetch, the next TB rows are fetched while these are summed (without it the strided
// broadcasts wait on memory: 2.3 × slower when x is not in cache).
template <int TB>
void logits_block(float* logits_NE, const float* x_ND, const float* w_D8, int D, int E, bool prefetch) {
  v8 acc[TB] = {};
  for (int d = 0; d < D; ++d) {
    if (prefetch && d % 16 == 0)
      for (int i = 0; i < TB; ++i) __builtin_prefetch(x_ND + static_cast<size_t>(TB + i) * D + d);
    const v8 w = load<v8>(w_D8 + static_cast<size_t>(d) * kLanes);
    for (int i = 0; i < TB; ++i) acc[i] = fma8(splat<v8>(x_ND[static_cast<size_t>(i) * D + d]), w, acc[i]);
  }
  for (int i = 0; i < TB; ++i) std::memcpy(logits_NE + static_cast<size_t>(i) * E, &acc[i], sizeof(float) * E);
}

void logits(float* logits_NE, const float* x_ND, const float* w_D8, int N, int D, int E) {
  constexpr int TB = 8;  // independent chains: an FMA's latency times its throughput
  int t = 0;
  for (; t + TB <= N; t += TB)
    logits_block<TB>(logits_NE + static_cast<size_t>(t) * E, x_ND + static_cast<size_t>(t) * D, w_D8, D, E,
                     t + 2 * TB <= N);
  for (; t < N; ++t)  // the same chain per token as in a block
    logits_block<1>(logits_NE + static_cast<size_t>(t) * E, x_ND + static_cast<size_t>(t) * D, w_D8, D, E, false);
}

// dx_t += Σ_e dz_te · w_e (e ascending), w_ED rows; D in the lanes, 64 columns at a time.
void dx_row(float* dx_D, const float* dz_E, const float* w_ED, int D, int E) {
  int d = 0;
  for (; d + 8 * kLanes <= D; d += 8 * kLanes) {
    v8 acc[8];
    for (int c = 0; c < 8; ++c) acc[c] = load<v8>(dx_D + d + c * kLanes);
    for (int e = 0; e < E; ++e) {
      const v8 b = splat<v8>(dz_E[e]);
      const float* w = w_ED + static_cast<size_t>(e) * D + d;
      for (int c = 0; c < 8; ++c) acc[c] = fma8(b, load<v8>(w + c * kLanes), acc[c]);
    }
    for (int c = 0; c < 8; ++c) store(dx_D + d + c * kLanes, acc[c]);
  }
  for (; d < D; ++d) {
    float a = dx_D[d];
    for (int e = 0; e < E; ++e) a = fma1(dz_E[e], w_ED[static_cast<size_t>(e) * D + d], a);
    dx_D[d] = a;
  }
}

// dw_D8 (D, 8 lanes) += x_ND[t0, t1)ᵀ · dz_N8: rows of w in blocks of 8 (8 chains), t ascending.
void dw_rows(float* dw_D8, const float* x_ND, const float* dz_N8, int t0, int t1, int D) {
  constexpr int DB = 8;
  int d0 = 0;
  for (; d0 + DB <= D; d0 += DB) {
    v8 acc[DB];
    for (int j = 0; j < DB; ++j) acc[j] = load<v8>(dw_D8 + static_cast<size_t>(d0 + j) * kLanes);
    for (int t = t0; t < t1; ++t) {
      const v8 g = load<v8>(dz_N8 + static_cast<size_t>(t) * kLanes);
      const float* x = x_ND + static_cast<size_t>(t) * D + d0;
      for (int j = 0; j < DB; ++j) acc[j] = fma8(splat<v8>(x[j]), g, acc[j]);
    }
    for (int j = 0; j < DB; ++j) store(dw_D8 + static_cast<size_t>(d0 + j) * kLanes, acc[j]);
  }
  for (; d0 < D; ++d0)
    for (int t = t0; t < t1; ++t) {
      float* acc = dw_D8 + static_cast<size_t>(d0) * kLanes;
      const v8 g = load<v8>(dz_N8 + static_cast<size_t>(t) * kLanes);
      store(acc, fma8(splat<v8>(x_ND[static_cast<size_t>(t) * D + d0]), g, load<v8>(acc)));
    }
}

// Blocks of 64 tokens: their dx rows first (prefetching their x rows), then their share of dW from
// x rows now in cache.
void backward_blocks(float* dx_ND, float* dw_D8, const float* dz_NE, const float* dz_N8, const float* x_ND,
                     const float* w_ED, int N, int D, int E) {
  constexpr int kTokens = 64;
  for (int t0 = 0; t0 < N; t0 += kTokens) {
    const int t1 = std::min(N, t0 + kTokens);
    for (int t = t0; t < t1; ++t) {
      for (int d = 0; d < D; d += 16) {
        __builtin_prefetch(x_ND + static_cast<size_t>(t) * D + d);
        if (dx_ND && t + 4 < N) __builtin_prefetch(dx_ND + static_cast<size_t>(t + 4) * D + d, 1);
      }
      if (dx_ND) dx_row(dx_ND + static_cast<size_t>(t) * D, dz_NE + static_cast<size_t>(t) * E, w_ED, D, E);
    }
    dw_rows(dw_D8, x_ND, dz_N8, t0, t1, D);
  }
}

#if defined(__AVX512F__) && defined(__FMA__)  // fma16 fuses, so fma8/fma1 must too
// With 32 vector registers: the experts' dx and dW in one pass, 16 columns of D at a time, D in
// the lanes of both. Per token and column block, x and dx are loaded once and each dz_te is broadcast
// once for both products; dwT_ED (E, D) and w_ED's column block stay in registers over the 64 tokens
// of a block, whose successors are prefetched. The same FMAs in the same order as dx_row and dw_rows
// (dx_td: dx_td + Σ_e ascending; dW: Σ_t ascending from 0), so the result is bit-identical to the
// 8-lane path: only the speed depends on the CPU.
using v16 = float __attribute__((vector_size(64)));
inline v16 fma16(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }

template <int E>
void backward_fused16(float* dx_ND, float* dwT_ED, const float* dz_NE, const float* x_ND, const float* w_ED, int N,
                      int D) {
  constexpr int kTokens = 64, kCols = 16;
  for (int t0 = 0; t0 < N; t0 += kTokens) {
    const int t1 = std::min(N, t0 + kTokens);
    int c = 0;
    for (; c + kCols <= D; c += kCols) {
      v16 acc[E], w[E];
      for (int e = 0; e < E; ++e) {
        acc[e] = load<v16>(dwT_ED + static_cast<size_t>(e) * D + c);
        w[e] = load<v16>(w_ED + static_cast<size_t>(e) * D + c);
      }
      for (int t = t0; t < t1; ++t) {
        const size_t row = static_cast<size_t>(t) * D + c;
        if (t + kTokens < N) {
          __builtin_prefetch(x_ND + row + static_cast<size_t>(kTokens) * D);
          if (dx_ND) __builtin_prefetch(dx_ND + row + static_cast<size_t>(kTokens) * D, 1);
        }
        const v16 xv = load<v16>(x_ND + row);
        const float* g = dz_NE + static_cast<size_t>(t) * E;
        if (dx_ND) {
          v16 dxv = load<v16>(dx_ND + row);
          for (int e = 0; e < E; ++e) {
            const v16 b = splat<v16>(g[e]);
            acc[e] = fma16(b, xv, acc[e]);
            dxv = fma16(b, w[e], dxv);
          }
          store(dx_ND + row, dxv);
        } else {
          for (int e = 0; e < E; ++e) acc[e] = fma16(splat<v16>(g[e]), xv, acc[e]);
        }
      }
      for (int e = 0; e < E; ++e) store(dwT_ED + static_cast<size_t>(e) * D + c, acc[e]);
    }
    for (; c < D; ++c)  // the last D % 16 columns, the same sums one at a time
      for (int t = t0; t < t1; ++t) {
        const float xv = x_ND[static_cast<size_t>(t) * D + c];
        const float* g = dz_NE + static_cast<size_t>(t) * E;
        float dxv = dx_ND ? dx_ND[static_cast<size_t>(t) * D + c] : 0.0f;
        for (int e = 0; e < E; ++e) {
          float& a = dwT_ED[static_cast<size_t>(e) * D + c];
          a = fma1(g[e], xv, a);
          dxv = fma1(g[e], w_ED[static_cast<size_t>(e) * D + c], dxv);
        }
        if (dx_ND) dx_ND[static_cast<size_t>(t) * D + c] = dxv;
      }
  }
}

// backward_fused16<E> for the runtime E in [1, sizeof...(Es)].
template <int... Es>
void backward_fused16_for(int E, std::integer_sequence<int, Es...>, float* dx_ND, float* dwT_ED, const float* dz_NE,
                          const float* x_ND, const float* w_ED, int N, int D) {
  ((E == Es + 1 ? backward_fused16<Es + 1>(dx_ND, dwT_ED, dz_NE, x_ND, w_ED, N, D) : void()), ...);
}
#endif

// (rows, E) -> (rows, 8) with zero lanes past E.
void pad_rows(std::vector<float>& out, const float* in, size_t rows, int E) {
  out.assign(rows * kLanes, 0.0f);
  for (size_t r = 0; r < rows; ++r) std::memcpy(out.data() + r * kLanes, in + r * E, sizeof(float) * E);
}

// Top-k of one row by ranks: rank_e = #{j : v_j > v_e, or v_j == v_e and j < e}; a row without NaN
// is a strict order, so the ranks are 0..E-1 once each and rank_e < K places e. False: a NaN.
template <int V>
bool topk_by_rank(int32_t* ids_K, const float* v_E, int E, int K) {
  v8 val[V] = {};
  std::memcpy(val, v_E, sizeof(float) * E);
  i8 rank[V] = {}, lane[V], nan_lanes = {};
  for (int v = 0; v < V; ++v) {
    for (int l = 0; l < kLanes; ++l) lane[v][l] = v * kLanes + l;
    nan_lanes |= ~(val[v] == val[v]);  // the padding is 0.0f
  }
  for (int l = 0; l < kLanes; ++l)
    if (nan_lanes[l]) return false;
  for (int j = 0; j < E; ++j) {
    const v8 b = splat<v8>(v_E[j]);
    const i8 jv = i8{} + j;
    for (int v = 0; v < V; ++v) rank[v] -= (b > val[v]) | ((b == val[v]) & (jv < lane[v]));
  }
  int32_t by_rank[kMaxRankExperts + 1];  // [K] collects the rest
  for (int e = 0; e < E; ++e) by_rank[std::min<int32_t>(rank[e / kLanes][e % kLanes], K)] = e;
  std::memcpy(ids_K, by_rank, sizeof(int32_t) * K);
  return true;
}

}  // namespace

void softmax_rows(float* s_NE, const float* z_NE, int N, int E) {
  for (int t = 0; t < N; ++t) {
    const float* z = z_NE + static_cast<size_t>(t) * E;
    float* s = s_NE + static_cast<size_t>(t) * E;
    float m = z[0];
    for (int i = 1; i < E; ++i) m = std::max(m, z[i]);
    for (int i = 0; i < E; ++i) s[i] = z[i] - m;
  }
  const size_t NE = static_cast<size_t>(N) * E;
  for (size_t j = 0; j < NE; ++j) s_NE[j] = exp_approx(s_NE[j]);
  for (int t = 0; t < N; ++t) {
    float* s = s_NE + static_cast<size_t>(t) * E;
    float sum = 0.0f;
    for (int i = 0; i < E; ++i) sum += s[i];
    const float inv = 1.0f / sum;
    for (int i = 0; i < E; ++i) s[i] *= inv;
  }
}

void sigmoid_rows(float* s_NE, const float* z_NE, int N, int E) {
  const size_t NE = static_cast<size_t>(N) * E;
  for (size_t j = 0; j < NE; ++j) s_NE[j] = 1.0f / (1.0f + exp_approx(-z_NE[j]));
}

// Insertion into a best-first list: a later expert displaces an earlier one only with a strictly
// larger score, so ties go to the lower id.
void topk_insertion(int32_t* ids, const float* v, int E, int K, const uint8_t* allowed_E) {
  int filled = 0;
  for (int e = 0; e < E; ++e) {
    if (allowed_E && !allowed_E[e]) continue;
    if (filled == K && !(v[e] > v[ids[K - 1]])) continue;
    int pos = filled < K ? filled++ : K - 1;
    while (pos > 0 && v[e] > v[ids[pos - 1]]) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = e;
  }
}

void topk_rows(int32_t* ids_NK, const float* v_NE, int N, int E, int K) {
  MOEMPI_CHECK_ONE(K >= 1 && K <= E, "topk_rows: K = {} must be in [1, E = {}]", K, E);
  for (int t = 0; t < N; ++t) {
    int32_t* ids = ids_NK + static_cast<size_t>(t) * K;
    const float* v = v_NE + static_cast<size_t>(t) * E;
    const bool done = E <= kLanes ? topk_by_rank<1>(ids, v, E, K)
                      : E <= kMaxRankExperts ? topk_by_rank<2>(ids, v, E, K)
                                             : false;
    if (!done) topk_insertion(ids, v, E, K, nullptr);
  }
}

void RouterProducts::forward(float* logits_NE, const float* x_ND, const float* w_DE, int N, int D, int E) {
  if (E > kMaxVectorExperts) {
    blas::matmul(logits_NE, x_ND, w_DE, N, E, D, false, false, false);
    return;
  }
  pad_rows(w_D8_, w_DE, static_cast<size_t>(D), E);
  logits(logits_NE, x_ND, w_D8_.data(), N, D, E);
}

void RouterProducts::backward(float* dx_ND, float* dw_DE, const float* dlogits_NE, const float* x_ND,
                              const float* w_DE, int N, int D, int E) {
  if (E > kMaxVectorExperts) {
    blas::matmul(dw_DE, x_ND, dlogits_NE, D, E, N, true, false, true);
    if (dx_ND) blas::matmul(dx_ND, dlogits_NE, w_DE, N, D, E, false, true, true);
    return;
  }
  w_ED_.resize(static_cast<size_t>(E) * D);
  for (int d = 0; d < D; ++d)
    for (int e = 0; e < E; ++e) w_ED_[static_cast<size_t>(e) * D + d] = w_DE[static_cast<size_t>(d) * E + e];
#if defined(__AVX512F__) && defined(__FMA__)  // fma16 fuses, so fma8/fma1 must too
  if (!portable_) {
    dw_acc_.assign(static_cast<size_t>(E) * D, 0.0f);  // (E, D): dW transposed
    backward_fused16_for(E, std::make_integer_sequence<int, kMaxVectorExperts>{}, dx_ND, dw_acc_.data(), dlogits_NE,
                         x_ND, w_ED_.data(), N, D);
    for (int d = 0; d < D; ++d)
      for (int e = 0; e < E; ++e) dw_DE[static_cast<size_t>(d) * E + e] += dw_acc_[static_cast<size_t>(e) * D + d];
    return;
  }
#endif
  pad_rows(dz_N8_, dlogits_NE, static_cast<size_t>(N), E);
  dw_acc_.assign(static_cast<size_t>(D) * kLanes, 0.0f);  // (D, 8)
  backward_blocks(dx_ND, dw_acc_.data(), dlogits_NE, dz_N8_.data(), x_ND, w_ED_.data(), N, D, E);
  for (int d = 0; d < D; ++d)
    for (int e = 0; e < E; ++e) dw_DE[static_cast<size_t>(d) * E + e] += dw_acc_[static_cast<size_t>(d) * kLanes + e];
}

}  // namespace moempi
