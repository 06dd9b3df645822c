// Dispatchers by name (moe.dispatch.type): "local" | "flat" | "flat_packed". A new dispatcher is
// a new file plus one line in the table in dispatcher_registry.cpp (STYLE.md habit 3).
// Test: tests/dispatcher_mpitest.cpp (Registry.*).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "comm/process_groups.h"
#include "parallel/dispatcher.h"
#include "parallel/placement.h"

namespace moempi {

// The placement of `num_experts` experts over groups.ep. Collective error (naming
// moe.num_experts and parallel.ep) if they do not divide. Not communicating.
ExpertPlacement make_placement(int num_experts, const ProcessGroups& groups);

// Builds the dispatcher spec.type names over groups.ep. Collective error naming
// moe.dispatch.type, the value and the allowed values if the name is unknown. Not communicating
// (construction of the built-in dispatchers does not communicate).
std::unique_ptr<Dispatcher> make_dispatcher(const DispatchSpec& spec, const ExpertPlacement& placement,
                                            const ProcessGroups& groups);

// Registered names, in registration order.
std::vector<std::string> dispatcher_names();

}  // namespace moempi
