// The dispatcher table: name -> factory, and the `auto` rule.
#include "parallel/dispatcher_registry.h"

#include <fmt/format.h>

#include "parallel/flat_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

using Factory = std::unique_ptr<Dispatcher> (*)(const DispatchSpec&, const ProcessGroups&);

struct Entry {
  const char* name;
  Factory make;
};

const Entry kDispatchers[] = {
    {"local", [](const DispatchSpec&, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
       MOEMPI_CHECK_ALL(g.ep_size == 1,
                        "moe.dispatch.type 'local' needs parallel.ep = 1 (got {}); use 'auto' or 'flat'",
                        g.ep_size);
       return std::make_unique<LocalDispatcher>();
     }},
    {"flat", [](const DispatchSpec&, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
       return std::make_unique<FlatDispatcher>(g, FlatExchange::kTyped);
     }},
    {"flat_packed", [](const DispatchSpec&, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
       return std::make_unique<FlatDispatcher>(g, FlatExchange::kPacked);
     }},
    {"auto", nullptr},  // resolved by resolve_dispatcher
};

}  // namespace

Placement make_placement(int num_experts, const ProcessGroups& groups) {
  MOEMPI_CHECK_ALL(num_experts >= 1 && num_experts % groups.ep_size == 0,
                   "moe.num_experts ({}) is not divisible by parallel.ep ({})", num_experts,
                   groups.ep_size);
  return Placement::contiguous(num_experts, groups.ep_size, groups.ep.rank());
}

std::vector<std::string> dispatcher_names() {
  std::vector<std::string> names;
  for (const Entry& e : kDispatchers) names.emplace_back(e.name);
  return names;
}

DispatcherChoice resolve_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups) {
  if (spec.type != "auto") return {spec.type, ""};
  if (groups.ep_size == 1) return {"local", "parallel.ep is 1: no expert leaves its rank"};
  return {"flat", fmt::format("the ep group of {} ranks spans {} node(s)", groups.ep_size,
                              groups.ep_num_nodes())};
}

std::unique_ptr<Dispatcher> make_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups) {
  const std::string name = resolve_dispatcher(spec, groups).name;
  for (const Entry& e : kDispatchers)
    if (name == e.name && e.make) return e.make(spec, groups);
  fail_collective(fmt::format("moe.dispatch.type ('{}') is not a dispatcher; allowed: {}", spec.type,
                              fmt::join(dispatcher_names(), ", ")));
}

}  // namespace moempi
