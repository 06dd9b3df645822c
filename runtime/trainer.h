// The training loop (DESIGN.md "The data flow of one training step"): per step, grad_accum
// micro-batches of forward+backward, gradient sync by the sharding strategy, balancing passes'
// step end, global-norm clip, optimizer step, metrics; validation every eval.interval steps.
// Each rank reads a disjoint slice of every global batch; sequence indices are assigned so that
// any world size and strategy sees the same global batch as one rank with the same micro-batch.
// Tests: tests/train_mpitest.cpp (invariance), tests/e2e/*.sh (the binary).
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/process_groups.h"
#include "models/gpt_moe.h"
#include "runtime/core/config.h"
#include "runtime/memory_estimate.h"

namespace moempi {

struct TrainOptions {
  bool log_steps = true;    // progress lines on rank 0
  bool write_files = true;  // job.yaml and metrics.jsonl in the run directory
  bool checkpoints = true;  // resume (checkpoint.resume) and save (checkpoint.interval); off for benchmarks
  // Called on every rank after each step (outside its step time) with the 1-based step, the
  // step's global mean loss and the updated parameters, e.g. for `moempi bench train` to check
  // that replicas agree. If it communicates it must be collective over the world.
  std::function<void(int step, double loss, ParamArena& arena)> after_step = {};
  // Called on every rank after each step with every piece of training state by name (parameters,
  // optimizer moments, ...: what a checkpoint saves), for tests that compare whole models.
  std::function<void(int step, const StateRegistry& state)> after_step_state = {};
  // Stop after this step (after its checkpoint, if one is due), as a killed job would: for resume
  // tests. 0 = run every step. The binary reads MOEMPI_TEST_STOP_AFTER=STEP.
  int stop_after_step = 0;
};

struct TrainSummary {
  std::vector<double> losses;   // global mean loss of every step
  std::string dispatcher;       // moe.dispatch.type as resolved (auto: what it chose)
  std::vector<double> step_seconds;
  std::optional<double> final_val_loss;
  double sgemm_gflops = 0;      // measured single-thread sgemm rate (mean over ranks)
  double flops_per_token = 0;
  double routed_flops_per_token = 0;  // the routed experts' part of it
  int64_t tokens_per_step = 0;  // global
  int64_t skipped_steps = 0;    // train.nonfinite: skip
  std::array<double, kPhaseCount + 2> phase_seconds{};  // model phases, then optimizer, grad sync
  double exchange_seconds = 0;  // dispatchers' exchanges, rank 0 (included in the moe phase)
  std::array<double, kDispatchCalls> dispatch_call_seconds{};  // the same by dispatcher call
  int start_step = 0;           // steps already done when this run started (from a checkpoint)
  int checkpoints_saved = 0;
  int64_t checkpoint_bytes = 0;     // of the last checkpoint saved
  double checkpoint_seconds = 0;    // all saves, wall time (outside the step times)
  std::vector<int64_t> replicas;  // per step: expert replicas the strategy materialised (fssdp)
  // Preemption (runtime/preemption.h): the signal that stopped the run before train.steps (the
  // largest signal number any rank received; 0 = not preempted) and the checkpoint saved at that
  // step boundary ("" with checkpoints off). The run stopped after step start_step + losses.size().
  int preempted_signal = 0;
  std::string preempted_checkpoint;
  std::vector<int64_t> experts_moved;  // per step: experts whose owner changed (fssdp re-sharding)
  // This rank's model state as allocated (params, grads, optimizer, experts' shares; the start-up
  // line prints rank 0's), and in `replicas` the most replica bytes (params + grads) it held at
  // once in any step (fssdp).
  MemoryEstimate memory;
};
enum { kPhaseOptimizer = kPhaseCount, kPhaseGradSync = kPhaseCount + 1 };

// Runs the job described by `spec` on the process groups (collective over the world). With
// checkpoint.resume auto, continues from the newest usable checkpoint in <run_dir>/ckpt (falling
// back to older ones, and saying so); with checkpoint.interval > 0, saves every interval steps
// and after the last one. A signal caught by runtime/preemption.h on any rank stops every rank
// after the same step, with a checkpoint of that step (whatever checkpoint.interval says).
TrainSummary train(const JobSpec& spec, const ProcessGroups& groups, const TrainOptions& options);

// Single-thread sgemm GFLOP/s at a mid-size shape, measured now (MFU's denominator).
double measure_sgemm_gflops();

}  // namespace moempi
