// `loss_free_bias` (DeepSeek, arXiv:2408.15664): an fp32 bias b_i per expert, added to the scores
// that choose the top-k only (combine weights use the unbiased scores; Router::forward). No loss,
// no gradient. After each optimizer step, from this layer's counts c summed over the step's
// training micro-batches and all data ranks (RoutingStats, int64), with mean c̄ = Σ_j c_j / E and
// e_i = c̄ − c_i:  sign: b_i += u · sign(e_i);  proportional: b_i += u · e_i / c̄ (normalised by c̄
// so that u does not depend on the batch size; derived). Overloaded experts go down. The bias used
// at step s comes from counts up to step s − 1. After `freeze_after` updates (0 = never) the bias
// stays as it is. Every rank applies the same update to the same counts: the biases agree.
// Test: tests/moe_test.cpp (LossFreeBias.*), tests/balancing_mpitest.cpp (skewed router).
#include <cmath>
#include <memory>
#include <vector>

#include "models/moe/balancing_pass.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

class LossFreeBias final : public BalancingPass {
 public:
  LossFreeBias(const LossFreeBiasSpec& spec, int E) : spec_(spec), bias_E_(E, 0.0f) {}
  std::string name() const override { return "loss_free_bias"; }

  void adjust_scores(float* scores_NE, int N, int E) override {
    check_experts(E);
    for (int t = 0; t < N; ++t)
      for (int i = 0; i < E; ++i) scores_NE[(size_t)t * E + i] += bias_E_[i];
  }
  double forward(const RouterState&, bool) override { return 0.0; }

  void on_step_end(const int64_t* counts_E, int E) override {
    check_experts(E);
    const bool frozen = spec_.freeze_after > 0 && steps_[0] >= spec_.freeze_after;
    ++steps_[0];
    int64_t total = 0;
    for (int i = 0; i < E; ++i) total += counts_E[i];
    if (frozen || total == 0) return;
    const double mean = (double)total / E;
    for (int i = 0; i < E; ++i) {
      const double e = mean - (double)counts_E[i];
      const double step = spec_.update == BiasUpdate::kSign ? (e > 0) - (e < 0) : e / mean;
      bias_E_[i] += (float)(spec_.rate * step);
    }
  }

  std::vector<PassTensor> state() override {
    return {{.name = "bias_E", .f32 = bias_E_}, {.name = "steps", .i64 = steps_}};
  }

 private:
  void check_experts(int E) const {
    MOEMPI_CHECK_ONE(bias_E_.size() == (size_t)E, "loss_free_bias built for {} experts, called with {}",
                     bias_E_.size(), E);
  }

  LossFreeBiasSpec spec_;
  std::vector<float> bias_E_;            // (E) b
  std::vector<int64_t> steps_ = {0};     // updates seen (the freeze_after clock)
};

}  // namespace

std::unique_ptr<BalancingPass> make_loss_free_bias(const BalancingSpec& spec, int num_experts, const std::string& path,
                                                   const BalancingEnv&) {
  MOEMPI_CHECK_ALL(spec.bias.rate >= 0.0f && std::isfinite(spec.bias.rate), "{}.rate ({}) must be >= 0", path,
                   spec.bias.rate);
  MOEMPI_CHECK_ALL(spec.bias.freeze_after >= 0, "{}.freeze_after ({}) must be >= 0 (0 = never freeze)", path,
                   spec.bias.freeze_after);
  return std::make_unique<LossFreeBias>(spec.bias, num_experts);
}

}  // namespace moempi
