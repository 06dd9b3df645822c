// `global_batch_aux_loss` (Qwen, arXiv:2501.11873): L = α · E · Σ_i f̄_i · P_i, where f̄_i = C_i / Σ_j C_j
// and C is a running int64 buffer: this layer's top-k selections (before drops) all-reduced over
// every rank that sees different data (BalancingEnv::allreduce_counts_data, ProcessGroups::data,
// not expert_dp) and summed over the optimizer step's micro-batches so far; reset at step end.
// P_i stays local (mean over this rank's N tokens), so the gradient is α·E·f̄_i/N per token
// (softmax; sigmoid as in aux_loss.cpp) — not Megatron's form, which divides the local score sum
// by the global token count and is 1/dp too small (NVIDIA/Megatron-LM#3672).
// At perfect global balance f̄_i = 1/E and the loss is α, whatever the local balance; with one rank
// and one micro-batch it equals aux_loss. Only training forwards count and communicate: an
// evaluation forward uses the micro-batch's own counts and leaves the buffer alone.
// Test: tests/moe_test.cpp (GlobalBatchAuxLoss.*), tests/balancing_mpitest.cpp (scope equivalence).
#include <algorithm>
#include <memory>
#include <vector>

#include "models/moe/aux_loss.h"
#include "models/moe/balancing_pass.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

class GlobalBatchAuxLoss final : public BalancingPass {
 public:
  GlobalBatchAuxLoss(float coeff, int E, BalancingEnv env) : coeff_(coeff), env_(std::move(env)), counts_E_(E, 0) {}
  std::string name() const override { return "global_batch_aux_loss"; }

  // Collective over the data ranks when training (every rank, tokens or not).
  double forward(const RouterState& s, bool training) override {
    step_counts_E_.assign(s.selected_per_expert_E, s.selected_per_expert_E + s.E);
    if (training) {
      if (env_.allreduce_counts_data) env_.allreduce_counts_data(step_counts_E_.data(), s.E);
      MOEMPI_CHECK_ONE(counts_E_.size() == (size_t)s.E, "global_batch_aux_loss built for {} experts, called with {}",
                       counts_E_.size(), s.E);
      for (int i = 0; i < s.E; ++i) counts_E_[i] += step_counts_E_[i];
    }
    f_E_.resize(s.E);
    load_fractions(f_E_.data(), training ? counts_E_.data() : step_counts_E_.data(), s.E);
    return coeff_ * aux_term_forward(s, f_E_.data(), 0, s.N);
  }

  // f̄ of the last forward (a constant): dL/ds_ti = α·E·f̄_i/N_local.
  void backward(float* dscores_NE, float* dlogits_NE, const RouterState& s,
                float loss_scale) override {
    if (s.N == 0) return;
    aux_term_backward(dscores_NE, s, f_E_.data(), 0, s.N, (double)loss_scale * coeff_ * s.E / s.N);
  }

  void on_step_end(const int64_t*, int) override { std::fill(counts_E_.begin(), counts_E_.end(), 0); }
  void on_step_discarded() override { std::fill(counts_E_.begin(), counts_E_.end(), 0); }

  std::vector<PassTensor> state() override { return {{.name = "counts_E", .i64 = counts_E_}}; }

 private:
  double coeff_;
  BalancingEnv env_;
  std::vector<int64_t> counts_E_;       // (E) running buffer C of the step: all data ranks, micro-batches so far
  std::vector<int64_t> step_counts_E_;  // (E) this micro-batch's counts (all-reduced when training)
  std::vector<double> f_E_;             // (E) f̄ of the last forward
};

}  // namespace

std::unique_ptr<BalancingPass> make_global_batch_aux_loss(const BalancingSpec& spec, int num_experts, const std::string& path,
                                                          const BalancingEnv& env) {
  MOEMPI_CHECK_ALL(spec.coeff >= 0.0f, "{}.coeff ({}) must be >= 0", path, spec.coeff);
  return std::make_unique<GlobalBatchAuxLoss>(spec.coeff, num_experts, env);
}

}  // namespace moempi
