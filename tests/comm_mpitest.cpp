// MPI tests of comm/: process groups at every world size (ep in the divisors of W, real and
// virtual nodes), checked collectives with verifiable payloads (including zero counts to some
// peers), the MPI_Comm RAII wrapper and the payload formula. Run at 1-4 ranks by ctest.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "comm/agreement.h"
#include "comm/collectives.h"
#include "comm/communicator.h"
#include "comm/link_probe.h"
#include "comm/mpi_check.h"
#include "comm/payload.h"
#include "comm/process_groups.h"
#include "comm/topology.h"
#include "runtime/core/error.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

using test_util::world_size;

using test_util::world_rank;

// World ranks of the members of `c`, in c's rank order (gathered over c).
std::vector<int> members(const Communicator& c) {
  std::vector<int> out(c.size());
  int me = world_rank();
  MPI_Allgather(&me, 1, MPI_INT, out.data(), 1, MPI_INT, c.comm());
  return out;
}

std::vector<int> world_ranks_where(auto pred) {
  std::vector<int> out;
  for (int r = 0; r < world_size(); ++r)
    if (pred(r)) out.push_back(r);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Process groups: parameters (ep, ranks_per_node); ep that does not divide W is skipped.

struct GroupCase {
  int ep;
  int ranks_per_node;  // 0 = real nodes
};

class ProcessGroupsTest : public ::testing::TestWithParam<GroupCase> {};

TEST_P(ProcessGroupsTest, GroupsHaveTheSpecifiedMembers) {
  const auto [ep, rpn] = GetParam();
  const int W = world_size(), wr = world_rank();
  if (W % ep != 0) GTEST_SKIP() << "ep " << ep << " does not divide W " << W;
  ParallelSpec spec;
  spec.ep = ep;
  spec.ranks_per_node = rpn;
  ProcessGroups g = ProcessGroups::build(spec);

  EXPECT_EQ(g.world_rank, wr);
  EXPECT_EQ(g.world_size, W);
  EXPECT_EQ(g.ep_size, ep);
  EXPECT_EQ(g.dp_size, W / ep);
  EXPECT_EQ(g.world.size(), W);

  // ep: consecutive world ranks [g*ep, (g+1)*ep), ranked by world rank.
  const int grp = wr / ep;
  EXPECT_EQ(g.ep_group(), grp);
  EXPECT_EQ(g.ep.rank(), wr % ep);
  EXPECT_EQ(members(g.ep), world_ranks_where([&](int r) { return r / ep == grp; }));
  // expert_dp: same world_rank % ep; data: every rank (all see different data).
  const auto same_shard = world_ranks_where([&](int r) { return r % ep == wr % ep; });
  EXPECT_EQ(members(g.expert_dp), same_shard);
  EXPECT_EQ(g.expert_dp.rank(), wr / ep);
  EXPECT_EQ(members(g.data), world_ranks_where([](int) { return true; }));
  EXPECT_EQ(g.data.rank(), wr);
  EXPECT_NE(g.data.comm(), g.world.comm());  // separate contexts, same members

  if (rpn > 0) {
    EXPECT_TRUE(g.virtual_nodes);
    EXPECT_EQ(g.node_index, wr / rpn);
    EXPECT_EQ(g.num_nodes, (W + rpn - 1) / rpn);
    EXPECT_EQ(members(g.node), world_ranks_where([&](int r) { return r / rpn == wr / rpn; }));
    EXPECT_EQ(members(g.inter), world_ranks_where([&](int r) { return r % rpn == wr % rpn; }));
    EXPECT_EQ(g.inter.rank(), g.node_index);
  } else {
    // Real nodes: every member of my node has my host name; nodes are numbered 0..num_nodes-1.
    EXPECT_FALSE(g.virtual_nodes);
    const std::string host = host_name();
    std::vector<char> mine(256, 0), all(256 * g.node.size());
    std::copy(host.begin(), host.begin() + std::min<size_t>(host.size(), 255), mine.begin());
    MPI_Allgather(mine.data(), 256, MPI_CHAR, all.data(), 256, MPI_CHAR, g.node.comm());
    for (int i = 0; i < g.node.size(); ++i) EXPECT_EQ(std::string(&all[256 * i]), host);
    EXPECT_GE(g.node_index, 0);
    EXPECT_LT(g.node_index, g.num_nodes);
    EXPECT_EQ(g.inter.size(), g.num_nodes);  // one node here, so every local index appears once
  }

  // The rank map: on rank 0 one line per rank (plus a summary and a header), elsewhere empty.
  const std::string map = g.rank_map();
  if (wr == 0) {
    EXPECT_EQ(std::count(map.begin(), map.end(), '\n'), W + 2) << map;
    EXPECT_NE(map.find(host_name()), std::string::npos);
    EXPECT_NE(map.find(fmt::format("dp {} x ep {}", W / ep, ep)), std::string::npos) << map;
  } else {
    EXPECT_TRUE(map.empty());
  }
}

std::string group_case_name(const ::testing::TestParamInfo<GroupCase>& info) {
  return fmt::format("ep{}_rpn{}", info.param.ep, info.param.ranks_per_node);
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, ProcessGroupsTest,
                         ::testing::Values(GroupCase{1, 0}, GroupCase{2, 0}, GroupCase{3, 0},
                                           GroupCase{4, 0}, GroupCase{1, 1}, GroupCase{2, 1},
                                           GroupCase{4, 1}, GroupCase{1, 2}, GroupCase{2, 2},
                                           GroupCase{3, 2}, GroupCase{4, 2}),
                         group_case_name);

TEST(ProcessGroups, EpThatDoesNotDivideTheWorldIsACollectiveError) {
  ParallelSpec spec;
  spec.ep = world_size() + 1;  // never a divisor of W
  try {
    ProcessGroups::build(spec);
    FAIL() << "expected CollectiveError";
  } catch (const CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.ep"), std::string::npos) << e.what();
  }
  spec.ep = 1;
  spec.ranks_per_node = -1;
  EXPECT_THROW(ProcessGroups::build(spec), CollectiveError);
}

TEST(ProcessGroups, BuiltOverSelfIsAOneRankJob) {
  ParallelSpec spec;
  spec.ep = 1;
  ProcessGroups g = ProcessGroups::build(spec, MPI_COMM_SELF);
  EXPECT_EQ(g.world_size, 1);
  EXPECT_EQ(g.world_rank, 0);
  EXPECT_EQ(g.world.comm(), MPI_COMM_SELF);
  for (const Communicator* c : {&g.data, &g.ep, &g.expert_dp, &g.node, &g.inter}) {
    EXPECT_EQ(c->size(), 1) << c->name();
    EXPECT_EQ(c->rank(), 0) << c->name();
  }
  EXPECT_EQ(g.num_nodes, 1);
  EXPECT_NE(g.rank_map().find("world 1 = dp 1 x ep 1"), std::string::npos);
  spec.ep = 2;  // does not divide a one-rank world, on every rank alike
  EXPECT_THROW(ProcessGroups::build(spec, MPI_COMM_SELF), CollectiveError);
}

TEST(ProcessGroups, MovedGroupsStillWork) {
  ParallelSpec spec;
  ProcessGroups a = ProcessGroups::build(spec);
  const MPI_Comm ep = a.ep.comm();
  ProcessGroups b = std::move(a);
  EXPECT_EQ(b.ep.comm(), ep);
  EXPECT_TRUE(a.ep.is_null());
  int64_t one = 1;
  allreduce_sum(&one, 1, b.world);
  EXPECT_EQ(one, world_size());
}

// ---------------------------------------------------------------------------------------------
// MOEMPI_MPI_CHECK: failures come back as codes (so the macro sees them) and are described.

TEST(MpiCheck, WrappedCommunicatorsReturnErrorsAndTheMessageNamesTheCall) {
  Communicator world = Communicator::world();
  Communicator half = Communicator::split(world, world.rank() % 2, world.rank(), "half");
  for (const Communicator* c : {&world, &half}) {
    int errhandler_rc = MPI_SUCCESS;
    int dummy = 0;
    errhandler_rc = MPI_Bcast(&dummy, -1, MPI_INT, 0, c->comm());  // invalid count
    EXPECT_NE(errhandler_rc, MPI_SUCCESS) << c->name();
    int error_class = 0;
    MPI_Error_class(errhandler_rc, &error_class);
    EXPECT_EQ(error_class, MPI_ERR_COUNT) << c->name();
    const std::string msg = detail::describe_mpi_error("MPI_Bcast(&dummy, -1, ...)", errhandler_rc);
    EXPECT_EQ(msg.rfind("MPI_Bcast(&dummy, -1, ...) failed: ", 0), 0u) << msg;
    EXPECT_GT(msg.size(), std::string("MPI_Bcast(&dummy, -1, ...) failed: ").size()) << msg;
  }
}

// ---------------------------------------------------------------------------------------------
// Communicator RAII.

TEST(Communicator, WorldIsNotOwnedSplitIsAndMovesTransferOwnership) {
  Communicator world = Communicator::world();
  EXPECT_EQ(world.comm(), MPI_COMM_WORLD);
  EXPECT_EQ(world.size(), world_size());
  EXPECT_EQ(world.name(), "world");
  {
    Communicator copy_of_world = Communicator::world();
  }  // destroying a world wrapper must not free MPI_COMM_WORLD
  barrier(world);

  Communicator half = Communicator::split(world, world.rank() % 2, world.rank(), "half");
  EXPECT_EQ(half.name(), "half");
  EXPECT_EQ(half.size(), (world_size() + 1 - world.rank() % 2) / 2);
  const MPI_Comm handle = half.comm();
  Communicator moved = std::move(half);
  EXPECT_TRUE(half.is_null());
  EXPECT_EQ(half.rank(), -1);
  EXPECT_EQ(moved.comm(), handle);
  Communicator view = moved.view();
  EXPECT_EQ(view.comm(), handle);
  Communicator other = Communicator::split(world, 0, world.rank(), "other");
  other = std::move(moved);  // frees `other`'s old communicator, takes `moved`'s
  EXPECT_EQ(other.comm(), handle);
  int64_t x = 1;
  allreduce_sum(&x, 1, view);  // the view still works: the owner is alive
  EXPECT_EQ(x, other.size());
}

// ---------------------------------------------------------------------------------------------
// Payload formula.

TEST(Payload, ExactInFloatAndDependsOnEveryArgument) {
  for (int64_t i = 0; i < 1000; ++i) {
    const float v = payload_value(7, 1, 2, i);
    const float scaled = v * 1024.0f;
    EXPECT_EQ(scaled, static_cast<float>(static_cast<int32_t>(scaled)));
    EXPECT_GE(scaled, -524288.0f);
    EXPECT_LT(scaled, 524288.0f);
  }
  int same_seed = 0, same_src = 0, same_dst = 0, same_index = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    const float v = payload_value(7, 1, 2, i);
    same_seed += v == payload_value(8, 1, 2, i);
    same_src += v == payload_value(7, 2, 2, i);
    same_dst += v == payload_value(7, 1, 3, i);
    same_index += v == payload_value(7, 1, 2, i + 1);
  }
  EXPECT_LT(same_seed, 5);
  EXPECT_LT(same_src, 5);
  EXPECT_LT(same_dst, 5);
  EXPECT_LT(same_index, 5);
}

