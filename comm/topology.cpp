// Node detection (real or virtual) and the node / inter communicators. Built once at start-up.
#include "comm/topology.h"

#include <algorithm>
#include <vector>

#include "comm/mpi_check.h"
#include "comm/watchdog.h"

namespace moempi {

std::string host_name() {
  char name[MPI_MAX_PROCESSOR_NAME] = {0};
  int len = 0;
  MOEMPI_MPI_CHECK(MPI_Get_processor_name(name, &len));
  return std::string(name, len);
}

NodeLayout detect_nodes(const Communicator& world, int ranks_per_node) {
  MOEMPI_CHECK_ALL(ranks_per_node >= 0,
                   "parallel.ranks_per_node ({}) must be >= 0 (0 = real nodes, > 0 = virtual nodes)",
                   ranks_per_node);
  NodeLayout layout;
  const int wr = world.rank(), W = world.size();
  if (ranks_per_node > 0) {
    layout.virtual_nodes = true;
    layout.node_index = wr / ranks_per_node;
    layout.num_nodes = (W + ranks_per_node - 1) / ranks_per_node;
    layout.node = Communicator::split(world, layout.node_index, wr, "node");
  } else {
    layout.node = Communicator::split_shared(world, wr, "node");
    // Node rank 0 has the lowest world rank (key = world rank); it names the node.
    int leader = wr;
    std::vector<int> leaders(W);
    {
      watchdog::Pending pending("MPI_Bcast", layout.node.name().c_str());
      MOEMPI_MPI_CHECK(MPI_Bcast(&leader, 1, MPI_INT, 0, layout.node.comm()));
    }
    {
      watchdog::Pending pending("MPI_Allgather", world.name().c_str());
      MOEMPI_MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, world.comm()));
    }
    std::sort(leaders.begin(), leaders.end());
    leaders.erase(std::unique(leaders.begin(), leaders.end()), leaders.end());
    layout.num_nodes = static_cast<int>(leaders.size());
    layout.node_index =
        static_cast<int>(std::lower_bound(leaders.begin(), leaders.end(), leader) - leaders.begin());
  }
  layout.inter = Communicator::split(world, layout.node.rank(), layout.node_index, "inter");
  return layout;
}

}  // namespace moempi
