// The named process groups of DESIGN.md "Process groups and placement", built once at start-up.
// W = dp x ep. ep groups are consecutive world ranks [g*ep, (g+1)*ep) (so they stay inside a
// node when possible); expert_dp joins the ranks with the same world_rank % ep, the replicas of
// one expert shard (dp_size of them); `data` holds every rank that sees different data (the world
// today), the scope of global balancing statistics. Test: tests/comm_mpitest.cpp (ProcessGroups.*).
#pragma once
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "runtime/core/config.h"

namespace moempi {

struct ProcessGroups {
  Communicator world;      // all ranks
  Communicator data;       // all ranks that see different data (today: the world's members, own context);
                           // global balancing statistics reduce over it, never over expert_dp
  Communicator ep;         // ranks that split the experts: world ranks [g*ep, (g+1)*ep)
  Communicator expert_dp;  // replicas of one expert shard: same world_rank % ep
  Communicator node;       // ranks on one (real or virtual) node
  Communicator inter;      // same node-local index across nodes
  // The EP group's own topology, for dispatchers (built once here, never per layer or step):
  Communicator ep_node;    // ranks of this ep group on this rank's node, ordered by ep rank
  Communicator ep_inter;   // ranks of this ep group with this rank's ep_node index, one per node
  std::vector<int> ep_rank_node;  // (ep size) node index of each ep rank
  bool every_ep_within_node = true;  // every ep group lies within one node and one host (same on all ranks)
  int world_rank = 0, world_size = 1;
  int ep_size = 1, dp_size = 1;  // dp_size = world / ep = expert_dp.size()
  int node_index = 0, num_nodes = 1;
  bool virtual_nodes = false;

  int ep_group() const { return world_rank / ep_size; }  // index of this rank's ep group
  bool ep_within_node() const { return ep_node.size() == ep.size(); }
  // Nodes the ep group spans.
  int ep_num_nodes() const;

  // Collective over `base` (default MPI_COMM_WORLD), which becomes `world` (borrowed, not freed;
  // MPI_COMM_SELF gives a one-rank job, e.g. a single-rank reference inside an MPI test).
  // Collective error if parallel.ep does not divide the world size or parallel.ranks_per_node < 0.
  static ProcessGroups build(const ParallelSpec& spec, MPI_Comm base = MPI_COMM_WORLD);

  // Collective over world (gather to rank 0). A multi-line table for the start-up log, one line
  // per world rank: host, node, local rank, ep group, ep rank, expert_dp rank. Rank 0 gets the
  // table; other ranks get "".
  std::string rank_map() const;
};

}  // namespace moempi
