// MPI tests of SparseAllGather / SparseReduceScatter (comm/sparse_collectives.h) at 1-4 ranks, both
// algorithms: random placements (a pure function of the seed, so every rank builds the same one),
// an empty placement (owners only), every item replicated everywhere, an owner that holds nothing,
// and zero items. Payloads are verifiable (comm/payload.h): sums of up to 16 are exact in float.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/payload.h"
#include "comm/sparse_collectives.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

using Holders = std::vector<std::vector<int>>;
using test_util::world_size;

// Random owners; each other rank replicates an item with probability `share`.
Holders random_placement(int items, int W, double share, uint64_t seed) {
  Rng rng(seed, 0, 0, 0);
  Holders h(items);
  for (auto& hi : h) {
    hi.push_back(static_cast<int>(rng.below(W)));
    for (int r = 0; r < W; ++r)
      if (r != hi[0] && rng.uniform() < share) hi.push_back(r);
  }
  return h;
}

struct Case {
  std::string name;
  Holders holders;
};

std::vector<Case> cases(int W) {
  const int I = 10;
  std::vector<Case> out;
  out.push_back({"random_half", random_placement(I, W, 0.5, 11)});
  out.push_back({"random_sparse", random_placement(I, W, 0.2, 12)});
  Holders owners_only(I), everywhere(I), idle_owner(I);
  for (int i = 0; i < I; ++i) {
    owners_only[i] = {i % W};
    everywhere[i] = {i % W};
    for (int r = 0; r < W; ++r)
      if (r != i % W) everywhere[i].push_back(r);
    // Rank W-1 owns nothing (W > 1) but replicates every other item.
    const int owner = W > 1 ? i % (W - 1) : 0;
    idle_owner[i] = {owner};
    if (W > 1 && i % 2 == 0) idle_owner[i].push_back(W - 1);
  }
  out.push_back({"empty_placement", owners_only});
  out.push_back({"replicated_everywhere", everywhere});
  out.push_back({"owner_holds_nothing", idle_owner});
  out.push_back({"zero_items", {}});
  return out;
}

bool holds(const std::vector<int>& h, int r) { return std::find(h.begin(), h.end(), r) != h.end(); }

class SparseCollectivesTest : public ::testing::TestWithParam<SparseAlgo> {};

TEST_P(SparseCollectivesTest, AllGatherCopiesOwnersToReplicas) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank();
  const int64_t numel = 1000;
  for (const Case& c : cases(W)) {
    std::map<int, std::vector<float>> buf;
    int64_t expect_bytes = 0;
    for (size_t i = 0; i < c.holders.size(); ++i) {
      const auto& h = c.holders[i];
      if (!holds(h, me)) continue;
      auto& b = buf[static_cast<int>(i)];
      b.assign(numel, std::nanf(""));  // replicas: must be overwritten
      if (h[0] == me) {
        payload_fill(b.data(), numel, 5, h[0], static_cast<int>(i));
        expect_bytes += static_cast<int64_t>(h.size() - 1) * numel * 4;
      }
    }
    SparseCollectives sc(GetParam());
    sc.all_gather(c.holders, numel, [&](int i) { return buf.at(i).data(); }, world);
    for (auto& [i, b] : buf)
      EXPECT_EQ(payload_check(b.data(), numel, 5, c.holders[i][0], i), 0) << c.name << " item " << i;
    EXPECT_EQ(sc.stats().bytes_sent, expect_bytes) << c.name;
  }
}

TEST_P(SparseCollectivesTest, ReduceScatterSumsCopiesIntoOwnersInRankOrder) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank();
  const int64_t numel = 777;
  for (const Case& c : cases(W)) {
    std::map<int, std::vector<float>> buf;
    for (size_t i = 0; i < c.holders.size(); ++i)
      if (holds(c.holders[i], me)) {
        auto& b = buf[static_cast<int>(i)];
        b.resize(numel);
        payload_fill(b.data(), numel, 9, me, static_cast<int>(i));
      }
    SparseCollectives sc(GetParam());
    for (int round = 0; round < 2; ++round) {  // scratch reuse: a second call gives the same result
      if (round == 1)
        for (auto& [i, b] : buf) payload_fill(b.data(), numel, 9, me, i);
      sc.reduce_scatter(c.holders, numel, [&](int i) { return buf.at(i).data(); }, world);
      for (auto& [i, b] : buf) {
        const auto& h = c.holders[i];
        std::vector<float> want(numel), part(numel);
        payload_fill(want.data(), numel, 9, me, i);
        if (h[0] == me)
          for (size_t j = 1; j < h.size(); ++j) {
            payload_fill(part.data(), numel, 9, h[j], i);
            for (int64_t k = 0; k < numel; ++k) want[k] += part[k];
          }
        EXPECT_EQ(std::memcmp(b.data(), want.data(), numel * sizeof(float)), 0)
            << c.name << " item " << i << (h[0] == me ? " (owner)" : " (replica: left alone)");
      }
    }
  }
}

// Both algorithms move the same bytes and agree to the bit.
TEST(SparseCollectives, PointToPointAndAlltoallvAgree) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank();
  const Holders h = random_placement(16, W, 0.6, 99);
  const int64_t numel = 333;
  std::map<int, std::vector<float>> a, b;
  for (int i = 0; i < 16; ++i)
    if (holds(h[i], me)) {
      a[i].resize(numel);
      payload_fill(a[i].data(), numel, 3, me, i);
      b[i] = a[i];
    }
  SparseCollectives p2p(SparseAlgo::kPointToPoint), a2a(SparseAlgo::kAlltoallv);
  p2p.reduce_scatter(h, numel, [&](int i) { return a.at(i).data(); }, world);
  a2a.reduce_scatter(h, numel, [&](int i) { return b.at(i).data(); }, world);
  p2p.all_gather(h, numel, [&](int i) { return a.at(i).data(); }, world);
  a2a.all_gather(h, numel, [&](int i) { return b.at(i).data(); }, world);
  for (auto& [i, v] : a) EXPECT_EQ(std::memcmp(v.data(), b[i].data(), numel * sizeof(float)), 0) << "item " << i;
  EXPECT_EQ(p2p.stats().bytes_sent, a2a.stats().bytes_sent);
}

TEST(SparseCollectives, BadPlacementsAreErrors) {
  const Communicator world = Communicator::world();
  const int W = world.size();
  SparseCollectives sc;
  float dummy = 0;
  auto buf = [&](int) { return &dummy; };
  EXPECT_THROW(sc.all_gather({{}}, 1, buf, world), CollectiveError);                 // no owner
  EXPECT_THROW(sc.all_gather({{W}}, 1, buf, world), CollectiveError);                // rank out of range
  EXPECT_THROW(sc.all_gather({{0, 0}}, 1, buf, world), CollectiveError);             // owner as replica
  EXPECT_THROW(sc.all_gather({{0}}, 0, buf, world), CollectiveError);                // empty item
}

INSTANTIATE_TEST_SUITE_P(Algo, SparseCollectivesTest,
                         ::testing::Values(SparseAlgo::kPointToPoint, SparseAlgo::kAlltoallv),
                         [](const auto& info) { return std::string(name_of(info.param)); });

}  // namespace
}  // namespace moempi
