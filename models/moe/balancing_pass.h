// BalancingPass: the load-balancing terms of one MoE router (ALGORITHMS.md 2), chosen by name
// from `moe.balancing.<i>.type` through one Registry (balancing_pass.cpp). A new pass is a new
// file (its factory) plus one line in that registry; the router and the layer never change.
// Contract: every pass matches its formula on hand-computed cases and its gradient matches finite
// differences with routing held fixed (tests/moe_test.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/core/config.h"
#include "runtime/core/registry.h"

namespace moempi {

// What the router computed in its last forward, as read-only views (valid until its next forward).
struct RouterState {
  int N = 0, K = 0, E = 0;
  int seq_len = 0;                          // tokens per sequence, N = B * seq_len (per-sequence passes)
  ScoreFn score_fn = ScoreFn::kSoftmax;
  const float* logits_NE = nullptr;         // (N, E) x · W_r
  const float* scores_NE = nullptr;         // (N, E) softmax or sigmoid of the logits, unbiased
  const int32_t* selected_NK = nullptr;     // (N, K) top-k choice, before capacity drops
  const int64_t* selected_per_expert_E = nullptr;  // (E) c_i: top-k selections before drops
};

// Services a pass may need from outside models/ (no MPI type here: the trainer installs them).
struct BalancingEnv {
  // Collective over ProcessGroups::data (all ranks that see different data; the world today,
  // never expert_dp): sums n int64 counts in place (MPI_SUM). Empty = one data rank.
  std::function<void(int64_t* counts, int n)> allreduce_counts_data;
};

// One named piece of a pass's step-spanning state (biases, count buffers), as a view into the
// pass. Checkpoints save and restore these by name without knowing the pass type.
struct PassTensor {
  std::string name;              // e.g. "bias", "counts_E"
  std::span<float> f32 = {};     // exactly one of f32 / i64 is non-empty
  std::span<int64_t> i64 = {};
};

class BalancingPass {
 public:
  virtual ~BalancingPass() = default;
  virtual std::string name() const = 0;

  // Bias-style passes (loss_free_bias) shift the selection scores in place before top-k. The
  // shifted scores choose experts only; combine weights use the unbiased scores. Default: none.
  virtual void adjust_scores(float* scores_NE, int N, int E) {}
  // The loss of this micro-batch, coefficient applied (0 for passes without a loss). Step-level
  // state (count buffers) is updated only when `training` (not in eval or recomputation).
  virtual double forward(const RouterState& state, bool training) = 0;
  // ADDS loss_scale · dL/dscores into dscores_NE and/or loss_scale · dL/dlogits into dlogits_NE
  // (both (N, E), never nullptr), for the state of the last forward.
  virtual void backward(float* dscores_NE, float* dlogits_NE, const RouterState& state,
                        float loss_scale) {}
  // After the last micro-batch of an optimizer step (bias update, buffer reset), on every rank
  // with the same argument: this layer's top-k selections before drops, summed over the step's
  // training micro-batches and over all data ranks (RoutingStats; counts_E has E entries).
  virtual void on_step_end(const int64_t* counts_E, int E) {}
  // Instead of on_step_end, after a step whose update was skipped (train.nonfinite: skip): drop
  // what the step accumulated, update nothing.
  virtual void on_step_discarded() {}
  // The pass's step-spanning state, as views (empty for stateless passes).
  virtual std::vector<PassTensor> state() { return {}; }
};

// num_experts: E of the layer, so that step-spanning state (biases, buffers) exists from
// construction, before the first step (a checkpoint can restore it before any forward).
using BalancingFactory = std::unique_ptr<BalancingPass> (*)(const BalancingSpec& spec, int num_experts,
                                                           const std::string& path, const BalancingEnv& env);
using BalancingRegistry = Registry<BalancingFactory>;

// The passes, each defined in its own file (`path` is the YAML path of the spec, for messages).
std::unique_ptr<BalancingPass> make_aux_loss(const BalancingSpec&, int num_experts, const std::string& path,
                                         const BalancingEnv&);
std::unique_ptr<BalancingPass> make_z_loss(const BalancingSpec&, int num_experts, const std::string& path,
                                         const BalancingEnv&);
std::unique_ptr<BalancingPass> make_seq_aux_loss(const BalancingSpec&, int num_experts, const std::string& path,
                                         const BalancingEnv&);
std::unique_ptr<BalancingPass> make_global_batch_aux_loss(const BalancingSpec&, int num_experts,
                                                          const std::string& path, const BalancingEnv&);
std::unique_ptr<BalancingPass> make_loss_free_bias(const BalancingSpec&, int num_experts, const std::string& path,
                                         const BalancingEnv&);

// moe.balancing.<i>.type -> pass, in registration order, with each pass's own keys.
const BalancingRegistry& balancing_pass_registry();

// The pass spec.type names. `path` is the YAML path of the spec, e.g. "moe.balancing.1"; an
// unknown type is a collective error naming `<path>.type`, the value and the registered names.
std::unique_ptr<BalancingPass> make_balancing_pass(const BalancingSpec& spec, int num_experts,
                                                   const std::string& path = "moe.balancing.0",
                                                   const BalancingEnv& env = {});
// One pass per entry of moe.balancing, in order.
std::vector<std::unique_ptr<BalancingPass>> make_balancing_passes(
    const std::vector<BalancingSpec>& specs, int num_experts, const BalancingEnv& env = {});
// The registered names, in registration order.
std::vector<std::string> balancing_pass_types();

}  // namespace moempi
