// ShardingStrategy: who holds which parameters and how their gradients are summed
// (DESIGN.md "Process groups and placement").
//   dp: every rank holds every parameter; all gradients are summed over the world.
//   ep: experts split over the ep group; dense grads summed over the world, expert grads over
//       expert_dp (the replicas of one expert shard).
//   fssdp: ep over the world plus per-step replicas of hot experts (parallel/fssdp_strategy.h).
// Chosen by parallel.strategy through one Registry (sharding_strategy.cpp): a new strategy is a
// new class plus one line in that table. Every rank reaches every collective here in the same
// order. Tests: tests/train_mpitest.cpp (each strategy trains the same losses as one rank).
#pragma once
#include <memory>
#include <span>
#include <string>

#include "comm/process_groups.h"
#include "parallel/placement.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"
#include "runtime/core/registry.h"
#include "runtime/core/state_registry.h"

namespace moempi {

// Called by the model around each MoE layer's forward and backward (every rank, the same layers in
// the same order: collectives may be posted here). FSSDP's re-materialisation gathers a layer's
// replicas before its forward and backward and frees them after each; dp and ep do nothing.
class MoeLayerHooks {
 public:
  virtual ~MoeLayerHooks() = default;
  virtual void before_forward(int /*moe_layer*/) {}
  virtual void after_forward(int /*moe_layer*/) {}
  virtual void before_backward(int /*moe_layer*/) {}
  virtual void after_backward(int /*moe_layer*/) {}
};

// The model's routed experts as a sharding strategy sees them (GptMoe implements it): per MoE
// layer, its owners, the step's placement and the storage of each expert this rank holds. Owners
// start as the construction placement (experts split over the ep group); FSSDP re-sharding moves
// them (set_owners), every rank keeping as many experts as it had.
class ExpertHost {
 public:
  virtual ~ExpertHost() = default;
  virtual int num_moe_layers() const = 0;
  virtual const Placement& owners(int layer) const = 0;  // MoE layer l's owners, no replicas
  // MoE layer l is owned by owner_E[e] from now on (the placement becomes those owners, no
  // replicas). An expert a rank keeps keeps its storage; a new one takes the storage of one that
  // left, renamed, with contents to be filled by the caller (expert_param of the new owner).
  virtual void set_owners(int layer, const std::vector<int>& owner_E) = 0;
  // Installs MoE layer l's placement for the coming forwards/backwards (owners as owners(l), any
  // replicas): new replicas hold no buffers yet, dropped replicas are freed.
  virtual void set_placement(int layer, const Placement& placement) = 0;
  // Allocates (true: gradients zeroed, what exists kept) or frees (false) the parameter and the
  // gradient buffers of layer l's replicas.
  virtual void set_replica_buffers(int layer, bool params, bool grads) = 0;
  virtual const Placement& placement(int layer) const = 0;
  // Part 0 (w1) or 1 (w2) of expert e of MoE layer l, which this rank must hold.
  virtual int64_t part_numel(int part) const = 0;
  virtual float* expert_param(int layer, int e, int part) = 0;
  virtual float* expert_grad(int layer, int e, int part) = 0;
  virtual int64_t replica_floats() const = 0;  // replica parameter + gradient floats allocated now
};

class ShardingStrategy : public MoeLayerHooks {
 public:
  virtual ~ShardingStrategy() = default;
  virtual std::string name() const = 0;
  // Before each micro-batch's forward (every rank): `last` is the step's last micro-batch (FSSDP
  // with re-materialisation sums a layer's replica gradients into the owners after that backward).
  virtual void begin_micro_batch(bool /*last*/) {}
  // Before the step's first forward (collective: every rank, every step). FSSDP places the
  // replicas of hot experts and gathers their parameters; dp and ep do nothing.
  virtual void begin_step(ExpertHost& /*experts*/) {}
  // After the step's last backward, before sync_grads (collective). FSSDP sums the replicas'
  // gradients into their owners.
  virtual void end_backward(ExpertHost& /*experts*/) {}
  // After the optimizer step (collective). FSSDP drops its replicas (their parameters are stale
  // now): evaluation and the next step's placement start from the owners.
  virtual void end_step(ExpertHost& /*experts*/) {}
  // The optimizer's moment buffers, each laid out like `arena` (once, after construction): FSSDP
  // moves an expert's moments with it when it re-shards.
  virtual void attach_optimizer_state(ParamArena& /*arena*/, std::vector<FloatBuffer*> /*moments*/) {}
  // The step's top-k counts (L, E) over all data ranks (identical on every rank): FSSDP's load
  // history.
  virtual void observe_loads(const int64_t* /*counts_LE*/, int /*L*/, int /*E*/) {}
  // What the strategy materialised this step (fssdp; zeros for dp and ep).
  struct StepStats {
    int64_t replicas = 0;        // expert replicas over all MoE layers (the same on every rank)
    int64_t bytes_sent = 0;      // this rank's sparse gather + reduce-scatter bytes
    int64_t replica_floats = 0;  // most replica parameter + gradient floats this rank held at once
    int64_t experts_moved = 0;   // experts whose owner changed at this step's end (re-sharding)
  };
  virtual StepStats step_stats() const { return {}; }
  // For checkpoints: the strategy's own step-spanning state (fssdp: its load history), for a model
  // of L MoE layers and E experts. dp and ep have none.
  virtual void register_state(StateRegistry& /*registry*/, const StateWriters& /*writers*/, int /*L*/, int /*E*/) {}
  // Collective (world, and expert_dp for ep): sums each gradient over the ranks that replicate it.
  virtual void sync_grads(ParamArena& arena) = 0;
  // Collective (ep group): L2 norm of the whole model's (synced) gradient, equal on every rank.
  virtual double grad_norm(ParamArena& arena) = 0;
};

using ShardingFactory = std::unique_ptr<ShardingStrategy> (*)(const ParallelSpec& spec, const ProcessGroups& groups);
using ShardingRegistry = Registry<ShardingFactory>;

// acc + Σ x² in double, in span order (the gradient norms of every strategy).
double sum_squares(std::span<const float> xs, double acc = 0);

// The ep strategy alone (fssdp sums dense and owned-expert gradients the same way).
std::unique_ptr<ShardingStrategy> make_expert_parallel(const ProcessGroups& groups);

// parallel.strategy -> strategy, in registration order.
const ShardingRegistry& sharding_strategy_registry();

// Chooses by parallel.strategy; collective error naming the path and the registered names otherwise.
std::unique_ptr<ShardingStrategy> make_sharding_strategy(const ParallelSpec& spec,
                                                         const ProcessGroups& groups);

}  // namespace moempi
