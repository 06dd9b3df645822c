// Parallel invariance (DESIGN.md contract): with the same global batch and seed, every sharding
// strategy, every valid parallel.ep and every dispatcher trains the same model to the same
// per-step losses as one rank. The one-rank reference runs on rank 0 over MPI_COMM_SELF with all
// 12 micro-batches of a step; a W-rank run takes 12/W micro-batches per rank.
// Tolerance: the first step's loss (same parameters, same data) agrees to 1e-9 relative (only the
// order of the double-precision loss sum differs); later steps to 2e-5 relative, the fp32
// summation-order difference of the gradient all-reduce after a few AdamW steps.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>

#include "comm/process_groups.h"
#include "runtime/job_spec.h"
#include "runtime/trainer.h"

namespace moempi {
namespace {

constexpr int kMicroBatchesPerStep = 12;  // divisible by 1, 2, 3 and 4 ranks

JobSpec invariance_spec() {
  JobSpec s;
  s.job.name = "invariance";
  s.model.vocab_size = 256;
  s.model.d_model = 32;
  s.model.n_layers = 2;
  s.model.n_heads = 4;
  s.model.seq_len = 16;
  s.moe.num_experts = 12;  // divisible by every ep in 1..4
  s.moe.top_k = 2;
  s.moe.d_ff_expert = 24;
  s.moe.balancing = {{.type = "aux_loss", .coeff = 0.01f}, {.type = "z_loss", .coeff = 0.001f}};
  s.optim.lr = 1e-2f;
  s.optim.schedule.type = "warmup_cosine";
  s.optim.schedule.warmup_steps = 2;
  s.train.steps = 6;
  s.train.micro_batch = 2;
  s.train.log_interval = 1000;
  s.eval.interval = 0;
  s.metrics.jsonl = false;
  return s;
}

int world_size() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// Rank 0 trains alone (MPI_COMM_SELF); the losses are broadcast to every rank.
std::vector<double> single_rank_losses() {
  static std::vector<double> losses;
  if (!losses.empty()) return losses;
  JobSpec s = invariance_spec();
  s.train.grad_accum = kMicroBatchesPerStep;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  losses.resize(s.train.steps);
  if (rank == 0) {
    ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_SELF);
    losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;
  }
  MPI_Bcast(losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return losses;
}

struct Layout {
  std::string strategy;
  int ep;
  std::string dispatch;
};

void expect_same_losses(const Layout& layout) {
  const int W = world_size();
  JobSpec s = invariance_spec();
  s.parallel.strategy = layout.strategy;
  s.parallel.ep = layout.ep;
  s.moe.dispatch.type = layout.dispatch;
  s.train.grad_accum = kMicroBatchesPerStep / W;
  validate_for_world(s, W);
  ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
  const auto losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;
  const auto ref = single_rank_losses();
  ASSERT_EQ(losses.size(), ref.size());
  EXPECT_NEAR(losses[0], ref[0], 1e-9 * ref[0]) << "step 1";
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
  EXPECT_LT(ref.back(), ref.front());  // the reference itself learns
}

TEST(TrainInvariance, DataParallelLocalDispatchMatchesOneRank) { expect_same_losses({"dp", 1, "local"}); }

// Flat dispatch with the experts split over the whole world (ep = W) and the packed exchange
// (MPI_Alltoallv of rows): at W > 1 tokens cross ranks in every MoE layer. This replaces
// {"dp", 1, "flat"}, which never exchanged a token (at ep = 1 every row goes to the rank's own
// experts and bypasses MPI), and strategy dp only allows ep = 1; the typed exchange at ep = W is
// the last case of ExpertParallelEveryValidEpMatchesOneRank.
TEST(TrainInvariance, ExpertParallelOverWorldFlatPackedDispatchMatchesOneRank) {
  expect_same_losses({"ep", world_size(), "flat_packed"});
}

TEST(TrainInvariance, ExpertParallelEveryValidEpMatchesOneRank) {
  const int W = world_size();
  int tried = 0;
  for (int ep = 1; ep <= W; ++ep) {
    if (W % ep != 0) continue;
    SCOPED_TRACE("ep=" + std::to_string(ep) + " dp=" + std::to_string(W / ep));
    expect_same_losses({"ep", ep, "flat"});
    ++tried;
  }
  EXPECT_GE(tried, 1);
}

// ep = W flat over virtual nodes of parallel.ranks_per_node ranks: 2 nodes x 2 ranks at 4 ranks
// (the smallest layout with both intra- and inter-node peers, where hierarchical code paths run),
// one rank per node at 1, 2 and 3 ranks. Checks that the node and inter-node groups are built as
// asked and that training over them gives the one-rank losses. Today's flat dispatcher does not
// read the node groups, so this is the ep = W case again plus the group layout; it becomes a
// hierarchical-dispatch invariance test when a dispatcher uses groups.node / groups.inter.
TEST(TrainInvariance, ExpertParallelOverVirtualNodesMatchesOneRank) {
  const int W = world_size();
  const int ranks_per_node = W == 4 ? 2 : 1;
  JobSpec s = invariance_spec();
  s.parallel = {.strategy = "ep", .ep = W, .ranks_per_node = ranks_per_node};
  s.moe.dispatch.type = "flat";
  s.train.grad_accum = kMicroBatchesPerStep / W;
  validate_for_world(s, W);
  ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
  EXPECT_TRUE(groups.virtual_nodes);
  EXPECT_EQ(groups.num_nodes, W / ranks_per_node);
  EXPECT_EQ(groups.node.size(), ranks_per_node);
  EXPECT_EQ(groups.inter.size(), W / ranks_per_node);
  EXPECT_EQ(groups.node_index, groups.world_rank / ranks_per_node);
  const auto losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;
  const auto ref = single_rank_losses();
  ASSERT_EQ(losses.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
}

}  // namespace
}  // namespace moempi
