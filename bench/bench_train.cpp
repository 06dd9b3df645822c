// `moempi bench train JOB.yaml`: end-to-end training throughput of a job spec — tokens/s, MFU
// against the sgemm rate measured in the same run, and where the time goes by phase. Like the
// collective benches it checks before it times and counts #wrong (STYLE.md habit 8): after step 1
// and after the last step the replicas agree bit for bit on their parameters, every step's loss is
// finite, and step 1's loss (the model at init) is within kInitLossTolerance of ln(vocab).
// Timing: each rank's median over the timed steps; the table reports min/avg/max over ranks and
// derives tokens/s and MFU from the slowest rank (max). Exit code 1 if anything was wrong.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "bench/bench_common.h"
#include "comm/agreement.h"
#include "comm/collectives.h"
#include "comm/process_groups.h"
#include "comm/watchdog.h"
#include "parallel/dispatcher_registry.h"
#include "runtime/core/blas.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/log.h"
#include "runtime/core/timer.h"
#include "runtime/data/data_source.h"
#include "runtime/job_spec.h"
#include "runtime/trainer.h"

namespace moempi::bench {
namespace {

// Step 1's loss is the cross-entropy of the model at init. Logits of std s give about
// ln(V) + s^2/2; with init_std 0.02 and d_model 256 (s ~ 0.3) that is ln(V) + 0.05, 1% above.
// 10% of ln(V) allows s up to ~1 and still catches a wrong init, a broken head or a loss that
// is not a mean over tokens.
constexpr double kInitLossTolerance = 0.10;  // relative to ln(vocab)

struct TrainBenchArgs {
  std::string job;
  std::vector<std::string> overrides;
  int steps = 12;
  int warmup = 2;
  std::string json;
};

// FNV-1a over the bit patterns: equal on two ranks only if every value is bit-identical.
int64_t checksum(std::span<const float> values) {
  uint64_t h = 1469598103934665603ull;
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    h = (h ^ bits) * 1099511628211ull;
  }
  int64_t out;
  std::memcpy(&out, &h, sizeof out);
  return out;
}

// Collective over `group`: do all its ranks hold the same values (MIN and MAX of the checksum)?
bool replicas_agree(std::span<const float> values, const Communicator& group) {
  int64_t lo = checksum(values), hi = lo;
  allreduce(&lo, 1, ReduceOp::kMin, group);
  allreduce(&hi, 1, ReduceOp::kMax, group);
  return lo == hi;
}

struct Check {
  std::string what;
  bool ok;
};

// This rank's time to read its share of one step's sequences (median of 5), measured apart from
// training: the data source is part of "unattributed" inside the step.
double data_seconds_per_step(const JobSpec& spec, int rank, int world) {
  auto source = make_data_source(spec.data, spec.model, spec.job.seed);
  Batch batch;
  const int B = spec.train.micro_batch, A = spec.train.grad_accum;
  std::vector<double> reps;
  for (int rep = 0; rep < 6; ++rep) {
    const double t0 = now_seconds();
    for (int a = 0; a < A; ++a)
      source->get(batch, Split::kTrain, ((static_cast<int64_t>(rep) * A + a) * world + rank) * B, B);
    if (rep > 0) reps.push_back(now_seconds() - t0);  // the first read warms up
  }
  return median(reps);
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
  const int last_step = args.warmup + args.steps;
  const double ln_vocab = std::log(static_cast<double>(spec.model.vocab_size));

  // Checks run inside train() right after a step, outside its step time; every value they
  // compare is reduced over the group first, so all ranks reach the same verdict.
  std::vector<Check> checks;
  int64_t nonfinite_steps = 0;
  double first_loss = 0;
  TrainOptions options{.log_steps = false, .write_files = false, .checkpoints = false};
  options.after_step = [&](int step, double loss, ParamArena& arena) {
    if (!std::isfinite(loss)) ++nonfinite_steps;
    if (step == 1) {
      first_loss = loss;
      checks.push_back({fmt::format("step 1 loss {:.4f} within {:.0f}% of ln(vocab) = {:.4f}", loss,
                                    100 * kInitLossTolerance, ln_vocab),
                        std::abs(loss - ln_vocab) <= kInitLossTolerance * ln_vocab});
    }
    if (step != 1 && step != last_step) return;
    checks.push_back({fmt::format("after step {}: dense params ({}) identical on all {} ranks", step,
                                  arena.dense_numel(), groups.world.size()),
                      replicas_agree(arena.dense_params(), groups.world)});
    checks.push_back({fmt::format("after step {}: expert params ({}) identical on the {} replicas of each "
                                  "shard (expert_dp)", step, arena.expert_params().size(), groups.expert_dp.size()),
                      replicas_agree(arena.expert_params(), groups.expert_dp)});
  };
  TrainSummary s = train(spec, groups, options);
  checks.push_back({fmt::format("loss finite at all {} steps", s.losses.size()), nonfinite_steps == 0});
  int64_t wrong = 0;
  for (const Check& c : checks) wrong += c.ok ? 0 : 1;

  // Slowest rank: each rank's median step time, then min/avg/max over ranks (valid on rank 0).
  const std::vector<double> timed(s.step_seconds.begin() + args.warmup, s.step_seconds.end());
  const OverRanks step_s = over_ranks(median(timed), groups.world);
  const double tok_s = s.tokens_per_step / step_s.max;
  const double mfu = s.flops_per_token * tok_s / (s.sgemm_gflops * 1e9 * world * blas::num_threads());

  // Phases per step on each rank (all steps, warm-up included), then avg and max over ranks.
  const double n = static_cast<double>(s.step_seconds.size());
  double total = 0, phases = 0;
  for (double x : s.step_seconds) total += x;
  for (double p : s.phase_seconds) phases += p;
  // JSON keys; the table shows "a2a" as "moe.a2a" (it is part of moe).
  std::vector<std::string> names = {"attention", "moe",       "a2a",      "dense_ffn", "other",
                                    "optimizer", "grad_sync", "unattrib", "step"};
  std::vector<double> mine = {s.phase_seconds[kPhaseAttention] / n, s.phase_seconds[kPhaseMoe] / n,
                              s.exchange_seconds / n,               s.phase_seconds[kPhaseDenseFfn] / n,
                              s.phase_seconds[kPhaseOther] / n,     s.phase_seconds[kPhaseOptimizer] / n,
                              s.phase_seconds[kPhaseGradSync] / n,  (total - phases) / n,
                              total / n};
  // The dispatcher's time by call (inside a2a), after a2a.
  for (int c = kDispatchCalls - 1; c >= 0; --c) {
    names.insert(names.begin() + 3, fmt::format("a2a.{}", dispatch_call_name(static_cast<DispatchCall>(c))));
    mine.insert(mine.begin() + 3, s.dispatch_call_seconds[c] / n);
  }
  std::vector<OverRanks> phase;
  for (double v : mine) phase.push_back(over_ranks(v, groups.world));
  const OverRanks data_s = over_ranks(data_seconds_per_step(spec, groups.world.rank(), world), groups.world);
  const double data_tokens_per_rank =
      static_cast<double>(spec.train.micro_batch) * spec.train.grad_accum * (spec.model.seq_len + 1);

  const bool printing = groups.world.rank() == 0;
  Table table({{"world", "", 6},
               {"tokens", "(/step)", 8},
               {"step", "min(ms)", 9},
               {"step", "avg(ms)", 9},
               {"step", "max(ms)", 9},
               {"tokens/s", "(max)", 10},
               {"GFLOP/s", "(max)", 9},
               {"mfu", "(%)", 6},
               {"sgemm", "(GF/s)", 7},
               {"#wrong", "", 6}},
              printing);
  std::vector<std::string> header = {
      fmt::format("moempi bench train {} | world {} = dp {} x ep {} | strategy {} | dispatch {}", args.job, world,
                  groups.dp_size, groups.ep_size, spec.parallel.strategy,
                  s.dispatcher),
      fmt::format("CPU: {} | {} | {} BLAS thread(s) per rank", cpu_model(), blas::kernel_note(), blas::num_threads()),
      fmt::format("{} timed steps after {} warm-up, {} tokens per step, {:.2f} MFLOP per token", args.steps,
                  args.warmup, s.tokens_per_step, s.flops_per_token / 1e6),
      "step = each rank's median over the timed steps, min/avg/max over ranks; tokens/s, GFLOP/s and",
      "mfu use the slowest rank (max); mfu is against the sgemm rate measured in this run (mean over ranks)",
      "checks (after step 1, before the timed steps when -w >= 1, and after the last step):"};
  for (const Check& c : checks) header.push_back(fmt::format("  {:<5} {}", c.ok ? "OK" : "WRONG", c.what));
  table.print_header(header);
  table.print_row({cell(int64_t{world}), cell(s.tokens_per_step), cell(1e3 * step_s.min, 1), cell(1e3 * step_s.avg, 1),
                   cell(1e3 * step_s.max, 1), cell(tok_s, 0), cell(s.flops_per_token * tok_s / 1e9, 1),
                   cell(100 * mfu, 1), cell(s.sgemm_gflops, 1), cell(wrong)});

  Table phase_table({{"phase", "", 22}, {"avg", "(ms/step)", 10}, {"max", "(ms/step)", 10}, {"share", "(% avg)", 8}},
                    printing);
  phase_table.print_header({"time by phase, all steps incl. warm-up, avg and max over ranks; moe.a2a = dispatch "
                            "exchanges (inside moe); unattrib = step minus phases (data, metrics, ...)"});
  for (size_t i = 0; i < names.size(); ++i)
    phase_table.print_row({names[i] == "a2a" ? "moe.a2a" : names[i], cell(1e3 * phase[i].avg, 2), cell(1e3 * phase[i].max, 2),
                           cell(100 * phase[i].avg / phase.back().avg, 1)});
  phase_table.print_comment(fmt::format(
      "data source, measured apart: {:.2f} ms/step per rank (max over ranks), {:.1f} M tokens/s, {:.1f}% of the step",
      1e3 * data_s.max, data_tokens_per_rank / data_s.max / 1e6, 100 * data_s.max / phase.back().avg));

  nlohmann::json doc = {{"job", args.job},
                        {"world", world},
                        {"cpu", cpu_model()},
                        {"step_ms", 1e3 * step_s.max},
                        {"step_ms_over_ranks", {{"min", 1e3 * step_s.min}, {"avg", 1e3 * step_s.avg}, {"max", 1e3 * step_s.max}}},
                        {"step_ms_is", "max over ranks of each rank's median"},
                        {"tokens_per_s", tok_s},
                        {"mfu", mfu},
                        {"sgemm_gflops", s.sgemm_gflops},
                        {"flops_per_token", s.flops_per_token},
                        {"first_loss", first_loss},
                        {"ln_vocab", ln_vocab},
                        {"data_ms_per_step", 1e3 * data_s.max}};
  for (const Check& c : checks) doc["checks"].push_back({{"what", c.what}, {"ok", c.ok}});
  for (size_t i = 0; i + 1 < names.size(); ++i) {
    doc["phase_ms_per_step"][names[i]] = 1e3 * phase[i].max;
    doc["phase_ms_per_step_avg"][names[i]] = 1e3 * phase[i].avg;
  }
  return finish_report(phase_table, doc, wrong, args.json, groups.world);
}

}  // namespace

void add_train_command(CLI::App& bench, int& exit_code) {
  auto args = std::make_shared<TrainBenchArgs>();
  auto* cmd = bench.add_subcommand("train", "End-to-end training throughput, MFU and phase breakdown, checked");
  cmd->add_option("job", args->job, "Job spec (YAML)")->required();
  cmd->add_option("--set", args->overrides, "Override a spec value")->type_name("PATH=VALUE");
  cmd->add_option("-n,--steps", args->steps, "Timed steps")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("-w,--warmup", args->warmup, "Warm-up steps (not timed)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--json", args->json, "Also write the figures as JSON to this file (rank 0)");
  cmd->callback([args, &exit_code] { exit_code = run(*args); });
}

}  // namespace moempi::bench
