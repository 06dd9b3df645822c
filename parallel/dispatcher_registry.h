// Dispatchers by name (moe.dispatch.type): local | flat | flat_packed | flat_typed | shm | hierarchical | auto, one Registry
// (runtime/core/registry.h) whose entries carry their own keys (the job spec's schema reads them).
// A new dispatcher is a new file plus one line in the table in dispatcher_registry.cpp.
// `auto` (the default) resolves by layout and link: local for an ep group of one rank, shm for an
// ep group within one node; across nodes hierarchical (2dh, dedup) when every ep group has one
// rank per node, top_k >= 2 and the inter-node link is at most kAutoHierarchicalMaxGbps (measured
// at start-up, or comm.link_model's), else flat: bench/README.md ("The crossover") measured
// hierarchical + dedup winning a training step at 1 rank per node at 0.2 Gbit/s and losing at 2
// ranks per node, and on links of 1 Gbit/s and more. Test: tests/dispatcher_mpitest.cpp (Registry.*).
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
// What auto weighs besides the layout. The default (unknown link) never picks hierarchical.
struct AutoInputs {
  int top_k = 1;
  // Every ep group spans >= 2 nodes with one of its ranks on each, nodes in ep rank order (the
  // layout hierarchical accepts; all ranks agree).
  bool one_rank_per_node = false;
  double inter_node_gbps = 0.0;    // 0 = unknown
  std::string link_source;         // where inter_node_gbps comes from: "measured" | "comm.link_model"
};
inline constexpr double kAutoHierarchicalMaxGbps = 0.45;  // between the measured win (0.2) and loss (1)
// Collective over groups.world when spec.type is auto (else returns at once, on every rank): one
// allreduce for the layout, then, only if it suits hierarchical, top_k >= 2, no compression and an
// fp32 wire, the link: the comm.link_model's inter_node_gbps when set, else an allgather of the
// ranks' nodes and probe_inter_node_gbps (comm/link_probe.h). A measured link near the bound can
// measure either side of it from one run to the next: the two choices differ in summation order
// only (hierarchical + dedup is within float rounding of flat); set the type for bit-exact reruns.
AutoInputs auto_inputs(const DispatchSpec& spec, int top_k, const LinkModelSpec& link, const ProcessGroups& groups);
DispatcherChoice resolve_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups,
                                    const AutoInputs& inputs = {});

// Builds the dispatcher spec.type names (auto resolved) over groups.ep. Collective error naming
// moe.dispatch.type, the value and the allowed values if the name is unknown, or if the layout
// does not suit it. Collective over the world (shm and hierarchical check their layout with one
// allreduce); every rank calls it with the same spec and inputs.
// When auto picks hierarchical it uses moe.dispatch.algorithm and always dedup (without dedup
// hierarchical moves flat's bytes in more rounds and loses).
std::unique_ptr<Dispatcher> make_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups,
                                            const AutoInputs& inputs = {});

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
