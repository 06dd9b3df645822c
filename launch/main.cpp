// The moempi binary: `moempi train JOB.yaml`, `moempi validate JOB.yaml`, `moempi bench ...`.
// Start-up order: fast OpenBLAS kernel (may re-exec), MPI_Init, rank-aware logging, CLI parse.
// Collective errors end every rank cleanly with exit code 2 and one message from rank 0; local
// errors abort the world from where they happen (runtime/core/error.h).
#include <mpi.h>

#include <cctype>
#include <csignal>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <thread>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/bench.h"
#include "comm/agreement.h"
#include "comm/watchdog.h"
#include "comm/process_groups.h"
#include "runtime/core/arena.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/schema.h"
#include "runtime/core/test_hooks.h"
#include "runtime/data/token_shard.h"
#include "runtime/job_spec.h"
#include "runtime/memory_estimate.h"
#include "runtime/plot.h"
#include "runtime/preemption.h"
#include "runtime/trainer.h"

namespace {

// Messages echo arguments; a word longer than 200 characters (a 100 KB --set) keeps its first 80
// and last 20 characters.
std::string shorten_words(const std::string& msg) {
  std::string out;
  size_t i = 0;
  while (i < msg.size()) {
    size_t j = i;
    while (j < msg.size() && !std::isspace(static_cast<unsigned char>(msg[j]))) ++j;
    if (j - i > 200)
      out += msg.substr(i, 80) + fmt::format("[... {} characters cut ...]", j - i - 100) + msg.substr(j - 20, 20);
    else
      out.append(msg, i, j - i);
    while (j < msg.size() && std::isspace(static_cast<unsigned char>(msg[j]))) out += msg[j++];
    i = j;
  }
  return out;
}

// The first word of the command line that should name a subcommand but names none ("" if all
// do): "unknown subcommand 'trian' of moempi; one of train, validate, ...; did you mean 'train'?".
std::string unknown_subcommand(CLI::App& app, int argc, char** argv) {
  CLI::App* cur = &app;
  for (int i = 1; i < argc; ++i) {
    const std::vector<CLI::App*> subs = cur->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) return "";
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return "";
    CLI::App* next = nullptr;
    for (CLI::App* sub : subs)
      if (sub->check_name(word)) next = sub;
    if (!next) {
      std::vector<std::string> names;
      for (CLI::App* s : subs) names.push_back(s->get_name());
      return fmt::format("unknown subcommand '{}' of {}; one of {}{}", word,
                         cur == &app ? std::string("moempi") : "moempi " + cur->get_name(),
                         moempi::schema::join(names), moempi::schema::did_you_mean(word, names));
    }
    cur = next;
  }
  return "";
}

// The watchdog's timeout for the start-up, before MPI exists: the job's comm.timeout_s for
// `moempi train JOB [--set k=v]...`, else (or when the spec does not load: the error comes later,
// from every rank) the default.
double startup_timeout(int argc, char** argv) {
  const double fallback = moempi::CommSpec{}.timeout_s;
  if (argc < 3 || std::string(argv[1]) != "train") return fallback;
  std::string job;
  std::vector<std::string> sets;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--set" && i + 1 < argc) sets.push_back(argv[++i]);
    else if (a.rfind("--set=", 0) == 0) sets.push_back(a.substr(6));
    else if (job.empty() && !a.empty() && a[0] != '-') job = a;
  }
  try {
    return moempi::load_job_spec(job, sets).comm.timeout_s;
  } catch (const moempi::CollectiveError&) {
    return fallback;
  }
}