TEST(Payload, CheckCountsWrongElements) {
  std::vector<float> buf(100);
  payload_fill(buf.data(), 100, 3, 0, 1, 50);
  EXPECT_EQ(payload_check(buf.data(), 100, 3, 0, 1, 50), 0);
  EXPECT_EQ(buf[7], payload_value(3, 0, 1, 57));
  buf[0] += 1.0f;
  buf[42] = -buf[42] + 0.5f;
  buf[99] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(payload_check(buf.data(), 100, 3, 0, 1, 50), 3);
  EXPECT_EQ(payload_check(buf.data() + 1, 99, 3, 0, 1, 51), 2);
  EXPECT_GT(payload_check(buf.data(), 100, 3, 1, 0, 50), 90);  // wrong (src, dst) is caught
}

// ---------------------------------------------------------------------------------------------
// Collectives, over world and over the ep groups of every valid ep.

class CollectivesTest : public ::testing::TestWithParam<int> {  // param: ep
 protected:
  void SetUp() override {
    if (world_size() % GetParam() != 0) GTEST_SKIP() << "ep does not divide W";
    ParallelSpec spec;
    spec.ep = GetParam();
    groups_ = ProcessGroups::build(spec);
  }
  ProcessGroups groups_;
};

TEST_P(CollectivesTest, AllreduceSumFloatDoubleInt64) {
  for (const Communicator* c : {&groups_.world, &groups_.ep, &groups_.expert_dp}) {
    const int n = c->size(), me = c->rank();
    const int64_t count = 1000;
    std::vector<float> f(count);
    payload_fill(f.data(), count, 11, me, 0);
    std::vector<double> d(f.begin(), f.end());
    std::vector<int64_t> i64(count);
    for (int64_t i = 0; i < count; ++i) i64[i] = (int64_t{1} << 40) * (me + 1) + i;
    allreduce_sum(f.data(), count, *c);
    allreduce_sum(d.data(), count, *c);
    allreduce_sum(i64.data(), count, *c);
    int64_t wrong = 0;
    for (int64_t i = 0; i < count; ++i) {
      double expect = 0;  // payload values are k/1024 with |k| < 2^19: sums of 4 are exact
      for (int r = 0; r < n; ++r) expect += payload_value(11, r, 0, i);
      wrong += f[i] != static_cast<float>(expect);
      wrong += d[i] != expect;
      wrong += i64[i] != (int64_t{1} << 40) * (n * (n + 1) / 2) + n * i;
    }
    EXPECT_EQ(wrong, 0) << "group " << c->name();
  }
}

