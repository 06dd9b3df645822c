// MPI tests of the shared-memory window and the `shm` dispatcher, run at 1-4 ranks by ctest:
//  - ShmWindow: capacities grow by the headroom only when a rank needs more (never shrink), every
//    rank agrees, and stores into peers' segments are visible after fence();
//  - ShmVsLocal: plan / dispatch / combine / combine_backward / dispatch_backward give outputs,
//    dprobs, dx and expert-side x_RD / dy_RD rows bit-identical to the `local` reference on the same
//    global problem (every ep that divides W, with and without replicas, on real and virtual nodes);
//  - ShmStress: 200 steps of two interleaved layers with random per-rank delays in every phase and
//    changing sizes (ranks with zero rows, growth of T and D), checked every step;
//  - ShmErrors: an ep group spanning (virtual) nodes is a collective error on every rank.
// Every rank builds every rank's problem (tests/dispatch_problem.h: a pure function of world rank
// and round), so the reference needs no communication.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "comm/collectives.h"
#include "comm/payload.h"
#include "comm/process_groups.h"
#include "comm/shm_window.h"
#include "parallel/dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "parallel/placement.h"
#include "parallel/shm_dispatcher.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "tests/dispatch_problem.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

constexpr int kExperts = 12;  // divisible by 1, 2, 3, 4

int world_size() {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// ---------------------------------------------------------------------------------------------
// The window and allgather_i64.

TEST(Collectives, AllgatherI64CarriesEveryRanksBlock) {
  const Communicator world = Communicator::world();
  const int n = world.size(), me = world.rank(), per = 3;
  std::vector<int64_t> send(per), recv(n * per, -1);
  for (int j = 0; j < per; ++j) send[j] = (int64_t{me} << 40) + j;
  allgather_i64(send.data(), recv.data(), per, world);
  for (int p = 0; p < n; ++p)
    for (int j = 0; j < per; ++j) EXPECT_EQ(recv[p * per + j], (int64_t{p} << 40) + j);
}

TEST(ShmWindow, GrowsWithHeadroomOnlyWhenARankNeedsMoreAndNeverShrinks) {
  const Communicator world = Communicator::world();
  const int n = world.size();
  ShmWindow w(world, 1.25);
  EXPECT_EQ(w.size(), n);
  std::vector<int64_t> need(n);
  for (int r = 0; r < n; ++r) need[r] = 1000 * (r + 1);
  EXPECT_TRUE(w.ensure(need));
  for (int r = 0; r < n; ++r) {
    EXPECT_EQ(w.capacity(r), (1250 * (r + 1) + 63) / 64 * 64) << "rank " << r;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(w.segment(r)) % 64, 0u) << "rank " << r;
  }
  const std::vector<int64_t> grown = [&] {
    std::vector<int64_t> c(n);
    for (int r = 0; r < n; ++r) c[r] = w.capacity(r);
    return c;
  }();
  // Within capacity (including headroom) and smaller: nothing happens.
  for (int r = 0; r < n; ++r) need[r] = grown[r];
  EXPECT_FALSE(w.ensure(need));
  std::fill(need.begin(), need.end(), 0);
  EXPECT_FALSE(w.ensure(need));
  EXPECT_EQ(w.reallocations(), 1);
  // The last rank needs more: only its segment grows.
  need[n - 1] = grown[n - 1] + 1;
  EXPECT_TRUE(w.ensure(need));
  for (int r = 0; r < n; ++r)
    EXPECT_EQ(w.capacity(r), r == n - 1 ? (static_cast<int64_t>((grown[r] + 1) * 1.25 + 0.999) + 63) / 64 * 64
                                        : grown[r]);
  EXPECT_EQ(w.reallocations(), 2);
}

