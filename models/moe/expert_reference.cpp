#include "models/moe/expert_reference.h"

#include <cmath>
#include <cstddef>

namespace moempi {

double gelu_reference(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

std::vector<double> expert_ffn_reference(const float* x_D, const float* w1_DF1, const float* w2_FD,
                                         int D, int F, Activation act) {
  const int F1 = act == Activation::kSwiglu ? 2 * F : F;
  std::vector<double> pre(F1, 0.0), a(F), y(D, 0.0);
  for (int d = 0; d < D; ++d)
    for (int f = 0; f < F1; ++f) pre[f] += static_cast<double>(x_D[d]) * w1_DF1[(size_t)d * F1 + f];
  for (int f = 0; f < F; ++f)
    a[f] = act == Activation::kSwiglu ? pre[f] / (1.0 + std::exp(-pre[f])) * pre[F + f]
                                      : gelu_reference(pre[f]);
  for (int f = 0; f < F; ++f)
    for (int d = 0; d < D; ++d) y[d] += a[f] * w2_FD[(size_t)f * D + d];
  return y;
}

}  // namespace moempi
