// Preemption (runtime/preemption.h) inside train(), at every world size (1-4): a signal caught by
// the last rank only, after step 3, stops every rank after step 3 with one checkpoint of step 3
// (checkpoint.interval 0: no other save), and the resumed run's losses for steps 4..6 equal the
// uninterrupted run's to the last bit. A signal during the last step lets the run end normally.
// The signal is simulated (preemption::simulate), as the handler would record it; delivery by
// real signals through the binary and mpirun is tests/e2e/preempt.sh.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>

#include "comm/process_groups.h"
#include "runtime/job_spec.h"
#include "runtime/preemption.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace moempi {
namespace {
namespace fs = std::filesystem;
using test_util::world_size;

using test_util::world_rank;

// One directory name for every rank.
std::string shared_dir(const std::string& tag) { return test_util::shared_temp_dir("preempt_mpitest", tag); }

JobSpec small_spec(const std::string& run_dir) {
  JobSpec s;
  s.job.name = "preempt";
  s.job.run_dir = run_dir;
  test_util::use_small_moe_model(s);
  s.moe.balancing = {{.type = "aux_loss", .coeff = 0.01f}, {.type = "loss_free_bias", .bias = {.rate = 0.01f}}};
  s.parallel.strategy = world_size() > 1 ? "ep" : "dp";
  s.parallel.ep = s.parallel.strategy == "dp" ? 1 : world_size();
  s.optim.lr = 1e-2f;
  s.train.steps = 6;
  s.train.micro_batch = 2;
  s.train.grad_accum = 2;
  s.train.log_interval = 1000;
  s.checkpoint.interval = 0;
  s.checkpoint.keep_last = 0;
  s.metrics.jsonl = false;
  resolve_for_world(s, world_size());
  return s;
}

// Trains `s`; the last rank "receives" `signo` during step `signal_step` (0 = never).
TrainSummary run(const JobSpec& s, int signal_step, int signo) {
  ProcessGroups groups = ProcessGroups::build(s.parallel);
  TrainOptions options{.log_steps = false, .write_files = false};
  options.after_step = [&](int step, double, ParamArena&) {
    if (step == signal_step && world_rank() == world_size() - 1) preemption::simulate(signo);
  };
  TrainSummary out = train(s, groups, options);
  preemption::clear();
  MPI_Barrier(MPI_COMM_WORLD);
  return out;
}

TEST(Preemption, ASignalOnOneRankStopsEveryRankAfterThatStepAndResumesBitIdentically) {
  const std::string dir = shared_dir("stop");
  JobSpec s = small_spec(dir + "/full");
  s.checkpoint.resume = "never";
  const TrainSummary full = run(s, 0, 0);
  ASSERT_EQ(full.losses.size(), 6u);
  EXPECT_EQ(full.preempted_signal, 0);
  EXPECT_EQ(full.checkpoints_saved, 0);

  JobSpec p = small_spec(dir + "/preempted");
  p.checkpoint.resume = "never";
  const TrainSummary stopped = run(p, 3, SIGTERM);
  ASSERT_EQ(stopped.losses.size(), 3u) << "every rank stops after the step the signal came in";
  EXPECT_EQ(stopped.preempted_signal, SIGTERM);
  EXPECT_EQ(stopped.checkpoints_saved, 1);
  EXPECT_EQ(stopped.preempted_checkpoint, dir + "/preempted/ckpt/step_3");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(stopped.losses[i], full.losses[i]) << "step " << i + 1;

  p.checkpoint.resume = "auto";
  const TrainSummary rest = run(p, 0, 0);
  EXPECT_EQ(rest.start_step, 3);
  EXPECT_EQ(rest.preempted_signal, 0);
  ASSERT_EQ(rest.losses.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rest.losses[i], full.losses[3 + i]) << "step " << 4 + i << " after resuming";
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

TEST(Preemption, ASignalInTheLastStepLetsTheRunFinish) {
  const std::string dir = shared_dir("last");
  JobSpec s = small_spec(dir);
  s.checkpoint.resume = "never";
  const TrainSummary out = run(s, 6, SIGUSR1);
  EXPECT_EQ(out.losses.size(), 6u);
  EXPECT_EQ(out.preempted_signal, 0);
  EXPECT_EQ(out.checkpoints_saved, 0);  // checkpoint.interval 0, and nothing left to resume
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace moempi
