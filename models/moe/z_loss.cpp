// `z_loss` (ST-MoE, arXiv:2202.08906): L = α · mean_t (logsumexp_i z_ti)² on the router logits,
// keeping them small. dL/dz_ti = α · (2/N) · lse_t · softmax(z_t)_i.
// Test: tests/moe_test.cpp (ZLoss.*: formula, finite differences).
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "models/moe/balancing_pass.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

// Stable logsumexp of one row.
double logsumexp(const float* z, int E) {
  float m = z[0];
  for (int i = 1; i < E; ++i) m = std::max(m, z[i]);
  double sum = 0.0;
  for (int i = 0; i < E; ++i) sum += std::exp((double)z[i] - m);
  return m + std::log(sum);
}

class ZLoss final : public BalancingPass {
 public:
  explicit ZLoss(float coeff) : coeff_(coeff) {}
  std::string name() const override { return "z_loss"; }

  double forward(const RouterState& s, bool training) override {
    if (s.N == 0) return 0.0;
    double sum = 0.0;
    for (int t = 0; t < s.N; ++t) {
      const double lse = logsumexp(s.logits_NE + (size_t)t * s.E, s.E);
      sum += lse * lse;
    }
    return coeff_ * sum / s.N;
  }

  void backward(float* dscores_NE, float* dlogits_NE, const RouterState& s,
                float loss_scale) override {
    if (s.N == 0) return;
    const double g = 2.0 * loss_scale * coeff_ / s.N;
    for (int t = 0; t < s.N; ++t) {
      const float* z = s.logits_NE + (size_t)t * s.E;
      float* dz = dlogits_NE + (size_t)t * s.E;
      const double lse = logsumexp(z, s.E);
      for (int i = 0; i < s.E; ++i) dz[i] += (float)(g * lse * std::exp((double)z[i] - lse));
    }
  }

 private:
  double coeff_;
};

}  // namespace

std::unique_ptr<BalancingPass> make_z_loss(const BalancingSpec& spec, int num_experts, const std::string& path,
                                           const BalancingEnv&) {
  MOEMPI_CHECK_ALL(spec.coeff >= 0.0f, "{}.coeff ({}) must be >= 0", path, spec.coeff);
  return std::make_unique<ZLoss>(spec.coeff);
}

}  // namespace moempi
