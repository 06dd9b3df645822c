// FSSDP's per-layer replica choice (parallel/fssdp_strategy.h): no replicas for even loads or a
// zero budget, the hot expert split onto the idle rank, the budget per rank respected, the
// maximum rank load never raised, and the same answer on every call (every rank computes it).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel/fssdp_strategy.h"
#include "parallel/placement.h"

namespace moempi {
namespace {

// Each expert's load split evenly over its holders; the most loaded rank.
double max_rank_load(const std::vector<double>& load, const Placement& owners,
                     const std::vector<std::vector<int>>& replicas) {
  std::vector<double> rank(owners.group_size(), 0.0);
  for (int e = 0; e < owners.num_experts(); ++e) {
    const double n = 1.0 + replicas[e].size();
    rank[owners.owner(e)] += load[e] / n;
    for (int r : replicas[e]) rank[r] += load[e] / n;
  }
  return *std::max_element(rank.begin(), rank.end());
}

TEST(FssdpReplicas, EvenLoadsOrNoBudgetGiveNoReplicas) {
  const Placement owners = Placement::contiguous(8, 4, 0);
  for (const auto& r : fssdp_replicas(std::vector<double>(8, 10.0), owners, 2)) EXPECT_TRUE(r.empty());
  for (const auto& r : fssdp_replicas({100, 1, 1, 1, 1, 1, 1, 1}, owners, 0)) EXPECT_TRUE(r.empty());
}

TEST(FssdpReplicas, HotExpertGoesToTheIdleRank) {
  const Placement owners = Placement::contiguous(4, 2, 0);  // experts 0,1 on rank 0; 2,3 on rank 1
  const std::vector<double> load = {100, 10, 10, 10};
  const auto replicas = fssdp_replicas(load, owners, 1);
  // Rank 0 (110) gives half of expert 0 to rank 1 (then 60 / 70); rank 1 then gives half of
  // expert 2 to rank 0 (65 / 65), and both budgets are spent.
  EXPECT_EQ(replicas[0], std::vector<int>{1});
  EXPECT_EQ(replicas[2], std::vector<int>{0});
  EXPECT_TRUE(replicas[1].empty() && replicas[3].empty());
  EXPECT_DOUBLE_EQ(max_rank_load(load, owners, replicas), 65.0);
}

TEST(FssdpReplicas, ZipfLoadsRespectBudgetAndLowerTheMaximum) {
  for (int W : {2, 3, 4, 8}) {
    const int E = 2 * W;
    const Placement owners = Placement::contiguous(E, W, 0);
    std::vector<double> load(E);
    for (int e = 0; e < E; ++e) load[e] = 1000.0 / std::pow(e + 1.0, 1.2);
    for (int budget : {1, 2, 3}) {
      const auto replicas = fssdp_replicas(load, owners, budget);
      std::vector<int> per_rank(W, 0);
      int total = 0;
      for (int e = 0; e < E; ++e) {
        EXPECT_TRUE(std::is_sorted(replicas[e].begin(), replicas[e].end()));
        for (int r : replicas[e]) {
          EXPECT_NE(r, owners.owner(e));
          ++per_rank[r], ++total;
        }
      }
      for (int r = 0; r < W; ++r) EXPECT_LE(per_rank[r], budget) << "W " << W << " rank " << r;
      EXPECT_GT(total, 0) << "W " << W;
      const std::vector<std::vector<int>> none(E);
      EXPECT_LT(max_rank_load(load, owners, replicas), max_rank_load(load, owners, none)) << "W " << W;
      EXPECT_EQ(replicas, fssdp_replicas(load, owners, budget));
    }
  }
}

// Re-sharding (fssdp_reshard_owners): every rank keeps E/W experts; owners change only when that
// lowers the largest per-rank owned load; the heaviest experts end on different ranks.
TEST(FssdpReshard, BalancesOwnedLoadOnlyWhenItHelps) {
  const std::vector<int> contiguous = Placement::contiguous_owners(8, 2);  // 0 0 0 0 1 1 1 1
  EXPECT_EQ(fssdp_reshard_owners(std::vector<double>(8, 5.0), contiguous, 2), contiguous) << "even loads";
  const std::vector<double> zipf = {100, 50, 33, 25, 20, 17, 14, 12};
  const std::vector<int> next = fssdp_reshard_owners(zipf, contiguous, 2);
  ASSERT_NE(next, contiguous);
  double load[2] = {0, 0}, before[2] = {0, 0};
  int count[2] = {0, 0};
  for (int e = 0; e < 8; ++e) {
    load[next[e]] += zipf[e];
    before[contiguous[e]] += zipf[e];
    ++count[next[e]];
  }
  EXPECT_EQ(count[0], 4);
  EXPECT_EQ(count[1], 4);
  EXPECT_LT(std::max(load[0], load[1]), std::max(before[0], before[1]));
  EXPECT_NE(next[0], next[1]) << "the two heaviest experts on different ranks";
  EXPECT_EQ(fssdp_reshard_owners(zipf, next, 2), next) << "balanced owners stay (no churn)";
  EXPECT_EQ(fssdp_reshard_owners(zipf, contiguous, 2), next) << "deterministic";
  for (int W : {1, 3, 4}) {  // any group size: E/W each
    std::vector<double> loads(12);
    for (int e = 0; e < 12; ++e) loads[e] = 100.0 / (e + 1);
    const std::vector<int> owners = fssdp_reshard_owners(loads, Placement::contiguous_owners(12, W), W);
    std::vector<int> per(W, 0);
    for (int o : owners) ++per.at(o);
    for (int r = 0; r < W; ++r) EXPECT_EQ(per[r], 12 / W) << "W=" << W;
    if (W == 1) {
      EXPECT_EQ(owners, std::vector<int>(12, 0));
    }
  }
}

}  // namespace
}  // namespace moempi
