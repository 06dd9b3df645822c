// Builds world/data/ep/expert_dp/node/inter with MPI_Comm_split (no per-step communicator
// creation) and renders the rank map gathered to rank 0.
#include "comm/process_groups.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/topology.h"
#include "comm/watchdog.h"

namespace moempi {
namespace {

std::string divisors_of(int n) {
  std::string out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return out;
}

// One rank's row of the rank map; plain bytes so it travels in one MPI_Gather.
struct RankRecord {
  char host[64];
  int world_rank, node_index, node_rank, ep_group, ep_rank, expert_dp_rank;
};

}  // namespace

ProcessGroups ProcessGroups::build(const ParallelSpec& spec, MPI_Comm base) {
  ProcessGroups g;
  g.world = base == MPI_COMM_WORLD ? Communicator::world() : Communicator::borrow(base, "world");
  g.world_rank = g.world.rank();
  g.world_size = g.world.size();
  const int W = g.world_size;
  MOEMPI_CHECK_ALL(spec.ep >= 1 && W % spec.ep == 0,
                   "parallel.ep ({}) does not divide the world size ({}); use one of: {}", spec.ep,
                   W, divisors_of(W));
  MOEMPI_CHECK_ALL(spec.ranks_per_node >= 0,
                   "parallel.ranks_per_node ({}) must be >= 0 (0 = real nodes, > 0 = virtual nodes)",
                   spec.ranks_per_node);
  g.ep_size = spec.ep;
  g.dp_size = W / spec.ep;
  const int wr = g.world_rank;
  g.ep = Communicator::split(g.world, wr / g.ep_size, wr, "ep");
  g.expert_dp = Communicator::split(g.world, wr % g.ep_size, wr, "expert_dp");
  g.data = Communicator::split(g.world, 0, wr, "data");  // every rank reads different data
  NodeLayout nodes = detect_nodes(g.world, spec.ranks_per_node);
  g.node = std::move(nodes.node);
  g.inter = std::move(nodes.inter);
  g.node_index = nodes.node_index;
  g.num_nodes = nodes.num_nodes;
  g.virtual_nodes = nodes.virtual_nodes;
  // The ep group's nodes: which node each ep rank is on, and the intra/inter splits of the group.
  g.ep_rank_node.assign(g.ep_size, 0);
  {
    watchdog::Pending pending("MPI_Allgather", g.ep.name().c_str());
    MOEMPI_MPI_CHECK(MPI_Allgather(&g.node_index, 1, MPI_INT, g.ep_rank_node.data(), 1, MPI_INT,
                                   g.ep.comm()));
  }
  g.ep_node = Communicator::split(g.ep, g.node_index, g.ep.rank(), "ep_node");
  g.ep_inter = Communicator::split(g.ep, g.ep_node.rank(), g.node_index, "ep_inter");
  // Shared memory needs one node and one host (virtual nodes can be larger than a host). Decisions
  // that pick a transport must agree world-wide.
  const Communicator ep_host = Communicator::split_shared(g.ep, g.ep.rank(), "ep_host");
  int within = g.ep_within_node() && ep_host.size() == g.ep.size() ? 1 : 0;
  {
    watchdog::Pending pending("MPI_Allreduce", g.world.name().c_str());
    MOEMPI_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &within, 1, MPI_INT, MPI_MIN, g.world.comm()));
  }
  g.every_ep_within_node = within == 1;
  return g;
}

int ProcessGroups::ep_num_nodes() const {
  std::vector<int> nodes = ep_rank_node;
  std::sort(nodes.begin(), nodes.end());
  return static_cast<int>(std::unique(nodes.begin(), nodes.end()) - nodes.begin());
}

std::string ProcessGroups::rank_map() const {
  RankRecord mine{};
  const std::string host = host_name();
  std::strncpy(mine.host, host.c_str(), sizeof mine.host - 1);
  mine.world_rank = world_rank;
  mine.node_index = node_index;
  mine.node_rank = node.rank();
  mine.ep_group = ep_group();
  mine.ep_rank = ep.rank();
  mine.expert_dp_rank = expert_dp.rank();
  std::vector<RankRecord> all(world_rank == 0 ? world_size : 0);
  watchdog::Pending pending("MPI_Gather", world.name().c_str());
  MOEMPI_MPI_CHECK(MPI_Gather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, 0,
                              world.comm()));
  if (world_rank != 0) return "";
  std::string out = fmt::format("world {} = dp {} x ep {}; {} {} node(s)\n", world_size, dp_size,
                                ep_size, num_nodes, virtual_nodes ? "virtual" : "real");
  out += fmt::format("{:>5}  {:<20} {:>5} {:>6} {:>9} {:>8} {:>15}\n", "rank", "host", "node",
                     "local", "ep_group", "ep_rank", "expert_dp_rank");
  for (const RankRecord& r : all)
    out += fmt::format("{:>5}  {:<20} {:>5} {:>6} {:>9} {:>8} {:>15}\n", r.world_rank, r.host,
                       r.node_index, r.node_rank, r.ep_group, r.ep_rank, r.expert_dp_rank);
  return out;
}

}  // namespace moempi
