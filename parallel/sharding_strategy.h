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
#include <string>

#include "comm/process_groups.h"
#include "parallel/placement.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"
#include "runtime/core/registry.h"
#include "runtime/core/state_registry.h"

namespace moempi {

// The model's routed experts as a sharding strategy sees them (GptMoe implements it): per MoE
// layer, the step's placement and the storage of each expert this rank holds. Owners never change
// here: they are the construction placement (experts split over the ep group).
class ExpertHost {
 public:
  virtual ~ExpertHost() = default;
  virtual int num_moe_layers() const = 0;
  virtual const Placement& owners() const = 0;  // construction placement: owners, no replicas
  // Installs MoE layer l's placement for the coming forwards/backwards (owners as owners(), any
  // replicas): room for new replicas, their gradients zeroed, dropped replicas freed.
  virtual void set_placement(int layer, const Placement& placement) = 0;
  virtual const Placement& placement(int layer) const = 0;
  // Part 0 (w1) or 1 (w2) of expert e of MoE layer l, which this rank must hold.
  virtual int64_t part_numel(int part) const = 0;
  virtual float* expert_param(int layer, int e, int part) = 0;
  virtual float* expert_grad(int layer, int e, int part) = 0;
  virtual int64_t replica_floats() const = 0;  // parameters + gradients of replicas held now
};

class ShardingStrategy {
 public:
  virtual ~ShardingStrategy() = default;
  virtual std::string name() const = 0;
  // Before the step's first forward (collective: every rank, every step). FSSDP places the
  // replicas of hot experts and gathers their parameters; dp and ep do nothing.
  virtual void begin_step(ExpertHost& /*experts*/) {}
  // After the step's last backward, before sync_grads (collective). FSSDP sums the replicas'
  // gradients into their owners.
  virtual void end_backward(ExpertHost& /*experts*/) {}
  // After the optimizer step (collective). FSSDP drops its replicas (their parameters are stale
  // now): evaluation and the next step's placement start from the owners.
  virtual void end_step(ExpertHost& /*experts*/) {}
  // The step's top-k counts (L, E) over all data ranks (identical on every rank): FSSDP's load
  // history.
  virtual void observe_loads(const int64_t* /*counts_LE*/, int /*L*/, int /*E*/) {}
  // What the strategy materialised this step (fssdp; zeros for dp and ep).
  struct StepStats {
    int64_t replicas = 0;        // expert replicas over all MoE layers (the same on every rank)
    int64_t bytes_sent = 0;      // this rank's sparse gather + reduce-scatter bytes
    int64_t replica_floats = 0;  // parameters + gradients of the replicas this rank held
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

// The ep strategy alone (fssdp sums dense and owned-expert gradients the same way).
std::unique_ptr<ShardingStrategy> make_expert_parallel(const ProcessGroups& groups);

// parallel.strategy -> strategy, in registration order.
const ShardingRegistry& sharding_strategy_registry();

// Chooses by parallel.strategy; collective error naming the path and the registered names otherwise.
std::unique_ptr<ShardingStrategy> make_sharding_strategy(const ParallelSpec& spec,
                                                         const ProcessGroups& groups);

}  // namespace moempi
