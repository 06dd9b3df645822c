// Checkpoint format on one rank: CRC32C check value; save -> load round trip through a
// StateRegistry; every damage case refused with a message naming the file or tensor, leaving the
// live state untouched (staging); inspect/verify exit codes. Multi-rank resume and fallback:
// tests/checkpoint_mpitest.cpp; through the binary: tests/e2e/checkpoint.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "comm/communicator.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/crc32c.h"
#include "runtime/core/error.h"
#include "tests/test_util.h"

namespace moempi {
namespace {
namespace fs = std::filesystem;
using test_util::error_of;
using test_util::expect_contains;

TEST(Crc32c, StandardCheckValueAndChaining) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c("", 0), 0u);
  // Continuing a CRC over a split buffer gives the CRC of the whole (odd split: tail bytes).
  const std::string s = "The quick brown fox jumps over the lazy dog, twice over.";
  EXPECT_EQ(crc32c(s.data() + 13, s.size() - 13, crc32c(s.data(), 13)), crc32c(s.data(), s.size()));
}

// A small "job": two f32 tensors and a step counter.
struct Job {
  std::vector<float> w = std::vector<float>(37), b = std::vector<float>(5);
  std::vector<int64_t> step = {0};
  StateRegistry reg;
  explicit Job(int64_t w_rows = 37) {
    w.resize(static_cast<size_t>(w_rows));
    reg.add_f32("param/w", {w_rows}, {w.data(), w.size()}, true);
    reg.add_f32("param/b", {5}, {b.data(), b.size()}, true);
    reg.add_i64("train/step", {1}, {step.data(), 1}, true);
  }
  void fill(float base) {
    for (size_t i = 0; i < w.size(); ++i) w[i] = base + 0.5f * i;
    for (size_t i = 0; i < b.size(); ++i) b[i] = -base - i;
  }
};

class CheckpointFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("moempi_ckpt_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    world_ = Communicator::world();
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string save(Job& job, int64_t step, int keep_last = 0) {
    job.step[0] = step;
    return save_checkpoint(root_.string(), step, job.reg, "job: {name: t}\n", ParallelSpec{}, world_, keep_last).dir;
  }
  // Loads into a fresh job and expects a refusal containing `parts`, with the job untouched.
  // `damaged`: verify (which knows no job) must fail too; a sound checkpoint of another shape passes it.
  void expect_refused(const std::string& dir, const std::vector<std::string>& parts, int64_t rows = 37,
                      bool damaged = true) {
    Job fresh(rows);
    fresh.fill(9.0f);
    const std::vector<float> before = fresh.w;
    expect_contains(error_of([&] { load_checkpoint(dir, fresh.reg, world_); }), parts);
    EXPECT_EQ(fresh.w, before) << "a refused checkpoint changed the live state";
    EXPECT_EQ(inspect_checkpoint(dir, true), damaged ? 2 : 0);
  }
  static void flip_byte(const std::string& path, long offset) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(offset);
    char c;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(-1, std::ios::cur);
    f.write(&c, 1);
  }
  fs::path root_;
  Communicator world_;
};

TEST_F(CheckpointFiles, RoundTripRestoresEveryTensorBitForBit) {
  Job a;
  a.fill(1.25f);
  const std::string dir = save(a, 7);
  EXPECT_TRUE(fs::exists(dir + "/manifest.pb"));
  EXPECT_TRUE(fs::exists(dir + "/shard_0.bin"));
  std::ifstream latest(root_ / "latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step_7");
  Job b;
  const CheckpointInfo info = load_checkpoint(dir, b.reg, world_);
  EXPECT_EQ(info.step, 7);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.spec_yaml, "job: {name: t}\n");
  EXPECT_EQ(b.w, a.w);
  EXPECT_EQ(b.b, a.b);
  EXPECT_EQ(b.step[0], 7);
  EXPECT_EQ(inspect_checkpoint(dir, true), 0);
  EXPECT_EQ(inspect_checkpoint(root_.string(), false), 0);  // the ckpt directory: its latest
}

TEST_F(CheckpointFiles, KeepLastRemovesOlderCompleteCheckpoints) {
  Job a;
  for (int s = 1; s <= 4; ++s) save(a, s, 2);
  EXPECT_FALSE(fs::exists(root_ / "step_2"));
  EXPECT_TRUE(fs::exists(root_ / "step_3"));
  EXPECT_TRUE(fs::exists(root_ / "step_4"));
  const auto c = checkpoint_candidates(root_.string());
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(fs::path(c[0]).filename(), "step_4");
}

