// `aux_loss` (Switch Transformer, arXiv:2101.03961): L = α · E · Σ_i f_i · P_i per micro-batch,
// f_i = c_i / (K·N) from this rank's top-k selections before capacity drops (a constant: no
// gradient), P_i = mean_t p_ti with p the softmax-normalised scores (sigmoid scores are divided by
// their per-token sum). At perfect balance f_i = 1/E and Σ_i P_i = 1, so L = α.
// Also the shared term of the other aux losses (aux_loss.h).
// Test: tests/moe_test.cpp (AuxLoss.*: α at balance, hand-computed case, finite differences).
#include "models/moe/aux_loss.h"

#include <memory>
#include <vector>

#include "models/moe/balancing_pass.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

double row_sum(const float* sc, int E) {
  double sum = 0.0;
  for (int i = 0; i < E; ++i) sum += sc[i];
  return sum > 0.0 ? sum : 1e-20;
}

class AuxLoss final : public BalancingPass {
 public:
  explicit AuxLoss(float coeff) : coeff_(coeff) {}
  std::string name() const override { return "aux_loss"; }

  double forward(const RouterState& s, bool training) override {
    if (s.N == 0) return 0.0;
    f_E_.resize(s.E);
    load_fractions(f_E_.data(), s.selected_per_expert_E, s.E);
    return coeff_ * aux_term_forward(s, f_E_.data(), 0, s.N);
  }

  void backward(float* dscores_NE, float* dlogits_NE, const RouterState& s,
                float loss_scale) override {
    if (s.N == 0) return;
    f_E_.resize(s.E);
    load_fractions(f_E_.data(), s.selected_per_expert_E, s.E);
    aux_term_backward(dscores_NE, s, f_E_.data(), 0, s.N, (double)loss_scale * coeff_ * s.E / s.N);
  }

 private:
  double coeff_;
  std::vector<double> f_E_;  // (E)
};

}  // namespace

double aux_term_forward(const RouterState& s, const double* f_E, int t0, int t1) {
  if (t1 <= t0) return 0.0;
  double sum = 0.0;
  for (int t = t0; t < t1; ++t) {
    const float* sc = s.scores_NE + (size_t)t * s.E;
    const double inv_sum = s.score_fn == ScoreFn::kSigmoid ? 1.0 / row_sum(sc, s.E) : 1.0;
    for (int i = 0; i < s.E; ++i) sum += f_E[i] * sc[i] * inv_sum;
  }
  return s.E * sum / (t1 - t0);
}

// softmax: p = s, ∂/∂s_ti = f_i.
// sigmoid: p_ti = s_ti/S_t with S_t = Σ_j s_tj, so
//   ∂(Σ_i f_i p_ti)/∂s_tj = Σ_i f_i (δ_ij − p_ti)/S_t = (f_j − Σ_i f_i p_ti) / S_t.
void aux_term_backward(float* dscores_NE, const RouterState& s, const double* f_E, int t0, int t1, double g) {
  for (int t = t0; t < t1; ++t) {
    const float* sc = s.scores_NE + (size_t)t * s.E;
    float* ds = dscores_NE + (size_t)t * s.E;
    if (s.score_fn == ScoreFn::kSoftmax) {
      for (int i = 0; i < s.E; ++i) ds[i] += (float)(g * f_E[i]);
    } else {
      const double S = row_sum(sc, s.E);
      double fp = 0.0;
      for (int i = 0; i < s.E; ++i) fp += f_E[i] * sc[i];
      fp /= S;
      for (int i = 0; i < s.E; ++i) ds[i] += (float)(g * (f_E[i] - fp) / S);
    }
  }
}

void load_fractions(double* f_E, const int64_t* counts_E, int E) {
  int64_t total = 0;
  for (int i = 0; i < E; ++i) total += counts_E[i];
  for (int i = 0; i < E; ++i) f_E[i] = total > 0 ? (double)counts_E[i] / (double)total : 0.0;
}

std::unique_ptr<BalancingPass> make_aux_loss(const BalancingSpec& spec, int num_experts, const std::string& path,
                                             const BalancingEnv&) {
  MOEMPI_CHECK_ALL(spec.coeff >= 0.0f, "{}.coeff ({}) must be >= 0", path, spec.coeff);
  return std::make_unique<AuxLoss>(spec.coeff);
}

}  // namespace moempi