#ifdef MOEMPI_TEST_HOOKS
// MOEMPI_TEST_HANG="RANK:STEP": that rank stops responding at that step (tests/e2e/watchdog.sh).
void hang_at_step(int rank, int64_t step) {
  static const char* spec = std::getenv("MOEMPI_TEST_HANG");
  int want_rank = -1;
  long long at = -1;
  if (spec && std::sscanf(spec, "%d:%lld", &want_rank, &at) == 2 && want_rank == rank && at == step)
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

// MOEMPI_TEST_NAN_GRAD="RANK:STEP:TENSOR": a NaN in that tensor's gradient (tests/e2e/nonfinite.sh).
void nan_grad_at_step(int rank, int64_t step, moempi::ParamArena& arena) {
  static const char* spec = std::getenv("MOEMPI_TEST_NAN_GRAD");
  int want_rank = -1;
  long long at = -1;
  char name[256] = {};
  if (spec && std::sscanf(spec, "%d:%lld:%255s", &want_rank, &at, name) == 3 && want_rank == rank && at == step) {
    const auto id = arena.find(name);
    MOEMPI_CHECK_ONE(id.has_value(), "MOEMPI_TEST_NAN_GRAD: no parameter '{}' on rank {}", name, rank);
    arena.grad(*id)[0] = std::numeric_limits<float>::quiet_NaN();
  }
}

// MOEMPI_TEST_KILL_IN_SAVE="RANK:STEP": that rank dies (SIGKILL) in the middle of the checkpoint
// save of that step, after the shards and before the manifest (tests/e2e/faults.sh).
void kill_in_save(int rank, int64_t step) {
  static const char* spec = std::getenv("MOEMPI_TEST_KILL_IN_SAVE");
  int want_rank = -1;
  long long at = -1;
  if (spec && std::sscanf(spec, "%d:%lld", &want_rank, &at) == 2 && want_rank == rank && at == step)
    std::raise(SIGKILL);
}
#endif

#ifdef MOEMPI_TEST_HOOKS
// MOEMPI_TEST_SIGNAL="RANK:STEP:SIGNAL[:COUNT]": that rank raises the signal (a number) COUNT times
// (default 1) at the start of that step, as `kill` would (tests/e2e/preempt.sh).
void signal_at_step(int rank, int64_t step) {
  static const char* spec = std::getenv("MOEMPI_TEST_SIGNAL");
  int want_rank = -1, signo = 0, count = 1;
  long long at = -1;
  if (spec && std::sscanf(spec, "%d:%lld:%d:%d", &want_rank, &at, &signo, &count) >= 3 && want_rank == rank &&
      at == step)
    for (int i = 0; i < count; ++i) std::raise(signo);
}

void step_hooks(int rank, int64_t step) {
  hang_at_step(rank, step);
  signal_at_step(rank, step);
}
#endif

// MPI_Finalize waits for every rank: inside a watchdog scope, so a rank that stopped at the end
// cannot hang the others (the train command's monitor runs until here).
void finalize_mpi() {
  {
    moempi::watchdog::Pending pending("MPI_Finalize", "world");
    MPI_Finalize();
  }
  moempi::watchdog::stop();
  moempi::watchdog::detach_progress();
}

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// Collective: prints the memory estimate (rank 0) and refuses a job whose ranks on one machine
// cannot fit in its memory, before anything is allocated (runtime/memory_estimate.h).
void check_memory_at_start(const moempi::JobSpec& spec, const moempi::Communicator& world) {
  const int on_machine = moempi::Communicator::split_shared(world, 0, "machine").size();
  const moempi::MemoryEstimate m = moempi::estimate_memory(spec, spec.parallel.ep);
  const double machine = moempi::machine_memory_bytes();
  if (world.rank() == 0)
    spdlog::info("memory: about {} | {} ranks on this machine, {} of memory", m.describe(), on_machine,
                 moempi::format_bytes(machine));
  moempi::agree_on_errors(world, [&] { moempi::check_memory_fits(spec, m, on_machine, machine); });
}

int run_train(const std::string& path, const std::vector<std::string>& overrides) {
  const moempi::Communicator world = moempi::Communicator::world();
  moempi::JobSpec spec;
  moempi::agree_on_errors(world, [&] {  // the job file may be readable on some ranks only
    spec = moempi::load_job_spec(path, overrides);
    moempi::resolve_for_world(spec, world.size());
  });
  // Every rank must run the same resolved spec (an MPMD launch or per-node files could differ).
  moempi::agree_on_text(world, moempi::job_spec_to_yaml(spec), "the job spec",
                        [&](const std::string& root, const std::string& mine) {
                          return moempi::describe_spec_difference(root, mine, "rank 0",
                                                                  fmt::format("rank {}", world.rank()));
                        });
  moempi::watchdog::start(spec.comm.timeout_s);  // before the first collective of the run
  check_memory_at_start(spec, world);
  moempi::ProcessGroups groups = moempi::ProcessGroups::build(spec.parallel);
  moempi::TrainSummary summary = moempi::train(spec, groups, {});
  if (summary.preempted_signal != 0) {  // runtime/preemption.h: every rank stopped after the same step
    if (world_rank() == 0) {
      const int step = summary.start_step + static_cast<int>(summary.losses.size());
      const int extra = moempi::preemption::signals_received() - 1;
      spdlog::warn("preempted by {} after step {}/{}: checkpoint {} ('latest'); exit code {}; rerun with "
                   "checkpoint.resume: auto (the default) to continue{}",
                   moempi::preemption::signal_name(summary.preempted_signal), step, spec.train.steps,
                   summary.preempted_checkpoint.empty() ? std::string("not saved") : summary.preempted_checkpoint,
                   moempi::preemption::kPreemptedExitCode,
                   extra > 0 ? fmt::format(" ({} further signal{} on rank 0 ignored)", extra, extra > 1 ? "s" : "")
                             : std::string());
    }
    return moempi::preemption::kPreemptedExitCode;
  }
  if (world_rank() == 0) {
    std::string line = fmt::format("done: {} steps, final loss {:.4f}", summary.losses.size(),
                                   summary.losses.empty() ? 0.0 : summary.losses.back());
    if (summary.final_val_loss) line += fmt::format(", val loss {:.4f}", *summary.final_val_loss);
    spdlog::info("{} | run dir {}", line, spec.job.run_dir);
  }
  return 0;
}

int run_validate(const std::string& path, const std::vector<std::string>& overrides, int np) {
  moempi::MemoryEstimate memory;
  moempi::agree_on_errors(moempi::Communicator::world(), [&] {
    MOEMPI_CHECK_ALL(np >= 0, "--np ({}) must be a world size >= 1 (or 0 to skip the world-size checks)", np);
    moempi::JobSpec spec = moempi::load_job_spec(path, overrides);
    if (np > 0) moempi::resolve_for_world(spec, np);
    // Without --np, parallel.ep 0 (all ranks) is counted as 1: the whole model on one rank.
    memory = moempi::estimate_memory(spec, std::max(1, spec.parallel.ep));
    moempi::check_memory_fits(spec, memory, 1, moempi::machine_memory_bytes());
  });
  if (world_rank() == 0) {
    std::printf("%s: ok\n", path.c_str());
    std::printf("memory: about %s\n", memory.describe().c_str());
  }
  return 0;
}

// `moempi data encode IN OUT`: a byte-level token shard (data.type tokens) of any regular file,
// streamed through a temporary file on rank 0 (runtime/data/token_shard.h).
int run_encode(const std::string& in_path, const std::string& out_path) {
  uint64_t tokens = 0;
  moempi::agree_on_errors(moempi::Communicator::world(), [&] {
    if (world_rank() == 0) tokens = moempi::encode_file_as_shard(in_path, out_path);
  });
  if (world_rank() == 0)
    std::printf("%s: %llu tokens (bytes of %s)\n", out_path.c_str(), static_cast<unsigned long long>(tokens),
                in_path.c_str());
  return 0;
}

// `moempi ckpt inspect|verify DIR`: one process (no MPI communication); exit 0 or 2.
int run_ckpt(const std::string& dir, bool verify_only) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MOEMPI_CHECK_ALL(size == 1, "moempi ckpt runs on one process; run it without mpirun (world size {})", size);
  return moempi::inspect_checkpoint(dir, verify_only);
}

