// What a rank will allocate for a job, estimated from the spec before anything is allocated:
// parameters, gradients, optimizer state, activations of one micro-batch (forward and backward
// buffers) and the dispatcher's row buffers. `moempi validate` and the start-up print it, and a
// job whose ranks on one machine cannot fit in its memory is refused (a collective error naming
// the largest part and the keys that drive it) instead of dying in std::bad_alloc.
// Also refuses shapes whose buffers exceed 32-bit indexing. Tests: tests/job_spec_test.cpp
// (MemoryEstimate.*), tests/e2e/resources.sh.
#pragma once
#include <string>
#include <vector>

#include "runtime/core/arena.h"
#include "runtime/core/config.h"

namespace moempi {

struct MemoryEstimate {
  double params = 0, grads = 0, optimizer = 0, activations = 0, dispatch = 0;  // bytes per rank
  // The routed experts' share of params (= of grads) and of the optimizer state (included above).
  double expert_params = 0, expert_optimizer = 0;
  // parallel.strategy fssdp: the replica buffers (parameters and gradients of the experts a rank
  // materialises) at the budget, max_materialized_experts per MoE layer; 0 for dp and ep.
  double replicas = 0;
  double total() const { return params + grads + optimizer + activations + dispatch + replicas; }
  // "48.2 MiB per rank (params 1.2 MiB (experts 0.9 MiB), grads 1.2 MiB (experts 0.9 MiB), optimizer
  // 2.4 MiB (experts 1.8 MiB), activations 40 MiB, dispatch 3.4 MiB[, fssdp replicas 0.5 MiB])"
  std::string describe() const;
  // The model state alone: "params 1.2 MiB (experts 0.9 MiB), grads ..., optimizer ... (experts ...)".
  std::string describe_model_state() const;
};

// `ep` is the resolved parallel.ep (>= 1): ranks that share the experts.
MemoryEstimate estimate_memory(const JobSpec& spec, int ep);

// The fssdp replica buffers at the budget, in bytes per rank (0 for other strategies): per MoE
// layer min(max_materialized_experts, experts a rank does not own) replicas of params + grads;
// with parallel.fssdp.rematerialize the params of one layer, and the grads of one layer (one
// micro-batch per step) or of every layer (train.grad_accum > 1).
double fssdp_replica_bytes(const JobSpec& spec, int ep);

// What this rank allocated for the model state (the figures estimate_memory predicts): params and
// grads from the arena, the optimizer from its moment buffers (`moment_floats`: each laid out like
// the arena), with the experts' shares. Activations, dispatch and replicas are left 0.
MemoryEstimate allocated_model_memory(const ParamArena& arena, const std::vector<size_t>& moment_floats);

// The machine's physical memory in bytes (MemTotal of /proc/meminfo, else sysconf).
double machine_memory_bytes();

// "1.5 GiB", "320 MiB", "12 KiB".
std::string format_bytes(double bytes);

// Collective error when `ranks_on_machine` ranks of this estimate need more than `machine_bytes`,
// or when a buffer exceeds 32-bit indexing; `where` names the check ("validate", "start-up").
void check_memory_fits(const JobSpec& spec, const MemoryEstimate& m, int ranks_on_machine, double machine_bytes);

}  // namespace moempi
