// The BalancingPass registry: `moe.balancing.<i>.type` -> a pass. Adding a pass = its own file
// defining make_<type>(spec, path, env) + one X(<type>) line below.
// Test: tests/moe_test.cpp (BalancingRegistry.*).
#include "models/moe/balancing_pass.h"

#include <fmt/format.h>

#include "runtime/core/error.h"

// One line per pass: the YAML name, which is also the factory's suffix.
#define MOEMPI_BALANCING_PASSES(X) \
  X(aux_loss)                      \
  X(z_loss)

namespace moempi {

using BalancingFactory = std::unique_ptr<BalancingPass> (*)(const BalancingSpec&,
                                                           const std::string& path,
                                                           const BalancingEnv&);
#define MOEMPI_DECLARE_PASS(type)                                                          \
  std::unique_ptr<BalancingPass> make_##type(const BalancingSpec&, const std::string& path, \
                                             const BalancingEnv&);
MOEMPI_BALANCING_PASSES(MOEMPI_DECLARE_PASS)
#undef MOEMPI_DECLARE_PASS

namespace {
struct Entry {
  const char* type;
  BalancingFactory make;
};
#define MOEMPI_ENTRY(type) Entry{#type, &make_##type},
const Entry kRegistry[] = {MOEMPI_BALANCING_PASSES(MOEMPI_ENTRY)};
#undef MOEMPI_ENTRY
}  // namespace

std::vector<std::string> balancing_pass_types() {
  std::vector<std::string> out;
  for (const auto& e : kRegistry) out.emplace_back(e.type);
  return out;
}

std::unique_ptr<BalancingPass> make_balancing_pass(const BalancingSpec& spec,
                                                   const std::string& path,
                                                   const BalancingEnv& env) {
  for (const auto& e : kRegistry)
    if (spec.type == e.type) return e.make(spec, path, env);
  fail_collective(fmt::format("{}.type ('{}') is not a balancing pass; allowed: {}", path,
                              spec.type, fmt::join(balancing_pass_types(), ", ")));
}

std::vector<std::unique_ptr<BalancingPass>> make_balancing_passes(
    const std::vector<BalancingSpec>& specs, const BalancingEnv& env) {
  std::vector<std::unique_ptr<BalancingPass>> passes;
  for (size_t i = 0; i < specs.size(); ++i)
    passes.push_back(make_balancing_pass(specs[i], fmt::format("moe.balancing.{}", i), env));
  return passes;
}

}  // namespace moempi
