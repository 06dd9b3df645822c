// The one BLAS wrapper: row-major sgemm on OpenBLAS, plus what the library reports about itself.
// OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_NUM_THREADS when it loads; see
// launch/blas_env.cpp for how the binary makes sure the fast kernel is picked (PLATFORM.md 1-2).
#pragma once
#include <string>

namespace moempi::blas {

// C(M,N) = alpha * op(A)(M,K) · op(B)(K,N) + beta * C, all row-major.
// lda/ldb/ldc are row strides of the matrices as stored (before transposition).
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);

// Plain row-major gemm with packed strides: C(M,N) = op(A) · op(B) (+ C if accumulate).
inline void matmul(float* C, const float* A, const float* B, int M, int N, int K, bool trans_a,
                   bool trans_b, bool accumulate) {
  gemm(trans_a, trans_b, M, N, K, 1.0f, A, trans_a ? M : K, B, trans_b ? K : N,
       accumulate ? 1.0f : 0.0f, C, N);
}

std::string corename();
int num_threads();
void set_num_threads(int n);

}  // namespace moempi::blas
