// MPI tests of the shared-memory window and the `shm` dispatcher, run at 1-4 ranks by ctest:
//  - ShmWindow: capacities grow by the headroom only when a rank needs more (never shrink), every
//    rank agrees, and stores into peers' segments are visible after fence();
//  - (the contract against `local` is tests/dispatcher_mpitest.cpp, which covers every registered
//    dispatcher, shm included);
//  - ShmStress: 200 steps of two interleaved layers with random per-rank delays in every phase and
//    changing sizes (ranks with zero rows, growth of T and D), checked every step;
//  - ShmErrors: an ep group spanning (virtual) nodes, or ranks whose placements differ, is a
//    collective error on every rank.
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

using test_util::world_size;

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
using test_util::Result;

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
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
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
    for (int layer = 0; layer < kLayers; ++layer) test_util::run_forward(shm, *plans[layer], group[layer][m], placement, got[layer]);
    for (int layer = kLayers - 1; layer >= 0; --layer) test_util::run_backward(shm, *plans[layer], group[layer][m], got[layer]);
    for (int layer = 0; layer < kLayers; ++layer) {
      std::string what;
      const int64_t wrong = test_util::check_against_local(got[layer], group[layer], placement, &what);
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

// Ranks whose placements disagree would store rows past each other's segments: plan() refuses on
// every rank, naming the placements, and the same dispatcher plans again once they agree.
TEST(ShmErrors, DisagreeingPlacementsAreACollectiveErrorOnEveryRank) {
  const int W = world_size();
  if (W < 2) GTEST_SKIP() << "needs two ranks to disagree";
  const ProcessGroups groups = ProcessGroups::build(test_util::expert_parallel_over_world());
  const int m = groups.ep.rank();
  ShmDispatcher shm(groups, 1.25f);
  auto plan = shm.new_plan();
  const DispatchProblem p = stress_problem(0, 0, m, W, 8);
  const Placement wrong = m == W - 1 ? replicated_placement(W, m) : Placement::contiguous(kExperts, W, m);
  const std::string msg = test_util::error_of(
      [&] { shm.plan(*plan, Routing{p.topk.data(), p.probs.data(), p.T, p.K}, p.x.data(), p.D, wrong); });
  test_util::expect_contains(msg, {fmt::format("ep ranks 0 and {} place this layer's experts differently", W - 1)});
  const Placement right = Placement::contiguous(kExperts, W, m);
  Result got;
  test_util::run_forward(shm, *plan, p, right, got);
  test_util::run_backward(shm, *plan, p, got);
  std::vector<DispatchProblem> all;
  for (int q = 0; q < W; ++q) all.push_back(stress_problem(0, 0, q, W, 8));
  std::string what;
  EXPECT_EQ(test_util::check_against_local(got, all, right, &what), 0) << what;
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
