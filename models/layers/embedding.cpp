// Token + position embedding: out[b,t] = wte[tokens[b,t]] + wpe[t]; backward scatter-adds rows.
// Guarantees: token ids outside [0, V) are the caller's bug (not checked here: V is not passed).
// Test: tests/layers_test.cpp (Embedding.*: finite differences, backward adds).
#include "models/layers/embedding.h"

#include <cstddef>

namespace moempi {

void embedding_forward(float* out_BTD, const int32_t* tokens_BT, const float* wte_VD,
                       const float* wpe_TD, int B, int T, int D) {
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const size_t bt = (size_t)b * T + t;
      float* __restrict out = out_BTD + bt * D;
      const float* __restrict wte = wte_VD + (size_t)tokens_BT[bt] * D;
      const float* __restrict wpe = wpe_TD + (size_t)t * D;
      for (int d = 0; d < D; ++d) out[d] = wte[d] + wpe[d];
    }
  }
}

// d out / d wte[v] = Σ over positions holding token v; d out / d wpe[t] = Σ over sequences.
void embedding_backward(float* dwte_VD, float* dwpe_TD, const float* dout_BTD,
                        const int32_t* tokens_BT, int B, int T, int D) {
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const size_t bt = (size_t)b * T + t;
      const float* __restrict dout = dout_BTD + bt * D;
      if (dwte_VD) {
        float* __restrict dwte = dwte_VD + (size_t)tokens_BT[bt] * D;
        for (int d = 0; d < D; ++d) dwte[d] += dout[d];
      }
      if (dwpe_TD) {
        float* __restrict dwpe = dwpe_TD + (size_t)t * D;
        for (int d = 0; d < D; ++d) dwpe[d] += dout[d];
      }
    }
  }
}

}  // namespace moempi