TEST_P(CollectivesTest, AllreduceMinMaxAndReduceToRoot) {
  for (const Communicator* c : {&groups_.world, &groups_.ep}) {
    const int n = c->size(), me = c->rank();
    int64_t v[2] = {(int64_t{1} << 40) + me, -me};
    allreduce(&v[0], 1, ReduceOp::kMax, *c);
    allreduce(&v[1], 1, ReduceOp::kMin, *c);
    EXPECT_EQ(v[0], (int64_t{1} << 40) + n - 1);
    EXPECT_EQ(v[1], -(n - 1));
    double d[3] = {0.5 * me, 0.5 * me, 0.5 * me};
    allreduce(&d[0], 1, ReduceOp::kSum, *c);
    EXPECT_EQ(d[0], 0.25 * n * (n - 1));
    const int root = n - 1;
    reduce(&d[1], 1, ReduceOp::kMax, root, *c);
    reduce(&d[2], 1, ReduceOp::kMin, root, *c);
    if (me == root) {
      EXPECT_EQ(d[1], 0.5 * (n - 1));
      EXPECT_EQ(d[2], 0.0);
    } else {
      EXPECT_EQ(d[1], 0.5 * me);  // non-root input is left alone
    }
  }
}

TEST_P(CollectivesTest, AlltoallI64CarriesSourceAndDestination) {
  const Communicator& c = groups_.ep;
  const int n = c.size(), me = c.rank(), per = 3;
  std::vector<int64_t> send(n * per), recv(n * per, -1);
  for (int p = 0; p < n; ++p)
    for (int j = 0; j < per; ++j) send[p * per + j] = (int64_t{me} << 40) + (int64_t{p} << 20) + j;
  alltoall_i64(send.data(), recv.data(), per, c);
  for (int p = 0; p < n; ++p)
    for (int j = 0; j < per; ++j)
      EXPECT_EQ(recv[p * per + j], (int64_t{p} << 40) + (int64_t{me} << 20) + j);
}

