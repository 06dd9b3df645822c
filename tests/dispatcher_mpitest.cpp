// MPI contract tests of every registered dispatcher (contract v2, parallel/dispatcher.h), run at
// 1-4 ranks by ctest. For each name in dispatcher_names(), each ep dividing W, each traffic
// pattern, with and without expert replicas and on 2x2 virtual nodes: the expert-side rows (x and
// dy) and their layout, and the outputs out, dprobs and dx, equal the `local` reference bit for bit
// (three rounds on one plan with other T and D), and the traffic statistics count exactly the rows
// that cross ranks and their bytes, split by the peer's node. A dispatcher whose layout rules refuse a case (e.g.
// `local` at ep > 1) must refuse it with a collective error naming moe.dispatch.type, and the case
// is skipped. Then finite differences through dispatch -> experts -> combine (x and probs), and
// the registry's errors. Every rank builds every rank's inputs (tests/dispatch_problem.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "comm/collectives.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/hierarchical_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/error.h"
#include "tests/dispatch_problem.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

using test_util::DispatchProblem;
using test_util::make_dispatch_problem;

constexpr int kExperts = 12;  // divisible by 1, 2, 3, 4

using test_util::world_size;

// One dispatcher spec under test: a registered name, or one of its sub-specs (hierarchical's
// algorithm x dedup), labelled for the test name.
struct Variant {
  std::string label;
  DispatchSpec spec;
};

std::vector<Variant> dispatch_variants() {
  std::vector<Variant> out;
  for (const std::string& name : dispatcher_names()) {
    DispatchSpec s;
    s.type = name;
    if (name != "hierarchical") {
      out.push_back({name, s});
      continue;
    }
    for (const char* algorithm : {"2dh", "leader"})
      for (bool dedup : {false, true}) {
        s.hierarchical.algorithm = algorithm;
        s.hierarchical.dedup = dedup;
        out.push_back({fmt::format("hierarchical_{}{}", algorithm, dedup ? "_dedup" : ""), s});
      }
  }
  return out;
}

struct Case {
  std::string dispatcher;  // the variant's label
  DispatchSpec spec;
  int ep;
  std::string pattern;
  int K;
  bool replicas;       // expert replicas in the placement (FSSDP-like), else the ep layout
  int ranks_per_node;  // 0 = real nodes; 1 or 2 = virtual nodes of 1 or 2 ranks
};

std::string case_name(const Case& c) {
  return fmt::format("{}_ep{}_{}_k{}{}{}", c.dispatcher, c.ep, c.pattern, c.K, c.replicas ? "_replicas" : "",
                     c.ranks_per_node ? fmt::format("_vnodes{}", c.ranks_per_node) : "");
}
void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

// Replicas: the hot expert on every rank of the group, expert 0 also on the last rank.
Placement make_case_placement(const Case& c, int rank) {
  if (!c.replicas) return Placement::contiguous(kExperts, c.ep, rank);
  std::vector<std::vector<int>> replicas(kExperts);
  for (int r = 0; r < c.ep; ++r) replicas[kExperts / 2 + 1].push_back(r);
  replicas[0].push_back(c.ep - 1);
  return Placement::with_replicas(kExperts, c.ep, rank, replicas);
}

class DispatcherContract : public ::testing::TestWithParam<Case> {};

