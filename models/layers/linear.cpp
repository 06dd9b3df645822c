#include "models/layers/linear.h"

#include "runtime/core/blas.h"

namespace moempi {

void linear_forward(float* out_NO, const float* x_NI, const float* w_IO, const float* b_O, int N,
                    int I, int O) {
  if (b_O) {
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o) out_NO[(size_t)n * O + o] = b_O[o];
  }
  blas::matmul(out_NO, x_NI, w_IO, N, O, I, false, false, /*accumulate=*/b_O != nullptr);
}

void linear_backward(float* dx_NI, float* dw_IO, float* db_O, const float* dout_NO,
                     const float* x_NI, const float* w_IO, int N, int I, int O) {
  if (dx_NI) blas::matmul(dx_NI, dout_NO, w_IO, N, I, O, false, true, /*accumulate=*/true);
  if (dw_IO) blas::matmul(dw_IO, x_NI, dout_NO, I, O, N, true, false, /*accumulate=*/true);
  if (db_O) {
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o) db_O[o] += dout_NO[(size_t)n * O + o];
  }
}

}  // namespace moempi
