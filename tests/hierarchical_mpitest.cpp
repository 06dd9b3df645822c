// MPI tests of the pieces around the hierarchical dispatcher that the dispatcher contract test
// (tests/dispatcher_mpitest.cpp, which covers hierarchical's outputs, layouts and traffic) does
// not: the routed hop's record exchange and fan-out/reduce on their own, and the software link
// model (comm/link_model.h) with its dispatcher wrapper.
#include <gtest/gtest.h>

#include <vector>

#include "comm/hierarchical_alltoall.h"
#include "comm/link_model.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/link_model_dispatcher.h"
#include "tests/dispatch_problem.h"
#include "tests/test_util.h"

namespace moempi {
namespace {

using test_util::world_size;

// Plans `hop` over the world with every one of this rank's `rows` input rows sent to every rank
// (peers listed in descending or ascending order), each with the record {rank, row}; returns the
// records that arrive.
std::vector<int64_t> plan_every_row_to_every_rank(RoutedHop& hop, const Communicator& world, int rows,
                                                  bool descending) {
  const int W = world.size(), me = world.rank();
  std::vector<int64_t> from, records, got;
  std::vector<int> peer;
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < W; ++j) {
      from.push_back(i);
      peer.push_back(descending ? W - 1 - j : j);
      records.insert(records.end(), {me, i});
    }
  hop.plan(world, true, rows, from, peer, records, 2, got);
  return got;
}

// Every rank sends rank+1 rows to each peer q (row i of the input fans out to every peer); the
// records name (source, i); values are source*100 + i. The reverse reduce sums the copies back.
TEST(RoutedHop, FanOutAndReduceOverTheWorld) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank();
  const int rows = me + 1, D = 3;
  RoutedHop hop;
  // Given in descending peer order: plan() sorts by peer.
  const std::vector<int64_t> got = plan_every_row_to_every_rank(hop, world, rows, /*descending=*/true);
  int64_t want_rows = 0;
  for (int s = 0; s < W; ++s) want_rows += s + 1;
  ASSERT_EQ(hop.recv_rows(), want_rows);
  // Arrival order: by source, then the source's order.
  int64_t at = 0;
  for (int s = 0; s < W; ++s)
    for (int i = 0; i <= s; ++i, ++at) {
      EXPECT_EQ(got[at * 2], s);
      EXPECT_EQ(got[at * 2 + 1], i);
    }
  std::vector<float> in(rows * D), send(hop.send_rows() * D), recv(hop.recv_rows() * D);
  for (int i = 0; i < rows; ++i)
    for (int d = 0; d < D; ++d) in[i * D + d] = static_cast<float>(me * 100 + i + d);
  hop.gather(in.data(), send.data(), D);
  HopTraffic traffic;
  hop.exchange(send.data(), recv.data(), D, traffic);
  EXPECT_EQ(traffic.rows, static_cast<int64_t>(rows) * (W - 1));
  EXPECT_EQ(traffic.messages, W - 1);
  for (int64_t r = 0; r < hop.recv_rows(); ++r)
    EXPECT_EQ(recv[r * D + 1], static_cast<float>(got[r * 2] * 100 + got[r * 2 + 1] + 1));
  // Back: each receiver doubles its rows; the source's reduce sums W copies of 2x its row.
  for (float& v : recv) v *= 2.0f;
  hop.exchange_back(recv.data(), send.data(), D, traffic);
  std::vector<float> back(rows * D, -1.0f);
  hop.reduce(send.data(), back.data(), D, nullptr, false);
  for (int i = 0; i < rows * D; ++i) EXPECT_EQ(back[i], 2.0f * W * in[i]) << i;
}

// Odd ranks have no rows at all: their buffers are empty vectors (data() may be null), which every
// step must accept (the sanitizer build caught a memset on the null buffer of such a rank).
TEST(RoutedHop, RankWithNoRows) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank();
  const int rows = me % 2 == 0 ? 2 : 0, D = 2;
  RoutedHop hop;
  plan_every_row_to_every_rank(hop, world, rows, /*descending=*/false);
  std::vector<float> in(rows * D), send(hop.send_rows() * D), recv(hop.recv_rows() * D);
  for (int i = 0; i < rows * D; ++i) in[i] = static_cast<float>(me * 10 + i);
  hop.gather(in.data(), send.data(), D);
  HopTraffic traffic;
  hop.exchange(send.data(), recv.data(), D, traffic);
  hop.exchange_back(recv.data(), send.data(), D, traffic);
  std::vector<float> back(rows * D, -1.0f);
  hop.reduce(send.data(), back.data(), D, nullptr, false);
  for (int i = 0; i < rows * D; ++i) EXPECT_EQ(back[i], static_cast<float>(W) * in[i]) << i;
}

TEST(LinkModel, SecondsFromMessagesAndBytes) {
  set_link_model({.inter_node_gbps = 8.0, .inter_node_latency_us = 10.0});
  EXPECT_TRUE(link_model().active());
  EXPECT_DOUBLE_EQ(link_model().seconds(3, 1000000), 3 * 10e-6 + 1e6 * 8 / 8e9);
  set_link_model({});
  EXPECT_FALSE(link_model().active());
  EXPECT_EQ(link_delay(5, 1 << 20), 0.0);
}

// make_dispatcher wraps in the link model when it is on: the delay covers the modelled time of
// the inter-node traffic (virtual nodes of 1 rank: every peer is on another node), and nothing
// is added where there is no inter-node traffic (one node).
TEST(LinkModel, WrapsDispatchersAndDelaysInterNodeTrafficOnly) {
  const int W = world_size();
  for (int rpn : {1, 0}) {
    ParallelSpec spec = test_util::expert_parallel_over_world();
    spec.ranks_per_node = rpn;
    const ProcessGroups groups = ProcessGroups::build(spec);
    set_link_model({.inter_node_gbps = 1.0, .inter_node_latency_us = 200.0});
    DispatchSpec ds;
    ds.type = "flat";
    std::unique_ptr<Dispatcher> d = make_dispatcher(ds, groups);
    set_link_model({});
    auto* wrapped = dynamic_cast<LinkModelDispatcher*>(d.get());
    ASSERT_NE(wrapped, nullptr);
    EXPECT_EQ(d->name(), "flat");
    const Placement placement = Placement::contiguous(12, W, groups.ep.rank());
    test_util::DispatchProblem p = test_util::make_dispatch_problem("balanced", 12, 2, 64, groups.world_rank, W, 0);
    auto plan = d->new_plan();
    test_util::Result r;
    set_link_model({.inter_node_gbps = 1.0, .inter_node_latency_us = 200.0});
    test_util::run_forward(*d, *plan, p, placement, r);
    set_link_model({});
    const DispatchStats& st = d->stats();
    const double modelled = st.messages_inter * 200e-6 + st.bytes_inter * 8 / 1e9;
    if (rpn == 1 && W > 1) {
      EXPECT_GT(st.bytes_inter, 0);
      EXPECT_GE(wrapped->delayed_seconds(), 0.99 * modelled);
      EXPECT_GE(st.seconds, wrapped->delayed_seconds());
    } else {
      EXPECT_EQ(st.bytes_inter, 0);
      EXPECT_EQ(wrapped->delayed_seconds(), 0.0);
    }
  }
}

}  // namespace
}  // namespace moempi
