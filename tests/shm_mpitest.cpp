// MPI tests of the shared-memory window and the `shm` dispatcher, run at 1-4 ranks by ctest:
//  - ShmWindow: capacities grow by the headroom only when a rank needs more (never shrink), every
//    rank agrees, and stores into peers' segments are visible after fence();
//  - ShmVsLocal: plan / dispatch / combine / combine_backward / dispatch_backward give outputs,
//    dprobs, dx and expert-side x_RD / dy_RD rows bit-identical to the `local` reference on the same
//    global problem (every ep that divides W, with and without replicas, on real and virtual nodes);
//  - ShmStress: 200 steps of two interleaved layers with random per-rank delays in every phase and
//    changing sizes (ranks with zero rows, growth of T and D), checked every step;
//  - ShmErrors: an ep group spanning (virtual) nodes is a collective error on every rank.
// Every rank generates every rank's problem (a pure function of world rank, step and layer), so the
// reference needs no communication.
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
#include "parallel/placement.h"
#include "parallel/shm_dispatcher.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
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
// Problems, toy experts and the reference.

// One rank's micro-batch of one layer.
struct Problem {
  int T = 0, K = 1;
  std::vector<int32_t> topk;  // (T*K)
  std::vector<float> probs;   // (T*K)
  std::vector<float> x;       // (T, D)
  std::vector<float> dout;    // (T, D)
  std::vector<float> dx0;     // (T, D) what dx_TD holds before dispatch_backward adds to it
};

// pattern: balanced | zero_rank | hot_expert | dropped | all_dropped | empty
Problem make_problem(const std::string& pattern, int K, int T, int world_rank, uint64_t seed, int D) {
  Problem p;
  p.K = K;
  p.T = T;
  const int zero_rank = std::min(1, world_size() - 1);
  if (pattern == "empty" || (pattern == "zero_rank" && world_rank == zero_rank)) p.T = 0;
  Rng rng(seed, world_rank, 0, Rng::stream_of(pattern));
  const size_t TK = static_cast<size_t>(p.T) * K;
  p.topk.resize(TK);
  p.probs.resize(TK);
  for (int t = 0; t < p.T; ++t) {
    int32_t* ids = &p.topk[static_cast<size_t>(t) * K];
    for (int k = 0; k < K; ++k) {
      int e;
      do {
        e = (k == 0 && pattern == "hot_expert" && rng.uniform() < 0.8f) ? 7
                                                                         : static_cast<int>(rng.below(kExperts));
      } while (std::find(ids, ids + k, e) != ids + k);
      ids[k] = e;
    }
  }
  for (size_t s = 0; s < TK; ++s) {
    if (pattern == "all_dropped" || (pattern == "dropped" && rng.uniform() < 0.3f)) p.topk[s] = -1;
    p.probs[s] = 0.05f + rng.uniform();
  }
  const size_t TD = static_cast<size_t>(p.T) * D;
  p.x.resize(TD), p.dout.resize(TD), p.dx0.resize(TD);
  payload_fill(p.x.data(), TD, seed + 1, world_rank, 0);
  payload_fill(p.dout.data(), TD, seed + 2, world_rank, 1);
  payload_fill(p.dx0.data(), TD, seed + 3, world_rank, 2);
  return p;
}

// Toy experts on the plan's rows, grouped by local expert: y = a_e x + b_e; dx = a_e dy - x / 64.
void experts_forward(DispatchPlan& plan) {
  const int D = plan.width();
  int64_t row = 0;
  for (size_t l = 0; l < plan.local_experts().size(); ++l) {
    const int e = plan.local_experts()[l];
    for (int64_t i = 0; i < plan.rows_per_local_expert()[l]; ++i, ++row) {
      const float* x = plan.x_RD() + row * D;
      float* y = plan.y_RD() + row * D;
      for (int d = 0; d < D; ++d) y[d] = x[d] * (1.0f + 0.0625f * e) + 0.03125f * e;
    }
  }
}

void experts_backward(DispatchPlan& plan) {
  const int D = plan.width();
  int64_t row = 0;
  for (size_t l = 0; l < plan.local_experts().size(); ++l) {
    const int e = plan.local_experts()[l];
    for (int64_t i = 0; i < plan.rows_per_local_expert()[l]; ++i, ++row) {
      const float* x = plan.x_RD() + row * D;
      const float* dy = plan.dy_RD() + row * D;
      float* dx = plan.dx_RD() + row * D;
      for (int d = 0; d < D; ++d) dx[d] = dy[d] * (1.0f + 0.0625f * e) - x[d] * 0.015625f;
    }
  }
}

// What one rank observes of one layer: expert-side rows and token-side results.
struct Result {
  std::vector<int> local_experts;
  std::vector<int64_t> rows_per_local_expert;
  std::vector<float> x_RD, dy_RD;       // (R, D)
  std::vector<float> out, dprobs, dx;   // (T, D), (T*K), (T, D)

