// The dispatcher table: name -> factory.
#include "parallel/dispatcher_registry.h"

#include <fmt/format.h>

#include "parallel/flat_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

using Factory = std::unique_ptr<Dispatcher> (*)(const ExpertPlacement&, const ProcessGroups&);

struct Entry {
  const char* name;
  Factory make;
};

const Entry kDispatchers[] = {
    {"local", [](const ExpertPlacement& p, const ProcessGroups&) -> std::unique_ptr<Dispatcher> {
       return std::make_unique<LocalDispatcher>(p);
     }},
    {"flat", [](const ExpertPlacement& p, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
       return std::make_unique<FlatDispatcher>(p, g.ep, FlatExchange::kTyped);
     }},
    {"flat_packed", [](const ExpertPlacement& p, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
       return std::make_unique<FlatDispatcher>(p, g.ep, FlatExchange::kPacked);
     }},
};

}  // namespace

ExpertPlacement make_placement(int num_experts, const ProcessGroups& groups) {
  MOEMPI_CHECK_ALL(num_experts >= 1 && num_experts % groups.ep_size == 0,
                   "moe.num_experts ({}) is not divisible by parallel.ep ({})", num_experts,
                   groups.ep_size);
  ExpertPlacement p;
  p.num_experts = num_experts;
  p.ep_size = groups.ep_size;
  p.ep_rank = groups.ep.rank();
  return p;
}

std::vector<std::string> dispatcher_names() {
  std::vector<std::string> names;
  for (const Entry& e : kDispatchers) names.emplace_back(e.name);
  return names;
}

std::unique_ptr<Dispatcher> make_dispatcher(const DispatchSpec& spec, const ExpertPlacement& placement,
                                            const ProcessGroups& groups) {
  for (const Entry& e : kDispatchers)
    if (spec.type == e.name) return e.make(placement, groups);
  fail_collective(fmt::format("moe.dispatch.type ('{}') is not a dispatcher; allowed: {}", spec.type,
                              fmt::join(dispatcher_names(), ", ")));
}

}  // namespace moempi