// A newer checkpoint left by an earlier run (one that resume refused and fell back from) is kept
// and does not count towards keep_last: this run keeps its own newest two.
TEST_F(CheckpointFiles, KeepLastIgnoresNewerCheckpointsOfAnEarlierRun) {
  Job a;
  save(a, 9, 2);
  for (int s = 1; s <= 4; ++s) save(a, s, 2);
  EXPECT_TRUE(fs::exists(root_ / "step_9"));
  EXPECT_FALSE(fs::exists(root_ / "step_2"));
  EXPECT_TRUE(fs::exists(root_ / "step_3"));
  EXPECT_TRUE(fs::exists(root_ / "step_4"));
  // Resume tries this run's checkpoints (latest, then older) before the earlier run's newer one.
  const auto c = checkpoint_candidates(root_.string());
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(fs::path(c[0]).filename(), "step_4");
  EXPECT_EQ(fs::path(c[1]).filename(), "step_3");
  EXPECT_EQ(fs::path(c[2]).filename(), "step_9");
}

TEST_F(CheckpointFiles, TruncatedShardIsRefused) {
  Job a;
  const std::string dir = save(a, 3);
  fs::resize_file(dir + "/shard_0.bin", fs::file_size(dir + "/shard_0.bin") - 10);
  expect_refused(dir, {"shard_0.bin", "truncated"});
}

TEST_F(CheckpointFiles, FlippedTensorByteIsRefusedNamingTheTensor) {
  Job a;
  a.fill(2.0f);
  const std::string dir = save(a, 3);
  flip_byte(dir + "/shard_0.bin", 64 + 8);  // inside param/w, the first tensor after the header
  expect_refused(dir, {"checksum mismatch in tensor 'param/w'"});
}

TEST_F(CheckpointFiles, FlippedHeaderOrPaddingByteFailsVerify) {
  Job a;
  const std::string dir = save(a, 3);
  flip_byte(dir + "/shard_0.bin", 64 + 37 * 4 + 2);  // alignment padding after param/w: no tensor
  EXPECT_EQ(inspect_checkpoint(dir, true), 2);
  flip_byte(dir + "/shard_0.bin", 64 + 37 * 4 + 2);
  EXPECT_EQ(inspect_checkpoint(dir, true), 0);
  flip_byte(dir + "/shard_0.bin", 40);  // header padding
  expect_refused(dir, {"shard_0.bin: damaged header"});
}

TEST_F(CheckpointFiles, FlippedManifestByteIsRefused) {
  Job a;
  const std::string dir = save(a, 3);
  flip_byte(dir + "/manifest.pb", static_cast<long>(fs::file_size(dir + "/manifest.pb")) / 2);
  expect_refused(dir, {"manifest.pb"});
}

TEST_F(CheckpointFiles, MissingShardIsRefused) {
  Job a;
  const std::string dir = save(a, 3);
  fs::remove(dir + "/shard_0.bin");
  expect_refused(dir, {"shard_0.bin", "missing shard"});
}

TEST_F(CheckpointFiles, StaleOrForeignManifestIsRefused) {
  Job a;
  const std::string d3 = save(a, 3);
  const std::string d4 = save(a, 4);
  // The manifest of step 3 copied over step 4's: the directory name and the shard ids disagree.
  fs::copy_file(d3 + "/manifest.pb", d4 + "/manifest.pb", fs::copy_options::overwrite_existing);
  expect_refused(d4, {"manifest is for step 3, but the directory is step 4"});
  // A shard of another save of the same step: the header's checkpoint id differs.
  const std::string d5 = save(a, 5);
  fs::copy_file(d5 + "/shard_0.bin", root_ / "shard_5_old.bin");
  save(a, 5);  // saved again: new id
  fs::copy_file(root_ / "shard_5_old.bin", d5 + "/shard_0.bin", fs::copy_options::overwrite_existing);
  expect_refused(d5, {"shard_0.bin", "shard of another checkpoint"});
}

TEST_F(CheckpointFiles, AnotherModelShapeIsRefusedNamingBothShapes) {
  Job a;
  const std::string dir = save(a, 3);
  expect_refused(dir, {"tensor 'param/w' is f32 [37] in the checkpoint but f32 [40] in this job",
                       "another model shape"}, 40, false);
}

