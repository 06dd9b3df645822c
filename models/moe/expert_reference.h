// A naive double-precision expert FFN of one row, act(x · w1) · w2, the reference that
// tests/moe_test.cpp and `moempi bench experts` check the grouped GEMM path against.
#pragma once
#include <vector>

#include "runtime/core/config.h"

namespace moempi {

double gelu_reference(double x);  // tanh approximation, in double
// w1_DF1 is (D, F) for GELU or (D, 2F) = [gate | up] for SwiGLU; w2_FD is (F, D).
std::vector<double> expert_ffn_reference(const float* x_D, const float* w1_DF1, const float* w2_FD,
                                         int D, int F, Activation act);

}  // namespace moempi
