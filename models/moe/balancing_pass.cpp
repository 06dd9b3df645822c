// The BalancingPass registry: `moe.balancing.<i>.type` -> a pass. Adding a pass = its own file
// defining make_<type>(spec, path, env) (declared in balancing_pass.h) + one line in the table.
// Keys every pass takes (type, coeff) are in the job spec's schema; a pass's own keys go in its line.
// Test: tests/moe_test.cpp (BalancingRegistry.*), tests/job_spec_test.cpp (Registry*).
#include "models/moe/balancing_pass.h"

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace moempi {

const BalancingRegistry& balancing_pass_registry() {
  static const BalancingRegistry registry("a balancing pass", {
      // name, factory, keys only this pass accepts, one-line doc
      {"aux_loss", &make_aux_loss, {}, "Switch-style auxiliary loss alpha * E * sum_i f_i P_i per micro-batch"},
      {"z_loss", &make_z_loss, {}, "router z-loss alpha * mean_t logsumexp(logits_t)^2 (ST-MoE)"},
  });
  return registry;
}

std::vector<std::string> balancing_pass_types() { return balancing_pass_registry().names(); }

std::unique_ptr<BalancingPass> make_balancing_pass(const BalancingSpec& spec, const std::string& path,
                                                   const BalancingEnv& env) {
  return balancing_pass_registry().at(path + ".type", spec.type).factory(spec, path, env);
}

std::vector<std::unique_ptr<BalancingPass>> make_balancing_passes(
    const std::vector<BalancingSpec>& specs, const BalancingEnv& env) {
  std::vector<std::unique_ptr<BalancingPass>> passes;
  for (size_t i = 0; i < specs.size(); ++i)
    passes.push_back(make_balancing_pass(specs[i], fmt::format("moe.balancing.{}", i), env));
  return passes;
}

}  // namespace moempi