// Floats from src to dst: zero for some pairs (including possibly self), otherwise a few dozen.
int64_t pair_count(int src, int dst) { return ((src + 2 * dst) % 3) * 17; }

TEST_P(CollectivesTest, AlltoallvFloatWithZeroCountsAndGaps) {
  for (const Communicator* c : {&groups_.world, &groups_.ep}) {
    const int n = c->size(), me = c->rank();
    std::vector<int64_t> sc(n), sd(n), rc(n), rd(n);
    int64_t s_at = 0, r_at = 0;
    for (int p = 0; p < n; ++p) {
      sc[p] = pair_count(me, p);
      sd[p] = s_at;
      s_at += sc[p] + 2;  // gaps between blocks must be left alone
      rc[p] = pair_count(p, me);
      rd[p] = r_at;
      r_at += rc[p] + 3;
    }
    std::vector<float> send(s_at, -7.0f), recv(r_at, -9.0f);
    for (int p = 0; p < n; ++p) payload_fill(send.data() + sd[p], sc[p], 5, me, p);
    alltoallv_float(send.data(), sc, sd, recv.data(), rc, rd, *c);
    int64_t wrong = 0, gap_wrong = 0;
    for (int p = 0; p < n; ++p) {
      wrong += payload_check(recv.data() + rd[p], rc[p], 5, p, me);
      for (int g = 0; g < 3; ++g) gap_wrong += recv[rd[p] + rc[p] + g] != -9.0f;
    }
    EXPECT_EQ(wrong, 0) << "group " << c->name();
    EXPECT_EQ(gap_wrong, 0) << "group " << c->name();
  }
}

