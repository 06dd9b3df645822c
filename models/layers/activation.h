// Pointwise activations. GELU is the tanh approximation (GPT-2). SwiGLU takes a packed input
// whose row n holds [gate (F) | up (F)] and gives silu(gate) * up.
// Test: tests/layers_test.cpp (finite differences).
#pragma once
#include <cstddef>

namespace moempi {

void gelu_forward(float* out_N, const float* x_N, size_t N);
void gelu_backward(float* dx_N, const float* dout_N, const float* x_N, size_t N);

void swiglu_forward(float* out_NF, const float* gate_up_N2F, int N, int F);
void swiglu_backward(float* dgate_up_N2F, const float* dout_NF, const float* gate_up_N2F, int N,
                     int F);

}  // namespace moempi
