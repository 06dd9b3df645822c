// The BalancingPass registry: `moe.balancing.<i>.type` -> a pass. Adding a pass = its own file
// defining make_<type>(spec, path, env) (declared in balancing_pass.h) + one line in the table.
// `type` is in the job spec's schema; every other key is owned by the passes that list it in their
// line (coeff by the loss passes; rate, update, freeze_after by loss_free_bias), so a key given to
// the wrong pass is an error naming its owners.
// Test: tests/moe_test.cpp (BalancingRegistry.*), tests/job_spec_test.cpp (Registry*).
#include "models/moe/balancing_pass.h"

#include <fmt/format.h>

#include "runtime/core/error.h"
#include "runtime/core/schema.h"

namespace moempi {
namespace {

schema::Field coeff_key() { return schema::real_field("coeff", &BalancingSpec::coeff, schema::kNonNegative); }

std::vector<schema::Field> loss_free_bias_keys() {
  using schema::lift;
  return {lift(&BalancingSpec::bias, schema::real_field("rate", &LossFreeBiasSpec::rate, schema::kNonNegative)),
          lift(&BalancingSpec::bias, schema::enum_field("update", &LossFreeBiasSpec::update,
                                                        std::vector<std::string>{"sign", "proportional"})),
          lift(&BalancingSpec::bias, schema::int_field("freeze_after", &LossFreeBiasSpec::freeze_after, 0))};
}

}  // namespace

const BalancingRegistry& balancing_pass_registry() {
  static const BalancingRegistry registry("a balancing pass", {
      // name, factory, keys only this pass accepts, one-line doc
      {"aux_loss", &make_aux_loss, {coeff_key()},
       "Switch-style auxiliary loss alpha * E * sum_i f_i P_i per micro-batch"},
      {"z_loss", &make_z_loss, {coeff_key()}, "router z-loss alpha * mean_t logsumexp(logits_t)^2 (ST-MoE)"},
      {"seq_aux_loss", &make_seq_aux_loss, {coeff_key()},
       "the aux loss per sequence, averaged over the micro-batch's sequences (DeepSeek-V3)"},
      {"global_batch_aux_loss", &make_global_batch_aux_loss, {coeff_key()},
       "aux loss with f from counts over all data ranks and the step's micro-batches so far (Qwen)"},
      {"loss_free_bias", &make_loss_free_bias, loss_free_bias_keys(),
       "per-expert bias on the selection scores, updated from the step's global counts (DeepSeek)"},
  });
  return registry;
}

std::vector<std::string> balancing_pass_types() { return balancing_pass_registry().names(); }

std::unique_ptr<BalancingPass> make_balancing_pass(const BalancingSpec& spec, int num_experts,
                                                   const std::string& path, const BalancingEnv& env) {
  MOEMPI_CHECK_ALL(num_experts >= 1, "{}: a balancing pass needs num_experts >= 1 (got {})", path, num_experts);
  return balancing_pass_registry().at(path + ".type", spec.type).factory(spec, num_experts, path, env);
}

std::vector<std::unique_ptr<BalancingPass>> make_balancing_passes(
    const std::vector<BalancingSpec>& specs, int num_experts, const BalancingEnv& env) {
  std::vector<std::unique_ptr<BalancingPass>> passes;
  for (size_t i = 0; i < specs.size(); ++i)
    passes.push_back(make_balancing_pass(specs[i], num_experts, fmt::format("moe.balancing.{}", i), env));
  return passes;
}

}  // namespace moempi
