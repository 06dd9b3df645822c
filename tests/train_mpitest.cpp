// Parallel invariance (DESIGN.md contract): with the same global batch and seed, every registered
// sharding strategy, every valid parallel.ep and every registered dispatcher trains the same model
// to the same per-step losses as one rank. The one-rank reference runs on rank 0 over MPI_COMM_SELF with all
// 12 micro-batches of a step; a W-rank run takes 12/W micro-batches per rank.
// Tolerance: the first step's loss (same parameters, same data) agrees to 1e-9 relative (only the
// order of the double-precision loss sum differs); later steps to 2e-5 relative, the fp32
// summation-order difference of the gradient all-reduce after a few AdamW steps.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <map>
#include <numeric>

#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/sharding_strategy.h"
#include "runtime/core/error.h"
#include "runtime/job_spec.h"
#include "runtime/memory_estimate.h"
#include "runtime/trainer.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

constexpr int kMicroBatchesPerStep = 12;  // divisible by 1, 2, 3 and 4 ranks

JobSpec invariance_spec() {
  JobSpec s;
  s.job.name = "invariance";
  s.model.vocab_size = 256;
  test_util::use_small_moe_model(s);
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

using test_util::world_size;

// Rank 0 trains `s` alone (MPI_COMM_SELF) with all of a step's micro-batches; the losses are
// broadcast to every rank.
std::vector<double> one_rank_losses(JobSpec s) {
  s.train.grad_accum = kMicroBatchesPerStep;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::vector<double> losses(s.train.steps);
  if (rank == 0) {
    ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_SELF);
    losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;
  }
  MPI_Bcast(losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return losses;
}

// The invariance spec's one-rank losses (computed once).
std::vector<double> single_rank_losses() {
  static std::vector<double> losses;
  if (!losses.empty()) return losses;
  losses = one_rank_losses(invariance_spec());
  return losses;
}

struct Layout {
  std::string strategy;
  int ep;  // 0 = every rank
  std::string dispatch;
  int ranks_per_node = 0;
  std::string algorithm = "2dh";  // hierarchical's sub-spec
  bool dedup = false;
};

std::string layout_name(const Layout& l) {
  const std::string sub = l.dispatch == "hierarchical" && (l.algorithm != "2dh" || l.dedup)
                              ? fmt::format("_{}{}", l.algorithm, l.dedup ? "_dedup" : "")
                              : "";
  return fmt::format("{}_ep{}_{}{}{}", l.strategy, l.ep ? std::to_string(l.ep) : std::string("W"), l.dispatch, sub,
                     l.ranks_per_node ? fmt::format("_vnodes{}", l.ranks_per_node == 2 ? "" : std::to_string(l.ranks_per_node)) : "");
}
void PrintTo(const Layout& l, std::ostream* os) { *os << layout_name(l); }

// Trains the layout at the world size; the same losses as one rank (tolerances above).
void expect_same_losses(const Layout& layout) {
  const int W = world_size();
  JobSpec s = invariance_spec();
  s.parallel.strategy = layout.strategy;
  s.parallel.ep = layout.ep;
  s.parallel.ranks_per_node = layout.ranks_per_node;
  s.moe.dispatch.type = layout.dispatch;
  s.moe.dispatch.hierarchical.algorithm = layout.algorithm;
  s.moe.dispatch.hierarchical.dedup = layout.dedup;
  s.train.grad_accum = kMicroBatchesPerStep / W;
  resolve_for_world(s, W);
  ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
  const auto losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;
  const auto ref = single_rank_losses();
  ASSERT_EQ(losses.size(), ref.size());
  EXPECT_NEAR(losses[0], ref[0], 1e-9 * ref[0]) << "step 1";
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
  EXPECT_LT(ref.back(), ref.front());  // the reference itself learns
}

// Every registered strategy x every registered dispatcher x every ep (1..4, and all ranks, also
// over virtual nodes): a new strategy or dispatcher is covered without editing this test. A layout
// may only be refused where the rules say so (local across ranks, dp with ep > 1, shm across
// nodes, fssdp with ep other than the world); the refusal must be a collective error naming the key.
class TrainInvariance : public ::testing::TestWithParam<Layout> {};

TEST_P(TrainInvariance, SameLossesAsOneRank) {
  const Layout l = GetParam();
  const int W = world_size();
  const int ep = l.ep ? l.ep : W;
  if (W % ep != 0) GTEST_SKIP() << "ep " << ep << " does not divide W " << W;
  if (l.ranks_per_node && (W % l.ranks_per_node != 0 || W == l.ranks_per_node))
    GTEST_SKIP() << "virtual nodes need a multiple of " << l.ranks_per_node << " ranks above it";
  const bool spans_nodes = l.ranks_per_node && ep > l.ranks_per_node;
  const bool refused = (l.strategy == "dp" && ep > 1) || (l.dispatch == "local" && ep > 1) ||
                       (l.dispatch == "shm" && spans_nodes) || (l.strategy == "fssdp" && ep != W);
  try {
    expect_same_losses(l);
    EXPECT_FALSE(refused) << "this layout should have been refused";
  } catch (const CollectiveError& e) {
    if (!refused) throw;
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("parallel.ep") != std::string::npos || msg.find("moe.dispatch.type") != std::string::npos)
        << msg;
  }
}

