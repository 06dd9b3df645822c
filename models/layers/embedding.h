// Token + position embedding. Test: tests/layers_test.cpp (finite differences).
#pragma once
#include <cstdint>

namespace moempi {

// out_BTD[b,t] = wte_VD[tokens[b,t]] + wpe_TD[t]
void embedding_forward(float* out_BTD, const int32_t* tokens_BT, const float* wte_VD,
                       const float* wpe_TD, int B, int T, int D);
void embedding_backward(float* dwte_VD, float* dwpe_TD, const float* dout_BTD,
                        const int32_t* tokens_BT, int B, int T, int D);

}  // namespace moempi