TEST_P(DispatcherContract, EqualsLocalBitForBit) {
  const Case c = GetParam();
  const int W = world_size();
  if (W % c.ep != 0) GTEST_SKIP() << "ep " << c.ep << " does not divide W " << W;
  if (c.ranks_per_node && (W % c.ranks_per_node != 0 || W == c.ranks_per_node))
    GTEST_SKIP() << "virtual nodes of " << c.ranks_per_node << " need a multiple of it above it";
  ParallelSpec spec;
  spec.strategy = c.ep > 1 ? "ep" : "dp";
  spec.ep = c.ep;
  spec.ranks_per_node = c.ranks_per_node;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const DispatchSpec& dspec = c.spec;
  std::unique_ptr<Dispatcher> d;
  try {
    d = make_dispatcher(dspec, groups);
  } catch (const CollectiveError& e) {
    test_util::expect_contains(e.what(), {"moe.dispatch.type"});
    GTEST_SKIP() << "refused by its layout rule: " << e.what();
  }
  const int m = groups.ep.rank(), group0 = groups.ep_group() * c.ep;
  const Placement placement = make_case_placement(c, m);
  auto plan = d->new_plan();
  // Three rounds on one plan: growth of T and D, then a smaller D (buffers are reused and must not
  // leak rows of an earlier round).
  const int widths[3] = {24, 40, 8};
  int64_t want_rows = 0, want_intra = 0, want_inter = 0;
  // hierarchical: rows take several hops and leaders send for their node, so its per-rank
  // statistics differ from flat's; the ep group's inter-node bytes are exact: every slot row
  // crossing nodes crosses once per direction and call (4 D floats), with dedup every
  // (token, remote node) unit once (4 D floats + K dprobs).
  const bool hier = dspec.type == "hierarchical", dedup = hier && dspec.hierarchical.dedup;
  int64_t want_group_inter = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const int D = widths[round];
    std::vector<DispatchProblem> group;
    for (int q = 0; q < c.ep; ++q)
      group.push_back(make_dispatch_problem(c.pattern, kExperts, c.K, D, group0 + q, W, round));
    test_util::Result got;
    test_util::run_forward(*d, *plan, group[m], placement, got);
    test_util::run_backward(*d, *plan, group[m], got);
    std::string what;
    // dedup sums a token's outputs per node first: out and dx within 1e-6 of the row scale.
    EXPECT_EQ(test_util::check_against_local(got, group, placement, &what, dedup ? 1e-6f : 0.0f), 0) << what;
    for (int q = 0; q < c.ep; ++q) {
      const DispatchProblem& pq = group[q];
      const int node_q = groups.ep_rank_node[q];
      for (int t = 0; t < pq.T; ++t) {
        std::vector<int> remote_nodes;
        for (int k = 0; k < pq.K; ++k) {
          const int32_t e = pq.topk[static_cast<size_t>(t) * pq.K + k];
          if (e < 0) continue;
          const int node = groups.ep_rank_node[placement.destination(e, q)];
          if (node == node_q) continue;
          if (!dedup)
            want_group_inter += 4 * D * static_cast<int64_t>(sizeof(float));
          else if (std::find(remote_nodes.begin(), remote_nodes.end(), node) == remote_nodes.end())
            remote_nodes.push_back(node);
        }
        want_group_inter += static_cast<int64_t>(remote_nodes.size()) * (4 * D + pq.K) * sizeof(float);
      }
    }
    // Rows that cross ranks: dispatch and combine_backward move the slots this rank routes
    // elsewhere, combine and dispatch_backward the rows its experts received from others.
    // Bytes go to the intra- or inter-node count by the peer's node.
    for (int q = 0; q < c.ep; ++q)
      for (int32_t e : group[q].topk) {
        if (e < 0) continue;
        const int dst = placement.destination(e, q);
        if ((q == m) == (dst == m)) continue;  // not this rank's traffic, or its own row
        const int peer = q == m ? dst : q;
        want_rows += 2;
        const int64_t bytes = 2 * D * static_cast<int64_t>(sizeof(float));
        (groups.ep_rank_node[peer] == groups.ep_rank_node[m] ? want_intra : want_inter) += bytes;
      }
  }
  const DispatchStats& st = d->stats();
  EXPECT_GT(st.seconds, 0.0);  // every call is timed
  if (dspec.compression.type == "none") {  // a transport: its time by call adds up to its total
    double by_call = 0;
    for (double s : st.call_seconds) {
      EXPECT_GE(s, 0.0);
      by_call += s;
    }
    EXPECT_NEAR(by_call, st.seconds, 1e-9 * (1.0 + st.seconds));
    EXPECT_GT(st.call_seconds[kCallPlan] + st.call_seconds[kCallCombine], 0.0);
  }
  if (hier) {
    int64_t group_inter = st.bytes_inter;
    allreduce_sum(&group_inter, 1, groups.ep);
    EXPECT_EQ(group_inter, want_group_inter);
    if (groups.ep_num_nodes() == 1) {
      EXPECT_EQ(st.bytes_inter, 0);
    }
    return;
  }
  EXPECT_EQ(st.rows, want_rows);
  EXPECT_EQ(st.bytes_intra, want_intra);
  EXPECT_EQ(st.bytes_inter, want_inter);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const std::pair<const char*, int> patterns[] = {{"balanced", 1},  {"balanced", 2}, {"zero_rank", 2},
                                                  {"hot_expert", 2}, {"dropped", 2},  {"all_dropped", 2},
                                                  {"empty", 2}};
  for (const Variant& v : dispatch_variants())
    for (int ep : {1, 2, 3, 4})
      for (const auto& [pattern, K] : patterns) {
        const std::string name = v.label;
        cases.push_back({name, v.spec, ep, pattern, K, false, 0});
        if (std::string(pattern) == "hot_expert" || std::string(pattern) == "dropped") {
          cases.push_back({name, v.spec, ep, pattern, K, true, 0});
          cases.push_back({name, v.spec, ep, pattern, K, false, 2});
          cases.push_back({name, v.spec, ep, pattern, K, true, 2});
          // One rank per node: 4x1 and 3x1 (the hierarchical layouts without an intra-node phase).
          cases.push_back({name, v.spec, ep, pattern, K, false, 1});
        }
      }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Registered, DispatcherContract, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// ---------------------------------------------------------------------------------------------