  // Rows of global expert e, when this is a reference result holding every expert.
  std::pair<int64_t, int64_t> rows_of(int e) const {
    int64_t first = 0;
    for (size_t l = 0; l < local_experts.size(); ++l) {
      if (local_experts[l] == e) return {first, rows_per_local_expert[l]};
      first += rows_per_local_expert[l];
    }
    return {0, 0};
  }
};

// The forward half and the backward half of one layer through a dispatcher, as the MoE layer runs
// them (other layers may run in between).
void run_forward(Dispatcher& d, DispatchPlan& plan, const Problem& p, int D, const Placement& placement,
                 Result& r) {
  d.plan(plan, Routing{p.topk.data(), p.probs.data(), p.T, p.K}, p.x.data(), D, placement);
  d.dispatch(plan, p.x.data());
  experts_forward(plan);
  r.out.assign(static_cast<size_t>(p.T) * D, -1.0f);
  d.combine(plan, r.out.data());
}

void run_backward(Dispatcher& d, DispatchPlan& plan, const Problem& p, Result& r) {
  const int D = plan.width();
  r.dprobs.assign(static_cast<size_t>(p.T) * p.K, -1.0f);
  d.combine_backward(plan, p.dout.data(), r.dprobs.data());
  experts_backward(plan);
  r.dx = p.dx0;
  d.dispatch_backward(plan, r.dx.data());
  r.local_experts = plan.local_experts();
  r.rows_per_local_expert = plan.rows_per_local_expert();
  const size_t n = static_cast<size_t>(plan.rows()) * D;
  r.x_RD.assign(plan.x_RD(), plan.x_RD() + n);
  r.dy_RD.assign(plan.dy_RD(), plan.dy_RD() + n);
}

// The reference: `local` (all experts on one rank, no communication) on one rank's problem.
Result reference(const Problem& p, int D) {
  // TODO(rebase): LocalDispatcher of contract v2.
  Result r;
  const int K = p.K;
  const int64_t TK = static_cast<int64_t>(p.T) * K;
  std::vector<int64_t> counts;
  count_slots(p.topk.data(), TK, kExperts, counts);
  std::vector<int64_t> next(kExperts, 0);
  for (int e = 1; e < kExperts; ++e) next[e] = next[e - 1] + counts[e - 1];
  const int64_t R = next[kExperts - 1] + counts[kExperts - 1];
  std::vector<float> x(R * D), y(R * D), dy(R * D);
  std::vector<const float*> rows(TK, nullptr);
  std::vector<int64_t> row_of(TK, -1);
  for (int64_t s = 0; s < TK; ++s)
    if (p.topk[s] >= 0) row_of[s] = next[p.topk[s]]++;
  for (int64_t s = 0; s < TK; ++s) {
    if (row_of[s] < 0) continue;
    const int e = p.topk[s];
    std::memcpy(&x[row_of[s] * D], &p.x[(s / K) * D], sizeof(float) * D);
    for (int d = 0; d < D; ++d) y[row_of[s] * D + d] = x[row_of[s] * D + d] * (1.0f + 0.0625f * e) + 0.03125f * e;
    rows[s] = &y[row_of[s] * D];
  }
  r.out.resize(static_cast<size_t>(p.T) * D);
  weighted_sum_rows(r.out.data(), rows.data(), p.probs.data(), p.T, K, D);
  r.dprobs.resize(TK);
  for (int64_t s = 0; s < TK; ++s) {
    r.dprobs[s] = rows[s] ? dot_row(&p.dout[(s / K) * D], rows[s], D) : 0.0f;
    if (rows[s]) scale_row(&dy[row_of[s] * D], &p.dout[(s / K) * D], p.probs[s], D);
  }
  for (int64_t s = 0; s < TK; ++s) {
    if (row_of[s] < 0) continue;
    const int e = p.topk[s];
    for (int d = 0; d < D; ++d)
      y[row_of[s] * D + d] = dy[row_of[s] * D + d] * (1.0f + 0.0625f * e) - x[row_of[s] * D + d] * 0.015625f;
  }
  r.dx = p.dx0;
  add_slot_rows(r.dx.data(), rows.data(), p.T, K, D);
  for (int e = 0; e < kExperts; ++e) r.local_experts.push_back(e);
  r.rows_per_local_expert = counts;
  r.x_RD = std::move(x);
  r.dy_RD = std::move(dy);
  return r;
}

