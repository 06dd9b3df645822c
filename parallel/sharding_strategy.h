// ShardingStrategy: who holds which parameters and how their gradients are summed
// (DESIGN.md "Process groups and placement").
//   dp: every rank holds every parameter; all gradients are summed over the world.
//   ep: experts split over the ep group; dense grads summed over the world, expert grads over
//       expert_dp (the replicas of one expert shard).
// Chosen by parallel.strategy through one Registry (sharding_strategy.cpp): a new strategy is a
// new class plus one line in that table. Every rank reaches every collective here in the same
// order. Tests: tests/train_mpitest.cpp (each strategy trains the same losses as one rank).
#pragma once
#include <memory>
#include <string>

#include "comm/process_groups.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"
#include "runtime/core/registry.h"

namespace moempi {

class ShardingStrategy {
 public:
  virtual ~ShardingStrategy() = default;
  virtual std::string name() const = 0;
  // Collective (world, and expert_dp for ep): sums each gradient over the ranks that replicate it.
  virtual void sync_grads(ParamArena& arena) = 0;
  // Collective (ep group): L2 norm of the whole model's (synced) gradient, equal on every rank.
  virtual double grad_norm(ParamArena& arena) = 0;
};

using ShardingFactory = std::unique_ptr<ShardingStrategy> (*)(const ProcessGroups& groups);
using ShardingRegistry = Registry<ShardingFactory>;

// parallel.strategy -> strategy, in registration order.
const ShardingRegistry& sharding_strategy_registry();

// Chooses by parallel.strategy; collective error naming the path and the registered names otherwise.
std::unique_ptr<ShardingStrategy> make_sharding_strategy(const ParallelSpec& spec,
                                                         const ProcessGroups& groups);

}  // namespace moempi
