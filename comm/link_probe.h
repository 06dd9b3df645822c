// The inter-node link as `moe.dispatch.type: auto` sees it: one ping-pong between two ranks on
// different nodes, its bandwidth broadcast to every rank. Test: tests/comm_mpitest.cpp (LinkProbe.*).
#pragma once
#include <cstdint>
#include <vector>

#include "comm/communicator.h"

namespace moempi {

// Collective over `world`. `node_of_rank` (world size) is every rank's node index, the same on
// every rank. World rank 0 and the lowest world rank on another node exchange a message of `bytes`
// (>= 4096, rounded down to whole 4 KiB rows) back and forth `rounds` times after one untimed round; returns the median round trip's
// bandwidth, 2 · 8 · bytes / seconds, in Gbit/s, on every rank (bit-identical: broadcast from rank 0). 0
// when every rank is on rank 0's node (nothing to measure; no message is sent then, only the
// broadcast).
double probe_inter_node_gbps(const Communicator& world, const std::vector<int>& node_of_rank, int64_t bytes = 1 << 20,
                             int rounds = 3);

}  // namespace moempi
