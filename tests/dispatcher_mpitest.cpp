// MPI contract tests of the flat dispatcher: for every ep dividing W (E = 12), its plan, to_experts
// (per token and per slot), from_experts and round trip equal the `local` reference on the same
// global problem, byte for byte; plus the dispatcher registry's errors. Run at 1-4 ranks by ctest.
// Every rank generates every rank's inputs (a pure function of world rank), so the reference
// needs no communication.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "comm/payload.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/flat_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi {
namespace {

constexpr int kExperts = 12;  // divisible by 1, 2, 3, 4
constexpr int kHotExpert = 7;

int world_size() {
  int w = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

struct Case {
  int ep;
  std::string pattern;  // balanced | zero_rank | hot_expert | dropped | all_dropped | empty
  int K;
  FlatExchange exchange = FlatExchange::kTyped;
};

std::string case_name(const Case& c) {
  return fmt::format("ep{}_{}_k{}_{}", c.ep, c.pattern, c.K,
                     c.exchange == FlatExchange::kTyped ? "typed" : "packed");
}

void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

// One rank's micro-batch: T tokens, K slots each.
struct RankProblem {
  int T = 0;
  std::vector<int32_t> topk;  // (T*K)
  std::vector<float> x;       // (T, D)   dispatch input
  std::vector<float> dy;      // (T*K, D) combine-backward input (per slot)
};

RankProblem make_problem(const Case& c, int world_rank, int round, int D) {
  RankProblem p;
  const int zero_rank = std::min(1, world_size() - 1);
  p.T = 29 + 7 * world_rank + 5 * round;
  if (c.pattern == "empty" || (c.pattern == "zero_rank" && world_rank == zero_rank)) p.T = 0;
  Rng rng(1000 + round, world_rank, 0, Rng::stream_of(c.pattern));
  p.topk.resize(static_cast<size_t>(p.T) * c.K);
  for (int t = 0; t < p.T; ++t) {
    int32_t* ids = &p.topk[static_cast<size_t>(t) * c.K];
    for (int k = 0; k < c.K; ++k) {
      int e;
      bool fresh;
      do {
        e = (k == 0 && c.pattern == "hot_expert" && rng.uniform() < 0.8f)
                ? kHotExpert
                : static_cast<int>(rng.below(kExperts));
        fresh = std::find(ids, ids + k, e) == ids + k;
      } while (!fresh);
      ids[k] = e;
    }
  }
  for (int32_t& e : p.topk) {
    if (c.pattern == "all_dropped") e = -1;
    if (c.pattern == "dropped" && rng.uniform() < 0.3f) e = -1;
  }
  p.x.resize(static_cast<size_t>(p.T) * D);
  p.dy.resize(static_cast<size_t>(p.T) * c.K * D);
  payload_fill(p.x.data(), p.x.size(), 100 + round, world_rank, 0);
  payload_fill(p.dy.data(), p.dy.size(), 200 + round, world_rank, 1);
  return p;
}

// The reference for one ep group, from `local` run on each member's problem.
struct GroupReference {
  int ep, El, D;
  std::vector<RankProblem> problems;            // by ep rank
  std::vector<std::vector<int64_t>> counts;     // [q][e] rows from q for global expert e
  std::vector<std::vector<int64_t>> local_off;  // [q][e] first row of e in q's local output
  std::vector<std::vector<float>> local_x, local_dy;  // [q] local to_experts outputs

  // First row, in the expert-side output of ep rank owner(e), of the rows source q sends to e.
  int64_t expert_side_row(int q, int e) const {
    const int o = e / El, le = e % El;
    int64_t at = 0;
    for (int l = 0; l < le; ++l)
      for (int s = 0; s < ep; ++s) at += counts[s][o * El + l];
    for (int s = 0; s < q; ++s) at += counts[s][e];
    return at;
  }
  int64_t expert_side_rows(int o) const {
    int64_t n = 0;
    for (int s = 0; s < ep; ++s)
      for (int l = 0; l < El; ++l) n += counts[s][o * El + l];
    return n;
  }
  // Expected to_experts output on ep rank m: by local expert, then source, then slot order.
  std::vector<float> expected_to_experts(int m, bool per_slot) const {
    std::vector<float> out;
    for (int le = 0; le < El; ++le)
      for (int q = 0; q < ep; ++q) {
        const int e = m * El + le;
        const auto& L = per_slot ? local_dy[q] : local_x[q];
        out.insert(out.end(), L.begin() + local_off[q][e] * D,
                   L.begin() + (local_off[q][e] + counts[q][e]) * D);
      }
    return out;
  }
};

GroupReference make_reference(const Case& c, int group, int round, int D) {
  GroupReference ref;
  ref.ep = c.ep;
  ref.El = kExperts / c.ep;
  ref.D = D;
  for (int q = 0; q < c.ep; ++q) {
    ref.problems.push_back(make_problem(c, group * c.ep + q, round, D));
    const RankProblem& p = ref.problems.back();
    LocalDispatcher local(ExpertPlacement{kExperts, 1, 0});
    local.plan(p.topk.data(), p.T, c.K);
    ref.counts.push_back(local.rows_per_local_expert());
    std::vector<int64_t> off(kExperts + 1, 0);
    for (int e = 0; e < kExperts; ++e) off[e + 1] = off[e] + ref.counts[q][e];
    ref.local_off.push_back(off);
    std::vector<float> lx(local.rows() * D), ldy(local.rows() * D);
    local.to_experts(lx.data(), p.x.data(), false, D);
    local.to_experts(ldy.data(), p.dy.data(), true, D);
    ref.local_x.push_back(std::move(lx));
    ref.local_dy.push_back(std::move(ldy));
  }
  return ref;
}

// Rows (of D floats) where a and b differ bitwise; sizes must match.
int64_t rows_differing(const std::vector<float>& a, const std::vector<float>& b, int D) {
  if (a.size() != b.size()) return -1;
  int64_t n = 0;
  for (size_t r = 0; r * D < a.size(); ++r)
    n += std::memcmp(&a[r * D], &b[r * D], sizeof(float) * D) != 0;
  return n;
}

class FlatVsLocal : public ::testing::TestWithParam<Case> {};

TEST_P(FlatVsLocal, EqualsLocalReferenceBitForBit) {
  const Case c = GetParam();
  if (world_size() % c.ep != 0) GTEST_SKIP() << "ep " << c.ep << " does not divide W " << world_size();
  ParallelSpec spec;
  spec.ep = c.ep;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const int m = groups.ep.rank(), El = kExperts / c.ep;
  FlatDispatcher flat(make_placement(kExperts, groups), groups.ep, c.exchange);
  EXPECT_EQ(flat.name(), c.exchange == FlatExchange::kTyped ? "flat" : "flat_packed");

  // Two rounds on one dispatcher with different shapes: buffers are reused and must not leak
  // stale rows from the first round into the second.
  const int widths[2] = {5, 16};
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const int D = widths[round];
    const GroupReference ref = make_reference(c, groups.ep_group(), round, D);
    const RankProblem& me = ref.problems[m];
    const int64_t TK = static_cast<int64_t>(me.T) * c.K;

    flat.plan(me.topk.data(), me.T, c.K);
    const int64_t R = ref.expert_side_rows(m);
    ASSERT_EQ(flat.rows(), R);
    for (int le = 0; le < El; ++le) {
      int64_t n = 0;
      for (int q = 0; q < c.ep; ++q) n += ref.counts[q][m * El + le];
      EXPECT_EQ(flat.rows_per_local_expert()[le], n) << "local expert " << le;
    }

    // dispatch and combine-backward directions.
    std::vector<float> got_x(R * D, -1.0f), got_dy(R * D, -1.0f);
    flat.to_experts(got_x.data(), me.x.data(), false, D);
    flat.to_experts(got_dy.data(), me.dy.data(), true, D);
    EXPECT_EQ(rows_differing(got_x, ref.expected_to_experts(m, false), D), 0);
    EXPECT_EQ(rows_differing(got_dy, ref.expected_to_experts(m, true), D), 0);

    // combine direction: every expert rank o holds y_o (a payload of its world rank); what comes
    // back to slot (t,k) here must be row expert_side_row(me, e) + j of y_owner(e), via local.
    auto y_of = [&](int o) {
      std::vector<float> y(ref.expert_side_rows(o) * D);
      payload_fill(y.data(), y.size(), 300 + round, groups.ep_group() * c.ep + o, 2);
      return y;
    };
    std::vector<std::vector<float>> y(c.ep);
    for (int o = 0; o < c.ep; ++o) y[o] = y_of(o);
    std::vector<float> y_local(ref.local_off[m][kExperts] * D);
    for (int e = 0; e < kExperts; ++e) {
      const int64_t from = ref.expert_side_row(m, e);
      std::copy(y[e / El].begin() + from * D, y[e / El].begin() + (from + ref.counts[m][e]) * D,
                y_local.begin() + ref.local_off[m][e] * D);
    }
    LocalDispatcher local(ExpertPlacement{kExperts, 1, 0});
    local.plan(me.topk.data(), me.T, c.K);
    std::vector<float> want_back(TK * D), got_back(TK * D, -1.0f);
    local.from_experts(want_back.data(), y_local.data(), D);
    flat.from_experts(got_back.data(), y[m].data(), D);
    EXPECT_EQ(rows_differing(got_back, want_back, D), 0);

    // Round trip: combine(dispatch(x)) with probs 1/k returns x (dropped slots come back 0).
    std::vector<float> z(TK * D, -1.0f);
    flat.from_experts(z.data(), got_x.data(), D);
    int64_t wrong = 0;
    const bool any_dropped = std::count(me.topk.begin(), me.topk.end(), -1) > 0;
    for (int t = 0; t < me.T; ++t)
      for (int d = 0; d < D; ++d) {
        float avg = 0.0f;
        for (int k = 0; k < c.K; ++k) {
          const float v = z[(static_cast<int64_t>(t) * c.K + k) * D + d];
          const bool dropped = me.topk[static_cast<int64_t>(t) * c.K + k] < 0;
          wrong += v != (dropped ? 0.0f : me.x[static_cast<int64_t>(t) * D + d]);
          avg += v * (1.0f / c.K);
        }
        if (!any_dropped) wrong += avg != me.x[static_cast<int64_t>(t) * D + d];
      }
    EXPECT_EQ(wrong, 0);
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (FlatExchange x : {FlatExchange::kTyped, FlatExchange::kPacked})
    for (int ep : {1, 2, 3, 4}) {
      cases.push_back({ep, "balanced", 1, x});
      cases.push_back({ep, "balanced", 2, x});
      cases.push_back({ep, "zero_rank", 2, x});
      cases.push_back({ep, "hot_expert", 1, x});
      cases.push_back({ep, "hot_expert", 2, x});
      cases.push_back({ep, "dropped", 2, x});
      cases.push_back({ep, "all_dropped", 2, x});
      cases.push_back({ep, "empty", 2, x});
    }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Layouts, FlatVsLocal, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return case_name(info.param); });

// With ep = 1 every row is this rank's own: both exchanges must give `local`'s bytes exactly
// (same rows, same order), with the collectives still called (on a one-rank group).
class FlatEp1 : public ::testing::TestWithParam<FlatExchange> {};

TEST_P(FlatEp1, BitIdenticalToLocal) {
  ParallelSpec spec;
  spec.ep = 1;
  const ProcessGroups groups = ProcessGroups::build(spec);
  const Case c{1, "dropped", 2};
  const int D = 24;
  const RankProblem p = make_problem(c, groups.world_rank, 0, D);
  LocalDispatcher local(make_placement(kExperts, groups));
  FlatDispatcher flat(make_placement(kExperts, groups), groups.ep, GetParam());
  local.plan(p.topk.data(), p.T, c.K);
  flat.plan(p.topk.data(), p.T, c.K);
  ASSERT_EQ(local.rows(), flat.rows());
  EXPECT_EQ(local.rows_per_local_expert(), flat.rows_per_local_expert());
  const int64_t R = local.rows(), TK = static_cast<int64_t>(p.T) * c.K;
  std::vector<float> a(R * D), b(R * D, 1.0f), ta(TK * D), tb(TK * D, 1.0f);
  local.to_experts(a.data(), p.x.data(), false, D);
  flat.to_experts(b.data(), p.x.data(), false, D);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  local.to_experts(a.data(), p.dy.data(), true, D);
  flat.to_experts(b.data(), p.dy.data(), true, D);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  local.from_experts(ta.data(), a.data(), D);
  flat.from_experts(tb.data(), a.data(), D);
  EXPECT_EQ(std::memcmp(ta.data(), tb.data(), ta.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Exchanges, FlatEp1, ::testing::Values(FlatExchange::kTyped, FlatExchange::kPacked),
                         [](const ::testing::TestParamInfo<FlatExchange>& info) {
                           return std::string(info.param == FlatExchange::kTyped ? "typed" : "packed");
                         });

// ---------------------------------------------------------------------------------------------
// Registry and construction errors.

TEST(Registry, BuildsByNameAndRejectsUnknownNames) {
  ParallelSpec spec;
  spec.ep = world_size();
  const ProcessGroups groups = ProcessGroups::build(spec);
  const ExpertPlacement placement = make_placement(4 * world_size(), groups);
  EXPECT_EQ(make_dispatcher(DispatchSpec{"flat"}, placement, groups)->name(), "flat");
  EXPECT_EQ(make_dispatcher(DispatchSpec{"flat_packed"}, placement, groups)->name(), "flat_packed");
  EXPECT_EQ(dispatcher_names(), (std::vector<std::string>{"local", "flat", "flat_packed"}));
  try {
    make_dispatcher(DispatchSpec{"bogus"}, placement, groups);
    FAIL() << "expected CollectiveError";
  } catch (const CollectiveError& e) {
    const std::string msg = e.what();
    for (const char* part : {"moe.dispatch.type", "bogus", "local", "flat", "flat_packed"})
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
  }
}

TEST(Registry, LocalNeedsEp1) {
  if (world_size() == 1) GTEST_SKIP() << "needs ep > 1";
  ParallelSpec spec;
  spec.ep = world_size();
  const ProcessGroups groups = ProcessGroups::build(spec);
  EXPECT_THROW(make_dispatcher(DispatchSpec{"local"}, make_placement(4 * world_size(), groups), groups),
               CollectiveError);
}

TEST(Registry, ExpertsNotDivisibleByEpIsCollectiveError) {
  if (world_size() == 1) GTEST_SKIP() << "every E divides over ep = 1";
  ParallelSpec spec;
  spec.ep = world_size();
  const ProcessGroups groups = ProcessGroups::build(spec);
  try {
    make_placement(world_size() + 1, groups);
    FAIL() << "expected CollectiveError";
  } catch (const CollectiveError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("moe.num_experts"), std::string::npos) << msg;
    EXPECT_NE(msg.find("parallel.ep"), std::string::npos) << msg;
  }
  // A placement that does not match the group is refused by the flat dispatcher itself.
  ExpertPlacement wrong{world_size() * 2, 1, 0};
  EXPECT_THROW(FlatDispatcher(wrong, groups.ep), CollectiveError);
}

}  // namespace
}  // namespace moempi
