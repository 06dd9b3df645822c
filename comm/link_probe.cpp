// probe_inter_node_gbps: a watched ping-pong of row blocks (RowBlockExchange), then a broadcast.
#include "comm/link_probe.h"

#include <mpi.h>

#include <algorithm>
#include <vector>

#include "comm/collectives.h"
#include "runtime/core/error.h"

namespace moempi {

double probe_inter_node_gbps(const Communicator& world, const std::vector<int>& node_of_rank, int64_t bytes,
                             int rounds) {
  MOEMPI_CHECK_ALL(static_cast<int>(node_of_rank.size()) == world.size() && bytes >= 4096 && rounds >= 1,
                   "probe_inter_node_gbps: {} node indices for {} ranks, {} bytes, {} rounds", node_of_rank.size(),
                   world.size(), bytes, rounds);
  int peer = -1;
  for (int r = 1; r < world.size() && peer < 0; ++r)
    if (node_of_rank[r] != node_of_rank[0]) peer = r;
  double gbps = 0.0;
  const int me = world.rank();
  if (peer > 0 && (me == 0 || me == peer)) {
    const int other = me == 0 ? peer : 0;
    const int64_t width = 1024;  // floats per row: rows of 4 KiB
    const int64_t rows = std::max<int64_t>(1, bytes / (4 * width));
    std::vector<float> buffer(static_cast<size_t>(rows * width), 1.0f);
    RowType row(static_cast<int>(width));
    RowBlockExchange exchange;
    std::vector<double> trips;
    for (int round = 0; round <= rounds; ++round) {
      const double t0 = MPI_Wtime();
      for (int leg = 0; leg < 2; ++leg) {  // rank 0 sends first, the peer answers
        const bool sending = (leg == 0) == (me == 0);
        const RowBlock block{other, leg, buffer.data(), rows};
        exchange.start(sending ? std::vector<RowBlock>{block} : std::vector<RowBlock>{},
                       sending ? std::vector<RowBlock>{} : std::vector<RowBlock>{block}, row, world);
        exchange.wait();
      }
      if (round > 0) trips.push_back(MPI_Wtime() - t0);  // round 0 warms up
    }
    std::nth_element(trips.begin(), trips.begin() + trips.size() / 2, trips.end());
    const double trip = std::max(trips[trips.size() / 2], 1e-9);
    gbps = 2.0 * 8.0 * 4.0 * static_cast<double>(rows * width) / trip / 1e9;
  }
  bcast(&gbps, 1, 0, world);
  return gbps;
}

}  // namespace moempi