// Finite differences through dispatch -> experts -> combine at ep = W: J = Σ_ranks <out, dout>.
// Every rank perturbs its own entry at once, so dJ = h · Σ_ranks (analytic gradient there).

class DispatcherFiniteDifferences : public ::testing::TestWithParam<Variant> {};

TEST_P(DispatcherFiniteDifferences, ProbsAndInputs) {
  const int W = world_size();
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  const DispatchSpec& dspec = GetParam().spec;
  std::unique_ptr<Dispatcher> d;
  try {
    d = make_dispatcher(dspec, groups);
  } catch (const CollectiveError& e) {
    GTEST_SKIP() << e.what();
  }
  const Placement placement = Placement::contiguous(kExperts, W, groups.ep.rank());
  DispatchProblem p = make_dispatch_problem("dropped", kExperts, 2, 8, groups.world_rank, W, 0);
  for (float& v : p.x) v *= 0.5f;  // stay where tanh is curved but not flat
  auto plan = d->new_plan();
  auto objective = [&]() {
    std::vector<float> out(static_cast<size_t>(p.T) * p.D);
    d->plan(*plan, Routing{p.topk.data(), p.probs.data(), p.T, p.K}, p.x.data(), p.D, placement);
    d->dispatch(*plan, p.x.data());
    test_util::run_experts_forward(*plan);
    d->combine(*plan, out.data());
    double j = 0;
    for (size_t i = 0; i < out.size(); ++i) j += static_cast<double>(out[i]) * p.dout[i];
    allreduce_sum(&j, 1, groups.world);
    return j;
  };
  objective();
  std::vector<float> dprobs(p.topk.size()), dx(p.x.size(), 0.0f);
  d->combine_backward(*plan, p.dout.data());
  test_util::run_experts_backward(*plan);
  d->dispatch_backward(*plan, dx.data(), dprobs.data());
  const float h = 1e-2f;
  auto check = [&](std::vector<float>& v, const std::vector<float>& grad, size_t i, const char* what) {
    // Ranks with fewer entries perturb nothing but still take part in every collective.
    const bool mine = i < v.size();
    const float keep = mine ? v[i] : 0.0f;
    if (mine) v[i] = keep + h;
    const double up = objective();
    if (mine) v[i] = keep - h;
    const double down = objective();
    if (mine) v[i] = keep;
    double analytic = mine ? grad[i] : 0.0;
    allreduce_sum(&analytic, 1, groups.world);
    const double numeric = (up - down) / (2.0 * h);
    EXPECT_NEAR(numeric, analytic, 2e-3 * (1.0 + std::fabs(analytic))) << what << " " << i;
  };
  for (size_t i : {0, 3, 7, 10, 21}) check(p.probs, dprobs, i, "probs");
  for (size_t i : {0, 5, 17, 40, 99}) check(p.x, dx, i, "x");
}

void PrintTo(const Variant& v, std::ostream* os) { *os << v.label; }
INSTANTIATE_TEST_SUITE_P(Registered, DispatcherFiniteDifferences, ::testing::ValuesIn(dispatch_variants()),
                         [](const ::testing::TestParamInfo<Variant>& info) { return info.param.label; });

// ---------------------------------------------------------------------------------------------
// Registry, auto and construction errors.