TEST_F(CheckpointFiles, MissingOrUnknownStateIsRefused) {
  Job a;
  const std::string dir = save(a, 3);
  // This job has a tensor the checkpoint lacks.
  Job more;
  std::vector<float> extra(3);
  more.reg.add_f32("balancing/layers.0.loss_free_bias.bias_E", {3}, {extra.data(), 3}, true);
  expect_contains(error_of([&] { load_checkpoint(dir, more.reg, world_); }),
                  {"no tensor 'balancing/layers.0.loss_free_bias.bias_E'"});
  // The checkpoint has a tensor this job lacks.
  std::vector<float> w(37), b(5);
  std::vector<int64_t> step(1);
  StateRegistry fewer;
  fewer.add_f32("param/w", {37}, {w.data(), w.size()}, true);
  fewer.add_i64("train/step", {1}, {step.data(), 1}, true);
  expect_contains(error_of([&] { load_checkpoint(dir, fewer, world_); }), {"holds 'param/b', which is not state of this job"});
}

// State newer than the checkpoint, registered with allow_absent, loads zeros (never what is live)
// and the rest loads as usual.
TEST_F(CheckpointFiles, AbsentStateAllowedLoadsZeros) {
  Job a;
  a.fill(2.0f);
  const std::string dir = save(a, 4);
  Job more;
  std::vector<int64_t> seqs = {123};
  more.reg.add_i64("train/sequences", {1}, {seqs.data(), 1}, true);
  more.reg.allow_absent("train/sequences");
  load_checkpoint(dir, more.reg, world_);
  EXPECT_EQ(seqs[0], 0);
  EXPECT_EQ(more.w, a.w);
  EXPECT_EQ(more.step[0], 4);
}

// No ckpt directory: no candidates (a fresh run). One that is not a directory: an error naming it.
TEST_F(CheckpointFiles, UnreadableCheckpointDirectoryIsAnError) {
  EXPECT_TRUE(checkpoint_candidates((root_ / "none").string()).empty());
  fs::create_directories(root_);
  std::ofstream(root_ / "file") << "x";
  expect_contains(error_of([&] { checkpoint_candidates((root_ / "file").string()); }), {"file is not a directory"});
}

TEST_F(CheckpointFiles, IncompleteCheckpointIsNoCandidate) {
  Job a;
  save(a, 3);
  const std::string d4 = save(a, 4);
  // As if the save of step 4 died before its manifest: `latest` still names step 3.
  fs::remove(d4 + "/manifest.pb");
  std::ofstream(root_ / "latest", std::ios::trunc) << "step_3\n";
  const auto c = checkpoint_candidates(root_.string());
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(fs::path(c[0]).filename(), "step_3");
  expect_contains(error_of([&] { load_checkpoint(d4, a.reg, world_); }), {"no manifest.pb", "incomplete"});
}

// `latest` moves only after a manifest is written: if the checkpoint it names has lost its
// manifest, or is gone, it stays first in line, so that resume refuses it with a message and
// falls back (or stops), instead of skipping it silently and, with nothing older, starting over.
TEST_F(CheckpointFiles, LatestWithoutManifestStaysFirstToBeRefused) {
  Job a;
  save(a, 3);
  const std::string d4 = save(a, 4);
  fs::remove(d4 + "/manifest.pb");
  auto c = checkpoint_candidates(root_.string());
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(fs::path(c[0]).filename(), "step_4");
  EXPECT_EQ(fs::path(c[1]).filename(), "step_3");
  expect_contains(error_of([&] { load_checkpoint(c[0], a.reg, world_); }), {"no manifest.pb"});
  fs::remove_all(root_ / "step_3");
  fs::remove_all(d4);
  c = checkpoint_candidates(root_.string());
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(fs::path(c[0]).filename(), "step_4");
}

TEST(SpecDifferences, NamesEveryChangedAddedAndRemovedKey) {
  const auto d = spec_differences("parallel: {strategy: ep, ep: 4}\ntrain: {grad_accum: 3}\nmoe: {balancing: []}\n",
                                  "parallel: {strategy: dp, ep: 4}\ntrain: {grad_accum: 12, global_batch: 24}\n"
                                  "moe: {balancing: []}\n");
  EXPECT_EQ(d, (std::vector<std::string>{"parallel.strategy: ep -> dp", "train.global_batch: - -> 24",
                                         "train.grad_accum: 3 -> 12"}));
  EXPECT_TRUE(spec_differences("a: 1\n", "a: 1\n").empty());
}

}  // namespace
}  // namespace moempi
