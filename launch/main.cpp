// The moempi binary: `moempi train JOB.yaml`, `moempi validate JOB.yaml`, `moempi bench ...`.
// Start-up order: fast OpenBLAS kernel (may re-exec), MPI_Init, rank-aware logging, CLI parse.
// Collective errors end every rank cleanly with exit code 2 and one message from rank 0; local
// errors abort the world from where they happen (runtime/core/error.h).
#include <mpi.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench/bench.h"
#include "comm/agreement.h"
#include "comm/watchdog.h"
#include "comm/process_groups.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/data/token_shard.h"
#include "runtime/job_spec.h"
#include "runtime/plot.h"
#include "runtime/trainer.h"

namespace {

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int run_train(const std::string& path, const std::vector<std::string>& overrides) {
  const moempi::Communicator world = moempi::Communicator::world();
  moempi::JobSpec spec;
  moempi::agree_on_errors(world, [&] {  // the job file may be readable on some ranks only
    spec = moempi::load_job_spec(path, overrides);
    moempi::resolve_for_world(spec, world.size());
  });
  moempi::watchdog::start(spec.comm.timeout_s);  // before the first collective of the run
  moempi::ProcessGroups groups = moempi::ProcessGroups::build(spec.parallel);
  moempi::TrainSummary summary = moempi::train(spec, groups, {});
  if (world_rank() == 0) {
    std::string line = fmt::format("done: {} steps, final loss {:.4f}", summary.losses.size(),
                                   summary.losses.empty() ? 0.0 : summary.losses.back());
    if (summary.final_val_loss) line += fmt::format(", val loss {:.4f}", *summary.final_val_loss);
    spdlog::info("{} | run dir {}", line, spec.job.run_dir);
  }
  return 0;
}

int run_validate(const std::string& path, const std::vector<std::string>& overrides, int np) {
  moempi::agree_on_errors(moempi::Communicator::world(), [&] {
    moempi::JobSpec spec = moempi::load_job_spec(path, overrides);
    if (np > 0) moempi::validate_for_world(spec, np);
  });
  if (world_rank() == 0) std::printf("%s: ok\n", path.c_str());
  return 0;
}

// `moempi data encode IN OUT`: a byte-level token shard (data.type tokens) of any file.
int run_encode(const std::string& in_path, const std::string& out_path) {
  std::ifstream in(in_path, std::ios::binary);
  MOEMPI_CHECK_ALL(in.good(), "cannot read '{}'", in_path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<uint16_t> tokens(bytes.begin(), bytes.end());
  for (size_t i = 0; i < bytes.size(); ++i) tokens[i] = static_cast<unsigned char>(bytes[i]);
  if (world_rank() == 0) {
    moempi::write_token_shard(out_path, tokens);
    std::printf("%s: %zu tokens (bytes of %s)\n", out_path.c_str(), tokens.size(), in_path.c_str());
  }
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
  moempi::blas::ensure_fast_kernel(argc, argv);
  MPI_Init(&argc, &argv);
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
  moempi::bench::add_train_command(*bench, exit_code);
  moempi::bench::add_sparse_command(*bench, exit_code);

  std::string encode_in, encode_out;
  auto* data = app.add_subcommand("data", "Data tools");
  data->require_subcommand(1);
  auto* encode = data->add_subcommand("encode", "Write a file's bytes as a uint16 token shard (data.type: tokens)");
  encode->add_option("input", encode_in, "Any file")->required()->check(CLI::ExistingFile);
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
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      int code = 0;
      if (rank == 0) code = app.exit(e);
      else code = e.get_exit_code();
      MPI_Finalize();
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
    moempi::watchdog::stop();
    if (rank == 0) std::fprintf(stderr, "moempi: error: %s\n", e.what());
    MPI_Finalize();
    return 2;
  }
  moempi::watchdog::stop();
  MPI_Finalize();
  return exit_code;
}
