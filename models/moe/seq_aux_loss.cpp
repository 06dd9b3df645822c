// `seq_aux_loss` (DeepSeek-V3, arXiv:2412.19437): the aux loss per sequence, averaged over the
// micro-batch's sequences: L = α · (1/S) Σ_s E · Σ_i f^s_i · P^s_i, with f^s_i = c^s_i / (K·T_s)
// from the sequence's own top-k selections (before drops) and P^s_i the mean normalised score
// over its T_s tokens. dL/ds_ti = (α·E / (S·T_s)) · ∂(Σ_i f^s_i p_ti)/∂s_t for t in sequence s.
// With one sequence per micro-batch it equals aux_loss. At perfect balance in every sequence, α.
// Test: tests/moe_test.cpp (SeqAuxLoss.*: hand-computed case, finite differences).
#include <memory>
#include <vector>

#include "models/moe/aux_loss.h"
#include "models/moe/balancing_pass.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

class SeqAuxLoss final : public BalancingPass {
 public:
  explicit SeqAuxLoss(float coeff) : coeff_(coeff) {}
  std::string name() const override { return "seq_aux_loss"; }

  double forward(const RouterState& s, bool training) override {
    double sum = 0.0;
    const int T = seq_len(s), S = s.N / T;
    for (int q = 0; q < S; ++q) {
      fractions(s, q * T, (q + 1) * T);
      sum += aux_term_forward(s, f_E_.data(), q * T, (q + 1) * T);
    }
    return S > 0 ? coeff_ * sum / S : 0.0;
  }

  void backward(float* dscores_NE, float* dlogits_NE, const RouterState& s,
                float loss_scale) override {
    const int T = seq_len(s), S = s.N / T;
    const double g = (double)loss_scale * coeff_ * s.E / ((double)S * T);
    for (int q = 0; q < S; ++q) {
      fractions(s, q * T, (q + 1) * T);
      aux_term_backward(dscores_NE, s, f_E_.data(), q * T, (q + 1) * T, g);
    }
  }

 private:
  // Tokens per sequence (the whole micro-batch when the layer could not split it).
  static int seq_len(const RouterState& s) {
    return (s.seq_len > 0 && s.N % s.seq_len == 0) ? s.seq_len : (s.N > 0 ? s.N : 1);
  }
  // f^s over tokens [t0, t1) from their top-k selections.
  void fractions(const RouterState& s, int t0, int t1) {
    counts_E_.assign(s.E, 0);
    for (size_t j = (size_t)t0 * s.K; j < (size_t)t1 * s.K; ++j) ++counts_E_[s.selected_NK[j]];
    f_E_.resize(s.E);
    load_fractions(f_E_.data(), counts_E_.data(), s.E);
  }

  double coeff_;
  std::vector<int64_t> counts_E_;  // (E) of one sequence
  std::vector<double> f_E_;        // (E)
};

}  // namespace

std::unique_ptr<BalancingPass> make_seq_aux_loss(const BalancingSpec& spec, int num_experts, const std::string& path,
                                                 const BalancingEnv&) {
  MOEMPI_CHECK_ALL(spec.coeff >= 0.0f, "{}.coeff ({}) must be >= 0", path, spec.coeff);
  return std::make_unique<SeqAuxLoss>(spec.coeff);
}

}  // namespace moempi
