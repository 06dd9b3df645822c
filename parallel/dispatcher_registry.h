// Dispatchers by name (moe.dispatch.type): local | flat | flat_packed | flat_typed | shm | auto, one Registry
// (runtime/core/registry.h) whose entries carry their own keys (the job spec's schema reads them).
// A new dispatcher is a new file plus one line in the table in dispatcher_registry.cpp.
// `auto` (the default) resolves by layout: local for an ep group of one rank, shm for an ep group
// within one node, flat otherwise. It never picks hierarchical: in bench/README.md's measurements
// (2 nodes x 2 ranks) hierarchical+dedup only won the forward exchange on links of ~200 Mbit/s and
// no training step, so choosing it is left to the user. Test: tests/dispatcher_mpitest.cpp (Registry.*).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/process_groups.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"
#include "runtime/core/registry.h"

namespace moempi {

// Today's `ep` layout of `num_experts` experts over groups.ep (no replicas). Collective error
// (naming moe.num_experts and parallel.ep) if they do not divide. Not communicating.
Placement make_placement(int num_experts, const ProcessGroups& groups);

// The dispatcher `auto` stands for on this layout, and why (for the start-up line); any other
// name is returned as it is, with an empty reason. Not communicating; the same on every rank.
struct DispatcherChoice {
  std::string name;
  std::string reason;
};
DispatcherChoice resolve_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups);

// Builds the dispatcher spec.type names (auto resolved) over groups.ep. Collective error naming
// moe.dispatch.type, the value and the allowed values if the name is unknown, or if the layout
// does not suit it. Collective over the world (shm checks its layout with one allreduce); every
// rank calls it with the same spec.
std::unique_ptr<Dispatcher> make_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups);

// The table: factories build over groups.ep (shm's is collective over the world); `auto` has no
// factory (it resolves to another entry first).
using DispatcherFactory = std::unique_ptr<Dispatcher> (*)(const DispatchSpec& spec, const ProcessGroups& groups);
using DispatcherRegistry = Registry<DispatcherFactory>;
const DispatcherRegistry& dispatcher_registry();

// moe.dispatch.compression.type: none | lsh, with lsh's own keys (fields over CompressionSpec).
// make_dispatcher wraps the chosen dispatcher in an LshDispatcher (parallel/lsh_dispatcher.h) when
// the type is lsh, whatever the dispatcher.
std::vector<schema::TypeChoice> compression_choices();

// Registered names, in registration order.
std::vector<std::string> dispatcher_names();

}  // namespace moempi
