// The GPT-style MoE transformer: token + position embeddings, pre-norm blocks of causal
// attention and an FFN (an MoE layer, or a dense FFN where moe.every_n_layers says so), final
// norm, LM head tied to the token embedding, cross-entropy. Forward/backward of one micro-batch
// at a time; parameters and gradients in one ParamArena (dense first, then local experts).
// Tests: tests/model_test.cpp (whole-model finite differences on a tiny config).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "models/moe/moe_layer.h"
#include "models/moe/routing_stats.h"
#include "parallel/dispatcher.h"
#include "parallel/sharding_strategy.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"
#include "runtime/core/state_registry.h"

namespace moempi {

// Wall time of one training step split by phase (seconds, accumulated until reset).
enum Phase { kPhaseAttention, kPhaseMoe, kPhaseDenseFfn, kPhaseOther, kPhaseCount };

class GptMoe final : public ExpertHost {
 public:
  // Registers every parameter and allocates the arena. One dispatcher serves every MoE layer
  // (each layer keeps its own DispatchPlan); every layer uses `placement` (ep / dp layouts).
  // env: services for balancing passes that communicate (the trainer installs the data group's
  // all-reduce; default: one data rank).
  GptMoe(const ModelSpec& model, const MoeSpec& moe, const Placement& placement,
         std::unique_ptr<Dispatcher> dispatcher, const BalancingEnv& env = {});

  // Deterministic per global tensor name: the same model on any rank layout.
  void init_params(uint64_t seed);

  // One micro-batch of B sequences of model.seq_len tokens. Returns the mean cross-entropy;
  // saves activations for backward. Collective over the EP group (dispatch), every rank.
  double forward(const int32_t* tokens_BT, const int32_t* targets_BT, int B, bool training);
  // Where the next forward's sequences are: `first_seq` is the global index of its first sequence
  // in `step` (0-based; for moe.force_routing's layout-independent draws).
  void set_position(uint64_t seed, int64_t step, int64_t first_seq);
  // Adds this micro-batch's gradients into the arena; grad_scale weights the micro-batch's mean
  // loss in the step's objective (1 / (micro-batches per step × data-parallel ranks)).
  void backward(float grad_scale);

  double aux_loss() const;  // balancing losses of the last forward, summed over MoE layers
  ParamArena& arena() { return arena_; }
  const ModelSpec& spec() const { return model_; }
  std::vector<MoeLayer*> moe_layers();
  // Adds the last forward's routing of every MoE layer (call after training forwards only).
  void add_routing(RoutingStats& stats);
  // The balancing passes' step-level updates, from the step's counts reduced over all data ranks.
  void on_step_end(const RoutingStats& global);
  // Instead, after a skipped step (train.nonfinite: skip): the passes drop the step's buffers.
  void on_step_discarded();
  // For checkpoints: the parameters ("param/<name>") and every balancing pass's step-spanning
  // state ("balancing/layers.<l>.<pass>.<tensor>", the same on every rank: a dense writer).
  void register_state(StateRegistry& registry, const StateWriters& writers);

  // Training FLOPs per token (6 × active matmul params incl. the tied head + 12·L·T·D attention).
  double flops_per_token() const;
  // The part of flops_per_token() spent in the routed experts (6 x their top_k experts' weights).
  double routed_flops_per_token() const;
  int64_t active_params() const;
  std::array<double, kPhaseCount>& phase_seconds() { return phase_seconds_; }
  double exchange_seconds() const { return dispatcher_->stats().seconds; }  // part of kPhaseMoe
  const Dispatcher& dispatcher() const { return *dispatcher_; }
  Dispatcher& dispatcher() { return *dispatcher_; }  // the trainer calls begin_step on it

  // ExpertHost (the sharding strategy's view of the routed experts; MoE layers counted 0..).
  int num_moe_layers() const override { return (int)layer_placements_.size(); }
  const Placement& owners(int layer) const override { return layer_owners_[layer]; }
  void set_owners(int layer, const std::vector<int>& owner_E) override;
  void set_placement(int layer, const Placement& placement) override;
  void set_replica_buffers(int layer, bool params, bool grads) override;
  // Called around every MoE layer's forward and backward from now on (nullptr: none).
  void set_layer_hooks(MoeLayerHooks* hooks) { hooks_ = hooks; }
  const Placement& placement(int layer) const override { return layer_placements_[layer]; }
  int64_t part_numel(int part) const override;
  float* expert_param(int layer, int e, int part) override;
  float* expert_grad(int layer, int e, int part) override;
  int64_t replica_floats() const override;

 private:
  struct Block {
    bool is_moe = false;
    ParamArena::Id ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b;
    ParamArena::Id ffn_w1, ffn_b1, ffn_w2, ffn_b2;  // dense FFN layers only
    std::unique_ptr<MoeLayer> moe;
    int moe_index = -1;  // among the MoE layers
    // activations of the current micro-batch
    FloatBuffer ln1_out, ln1_mean, ln1_rstd, qkv, att, attn_out, resid_mid;
    FloatBuffer ln2_out, ln2_mean, ln2_rstd, ffn_pre, ffn_act, ffn_out;
  };
  void norm_forward(float* out, float* mean, float* rstd, const float* x, ParamArena::Id w,
                    ParamArena::Id b, int N);
  void norm_backward(float* dx, const float* dout, const float* x, ParamArena::Id w,
                     ParamArena::Id b, const float* mean, const float* rstd, int N);
  void dense_ffn_forward(Block& blk, float* out, const float* x, int N);
  void dense_ffn_backward(Block& blk, float* dx, const float* dout, const float* x, int N);

  ModelSpec model_;
  MoeSpec moe_;
  Placement placement_;                       // owners at construction
  std::vector<Placement> layer_owners_;      // per MoE layer: the owners now (FSSDP re-shards them)
  std::vector<Placement> layer_placements_;  // per MoE layer: this step's (owners + replicas)
  std::unique_ptr<Dispatcher> dispatcher_;
  ParamArena arena_;
  ParamArena::Id wte_, wpe_, lnf_w_, lnf_b_;
  std::vector<Block> blocks_;
  int B_ = 0;
  std::vector<int32_t> tokens_, targets_;
  FloatBuffer encoded_;                // (N, D) block 0 input
  std::vector<FloatBuffer> resid_;     // (L+1) × (N, D): input of block l; resid_[L] final
  FloatBuffer lnf_out_, lnf_mean_, lnf_rstd_, logits_, probs_, losses_;
  FloatBuffer dresid_, dtmp_, dtmp2_, dqkv_, dffn_hidden_;
  std::array<double, kPhaseCount> phase_seconds_{};
  MoeLayerHooks* hooks_ = nullptr;
};

}  // namespace moempi
