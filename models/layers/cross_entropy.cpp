// Fused softmax + cross-entropy over the vocabulary; the forward keeps the probabilities.
// Guarantees: numerically stable (row max subtracted, loss = log Σexp − (x_target − max)), the
// returned value is Σ_n losses_N[n] summed in double; a target outside [0, V) aborts (local).
// Test: tests/layers_test.cpp (CrossEntropy.*: finite differences, sum of −log p(target)).
#include "models/layers/cross_entropy.h"

#include "models/layers/fast_math.h"

#include <bit>
#include <cmath>
#include <cstddef>

#include "runtime/core/error.h"

namespace moempi {
namespace {

constexpr int kLanes = 16;


}  // namespace

double cross_entropy_forward(float* losses_N, float* probs_NV, const float* logits_NV,
                             const int32_t* targets_N, int N, int V) {
  double total = 0.0;
  for (int n = 0; n < N; ++n) {
    const float* __restrict x = logits_NV + (size_t)n * V;
    float* __restrict p = probs_NV + (size_t)n * V;
    const int32_t target = targets_N[n];
    MOEMPI_CHECK_ONE(target >= 0 && target < V, "cross_entropy: target {} at row {} not in [0, {})",
                     target, n, V);
    // Row max and Σ exp(x − max), each in kLanes parallel chains so they vectorise.
    float mx[kLanes];
    for (int l = 0; l < kLanes; ++l) mx[l] = x[0];
    int i = 0;
    for (; i + kLanes <= V; i += kLanes)
      for (int l = 0; l < kLanes; ++l) mx[l] = x[i + l] > mx[l] ? x[i + l] : mx[l];
    float m = x[0];
    for (; i < V; ++i) m = x[i] > m ? x[i] : m;
    for (int l = 0; l < kLanes; ++l) m = mx[l] > m ? mx[l] : m;

    float acc[kLanes] = {};
    for (i = 0; i + kLanes <= V; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        p[i + l] = exp_approx(x[i + l] - m);
        acc[l] += p[i + l];
      }
    float sum = 0.0f;
    for (; i < V; ++i) {
      p[i] = exp_approx(x[i] - m);
      sum += p[i];
    }
    for (int l = 0; l < kLanes; ++l) sum += acc[l];
    const float inv = 1.0f / sum;
    for (i = 0; i < V; ++i) p[i] *= inv;
    // −log p_target = log Σ exp(x − max) − (x_target − max)
    const double loss = std::log((double)sum) - (double)(x[target] - m);
    if (losses_N) losses_N[n] = (float)loss;
    total += loss;
  }
  return total;
}

// d(−log softmax(x)_t)/dx = softmax(x) − onehot(t).
void cross_entropy_backward(float* dlogits_NV, const float* probs_NV, const int32_t* targets_N,
                            float scale, int N, int V) {
  for (int n = 0; n < N; ++n) {
    const float* __restrict p = probs_NV + (size_t)n * V;
    float* __restrict dl = dlogits_NV + (size_t)n * V;
    for (int i = 0; i < V; ++i) dl[i] += scale * p[i];
    dl[targets_N[n]] -= scale;
  }
}

}  // namespace moempi
