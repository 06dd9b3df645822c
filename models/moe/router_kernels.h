// The router's kernels, for the few experts a router has.
// - RouterProducts: logits_NE = x_ND · W_DE and its backward for E <= 8: forward with E in the lanes
//   of an 8-float vector and 8 tokens' FMA chains in flight; backward with D in the lanes (16 with
//   AVX-512, dx and dW in one pass; else 8, in two); the next rows prefetched. OpenBLAS runs these
//   N × D × E shapes well below its GEMM speed (`moempi bench router`: the kernels take 0.55-0.7 of
//   its time at E 8); from E 9 on OpenBLAS runs them (at 16 the 8-lane backward was 1.5 × slower).
// - softmax_rows / sigmoid_rows: the scores, exp over the whole (N, E) block at once (vectorised,
//   exp_approx: a score below e^-87.3 of the row's best is 0, where std::exp gave a subnormal, so
//   experts that far behind tie and go to the lower id).
// - topk_rows: best-first top-k of each row, ties to the lower id, by counting each lane's rank in
//   vector compares (no data-dependent branches); rows with a NaN, and E > 16, by insertion.
// Guarantees: a token's scores and choice, and for E <= 8 its logits and dx row, are the same
// arithmetic in the same order whatever N and wherever the token sits in the batch (bit-identical
// across rank layouts); for E <= 8 dW_DE sums tokens in order. (Above 8, OpenBLAS makes no such
// promise.) Test: tests/moe_test.cpp (RouterProducts.*, RouterTopk.*).
#pragma once
#include <cstdint>
#include <vector>

namespace moempi {

// s_NE = softmax of each row of z_NE (max-shifted), or the elementwise logistic.
void softmax_rows(float* s_NE, const float* z_NE, int N, int E);
void sigmoid_rows(float* s_NE, const float* z_NE, int N, int E);

// ids_NK: the K largest of each row of v_NE, best first; equal scores go to the lower id. A NaN
// never displaces an expert chosen before it (the insertion order decides), and the K ids are
// always distinct: exactly what topk_insertion gives. Needs 1 <= K <= E.
void topk_rows(int32_t* ids_NK, const float* v_NE, int N, int E, int K);
// One row by insertion into a best-first list; with allowed_E (nullptr = all), only the experts
// with allowed_E[e] != 0 compete (node-limited routing).
void topk_insertion(int32_t* ids_K, const float* v_E, int E, int K, const uint8_t* allowed_E);

class RouterProducts {
 public:
  static constexpr int kMaxVectorExperts = 8;  // above: OpenBLAS

  // portable: the 8-lane backward even where AVX-512 is compiled in (bit-identical results; the
  // tests compare the two).
  explicit RouterProducts(bool portable = false) : portable_(portable) {}

  // logits_NE = x_ND · w_DE (overwrites).
  void forward(float* logits_NE, const float* x_ND, const float* w_DE, int N, int D, int E);
  // dw_DE += x_NDᵀ · dlogits_NE; dx_ND += dlogits_NE · w_DEᵀ (dx_ND nullptr = not wanted).
  void backward(float* dx_ND, float* dw_DE, const float* dlogits_NE, const float* x_ND, const float* w_DE,
                int N, int D, int E);

 private:
  std::vector<float> w_D8_;   // (D, 8) w_DE padded to an 8-float vector per row
  std::vector<float> dz_N8_;  // (N, 8) dlogits padded (8-lane backward)
  std::vector<float> dw_acc_; // dW accumulator: (D, 8) on the 8-lane path, (E, D) with AVX-512
  std::vector<float> w_ED_;   // (E, D) w transposed
  bool portable_;
};

}  // namespace moempi
