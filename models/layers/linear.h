// Dense layer on the BLAS wrapper: out = x · W (+ b), W stored (in, out) row-major.
// Test: tests/layers_test.cpp (finite differences).
#pragma once

namespace moempi {

void linear_forward(float* out_NO, const float* x_NI, const float* w_IO, const float* b_O, int N,
                    int I, int O);  // b_O may be nullptr
// Adds: dx_NI += dout · Wᵀ (skipped if nullptr), dw_IO += xᵀ · dout, db_O += Σ_n dout (if given).
void linear_backward(float* dx_NI, float* dw_IO, float* db_O, const float* dout_NO,
                     const float* x_NI, const float* w_IO, int N, int I, int O);

}  // namespace moempi
