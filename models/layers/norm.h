// LayerNorm and RMSNorm over the last dimension (eps 1e-5). The forward saves the per-row
// statistics the backward needs. Test: tests/layers_test.cpp (finite differences).
#pragma once

namespace moempi {

void layernorm_forward(float* out_ND, float* mean_N, float* rstd_N, const float* x_ND,
                       const float* w_D, const float* b_D, int N, int D);
void layernorm_backward(float* dx_ND, float* dw_D, float* db_D, const float* dout_ND,
                        const float* x_ND, const float* w_D, const float* mean_N,
                        const float* rstd_N, int N, int D);

void rmsnorm_forward(float* out_ND, float* rstd_N, const float* x_ND, const float* w_D, int N,
                     int D);
void rmsnorm_backward(float* dx_ND, float* dw_D, const float* dout_ND, const float* x_ND,
                      const float* w_D, const float* rstd_N, int N, int D);

}  // namespace moempi
