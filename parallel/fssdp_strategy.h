// FSSDP, fully sharded sparse data parallelism (ALGORITHMS.md 4, Hecate arXiv:2502.02581), as a
// ShardingStrategy over the whole world (parallel.ep = world size):
//  - ownership: every expert's parameters and AdamW moments live on exactly one rank (the ep
//    split), dense parameters are data parallel; one global copy of the optimizer state;
//  - each step, identically on every rank from the all-reduced int64 counts: predict each layer's
//    expert loads (mean of the last parallel.fssdp.load_window steps), then replicate hot experts
//    within max_materialized_experts replicas per rank and layer (fssdp_replicas below);
//  - begin_step: SparseAllGather of the replicas' parameters (w1, w2) from their owners; tokens
//    go to a copy on their own rank first, else spread over the holders (Placement's rule);
//  - end_backward: SparseReduceScatter of the replicas' gradients into the owners (rank order);
//    then dense gradients are summed over the world as under ep, and the optimizer steps only on
//    what the arena holds: the owned experts and the dense parameters;
//  - end_step: replicas are dropped (their parameters are stale after the optimizer step).
//  - parallel.fssdp.rematerialize: per MoE layer (MoeLayerHooks) the replicas' parameters are
//    gathered before its forward and freed after it, gathered again before its backward and freed
//    after it; their gradients live from the first backward to the layer's reduce-scatter, right
//    after the step's last backward of that layer. Same copies, same sums: the same losses.
//  - parallel.fssdp.reshard_interval N: after every N-th applied step (end_step) each layer's
//    owners are recomputed from the predicted loads (fssdp_reshard_owners below); experts whose
//    owner changes move with their parameters and AdamW moments (a SparseAllGather from the old
//    owner to the new), bit for bit: the model is the same, only where its pieces live changes.
//    The owners are checkpoint state (strategy/fssdp.owners); a resumed job moves its experts to
//    them before its first step. Owners of another world size (invalid here) are not applied.
// Not built (yet): overlap of the gather with attention. Tests: tests/fssdp_test.cpp (placement and
// re-sharding rules), tests/train_mpitest.cpp (fssdp trains the one-rank losses at 1-4 ranks; the
// same losses with re-materialisation; the same model across a re-sharding),
// tests/checkpoint_mpitest.cpp (resume across a re-sharding), tests/e2e/fssdp.sh (the binary).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "comm/process_groups.h"
#include "parallel/placement.h"
#include "parallel/sharding_strategy.h"
#include "runtime/core/config.h"

namespace moempi {

// The replicas of one layer (replicas_E[e]: extra ranks, ascending), from predicted loads load_E
// and the owners: while a rank has budget, take the most loaded rank (each expert's load split
// evenly over its holders), split its expert with the largest per-holder share onto the least
// loaded rank without a copy that still has budget, and stop when that would not lower the
// maximum rank load. Deterministic (ties -> lower rank, lower expert), so every rank computes the
// same placement from the same loads.
std::vector<std::vector<int>> fssdp_replicas(const std::vector<double>& load_E, const Placement& owners,
                                             int budget_per_rank);

// Heterogeneous re-sharding of one layer (ALGORITHMS.md 4, Algorithm 2 within equal shard sizes:
// every rank keeps E/W experts, so the arena keeps its shape): experts in order of predicted load
// (heaviest first, ties -> lower id) each go to the rank with the least owned load among those with
// a free slot (ties -> the expert's current owner, then the lower rank). The new owners are
// returned only when they lower the layer's largest per-rank owned load; otherwise `owners_E`
// unchanged (nothing moves). Deterministic: every rank computes the same from the same loads.
std::vector<int> fssdp_reshard_owners(const std::vector<double>& load_E, const std::vector<int>& owners_E,
                                      int group_size);

std::unique_ptr<ShardingStrategy> make_fssdp_strategy(const ParallelSpec& spec, const ProcessGroups& groups);

}  // namespace moempi