TEST(ShmWindow, StoresIntoPeersAreVisibleAfterFenceAcrossReallocations) {
  const Communicator world = Communicator::world();
  const int n = world.size(), me = world.rank();
  ShmWindow w(world);
  for (int round = 0; round < 3; ++round) {
    const int64_t chunk = 100 + 300 * round;  // floats each rank stores into each segment
    std::vector<int64_t> need(n, chunk * n * static_cast<int64_t>(sizeof(float)));
    w.ensure(need);
    for (int r = 0; r < n; ++r)
      payload_fill(reinterpret_cast<float*>(w.segment(r)) + me * chunk, chunk, 40 + round, me, r);
    w.fence();
    int64_t wrong = 0;
    for (int src = 0; src < n; ++src)
      wrong += payload_check(reinterpret_cast<float*>(w.mine()) + src * chunk, chunk, 40 + round, src, me);
    EXPECT_EQ(wrong, 0) << "round " << round;
    w.fence();  // nobody stores into a segment again before everyone has checked it
  }
}

// ---------------------------------------------------------------------------------------------
// Running a layer through a dispatcher, and what to compare.

using test_util::DispatchProblem;
using test_util::make_dispatch_problem;

// What one rank observes of one layer: expert-side rows and token-side results.
struct Result {
  std::vector<int> local_experts;
  std::vector<int64_t> rows_per_local_expert;
  std::vector<float> x_RD, dy_RD;      // (R, D), as the plan holds them after the backward half
  std::vector<float> out, dprobs, dx;  // (T, D), (T*K), (T, D); dx starts at x
};

void run_experts_forward(DispatchPlan& plan) {
  int64_t at = 0;
  const int D = plan.width();
  for (size_t le = 0; le < plan.local_experts().size(); ++le) {
    const int64_t n = plan.rows_per_local_expert()[le];
    test_util::expert_rows_forward(plan.y_RD() + at * D, plan.x_RD() + at * D, n, D, plan.local_experts()[le]);
    at += n;
  }
}

void run_experts_backward(DispatchPlan& plan) {
  int64_t at = 0;
  const int D = plan.width();
  for (size_t le = 0; le < plan.local_experts().size(); ++le) {
    const int64_t n = plan.rows_per_local_expert()[le];
    test_util::expert_rows_backward(plan.dx_RD() + at * D, plan.dy_RD() + at * D, plan.x_RD() + at * D, n, D,
                                    plan.local_experts()[le]);
    at += n;
  }
}

// The forward half and the backward half of one layer, as the MoE layer runs them (other layers'
// halves may run in between).
void run_forward(Dispatcher& d, DispatchPlan& plan, const DispatchProblem& p, const Placement& placement,
                 Result& r) {
  d.plan(plan, Routing{p.topk.data(), p.probs.data(), p.T, p.K}, p.x.data(), p.D, placement);
  d.dispatch(plan, p.x.data());
  run_experts_forward(plan);
  r.out.assign(static_cast<size_t>(p.T) * p.D, -7.0f);
  d.combine(plan, r.out.data());
}

void run_backward(Dispatcher& d, DispatchPlan& plan, const DispatchProblem& p, Result& r) {
  r.dprobs.assign(p.topk.size(), -7.0f);
  d.combine_backward(plan, p.dout.data(), r.dprobs.data());
  run_experts_backward(plan);
  r.dx = p.x;
  d.dispatch_backward(plan, r.dx.data());
  r.local_experts = plan.local_experts();
  r.rows_per_local_expert = plan.rows_per_local_expert();
  const size_t n = static_cast<size_t>(plan.rows()) * p.D;
  r.x_RD.assign(plan.x_RD(), plan.x_RD() + n);
  r.dy_RD.assign(plan.dy_RD(), plan.dy_RD() + n);
}

// The reference: `local` (every expert on this rank, no communication) on one rank's problem.
Result local_reference(const DispatchProblem& p) {
  LocalDispatcher local;
  auto plan = local.new_plan();
  Result r;
  run_forward(local, *plan, p, Placement::contiguous(kExperts, 1, 0), r);
  run_backward(local, *plan, p, r);
  return r;
}