TEST_P(CollectivesTest, AlltoallvRowsWithRowType) {
  const Communicator& c = groups_.ep;
  const int n = c.size(), me = c.rank(), width = 3;
  RowType row(width);
  EXPECT_EQ(row.width(), width);
  row.reset(width);  // same width: kept
  std::vector<int> sc(n), sd(n), rc(n), rd(n);
  int s_at = 0, r_at = 0;
  for (int p = 0; p < n; ++p) {
    sc[p] = static_cast<int>(pair_count(me, p)), sd[p] = s_at, s_at += sc[p];
    rc[p] = static_cast<int>(pair_count(p, me)), rd[p] = r_at, r_at += rc[p];
  }
  std::vector<float> send(s_at * width), recv(r_at * width, -1.0f);
  for (int p = 0; p < n; ++p)
    payload_fill(send.data() + sd[p] * width, int64_t{sc[p]} * width, 6, me, p);
  alltoallv_rows(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), row, c);
  int64_t wrong = 0;
  for (int p = 0; p < n; ++p)
    wrong += payload_check(recv.data() + rd[p] * width, int64_t{rc[p]} * width, 6, p, me);
  EXPECT_EQ(wrong, 0);
}

// Typed exchange: the sender names arbitrary rows (out of order, repeated), the receiver places
// them as runs with gaps; MPI gathers and scatters. Row r of a sender holds payload row r.
TEST_P(CollectivesTest, AlltoallwRowsGathersAndPlacesRows) {
  const Communicator& c = groups_.ep;
  const int n = c.size(), me = c.rank(), width = 3, src_rows = 10;
  RowType row(width);
  auto rows_between = [](int src, int dst) { return ((src + 2 * dst) % 3) * 2 + (src == dst ? 1 : 0); };
  std::vector<float> send(src_rows * width);
  payload_fill(send.data(), send.size(), 21, me, 0);
  PeerLayouts send_layout, recv_layout;
  send_layout.reset(n);
  recv_layout.reset(n);
  std::vector<int64_t> base(n);
  int64_t recv_rows = 0;
  for (int p = 0; p < n; ++p) {
    const int out_n = rows_between(me, p);
    std::vector<int64_t> idx(out_n);
    for (int j = 0; j < out_n; ++j) idx[j] = (p + 2 * j + 7 * (j % 2)) % src_rows;  // out of order
    send_layout.set_rows(p, idx.data(), out_n, row);
    const int in_n = rows_between(p, me), half = in_n / 2;
    base[p] = recv_rows;
    const int64_t first[2] = {base[p], base[p] + half + 1}, count[2] = {half, in_n - half};
    recv_layout.set_runs(p, first, count, 2, row);
    recv_rows += in_n + 2;  // one gap row inside, one after
  }
  EXPECT_EQ(send_layout.peers(), n);
  std::vector<float> recv(recv_rows * width, -9.0f);
  alltoallw_rows(send.data(), send_layout, recv.data(), recv_layout, c);
  int64_t wrong = 0;
  for (int p = 0; p < n; ++p) {
    const int in_n = rows_between(p, me), half = in_n / 2;
    for (int j = 0; j < in_n; ++j) {
      const int64_t at = base[p] + j + (j >= half ? 1 : 0);
      const int64_t src_row = (me + 2 * j + 7 * (j % 2)) % src_rows;
      wrong += payload_check(&recv[at * width], width, 21, p, 0, src_row * width);
    }
    for (int g = 0; g < width; ++g) {
      wrong += recv[(base[p] + half) * width + g] != -9.0f;      // gap inside
      wrong += recv[(base[p] + in_n + 1) * width + g] != -9.0f;  // gap after
    }
  }
  EXPECT_EQ(wrong, 0);
  // Re-using a layout after reset: everything empty, nothing moves.
  send_layout.reset(n);
  recv_layout.reset(n);
  std::vector<float> untouched(recv);
  alltoallw_rows(send.data(), send_layout, recv.data(), recv_layout, c);
  EXPECT_EQ(recv, untouched);
}