std::vector<Layout> all_layouts() {
  std::vector<Layout> out;
  for (const std::string& strategy : sharding_strategy_registry().names())
    for (const std::string& dispatch : dispatcher_names()) {
      for (int ep : {1, 2, 3, 4, 0}) out.push_back({strategy, ep, dispatch});
      out.push_back({strategy, 0, dispatch, 2});  // 2x2 virtual nodes at 4 ranks
    }
  // hierarchical's other sub-specs over 2x2 and one-rank virtual nodes (4x1, 3x1, 2x1).
  for (const auto& [algorithm, dedup] : std::vector<std::pair<std::string, bool>>{
           {"2dh", true}, {"leader", false}, {"leader", true}})
    for (int rpn : {2, 1}) out.push_back({"ep", 0, "hierarchical", rpn, algorithm, dedup});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Registered, TrainInvariance, ::testing::ValuesIn(all_layouts()),
                         [](const ::testing::TestParamInfo<Layout>& info) { return layout_name(info.param); });

// ep = W flat over virtual nodes of parallel.ranks_per_node ranks: 2 nodes x 2 ranks at 4 ranks
// (the smallest layout with both intra- and inter-node peers, where hierarchical code paths run),
// one rank per node at 1, 2 and 3 ranks. Checks that the node and inter-node groups are built as
// asked and that training over them gives the one-rank losses. flat reads the nodes only for its
// intra/inter-node traffic statistics, so this is the ep = W case again plus the group layout; it
// becomes a hierarchical-dispatch invariance test when a dispatcher uses groups.ep_node/ep_inter.
// hierarchical without dedup moves the same rows and sums in the same order as flat: the same
// losses bit for bit, over 2x2 virtual nodes at 4 ranks and one rank per node below; with dedup
// the per-node partial sums change the summation order (the one-rank tolerance above).
TEST(TrainVirtualNodes, HierarchicalEqualsFlat) {
  const int W = world_size();
  if (W == 1) GTEST_SKIP() << "needs 2 or more ranks";
  auto losses_of = [&](const std::string& type, const std::string& algorithm, bool dedup) {
    JobSpec s = invariance_spec();
    s.parallel.strategy = "ep";
    s.parallel.ep = W;
    s.parallel.ranks_per_node = W == 4 ? 2 : 1;
    s.moe.dispatch.type = type;
    s.moe.dispatch.hierarchical.algorithm = algorithm;
    s.moe.dispatch.hierarchical.dedup = dedup;
    s.train.grad_accum = kMicroBatchesPerStep / W;
    validate_for_world(s, W);
    ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
    return train(s, groups, {.log_steps = false, .write_files = false}).losses;
  };
  const auto flat = losses_of("flat", "2dh", false);
  for (const char* algorithm : {"2dh", "leader"}) {
    SCOPED_TRACE(algorithm);
    EXPECT_EQ(losses_of("hierarchical", algorithm, false), flat);
    const auto dedup = losses_of("hierarchical", algorithm, true);
    ASSERT_EQ(dedup.size(), flat.size());
    for (size_t i = 0; i < flat.size(); ++i) EXPECT_NEAR(dedup[i], flat[i], 2e-5 * flat[i]) << "step " << i + 1;
  }
}