TEST(Registry, BuildsByNameAndRejectsUnknownNames) {
  ParallelSpec spec = test_util::expert_parallel_over_world();
  const ProcessGroups groups = ProcessGroups::build(spec);
  for (const std::string& name : dispatcher_names()) {
    if (name == "auto" || (name == "local" && world_size() > 1)) continue;
    DispatchSpec s;
    s.type = name;
    EXPECT_EQ(make_dispatcher(s, groups)->name(), name);
  }
  DispatchSpec bogus;
  bogus.type = "bogus";
  const std::string msg = test_util::error_of([&] { make_dispatcher(bogus, groups); });
  test_util::expect_contains(msg, {"moe.dispatch.type", "bogus"});
  for (const std::string& name : dispatcher_names()) test_util::expect_contains(msg, {name});
}

TEST(Registry, AutoPicksLocalForOneRankElseByNodes) {
  ParallelSpec spec = test_util::expert_parallel_over_world();
  const ProcessGroups groups = ProcessGroups::build(spec);
  DispatchSpec s;  // default: auto
  EXPECT_EQ(s.type, "auto");
  const DispatcherChoice choice = resolve_dispatcher(s, groups);
  EXPECT_FALSE(choice.reason.empty());
  if (world_size() == 1) {
    EXPECT_EQ(choice.name, "local");
  } else {
    EXPECT_EQ(choice.name, "shm");  // every ep group on this one host and node
  }
  EXPECT_EQ(make_dispatcher(s, groups)->name(), choice.name);
  if (world_size() % 2 == 0 && world_size() > 2) {  // ep group over 2 virtual nodes: not within one node
    spec.ranks_per_node = 2;
    const ProcessGroups split = ProcessGroups::build(spec);
    EXPECT_EQ(split.ep_num_nodes(), world_size() / 2);
    EXPECT_EQ(resolve_dispatcher(s, split).name, "flat");
  }
}

// auto across nodes: hierarchical (2dh, dedup) only with one ep rank per node, top_k >= 2 and a
// link of at most kAutoHierarchicalMaxGbps; flat otherwise, and always when the link is unknown.
TEST(Registry, AutoPicksHierarchicalOnlyOnSlowLinksWithOneRankPerNode) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 or more ranks (one virtual node each)";
  ParallelSpec spec = test_util::expert_parallel_over_world();
  spec.ranks_per_node = 1;
  const ProcessGroups nodes = ProcessGroups::build(spec);
  DispatchSpec s;  // auto
  LinkModelSpec slow;
  slow.inter_node_gbps = 0.2;
  const AutoInputs in = auto_inputs(s, 2, slow, nodes);
  EXPECT_TRUE(in.one_rank_per_node);
  EXPECT_EQ(in.inter_node_gbps, 0.2);
  EXPECT_EQ(in.link_source, "comm.link_model");
  const DispatcherChoice choice = resolve_dispatcher(s, nodes, in);
  EXPECT_EQ(choice.name, "hierarchical");
  test_util::expect_contains(choice.reason, {"one ep rank per node", "0.2 Gbit/s", "comm.link_model", "dedup"});
  auto d = make_dispatcher(s, nodes, in);
  auto* hier = dynamic_cast<HierarchicalDispatcher*>(d.get());
  ASSERT_NE(hier, nullptr) << d->name();
  EXPECT_TRUE(hier->dedup());
  EXPECT_STREQ(hier_algorithm_name(hier->algorithm()), "2dh");
  // The same layout, but: a fast link, an unknown link, top_k 1, a bf16 wire.
  AutoInputs fast = in;
  fast.inter_node_gbps = 1.0;
  EXPECT_EQ(resolve_dispatcher(s, nodes, fast).name, "flat");
  test_util::expect_contains(resolve_dispatcher(s, nodes, fast).reason, {"1 Gbit/s", "at most 0.45"});
  EXPECT_EQ(resolve_dispatcher(s, nodes, AutoInputs{2, true, 0.0, ""}).name, "flat");
  AutoInputs k1 = in;
  k1.top_k = 1;
  EXPECT_EQ(resolve_dispatcher(s, nodes, k1).name, "flat");
  EXPECT_EQ(auto_inputs(s, 1, slow, nodes).inter_node_gbps, 0.0);  // top_k 1: no link wanted
  DispatchSpec bf16 = s;
  bf16.wire_dtype = WireDtype::kBf16;
  EXPECT_EQ(resolve_dispatcher(bf16, nodes, in).name, "flat");
  DispatchSpec lsh = s;  // centroids travel with k = 1: nothing to deduplicate
  lsh.compression.type = "lsh";
  EXPECT_EQ(resolve_dispatcher(lsh, nodes, in).name, "flat");
  test_util::expect_contains(resolve_dispatcher(lsh, nodes, in).reason, {"moe.dispatch.compression"});
  EXPECT_EQ(auto_inputs(lsh, 2, slow, nodes).inter_node_gbps, 0.0);
  // Not auto: nothing measured, nothing changed.
  DispatchSpec flat = s;
  flat.type = "flat";
  EXPECT_FALSE(auto_inputs(flat, 2, slow, nodes).one_rank_per_node);
  EXPECT_EQ(resolve_dispatcher(flat, nodes, in).name, "flat");
  // Measured: the virtual nodes share memory, far faster than the threshold.
  const AutoInputs measured = auto_inputs(s, 2, LinkModelSpec{}, nodes);
  EXPECT_EQ(measured.link_source, "measured");
  EXPECT_GT(measured.inter_node_gbps, kAutoHierarchicalMaxGbps);
  EXPECT_EQ(resolve_dispatcher(s, nodes, measured).name, "flat");
  // Two ranks per node: never hierarchical, and no probe.
  if (world_size() % 2 == 0 && world_size() > 2) {
    spec.ranks_per_node = 2;
    const ProcessGroups pairs = ProcessGroups::build(spec);
    const AutoInputs two = auto_inputs(s, 2, slow, pairs);
    EXPECT_FALSE(two.one_rank_per_node);
    EXPECT_EQ(two.inter_node_gbps, 0.0);
    EXPECT_EQ(resolve_dispatcher(s, pairs, in).name, "flat");  // inputs of another layout: its own wins
    EXPECT_EQ(resolve_dispatcher(s, pairs, two).name, "flat");
  }
}