// Expected expert-side rows on ep rank m: by local expert, then source rank, then slot order.
std::vector<float> expected_rows(const std::vector<Result>& refs, const Placement& placement, int m,
                                 bool dy, int D, std::vector<int64_t>* rows_per_local_expert) {
  std::vector<float> out;
  rows_per_local_expert->clear();
  for (int e : placement.experts_on(m)) {
    int64_t n = 0;
    for (int q = 0; q < placement.group_size(); ++q) {
      if (placement.destination(e, q) != m) continue;
      const auto [first, count] = refs[q].rows_of(e);
      const std::vector<float>& src = dy ? refs[q].dy_RD : refs[q].x_RD;
      out.insert(out.end(), src.begin() + first * D, src.begin() + (first + count) * D);
      n += count;
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

// #wrong of one rank's result against the references of its ep group (and a description).
int64_t check_against_reference(const Result& got, const std::vector<Result>& refs, const Placement& placement,
                                int D, std::string* what) {
  const int m = placement.rank();
  std::vector<int64_t> want_rows;
  const std::vector<float> want_x = expected_rows(refs, placement, m, false, D, &want_rows);
  const std::vector<float> want_dy = expected_rows(refs, placement, m, true, D, &want_rows);
  const int64_t wrong[6] = {differing(got.out, refs[m].out), differing(got.dprobs, refs[m].dprobs),
                            differing(got.dx, refs[m].dx), differing(got.x_RD, want_x),
                            differing(got.dy_RD, want_dy),
                            got.rows_per_local_expert == want_rows && got.local_experts == placement.local_experts()
                                ? 0
                                : 1};
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
// Contract: equal to `local`, bit for bit.

struct Case {
  int ep;
  std::string pattern;
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

TEST_P(ShmVsLocal, EqualsLocalReferenceBitForBit) {
  const Case c = GetParam();
  if (world_size() % c.ep != 0) GTEST_SKIP() << "ep " << c.ep << " does not divide W " << world_size();
  ParallelSpec spec;
  spec.ep = c.ep;
  spec.ranks_per_node = c.virtual_nodes ? c.ep : 0;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const int m = groups.ep.rank();
  const Placement placement = c.replicas ? replicated_placement(c.ep, m) : Placement::contiguous(kExperts, c.ep, m);
  ShmDispatcher shm(groups, 1.25f);
  EXPECT_EQ(shm.name(), "shm");
  auto plan = shm.new_plan();

  // Three rounds on one plan: growth of T and D, then a shrink (the window is reused and must not
  // leak rows of an earlier round).
  const int widths[3] = {5, 16, 3};
  int64_t want_rows = 0, want_bytes = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const int D = widths[round];
    std::vector<Problem> problems;
    std::vector<Result> refs;
    for (int q = 0; q < c.ep; ++q) {
      const int wr = groups.ep_group() * c.ep + q;
      problems.push_back(make_problem(c.pattern, c.K, 29 + 7 * wr + 5 * round, wr, 1000 + round, D));
      refs.push_back(reference(problems.back(), D));
    }
    Result got;
    run_forward(shm, *plan, problems[m], D, placement, got);
    run_backward(shm, *plan, problems[m], got);
    std::string what;
    EXPECT_EQ(check_against_reference(got, refs, placement, D, &what), 0) << what;
    int64_t out = 0, in = 0;
    for (int q = 0; q < c.ep; ++q)
      for (int32_t e : problems[q].topk) {
        if (e < 0) continue;
        const int dst = placement.destination(e, q);
        out += q == m && dst != m;
        in += q != m && dst == m;
      }
    want_rows += 2 * (out + in);
    want_bytes += 2 * (out + in) * D * static_cast<int64_t>(sizeof(float));
  }
  // Traffic: each direction moves the rows of slots routed to another rank (dispatch and
  // combine_backward store them, combine and dispatch_backward load the mirror ones), all intra-node.
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

TEST(ShmStress, TwoHundredStepsRandomDelaysChangingSizes) {
  const int W = world_size();
  ParallelSpec spec;
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

  constexpr int kLayers = 2, kSteps = 200, K = 2;
  std::unique_ptr<DispatchPlan> plans[kLayers] = {shm.new_plan(), shm.new_plan()};
  int64_t wrong_total = 0;
  int first_bad_step = -1;
  std::string first_bad;
  for (int step = 0; step < kSteps; ++step) {
    const int D = 4 + 4 * (step / 50);  // grows every 50 steps
    const Placement placement =
        step % 3 == 1 ? replicated_placement(W, m) : Placement::contiguous(kExperts, W, m);
    std::vector<Problem> problems[kLayers];
    std::vector<Result> refs[kLayers];
    Result got[kLayers];
    for (int layer = 0; layer < kLayers; ++layer)
      for (int q = 0; q < W; ++q) {
        // Same draw on every rank: T of rank q at (step, layer); zero rows often, a spike sometimes.
        Rng size_rng(step, q, layer, 5);
        const float u = size_rng.uniform();
        const int T = u < 0.2f ? 0 : (u > 0.97f ? 150 + static_cast<int>(size_rng.below(100))
                                                : static_cast<int>(size_rng.below(40)));
        problems[layer].push_back(make_problem(step % 4 == 2 ? "dropped" : "balanced", K, T, q,
                                               5000 + 10 * step + layer, D));
        refs[layer].push_back(reference(problems[layer].back(), D));
      }
    for (int layer = 0; layer < kLayers; ++layer)
      run_forward(shm, *plans[layer], problems[layer][m], D, placement, got[layer]);
    for (int layer = kLayers - 1; layer >= 0; --layer)
      run_backward(shm, *plans[layer], problems[layer][m], got[layer]);
    for (int layer = 0; layer < kLayers; ++layer) {
      std::string what;
      const int64_t wrong = check_against_reference(got[layer], refs[layer], placement, D, &what);
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
