// `aux_loss` (Switch Transformer, arXiv:2101.03961): L = α · E · Σ_i f_i · P_i per micro-batch,
// f_i = c_i / (K·N) from this rank's top-k selections before capacity drops (a constant: no
// gradient), P_i = mean_t p_ti with p the softmax-normalised scores (sigmoid scores are divided by
// their per-token sum). At perfect balance f_i = 1/E and Σ_i P_i = 1, so L = α.
// Test: tests/moe_test.cpp (AuxLoss.*: α at balance, hand-computed case, finite differences).
#include <memory>
#include <vector>

#include "models/moe/balancing_pass.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

class AuxLoss final : public BalancingPass {
 public:
  explicit AuxLoss(float coeff) : coeff_(coeff) {}
  std::string name() const override { return "aux_loss"; }

  double forward(const RouterState& s, bool training) override {
    if (s.N == 0) return 0.0;
    fractions(s);
    // P_i = (1/N) Σ_t p_ti
    double loss = 0.0;
    for (int t = 0; t < s.N; ++t) {
      const float* sc = s.scores_NE + (size_t)t * s.E;
      const double inv_sum = s.score_fn == ScoreFn::kSigmoid ? 1.0 / row_sum(sc, s.E) : 1.0;
      for (int i = 0; i < s.E; ++i) loss += f_E_[i] * sc[i] * inv_sum;
    }
    return coeff_ * s.E * loss / s.N;
  }

  // softmax: p = s, dL/ds_ti = α·E·f_i/N.
  // sigmoid: p_ti = s_ti/S_t with S_t = Σ_j s_tj, so
  //   dL/ds_tj = (α·E/N) · Σ_i f_i (δ_ij − p_ti)/S_t = (α·E/N) · (f_j − Σ_i f_i p_ti) / S_t.
  void backward(float* dscores_NE, float* dlogits_NE, const RouterState& s,
                float loss_scale) override {
    if (s.N == 0) return;
    fractions(s);
    const double g = (double)loss_scale * coeff_ * s.E / s.N;
    for (int t = 0; t < s.N; ++t) {
      const float* sc = s.scores_NE + (size_t)t * s.E;
      float* ds = dscores_NE + (size_t)t * s.E;
      if (s.score_fn == ScoreFn::kSoftmax) {
        for (int i = 0; i < s.E; ++i) ds[i] += (float)(g * f_E_[i]);
      } else {
        const double S = row_sum(sc, s.E);
        double fp = 0.0;
        for (int i = 0; i < s.E; ++i) fp += f_E_[i] * sc[i];
        fp /= S;
        for (int i = 0; i < s.E; ++i) ds[i] += (float)(g * (f_E_[i] - fp) / S);
      }
    }
  }

 private:
  static double row_sum(const float* sc, int E) {
    double sum = 0.0;
    for (int i = 0; i < E; ++i) sum += sc[i];
    return sum > 0.0 ? sum : 1e-20;
  }
  // f_i = c_i / (K·N)
  void fractions(const RouterState& s) {
    f_E_.resize(s.E);
    for (int i = 0; i < s.E; ++i)
      f_E_[i] = (double)s.selected_per_expert_E[i] / ((double)s.K * s.N);
  }

  double coeff_;
  std::vector<double> f_E_;  // (E)
};

}  // namespace

std::unique_ptr<BalancingPass> make_aux_loss(const BalancingSpec& spec, const std::string& path,
                                             const BalancingEnv&) {
  MOEMPI_CHECK_ALL(spec.coeff >= 0.0f, "{}.coeff ({}) must be >= 0", path, spec.coeff);
  return std::make_unique<AuxLoss>(spec.coeff);
}

}  // namespace moempi