TEST_P(CollectivesTest, AlltoallvCountBeyondIntMaxOnOneRankIsCollectiveError) {
  const Communicator& c = groups_.world;
  const int n = c.size();
  std::vector<int64_t> zeros(n, 0), big(n, 0);
  big[0] = int64_t{INT_MAX} + 1;  // only rank 0 asks; nothing is read before the check
  const bool asker = c.rank() == 0;
  float dummy = 0;
  try {
    alltoallv_float(&dummy, asker ? big : zeros, zeros, &dummy, zeros, zeros, c);
    FAIL() << "expected CollectiveError on every rank";
  } catch (const CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("INT_MAX"), std::string::npos) << e.what();
  }
  // The group is still usable: nobody is stuck in the exchange.
  barrier(c);
}

TEST_P(CollectivesTest, BcastFromLastRank) {
  for (const Communicator* c : {&groups_.world, &groups_.ep}) {
    const int root = c->size() - 1;
    std::vector<float> f(257);
    std::vector<double> d(33);
    std::vector<int64_t> i(5);
    if (c->rank() == root) {
      payload_fill(f.data(), f.size(), 9, root, 0);
      for (size_t j = 0; j < d.size(); ++j) d[j] = 0.1 * j;
      for (size_t j = 0; j < i.size(); ++j) i[j] = (int64_t{1} << 50) + j;
    }
    char text[6] = "xxxxx";
    if (c->rank() == root) std::copy_n("hello", 6, text);
    bcast(f.data(), f.size(), root, *c);
    bcast(d.data(), d.size(), root, *c);
    bcast(i.data(), i.size(), root, *c);
    bcast_bytes(text, 6, root, *c);
    EXPECT_EQ(payload_check(f.data(), f.size(), 9, root, 0), 0);
    for (size_t j = 0; j < d.size(); ++j) EXPECT_EQ(d[j], 0.1 * j);
    for (size_t j = 0; j < i.size(); ++j) EXPECT_EQ(i[j], (int64_t{1} << 50) + static_cast<int64_t>(j));
    EXPECT_STREQ(text, "hello");
    barrier(*c);
  }
}

INSTANTIATE_TEST_SUITE_P(EpSizes, CollectivesTest, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return fmt::format("ep{}", info.param);
                         });

// agree_on_errors: an error on some ranks only becomes the same error on every rank.
std::string agreed_error(const Communicator& world, const std::function<void()>& step) {
  try {
    agree_on_errors(world, step);
  } catch (const CollectiveError& e) {
    return e.what();
  }
  return "";
}