TEST(TrainVirtualNodes, ExpertParallelOverVirtualNodesMatchesOneRank) {
  const int W = world_size();
  const int ranks_per_node = W == 4 ? 2 : 1;
  JobSpec s = invariance_spec();
  s.parallel.strategy = "ep";
  s.parallel.ep = W;
  s.parallel.ranks_per_node = ranks_per_node;
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

// Node-limited routing (moe.max_nodes_per_token 1) over the nodes of the layout (2 x 2 virtual
// nodes at 4 ranks, one rank per node at 2 and 3) trains the model one rank trains with the same
// rule given explicitly (moe.routing_nodes = the node count). One node alone is refused, naming
// the key, unless moe.routing_nodes says how many nodes to route as.
TEST(TrainNodeLimited, OverNodesMatchesOneRankWithTheSameRule) {
  const int W = world_size();
  const int ranks_per_node = W == 4 ? 2 : 1;
  JobSpec s = invariance_spec();
  s.parallel.strategy = "ep";
  s.parallel.ep = W;
  s.parallel.ranks_per_node = ranks_per_node;
  s.moe.dispatch.type = "flat";
  s.moe.max_nodes_per_token = 1;
  s.train.grad_accum = kMicroBatchesPerStep / W;
  validate_for_world(s, W);
  ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
  const int nodes = W / ranks_per_node;
  if (nodes == 1) {
    try {
      train(s, groups, {.log_steps = false, .write_files = false});
      ADD_FAILURE() << "one node should be refused";
    } catch (const CollectiveError& e) {
      EXPECT_NE(std::string(e.what()).find("moe.max_nodes_per_token"), std::string::npos) << e.what();
    }
    s.moe.routing_nodes = 2;  // route as on two nodes: allowed, and what the references below use
  }
  const auto losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;

  JobSpec ref_spec = invariance_spec();
  ref_spec.moe.max_nodes_per_token = 1;
  ref_spec.moe.routing_nodes = std::max(nodes, 2);
  const std::vector<double> ref = one_rank_losses(ref_spec), unlimited = single_rank_losses();
  ASSERT_EQ(losses.size(), ref.size());
  EXPECT_NEAR(losses[0], ref[0], 1e-9 * ref[0]) << "step 1";
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
  EXPECT_NE(ref[0], unlimited[0]) << "the limit should change the routing, hence the first loss";
}

// Forced Zipf routing (moe.force_routing, for benchmarks) draws by global token index, so expert
// parallelism over the world trains the losses one rank trains with it.
TEST(TrainForcedRouting, ZipfOverTheWorldMatchesOneRank) {
  const int W = world_size();
  JobSpec s = invariance_spec();
  s.moe.force_routing = "zipf:1.2";
  s.parallel.strategy = "ep";
  s.parallel.ep = W;
  s.moe.dispatch.type = "flat";
  s.train.grad_accum = kMicroBatchesPerStep / W;
  validate_for_world(s, W);
  ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
  const auto losses = train(s, groups, {.log_steps = false, .write_files = false}).losses;
  JobSpec r = invariance_spec();
  r.moe.force_routing = "zipf:1.2";
  const std::vector<double> ref = one_rank_losses(r);
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
  EXPECT_NE(ref[0], single_rank_losses()[0]) << "forcing should change the routing";
}

// FSSDP with forced Zipf(1.2) popularity: hot experts are replicated from the second step on
// (the load history starts empty), and the losses stay those of one rank; at one rank nothing can
// be replicated.
TEST(TrainFssdp, ZipfReplicatesHotExpertsAndMatchesOneRank) {
  const int W = world_size();
  JobSpec s = invariance_spec();
  s.moe.force_routing = "zipf:1.2";
  s.parallel.strategy = "fssdp";
  s.parallel.ep = W;
  s.parallel.fssdp.max_materialized_experts = 2;
  s.moe.dispatch.type = "flat";
  s.train.grad_accum = kMicroBatchesPerStep / W;
  validate_for_world(s, W);
  ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
  const TrainSummary run = train(s, groups, {.log_steps = false, .write_files = false});
  JobSpec r = invariance_spec();
  r.moe.force_routing = "zipf:1.2";
  const std::vector<double> ref = one_rank_losses(r);
  ASSERT_EQ(run.losses.size(), ref.size());
  EXPECT_NEAR(run.losses[0], ref[0], 1e-9 * ref[0]) << "step 1";
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(run.losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
  EXPECT_EQ(run.replicas.front(), 0) << "no load history before the first step";
  const int64_t later = *std::max_element(run.replicas.begin() + 1, run.replicas.end());
  if (W > 1) {
    EXPECT_GT(later, 0) << "zipf loads should be replicated";
  } else {
    EXPECT_EQ(later, 0);
  }
}

// FSSDP re-materialisation (parallel.fssdp.rematerialize): each MoE layer's replicas are gathered
// before its forward and again before its backward, and freed after each. The same copies and the
// same sums in the same order, so the losses equal those without it to the last bit, with several
// micro-batches per step (gradients kept across them) and with one; the most replica memory a rank
// holds at once falls (one layer's instead of every layer's) and stays within the estimate.
TEST(TrainFssdp, RematerializeTrainsTheSameLossesWithLessReplicaMemory) {
  const int W = world_size();
  for (const int accum : {kMicroBatchesPerStep / W, 1}) {
    std::vector<double> losses[2];
    double peak[2] = {0, 0};
    for (const bool remat : {false, true}) {
      JobSpec s = invariance_spec();
      s.moe.force_routing = "zipf:1.2";
      s.parallel.strategy = "fssdp";
      s.parallel.ep = W;
      s.parallel.fssdp.rematerialize = remat;
      s.moe.dispatch.type = "flat";
      s.train.grad_accum = accum;
      s.train.micro_batch = 2 * kMicroBatchesPerStep / W / accum;
      validate_for_world(s, W);
      ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
      const TrainSummary run = train(s, groups, {.log_steps = false, .write_files = false});
      losses[remat] = run.losses;
      peak[remat] = run.memory.replicas;
      EXPECT_LE(run.memory.replicas, estimate_memory(s, W).replicas) << "remat " << remat << " accum " << accum;
      MPI_Allreduce(MPI_IN_PLACE, &peak[remat], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    }
    ASSERT_EQ(losses[0].size(), losses[1].size());
    for (size_t i = 0; i < losses[0].size(); ++i)
      EXPECT_EQ(losses[1][i], losses[0][i]) << "step " << i + 1 << " accum " << accum << " at W=" << W;
    if (W > 1) {
      EXPECT_GT(peak[0], 0) << "zipf loads should be replicated";
      EXPECT_LT(peak[1], peak[0]) << "re-materialisation should hold fewer replica bytes at once";
    }
  }
}

// Every parameter and optimizer moment of the model by global name ("param/...", "optim/..."),
// summed over the ranks from their writers (each slice has exactly one): the whole model, the same
// on every rank, whichever rank holds which expert.
std::map<std::string, std::vector<float>> whole_model(const StateRegistry& state, const JobSpec& s) {
  std::vector<std::string> names;
  for (const StateTensor& t : state.tensors())  // dense names exist on every rank
    if (t.dtype == StateDType::kF32 && t.name.find(".moe.experts.") == std::string::npos) names.push_back(t.name);
  std::vector<std::string> prefixes = {"param/"};
  for (const StateTensor& t : state.tensors())
    if (t.name.rfind("optim/", 0) == 0 && t.name.find("/wte") != std::string::npos)
      prefixes.push_back(t.name.substr(0, t.name.size() - 3));  // "optim/adamw.m/"
  for (int l = 0; l < s.model.n_layers; ++l)
    for (int e = 0; e < s.moe.num_experts; ++e)
      for (const char* part : {"w1", "w2"})
        for (const std::string& p : prefixes) names.push_back(fmt::format("{}layers.{}.moe.experts.{}.{}", p, l, e, part));
  std::map<std::string, std::vector<float>> out;
  for (const std::string& name : names) {
    int64_t n = 0;
    const StateTensor* t = state.find(name);
    if (t && t->writer) n = t->count;
    MPI_Allreduce(MPI_IN_PLACE, &n, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    std::vector<float> v(static_cast<size_t>(n), 0.0f);
    if (t && t->writer) std::copy_n(static_cast<const float*>(t->data), t->count, v.data());
    MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    out[name] = std::move(v);
  }
  return out;
}

// FSSDP re-sharding (parallel.fssdp.reshard_interval 2) under forced Zipf(1.2) loads: after step 2
// ownership moves (at W > 1) and the whole model, parameters and AdamW moments by name, equals the
// run without re-sharding bit for bit; the losses of all 6 steps, across the re-shardings at steps
// 2, 4 and 6, stay those of one rank (the invariance tolerance).
TEST(TrainFssdp, ReshardingMovesOwnershipAndKeepsTheModel) {
  const int W = world_size();
  std::map<std::string, std::vector<float>> model[2];
  TrainSummary runs[2];
  for (const int interval : {0, 2}) {
    JobSpec s = invariance_spec();
    s.moe.force_routing = "zipf:1.2";
    s.parallel.strategy = "fssdp";
    s.parallel.ep = W;
    s.parallel.fssdp.reshard_interval = interval;
    s.moe.dispatch.type = "flat";
    s.train.grad_accum = kMicroBatchesPerStep / W;
    validate_for_world(s, W);
    ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
    const bool with = interval > 0;
    TrainOptions options{.log_steps = false, .write_files = false};
    options.after_step_state = [&](int step, const StateRegistry& state) {
      if (step == 2) model[with] = whole_model(state, s);
    };
    runs[with] = train(s, groups, options);
  }
  ASSERT_FALSE(model[0].empty());
  ASSERT_EQ(model[0].size(), model[1].size());
  for (const auto& [name, values] : model[0]) {
    ASSERT_TRUE(model[1].count(name)) << name;
    EXPECT_TRUE(values == model[1].at(name)) << name << " differs after the re-sharding at step 2";
  }
  const int64_t moved = std::accumulate(runs[1].experts_moved.begin(), runs[1].experts_moved.end(), int64_t{0});
  EXPECT_EQ(runs[1].experts_moved[0], 0) << "no re-sharding before step 2";
  if (W > 1) {
    EXPECT_GT(runs[1].experts_moved[1], 0) << "zipf loads on contiguous owners should move experts at step 2";
  } else {
    EXPECT_EQ(moved, 0) << "one rank owns everything";
  }
  EXPECT_EQ(std::accumulate(runs[0].experts_moved.begin(), runs[0].experts_moved.end(), int64_t{0}), 0);
  JobSpec r = invariance_spec();
  r.moe.force_routing = "zipf:1.2";
  const std::vector<double> ref = one_rank_losses(r);
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_NEAR(runs[1].losses[i], ref[i], 2e-5 * ref[i]) << "step " << i + 1 << " at W=" << W;
}

// Memory accounting (issue 10 item 5): what each rank allocates for params, grads and the
// optimizer state, and the experts' shares, equal the estimate `validate` and the start-up print,
// for every strategy at this world size; the experts' optimizer state over the ranks sums to one
// global copy (1/W per rank); fssdp's replica buffers stay within the estimate at the budget.
TEST(TrainMemory, AllocatedModelStateMatchesTheEstimate) {
  const int W = world_size();
  for (const std::string strategy : {"dp", "ep", "fssdp"}) {
    JobSpec s = invariance_spec();
    s.parallel.strategy = strategy;
    s.parallel.ep = strategy == "dp" ? 1 : W;
    s.moe.force_routing = "zipf:1.2";
    s.train.steps = 3;
    s.train.grad_accum = kMicroBatchesPerStep / W;
    validate_for_world(s, W);
    ProcessGroups groups = ProcessGroups::build(s.parallel, MPI_COMM_WORLD);
    const TrainSummary run = train(s, groups, {.log_steps = false, .write_files = false});
    const MemoryEstimate want = estimate_memory(s, s.parallel.ep);
    const MemoryEstimate& got = run.memory;
    EXPECT_EQ(got.params, want.params) << strategy << " at W=" << W;
    EXPECT_EQ(got.grads, want.grads) << strategy;
    EXPECT_EQ(got.optimizer, want.optimizer) << strategy;
    EXPECT_EQ(got.expert_params, want.expert_params) << strategy;
    EXPECT_EQ(got.expert_optimizer, want.expert_optimizer) << strategy;
    double expert_optimizer = got.expert_optimizer;
    MPI_Allreduce(MPI_IN_PLACE, &expert_optimizer, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    const double one_copy = estimate_memory(s, 1).expert_optimizer;  // every expert's moments once
    EXPECT_EQ(expert_optimizer, strategy == "dp" ? W * one_copy : one_copy) << strategy;
    if (strategy == "fssdp") {
      EXPECT_LE(got.replicas, want.replicas);
      double most = got.replicas;  // some rank holds replicas (the owner of the hottest expert needs none)
      MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (W > 1) { EXPECT_GT(most, 0) << "zipf loads should be replicated"; }
      if (W > 1) { EXPECT_GT(want.replicas, 0) << "the estimate counts the replica buffers"; }
    } else {
      EXPECT_EQ(got.replicas, 0) << strategy;
      EXPECT_EQ(want.replicas, 0) << strategy;
    }
  }
}

}  // namespace
}  // namespace moempi