// Expected expert-side rows on ep rank m: by local expert (ascending id), then source ep rank, then
// slot; x rows (x_t) or dy rows (p_tk · dout_t, the product scale_row computes).
std::vector<float> expected_rows(const std::vector<DispatchProblem>& group, const Placement& pl, int m, bool dy,
                                 std::vector<int64_t>* rows_per_local_expert) {
  std::vector<float> out;
  rows_per_local_expert->clear();
  for (int e : pl.experts_on(m)) {
    int64_t n = 0;
    for (int q = 0; q < static_cast<int>(group.size()); ++q) {
      const DispatchProblem& p = group[q];
      if (pl.destination(e, q) != m) continue;
      for (size_t s = 0; s < p.topk.size(); ++s) {
        if (p.topk[s] != e) continue;
        const float* src = (dy ? p.dout.data() : p.x.data()) + (s / p.K) * p.D;
        for (int d = 0; d < p.D; ++d) out.push_back(dy ? p.probs[s] * src[d] : src[d]);
        ++n;
      }
    }
    rows_per_local_expert->push_back(n);
  }
  return out;
}

// Elements where a and b differ bitwise (a size mismatch counts as every element wrong).
int64_t differing(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return static_cast<int64_t>(std::max(a.size(), b.size())) + 1;
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

// #wrong of ep rank m's result (all of out, dprobs, dx, x_RD, dy_RD and the row layout) against
// `local` on its own problem and the rows its group sends it; `what` says where.
int64_t check_against_local(const Result& got, const std::vector<DispatchProblem>& group, const Placement& placement,
                            std::string* what) {
  const int m = placement.rank();
  const Result want = local_reference(group[m]);
  std::vector<int64_t> want_rows;
  const std::vector<float> want_x = expected_rows(group, placement, m, false, &want_rows);
  const std::vector<float> want_dy = expected_rows(group, placement, m, true, &want_rows);
  const int64_t wrong[6] = {
      differing(got.out, want.out), differing(got.dprobs, want.dprobs), differing(got.dx, want.dx),
      differing(got.x_RD, want_x),  differing(got.dy_RD, want_dy),
      got.rows_per_local_expert == want_rows && got.local_experts == placement.local_experts() ? 0 : 1};
  *what = fmt::format("#wrong out {} dprobs {} dx {} x_RD {} dy_RD {} layout {}", wrong[0], wrong[1], wrong[2],
                      wrong[3], wrong[4], wrong[5]);
  int64_t total = 0;
  for (int64_t w : wrong) total += w;
  return total;
}

// Extra copies of every third expert on another rank (none when P == 1).
Placement replicated_placement(int P, int rank) {
  std::vector<std::vector<int>> replicas(kExperts);
  if (P > 1)
    for (int e = 0; e < kExperts; e += 3) {
      const int owner = e / (kExperts / P);
      replicas[e] = {(owner + 1 + e % (P - 1)) % P};
    }
  return Placement::with_replicas(kExperts, P, rank, replicas);
}

// ---------------------------------------------------------------------------------------------
// Contract: equal to `local`, bit for bit, on one plan re-planned with other widths.

struct Case {
  int ep;
  std::string pattern;  // balanced | zero_rank | hot_expert | dropped | all_dropped | empty
  int K;
  bool replicas = false;
  bool virtual_nodes = false;  // parallel.ranks_per_node = ep: each ep group is its own node
};

std::string case_name(const Case& c) {
  return fmt::format("ep{}_{}_k{}{}{}", c.ep, c.pattern, c.K, c.replicas ? "_replicas" : "",
                     c.virtual_nodes ? "_vnodes" : "");
}

void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

class ShmVsLocal : public ::testing::TestWithParam<Case> {};

TEST_P(ShmVsLocal, EqualsLocalBitForBit) {
  const Case c = GetParam();
  const int W = world_size();
  if (W % c.ep != 0) GTEST_SKIP() << "ep " << c.ep << " does not divide W " << W;
  ParallelSpec spec;
  spec.strategy = c.ep > 1 ? "ep" : "dp";
  spec.ep = c.ep;
  spec.ranks_per_node = c.virtual_nodes ? c.ep : 0;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const int m = groups.ep.rank(), group0 = groups.ep_group() * c.ep;
  const Placement placement = c.replicas ? replicated_placement(c.ep, m) : Placement::contiguous(kExperts, c.ep, m);
  ShmDispatcher shm(groups, 1.25f);
  EXPECT_EQ(shm.name(), "shm");
  auto plan = shm.new_plan();

  // Three rounds on one plan: growth of T and D, then a smaller D (the window is reused and must
  // not leak rows of an earlier round).
  const int widths[3] = {5, 16, 3};
  int64_t want_rows = 0, want_bytes = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const int D = widths[round];
    std::vector<DispatchProblem> group;
    for (int q = 0; q < c.ep; ++q)
      group.push_back(make_dispatch_problem(c.pattern, kExperts, c.K, D, group0 + q, W, round));
    Result got;
    run_forward(shm, *plan, group[m], placement, got);
    run_backward(shm, *plan, group[m], got);
    std::string what;
    EXPECT_EQ(check_against_local(got, group, placement, &what), 0) << what;
    // Each direction moves the rows of slots routed to another rank: dispatch and combine_backward
    // store this rank's, combine and dispatch_backward have peers load the ones it received.
    int64_t out = 0, in = 0;
    for (int q = 0; q < c.ep; ++q)
      for (int32_t e : group[q].topk) {
        if (e < 0) continue;
        const int dst = placement.destination(e, q);
        out += q == m && dst != m;
        in += q != m && dst == m;
      }
    want_rows += 2 * (out + in);
    want_bytes += 2 * (out + in) * D * static_cast<int64_t>(sizeof(float));
  }
  const DispatchStats& st = shm.stats();
  EXPECT_EQ(st.rows, want_rows);
  EXPECT_EQ(st.bytes_intra, want_bytes);
  EXPECT_EQ(st.bytes_inter, 0);
  EXPECT_EQ(st.messages_inter, 0);
  EXPECT_GT(st.seconds, 0.0);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int ep : {1, 2, 3, 4}) {
    for (const char* pattern : {"balanced", "zero_rank", "hot_expert", "dropped", "all_dropped", "empty"})
      cases.push_back({ep, pattern, 2});
    cases.push_back({ep, "balanced", 1});
    cases.push_back({ep, "hot_expert", 1});
    cases.push_back({ep, "balanced", 2, true});
    cases.push_back({ep, "dropped", 2, true});
    cases.push_back({ep, "hot_expert", 2, true});
    cases.push_back({ep, "balanced", 2, false, true});
    cases.push_back({ep, "dropped", 2, true, true});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Layouts, ShmVsLocal, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// ---------------------------------------------------------------------------------------------
// Stress: two layers per step (forward 0, 1, backward 1, 0) on their own plans, random delays in
// every phase on every rank, sizes changing every step, every step checked.

// Rank q's problem of (step, layer): the shared generator's problem cut to a random T (zero on
// about a fifth of the draws); its largest T grows with the step.
DispatchProblem stress_problem(int step, int layer, int q, int W, int D) {
  DispatchProblem p = make_dispatch_problem(step % 4 == 2 ? "dropped" : "balanced", kExperts, 2, D, q, W,
                                            2 * step + layer);
  Rng rng(step, q, layer, 5);
  const int T = rng.uniform() < 0.2f ? 0 : static_cast<int>(rng.below(p.T + 1));
  p.T = T;
  p.topk.resize(static_cast<size_t>(T) * p.K);
  p.probs.resize(p.topk.size());
  p.x.resize(static_cast<size_t>(T) * D);
  p.dout.resize(p.x.size());
  return p;
}

TEST(ShmStress, TwoHundredStepsRandomDelaysChangingSizes) {
  const int W = world_size();
  ParallelSpec spec;
  spec.strategy = W > 1 ? "ep" : "dp";
  spec.ep = W;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const int m = groups.ep.rank();
  ShmDispatcher shm(groups, 1.25f);
  Rng delay_rng(77, groups.world_rank, 0, 0);
  ShmDispatcher::set_test_delay([&delay_rng] {
    return delay_rng.uniform() < 0.3f ? 300e-6 * delay_rng.uniform() : 0.0;
  });
  struct Reset {
    ~Reset() { ShmDispatcher::set_test_delay({}); }
  } reset;

  constexpr int kLayers = 2, kSteps = 200;
  std::unique_ptr<DispatchPlan> plans[kLayers] = {shm.new_plan(), shm.new_plan()};
  int64_t wrong_total = 0;
  int first_bad_step = -1;
  std::string first_bad;
  for (int step = 0; step < kSteps; ++step) {
    const int D = 4 + 4 * (step / 50);  // grows every 50 steps
    const Placement placement = step % 3 == 1 ? replicated_placement(W, m) : Placement::contiguous(kExperts, W, m);
    std::vector<DispatchProblem> group[kLayers];
    Result got[kLayers];
    for (int layer = 0; layer < kLayers; ++layer)
      for (int q = 0; q < W; ++q) group[layer].push_back(stress_problem(step, layer, q, W, D));
    for (int layer = 0; layer < kLayers; ++layer) run_forward(shm, *plans[layer], group[layer][m], placement, got[layer]);
    for (int layer = kLayers - 1; layer >= 0; --layer) run_backward(shm, *plans[layer], group[layer][m], got[layer]);
    for (int layer = 0; layer < kLayers; ++layer) {
      std::string what;
      const int64_t wrong = check_against_local(got[layer], group[layer], placement, &what);
      wrong_total += wrong;
      if (wrong && first_bad_step < 0) {
        first_bad_step = step;
        first_bad = fmt::format("layer {}: {}", layer, what);
      }
    }
  }
  EXPECT_EQ(wrong_total, 0) << "first wrong step " << first_bad_step << ", " << first_bad;
}

// ---------------------------------------------------------------------------------------------
// Errors.

TEST(ShmErrors, EpGroupSpanningVirtualNodesIsACollectiveError) {
  const int W = world_size();
  if (W < 2) GTEST_SKIP() << "needs two ranks for two nodes";
  ParallelSpec spec;
  spec.ep = W;
  spec.ranks_per_node = 1;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const std::string msg = test_util::error_of([&] { ShmDispatcher shm(groups, 1.25f); });
  test_util::expect_contains(msg, {"moe.dispatch.type shm", fmt::format("spans {} nodes", W),
                                   fmt::format("parallel.ep = {}", W), "parallel.ranks_per_node = 1", "use flat or auto"});
}

TEST(ShmErrors, OneSpanningGroupFailsEveryRank) {
  // W = 4, ep = 2, nodes of 3 ranks: group {0,1} lies in node 0, group {2,3} spans nodes 0 and 1.
  if (world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  ParallelSpec spec;
  spec.ep = 2;
  spec.ranks_per_node = 3;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const std::string msg = test_util::error_of([&] { ShmDispatcher shm(groups, 1.25f); });
  test_util::expect_contains(msg, {"spans 2 nodes"});
}

TEST(ShmErrors, EpWithinEachVirtualNodeIsFine) {
  ParallelSpec spec;
  spec.ep = 1;
  spec.ranks_per_node = 1;
  const ProcessGroups groups = ProcessGroups::build(spec);
  EXPECT_NO_THROW(ShmDispatcher shm(groups, 1.25f));
}

}  // namespace
}  // namespace moempi