TEST(Registry, HierarchicalRefusesUnevenNodes) {
  if (world_size() != 3) GTEST_SKIP() << "needs 3 ranks (virtual nodes of 2 + 1)";
  ParallelSpec spec = test_util::expert_parallel_over_world();
  spec.ranks_per_node = 2;
  const ProcessGroups groups = ProcessGroups::build(spec);
  DispatchSpec s;
  s.type = "hierarchical";
  test_util::expect_contains(test_util::error_of([&] { make_dispatcher(s, groups); }),
                             {"moe.dispatch.type 'hierarchical'", "same G", "parallel.ranks_per_node"});
  s.hierarchical.algorithm = "ring";
  spec.ranks_per_node = 0;
  const ProcessGroups one_node = ProcessGroups::build(spec);
  test_util::expect_contains(test_util::error_of([&] { make_dispatcher(s, one_node); }),
                             {"moe.dispatch.algorithm", "ring", "2dh, leader"});
}

TEST(Registry, LocalNeedsEp1) {
  if (world_size() == 1) GTEST_SKIP() << "needs ep > 1";
  ParallelSpec spec = test_util::expert_parallel_over_world();
  const ProcessGroups groups = ProcessGroups::build(spec);
  DispatchSpec s;
  s.type = "local";
  test_util::expect_contains(test_util::error_of([&] { make_dispatcher(s, groups); }),
                             {"moe.dispatch.type 'local'", "parallel.ep"});
}

TEST(Registry, ExpertsNotDivisibleByEpIsCollectiveError) {
  if (world_size() == 1) GTEST_SKIP() << "every E divides over ep = 1";
  ParallelSpec spec = test_util::expert_parallel_over_world();
  const ProcessGroups groups = ProcessGroups::build(spec);
  test_util::expect_contains(test_util::error_of([&] { make_placement(world_size() + 1, groups); }),
                             {"moe.num_experts", "parallel.ep"});
  // A placement that does not match the group is refused by the dispatcher itself.
  DispatchSpec s;
  s.type = "flat";
  auto d = make_dispatcher(s, groups);
  auto plan = d->new_plan();
  const Placement wrong = Placement::contiguous(world_size() * 2, 1, 0);
  EXPECT_THROW(d->plan(*plan, Routing{nullptr, nullptr, 0, 1}, nullptr, 4, wrong), CollectiveError);
}

}  // namespace
}  // namespace moempi
