// A software model of the inter-node link (comm.link_model; PLATFORM.md "Several nodes on one
// machine"): virtual nodes on one machine move every byte through shared memory, so benchmarks
// and tests that want a cluster's asymmetry add, after each dispatcher call, the time this rank's
// inter-node messages of that call would take on the modelled link:
//   delay = messages * inter_node_latency_us + bytes * 8 / (inter_node_gbps * 1e9)
// (one full-duplex link per rank; intra-node messages cost nothing extra). The delay is a sleep,
// not a spin, so oversubscribed runs do not starve their peers. Process-wide setting, set once at
// start-up (the trainer from the job spec, the benches from their flags). Off when both are 0.
// Test: tests/hierarchical_mpitest.cpp (LinkModel.*).
#pragma once
#include <cstdint>

#include "runtime/core/config.h"

namespace moempi {

struct LinkModel {
  double gbps = 0.0, latency_us = 0.0;
  bool active() const { return gbps > 0.0 || latency_us > 0.0; }
  // Modelled seconds for `messages` inter-node messages carrying `bytes` bytes.
  double seconds(int64_t messages, int64_t bytes) const;
};

void set_link_model(const LinkModelSpec& spec);
const LinkModel& link_model();
// Sleeps for link_model().seconds(messages, bytes); returns the seconds slept (0 when off).
double link_delay(int64_t messages, int64_t bytes);

}  // namespace moempi