TEST(AgreeOnErrors, NoErrorNoThrow) {
  const Communicator world = Communicator::world();
  int ran = 0;
  EXPECT_EQ(agreed_error(world, [&] { ++ran; }), "");
  EXPECT_EQ(ran, 1);
}

TEST(AgreeOnErrors, LastRankOnlyFailsEveryRankThrowsItsMessage) {
  const Communicator world = Communicator::world();
  const int last = world.size() - 1;
  const std::string msg = agreed_error(world, [&] {
    if (world.rank() == last) fail_collective(fmt::format("data.path: missing on rank {}", last));
  });
  const std::string body = fmt::format("data.path: missing on rank {}", last);
  EXPECT_EQ(msg, world.size() == 1 ? body : fmt::format("rank {}: {}", last, body));
}

TEST(AgreeOnErrors, AllRanksFailPlainMessageLowestRankWins) {
  const Communicator world = Communicator::world();
  EXPECT_EQ(agreed_error(world, [&] { fail_collective("model.d_model: bad"); }), "model.d_model: bad");
  if (world.size() >= 3) {  // ranks 1.. fail with their own messages: rank 1's is the one reported
    const std::string msg = agreed_error(world, [&] {
      if (world.rank() >= 1) fail_collective(fmt::format("from {}", world.rank()));
    });
    EXPECT_EQ(msg, fmt::format("rank 1 (and {} more): from 1", world.size() - 2));
  }
}

// agree_on_text: the same text everywhere passes; a text differing on some ranks is one error on
// every rank naming those ranks and the difference the lowest of them describes.
std::string agreed_text_error(const Communicator& world, const std::string& text) {
  try {
    agree_on_text(world, text, "the job spec", [&](const std::string& root, const std::string& mine) {
      return fmt::format("'{}' against '{}' on rank {}", root, mine, world.rank());
    });
  } catch (const CollectiveError& e) {
    return e.what();
  }
  return "";
}

TEST(AgreeOnText, SameTextPasses) {
  EXPECT_EQ(agreed_text_error(Communicator::world(), "optim:\n  lr: 0.001\n"), "");
}

TEST(AgreeOnText, RanksThatDifferAreNamedWithTheFirstDifference) {
  const Communicator world = Communicator::world();
  if (world.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  const std::string msg = agreed_text_error(world, world.rank() % 2 ? "lr 0.3" : "lr 0.001");
  std::string ranks = "1";
  for (int r = 3; r < world.size(); r += 2) ranks += fmt::format(", {}", r);
  EXPECT_EQ(msg, fmt::format("the job spec differs between ranks: rank{} {} differ{} from rank 0; first "
                             "difference: 'lr 0.001' against 'lr 0.3' on rank 1",
                             world.size() >= 4 ? "s" : "", ranks, world.size() >= 4 ? "" : "s"));
}


// The probe: a positive bandwidth, the same on every rank, when some rank is on another node;
// 0 (nothing sent) when all share rank 0's node.
TEST(LinkProbe, MeasuresBetweenNodesAndAgreesOnEveryRank) {
  const int W = test_util::world_size();
  const Communicator world = Communicator::world();
  std::vector<int> own(W), one(W, 3);
  std::iota(own.begin(), own.end(), 0);  // every rank its own node
  const double gbps = probe_inter_node_gbps(world, own, 1 << 16, 2);
  double lo = gbps, hi = gbps;
  allreduce(&lo, 1, ReduceOp::kMin, world);
  allreduce(&hi, 1, ReduceOp::kMax, world);
  EXPECT_EQ(lo, hi);
  if (W >= 2) {
    EXPECT_GT(gbps, 0.0);
    EXPECT_TRUE(std::isfinite(gbps));
  } else {
    EXPECT_EQ(gbps, 0.0);
  }
  EXPECT_EQ(probe_inter_node_gbps(world, one), 0.0);
}

}  // namespace
}  // namespace moempi
