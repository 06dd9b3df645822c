// Causal multi-head self-attention core (the projections around it are linear layers).
// qkv_BT3D holds, per position, [q (D) | k (D) | v (D)]; head h uses columns h*Dh .. h*Dh+Dh-1 of
// each. att_BHTT saves the softmax probabilities (entries above the diagonal are 0).
// Scores are scaled by 1/sqrt(Dh). Test: tests/layers_test.cpp (finite differences).
#pragma once

namespace moempi {

void attention_forward(float* out_BTD, float* att_BHTT, const float* qkv_BT3D, int B, int T, int D,
                       int H);
void attention_backward(float* dqkv_BT3D, const float* dout_BTD, const float* qkv_BT3D,
                        const float* att_BHTT, int B, int T, int D, int H);

}  // namespace moempi
