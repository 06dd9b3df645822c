// Resume is bit-identical (DESIGN.md "Checkpoints"): at every world size (1-4), for dp and ep
// (ep = world), with grad_accum 2 and every balancing pass at once, a run stopped after step 3
// (and fssdp: its load history, which places the replicas, is saved too; fssdp_reshard: fssdp with
// forced Zipf(1.2) loads re-sharding every 2 steps, so the step-2 checkpoint holds experts on
// owners other than the start's, which the resumed job moves them to before its first step)
// and resumed from its step-2 checkpoint gives the uninterrupted run's losses for steps 3..6 to
// the last bit; with the newest checkpoint damaged, resume falls back to the previous one and
// still matches. Checkpoints are written to a directory every rank sees (rank 0 names it).
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "comm/process_groups.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/job_spec.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace moempi {
namespace {
namespace fs = std::filesystem;
using test_util::world_size;

using test_util::world_rank;

// One directory name for every rank.
std::string shared_dir(const std::string& tag) { return test_util::shared_temp_dir("ckpt_mpitest", tag); }

JobSpec resume_spec(const std::string& strategy, const std::string& run_dir) {
  JobSpec s;
  s.job.name = "resume";
  s.job.run_dir = run_dir;
  test_util::use_small_moe_model(s);
  s.moe.balancing = {{.type = "aux_loss", .coeff = 0.01f},
                     {.type = "z_loss", .coeff = 0.001f},
                     {.type = "seq_aux_loss", .coeff = 0.001f},
                     {.type = "global_batch_aux_loss", .coeff = 0.01f},
                     {.type = "loss_free_bias", .bias = {.rate = 0.01f}}};
  const bool reshard = strategy == "fssdp_reshard";
  s.parallel.strategy = world_size() > 1 ? (reshard ? "fssdp" : strategy) : "dp";
  if (reshard) {
    s.parallel.fssdp.reshard_interval = 2;
    s.moe.force_routing = "zipf:1.2";
  }
  s.parallel.ep = s.parallel.strategy == "dp" ? 1 : world_size();
  s.optim.lr = 1e-2f;
  s.optim.schedule.type = "warmup_cosine";
  s.optim.schedule.warmup_steps = 2;
  s.train.steps = 6;
  s.train.micro_batch = 2;
  s.train.grad_accum = 2;
  s.train.log_interval = 1000;
  s.checkpoint.interval = 1;
  s.checkpoint.keep_last = 0;
  s.metrics.jsonl = false;
  resolve_for_world(s, world_size());
  return s;
}

std::vector<double> run(const JobSpec& s, int stop_after = 0) {
  ProcessGroups groups = ProcessGroups::build(s.parallel);
  return train(s, groups, {.log_steps = false, .write_files = false, .stop_after_step = stop_after}).losses;
}

class Resume : public ::testing::TestWithParam<std::string> {};

TEST_P(Resume, BitIdenticalToTheUninterruptedRun_grad_accum2_every_pass) {
  const std::string dir = shared_dir("resume_" + GetParam());
  JobSpec s = resume_spec(GetParam(), dir + "/full");
  s.checkpoint.resume = "never";
  const std::vector<double> full = run(s);
  ASSERT_EQ(full.size(), 6u);

  JobSpec r = resume_spec(GetParam(), dir + "/stopped");
  r.checkpoint.resume = "never";
  const std::vector<double> first = run(r, 3);
  ASSERT_EQ(first.size(), 3u);
  // Throw away the step-3 checkpoint: resume from step 2 and redo step 3.
  if (world_rank() == 0) {
    fs::remove_all(dir + "/stopped/ckpt/step_3");
    std::ofstream(dir + "/stopped/ckpt/latest") << "step_2\n";
  }
  MPI_Barrier(MPI_COMM_WORLD);
  r.checkpoint.resume = "auto";
  const std::vector<double> rest = run(r);
  ASSERT_EQ(rest.size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(first[i], full[i]) << "step " << i + 1;
  for (int i = 0; i < 4; ++i) EXPECT_EQ(rest[i], full[2 + i]) << "step " << 3 + i << " after resuming from step 2";

  // The newest checkpoint (step 6) damaged in its last tensor: with ep, in the last rank's shard
  // (its own experts' moments, read by that rank only: the refusal must reach every rank); with
  // dp, in rank 0's (train/sequences, after train/step). Resume falls back to step 5, whose step 6
  // is the uninterrupted one.
  if (world_rank() == 0) {
    const int victim = s.parallel.strategy == "dp" ? 0 : world_size() - 1;
    const std::string shard = fmt::format("{}/stopped/ckpt/step_6/shard_{}.bin", dir, victim);
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x40;
    f.seekp(-1, std::ios::cur);
    f.write(&c, 1);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const std::vector<double> again = run(r);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0], full[5]);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Strategies, Resume, ::testing::Values("dp", "ep", "fssdp", "fssdp_reshard"));

// The format stores slices of the flattened global tensor, not rank layouts: a tensor saved in W
// uneven slices (rank r holds r + 1 parts of the 0..N-1 ramp) loads on one rank whole, and on W
// ranks in the reverse slicing, each rank reading the pieces its slice overlaps.
TEST(Checkpoint, SlicesSavedAtOneLayoutLoadAtAnother) {
  const int W = world_size(), r = world_rank();
  const int64_t parts = static_cast<int64_t>(W) * (W + 1) / 2, unit = 5, N = parts * unit;
  auto slice_of = [&](int rank, bool reversed) {  // [begin, count) of rank in the given slicing
    const int k = reversed ? W - 1 - rank : rank;
    int64_t begin = 0;
    for (int j = 0; j < k; ++j) begin += (j + 1) * unit;
    if (reversed) begin = N - begin - (k + 1) * unit;
    return std::pair<int64_t, int64_t>(begin, (k + 1) * unit);
  };
  const std::string dir = shared_dir("slices");
  const Communicator world = Communicator::world();
  {
    const auto [begin, count] = slice_of(r, false);
    std::vector<float> mine(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) mine[i] = static_cast<float>(begin + i);
    StateRegistry reg;
    reg.add_f32("ramp", {N}, {mine.data(), mine.size()}, begin, true);
    save_checkpoint(dir, 1, reg, "", ParallelSpec{}, world, 0);
  }
  {
    const auto [begin, count] = slice_of(r, true);
    std::vector<float> mine(static_cast<size_t>(count), -1.0f);
    StateRegistry reg;
    reg.add_f32("ramp", {N}, {mine.data(), mine.size()}, begin, true);
    load_checkpoint(dir + "/step_1", reg, world);
    int64_t wrong = 0;  // no ASSERT here: every rank must reach the collectives below
    for (int64_t i = 0; i < count; ++i) wrong += mine[i] != static_cast<float>(begin + i);
    EXPECT_EQ(wrong, 0) << "rank " << r << " slice [" << begin << ", " << begin + count << ")";
  }
  if (r == 0) {  // the whole tensor on one rank
    const Communicator self = Communicator::borrow(MPI_COMM_SELF, "self");
    std::vector<float> all(static_cast<size_t>(N), -1.0f);
    StateRegistry reg;
    reg.add_f32("ramp", {N}, {all.data(), all.size()}, true);
    load_checkpoint(dir + "/step_1", reg, self);
    int64_t wrong = 0;
    for (int64_t i = 0; i < N; ++i) wrong += all[i] != static_cast<float>(i);
    EXPECT_EQ(wrong, 0) << "whole tensor on one rank";
    fs::remove_all(dir);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

}  // namespace
}  // namespace moempi
