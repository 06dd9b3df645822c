// Fused softmax + cross-entropy over the vocabulary. The forward writes per-row losses and the
// softmax probabilities (kept for the backward) and returns the sum of the losses (double).
// Test: tests/layers_test.cpp (finite differences).
#pragma once
#include <cstdint>

namespace moempi {

double cross_entropy_forward(float* losses_N, float* probs_NV, const float* logits_NV,
                             const int32_t* targets_N, int N, int V);
// dlogits_NV += scale * (probs - onehot(target))
void cross_entropy_backward(float* dlogits_NV, const float* probs_NV, const int32_t* targets_N,
                            float scale, int N, int V);

}  // namespace moempi