// `moempi plot RUN_DIR... [-o DIR]`: one process (no MPI communication), PNGs through gnuplot.
int run_plot(const moempi::PlotOptions& options) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MOEMPI_CHECK_ALL(size == 1, "moempi plot runs on one process; run it without mpirun (world size {})", size);
  for (const std::string& png : moempi::plot_runs(options)) std::printf("%s\n", png.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // `moempi train`: SIGTERM, SIGUSR1 and SIGINT checkpoint at the next step boundary and exit 75
  // (runtime/preemption.h), from the first instruction on; other commands keep the default actions.
  // Held across ensure_fast_kernel: a re-execution resets handlers, and a signal in that window
  // would otherwise kill the rank with nothing saved.
  const bool train_command = argc >= 2 && std::string(argv[1]) == "train";
  if (train_command) moempi::preemption::hold();
  moempi::blas::ensure_fast_kernel(argc, argv);
  if (train_command) moempi::preemption::install();
  // A file size limit (ulimit -f) then fails the write with EFBIG, reported with the file's name,
  // instead of killing the process mid-line.
  std::signal(SIGXFSZ, SIG_IGN);
#ifdef MOEMPI_TEST_HOOKS
  moempi::test_hooks::install_step_hook(&step_hooks);
  moempi::test_hooks::install_grad_hook(&nan_grad_at_step);
  moempi::test_hooks::install_save_hook(&kill_in_save);
#endif
  // The watchdog covers the start-up too: a rank that never arrives (stopped, or stuck before
  // MPI_Init) would otherwise keep the others in MPI_Init forever. No MPI is needed for it.
  moempi::watchdog::attach_progress();
  moempi::watchdog::start(startup_timeout(argc, argv));
  {
    moempi::watchdog::Pending startup("MPI_Init", "world");
    MPI_Init(&argc, &argv);
  }
  if (argc < 2 || std::string(argv[1]) != "train") moempi::watchdog::stop();  // train keeps it
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  moempi::log::init(rank, size);

  CLI::App app{"moempi: Mixture-of-Experts training on CPU clusters over MPI.\n"
               "  mpirun -np N moempi train JOB.yaml [--set a.b=v ...]"};
  app.require_subcommand(1);
  int exit_code = 0;

  std::string job_path;
  std::vector<std::string> overrides;
  auto* train = app.add_subcommand("train", "Train the model described by a YAML job spec");
  // No CLI::ExistingFile on job files: a file missing on some ranks only must fail every rank
  // the same way (agree_on_errors), not end some ranks inside the parser.
  train->add_option("job", job_path, "Job spec (YAML)")->required();
  train->add_option("--set", overrides, "Override a spec value, e.g. --set optim.lr=3e-4")
      ->type_name("PATH=VALUE");
  train->footer("Preemption: SIGTERM, SIGUSR1 or SIGINT (to any rank; under mpirun send SIGUSR1 to mpirun, which "
                "forwards it) saves a checkpoint at the next step boundary on every rank and exits with code 75; "
                "rerun with checkpoint.resume: auto (the default) to continue.");
  bool resume = false;
  train->add_flag("--resume", resume,
                  "Continue from the newest usable checkpoint in <run_dir>/ckpt (= --set checkpoint.resume=auto)");

  std::string validate_path;
  std::vector<std::string> validate_overrides;
  int validate_np = 0;
  auto* validate = app.add_subcommand("validate", "Check a job spec without training (no MPI needed)");
  validate->add_option("job", validate_path, "Job spec (YAML)")->required();
  validate->add_option("--set", validate_overrides, "Override a spec value")->type_name("PATH=VALUE");
  validate->add_option("--np", validate_np, "Also check against this world size");

  auto* bench = app.add_subcommand("bench", "Microbenchmarks (each verifies before it times)");
  bench->require_subcommand(1);
  moempi::bench::add_alltoall_command(*bench, exit_code);
  moempi::bench::add_dispatch_command(*bench, exit_code);
  moempi::bench::add_experts_command(*bench, exit_code);
  moempi::bench::add_router_command(*bench, exit_code);
  moempi::bench::add_train_command(*bench, exit_code);
  moempi::bench::add_sparse_command(*bench, exit_code);

  std::string encode_in, encode_out;
  auto* data = app.add_subcommand("data", "Data tools");
  data->require_subcommand(1);
  auto* encode = data->add_subcommand("encode", "Write a file's bytes as a uint16 token shard (data.type: tokens)");
  encode->add_option("input", encode_in, "Any regular file")->required();
  encode->add_option("output", encode_out, "Shard to write (.bin)")->required();

  std::string ckpt_dir;
  auto* ckpt = app.add_subcommand("ckpt", "Checkpoint tools (one process)");
  ckpt->require_subcommand(1);
  auto* inspect = ckpt->add_subcommand("inspect", "Print a checkpoint's step, spec, layout, tensors and checksum status");
  auto* verify = ckpt->add_subcommand("verify", "Check every byte of a checkpoint: exit 0, or 2 naming the first bad file or tensor");
  for (auto* c : {inspect, verify})
    c->add_option("dir", ckpt_dir, "A step directory, a ckpt directory, its latest file, or a run directory")->required();

  moempi::PlotOptions plot_options;
  auto* plot = app.add_subcommand("plot", "PNG plots of run directories' metrics.jsonl (needs gnuplot-nox)");
  plot->add_option("run_dirs", plot_options.run_dirs, "Run directories (job.run_dir), overlaid")->required();
  plot->add_option("-o,--out", plot_options.out_dir, "Where the PNGs go (default: the first run dir)");

  try {
    try {
      if (const std::string unknown = unknown_subcommand(app, argc, argv); !unknown.empty()) {
        if (rank == 0)
          std::fprintf(stderr, "moempi: error: %s\nRun with --help for more information.\n",
                       shorten_words(unknown).c_str());
        finalize_mpi();
        return 2;
      }
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      const int code = e.get_exit_code();
      if (rank == 0) {
        if (code == 0) app.exit(e);  // --help
        else std::fprintf(stderr, "moempi: error: %s\nRun with --help for more information.\n",
                          shorten_words(e.what()).c_str());
      }
      finalize_mpi();
      return code == 0 ? 0 : 2;
    }
    if (*train && resume) overrides.push_back("checkpoint.resume=auto");
    if (*train) exit_code = run_train(job_path, overrides);
    if (*inspect) exit_code = run_ckpt(ckpt_dir, false);
    if (*verify) exit_code = run_ckpt(ckpt_dir, true);
    if (*encode) exit_code = run_encode(encode_in, encode_out);
    if (*plot) exit_code = run_plot(plot_options);
    if (*validate) exit_code = run_validate(validate_path, validate_overrides, validate_np);
  } catch (const moempi::CollectiveError& e) {
    if (rank == 0) std::fprintf(stderr, "moempi: error: %s\n", shorten_words(e.what()).c_str());
    finalize_mpi();
    return 2;
  } catch (const std::bad_alloc&) {  // only this rank knows: name what it was allocating, end the job
    const char* what = moempi::AllocationLabel::current();
    moempi::fail_local(__FILE__, __LINE__,
                       fmt::format("out of memory (std::bad_alloc){}{}; `moempi validate` prints the memory a rank "
                                   "needs",
                                   *what ? " while allocating " : "", what));
  }
  finalize_mpi();
  return exit_code;
}
