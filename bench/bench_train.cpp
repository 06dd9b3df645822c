// `moempi bench train JOB.yaml`: end-to-end training throughput of a job spec — tokens/s, MFU
// against the sgemm rate measured in the same run, and where the time goes by phase
// (attention, MoE layers, dense FFNs, other = embedding/head/loss, grad sync, optimizer).
// The first --warmup steps are excluded; figures are medians over the timed steps.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "comm/agreement.h"
#include "comm/process_groups.h"
#include "comm/watchdog.h"
#include "runtime/core/blas.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/log.h"
#include "runtime/job_spec.h"
#include "runtime/trainer.h"

namespace moempi::bench {
namespace {

struct TrainBenchArgs {
  std::string job;
  std::vector<std::string> overrides;
  int steps = 12;
  int warmup = 2;
  std::string json;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int run(const TrainBenchArgs& args) {
  const Communicator world_comm = Communicator::world();
  const int world = world_comm.size();
  JobSpec spec;
  agree_on_errors(world_comm, [&] {  // the job file may be readable on some ranks only
    spec = load_job_spec(args.job, args.overrides);
    spec.train.steps = args.warmup + args.steps;
    spec.eval.interval = 0;
    resolve_for_world(spec, world);
  });
  watchdog::start(spec.comm.timeout_s);
  ProcessGroups groups = ProcessGroups::build(spec.parallel);
  TrainSummary s = train(spec, groups, {.log_steps = false, .write_files = false});
  if (groups.world.rank() != 0) return 0;

  std::vector<double> timed(s.step_seconds.begin() + args.warmup, s.step_seconds.end());
  const double step_s = median(timed);
  const double tok_s = s.tokens_per_step / step_s;
  const double mfu = s.flops_per_token * tok_s / (s.sgemm_gflops * 1e9 * world * blas::num_threads());
  double total = 0;
  for (double x : s.step_seconds) total += x;
  const char* names[] = {"attention", "moe", "dense_ffn", "other", "optimizer", "grad_sync"};
  double phases = 0;
  for (double p : s.phase_seconds) phases += p;
  std::printf("# moempi bench train %s | world %d | %s\n", args.job.c_str(), world, blas::kernel_note().c_str());
  std::printf("# %d timed steps after %d warm-up, %lld tokens per step, %.2f MFLOP per token, sgemm %.1f GFLOP/s per rank\n",
              args.steps, args.warmup, static_cast<long long>(s.tokens_per_step), s.flops_per_token / 1e6,
              s.sgemm_gflops);
  std::printf("%12s %12s %10s %8s\n", "step_ms", "tokens/s", "GFLOP/s", "mfu");
  std::printf("%12.1f %12.0f %10.1f %7.1f%%\n", 1e3 * step_s, tok_s, s.flops_per_token * tok_s / 1e9, 100 * mfu);
  std::printf("# time by phase, rank 0, all steps (%% of step time)\n");
  for (int p = 0; p < 6; ++p)
    std::printf("%12s %9.1f ms/step %6.1f%%\n", names[p], 1e3 * s.phase_seconds[p] / s.step_seconds.size(),
                100 * s.phase_seconds[p] / total);
  std::printf("%12s %9.1f ms/step %6.1f%%   (dispatch exchanges, inside moe)\n", "  a2a",
              1e3 * s.exchange_seconds / s.step_seconds.size(), 100 * s.exchange_seconds / total);
  std::printf("%12s %9.1f ms/step %6.1f%%\n", "unattributed", 1e3 * (total - phases) / s.step_seconds.size(),
              100 * (total - phases) / total);
  if (!args.json.empty()) {
    nlohmann::json j = {{"job", args.job},       {"world", world},         {"step_ms", 1e3 * step_s},
                        {"tokens_per_s", tok_s}, {"mfu", mfu},             {"sgemm_gflops", s.sgemm_gflops},
                        {"flops_per_token", s.flops_per_token}};
    j["phase_ms_per_step"]["a2a"] = 1e3 * s.exchange_seconds / s.step_seconds.size();
    for (int p = 0; p < 6; ++p) j["phase_ms_per_step"][names[p]] = 1e3 * s.phase_seconds[p] / s.step_seconds.size();
    std::ofstream(args.json) << j.dump(2) << '\n';
  }
  return 0;
}

}  // namespace

void add_train_command(CLI::App& bench, int& exit_code) {
  auto args = std::make_shared<TrainBenchArgs>();
  auto* cmd = bench.add_subcommand("train", "End-to-end training throughput, MFU and phase breakdown");
  cmd->add_option("job", args->job, "Job spec (YAML)")->required();
  cmd->add_option("--set", args->overrides, "Override a spec value")->type_name("PATH=VALUE");
  cmd->add_option("-n,--steps", args->steps, "Timed steps")->capture_default_str();
  cmd->add_option("-w,--warmup", args->warmup, "Warm-up steps (not timed)")->capture_default_str();
  cmd->add_option("--json", args->json, "Also write the figures as JSON to this file");
  cmd->callback([args, &exit_code] { exit_code = run(*args); });
}

}  // namespace moempi::bench
