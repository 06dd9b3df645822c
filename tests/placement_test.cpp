// Placement: the ep layout, replicas, local orders and the per-slot destination rule stated in
// parallel/placement.h, on hand-checked cases.
#include <gtest/gtest.h>

#include "parallel/placement.h"

namespace moempi {
namespace {

TEST(Placement, ContiguousIsTodaysEpLayout_E8_P4) {
  for (int r = 0; r < 4; ++r) {
    const Placement p = Placement::contiguous(8, 4, r);
    EXPECT_EQ(p.num_local(), 2);
    EXPECT_EQ(p.local_experts(), (std::vector<int>{2 * r, 2 * r + 1}));
    EXPECT_FALSE(p.has_replicas());
    EXPECT_EQ(p.max_local(), 2);
    for (int e = 0; e < 8; ++e) {
      EXPECT_EQ(p.owner(e), e / 2);
      EXPECT_EQ(p.holders(e), (std::vector<int>{e / 2}));
      for (int src = 0; src < 4; ++src) EXPECT_EQ(p.destination(e, src), e / 2);  // only the owner
      EXPECT_EQ(p.local_index(e / 2, e), e % 2);
      EXPECT_EQ(p.local_index((e / 2 + 1) % 4, e), -1);
    }
  }
}

TEST(Placement, ReplicasSpreadSourcesAndKeepOwnCopiesLocal_E6_P3) {
  // E = 6 over 3 ranks: owners 0,0,1,1,2,2. Expert 1 also on ranks 2 and 1 (given unsorted, with a
  // duplicate and the owner itself), expert 5 also on rank 0.
  std::vector<std::vector<int>> replicas(6);
  replicas[1] = {2, 1, 2, 0};
  replicas[5] = {0};
  const Placement p = Placement::with_replicas(6, 3, 1, replicas);
  EXPECT_TRUE(p.has_replicas());
  EXPECT_EQ(p.holders(1), (std::vector<int>{0, 1, 2}));  // owner first, then ascending, no repeats
  EXPECT_EQ(p.holders(5), (std::vector<int>{2, 0}));
  EXPECT_EQ(p.experts_on(0), (std::vector<int>{0, 1, 5}));
  EXPECT_EQ(p.experts_on(1), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(p.experts_on(2), (std::vector<int>{1, 4, 5}));
  EXPECT_EQ(p.local_experts(), p.experts_on(1));
  EXPECT_EQ(p.max_local(), 3);
  EXPECT_EQ(p.local_index(2, 5), 2);
  // A source that holds the expert runs it itself; otherwise holders[src % n].
  for (int src = 0; src < 3; ++src) EXPECT_EQ(p.destination(1, src), src);
  EXPECT_EQ(p.destination(5, 0), 0);
  EXPECT_EQ(p.destination(5, 2), 2);
  EXPECT_EQ(p.destination(5, 1), p.holders(5)[1 % 2]);  // rank 1 holds no copy: holders[1] = 0
  EXPECT_EQ(p.destination(3, 0), 1);                       // no replicas: the owner
}

}  // namespace
}  // namespace moempi
