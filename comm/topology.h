// Topology: which ranks share a node. Real nodes come from MPI_Comm_split_type(SHARED); virtual
// nodes (parallel.ranks_per_node > 0, for tests and CI) are runs of consecutive world ranks.
// Guarantees: node indices are 0..num_nodes-1, numbered by each node's lowest world rank; `inter`
// joins the ranks with the same local index. Test: tests/comm_mpitest.cpp (ProcessGroups.*).
#pragma once
#include <string>

#include "comm/communicator.h"

namespace moempi {

struct NodeLayout {
  Communicator node;   // ranks on this node, ordered by world rank
  Communicator inter;  // ranks with this rank's local index, one per node, ordered by node index
  int node_index = 0;
  int num_nodes = 1;
  bool virtual_nodes = false;
};

// Collective over `world`. ranks_per_node == 0: real nodes; > 0: virtual nodes of that many
// consecutive ranks (the last one may be smaller when it does not divide the world size).
NodeLayout detect_nodes(const Communicator& world, int ranks_per_node);

// This process's host name (MPI_Get_processor_name). Not collective.
std::string host_name();

}  // namespace moempi
