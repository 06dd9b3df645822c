// The LR schedules and their registry (optim.schedule.type). Test: tests/optim_test.cpp.
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "runtime/core/error.h"

namespace moempi {
namespace {

float constant(const ScheduleSpec&, float lr, int, int) { return lr; }

// Linear warmup to lr over warmup_steps, then `progress` in [0, 1] over the remaining steps.
template <class Decay>
float warmup_then(const ScheduleSpec& s, float lr, int total, int step, Decay decay) {
  if (step < s.warmup_steps) return lr * static_cast<float>(step + 1) / s.warmup_steps;
  const int decay_steps = std::max(1, total - s.warmup_steps - 1);
  const float progress = std::min(1.0f, static_cast<float>(step - s.warmup_steps) / decay_steps);
  return decay(lr, lr * s.min_lr_ratio, progress);
}

float warmup_cosine(const ScheduleSpec& s, float lr, int total, int step) {
  return warmup_then(s, lr, total, step, [](float hi, float lo, float p) {
    return lo + 0.5f * (hi - lo) * (1.0f + std::cos(static_cast<float>(M_PI) * p));
  });
}

float warmup_linear(const ScheduleSpec& s, float lr, int total, int step) {
  return warmup_then(s, lr, total, step, [](float hi, float lo, float p) { return hi + (lo - hi) * p; });
}

// The keys both warmup schedules own.
std::vector<schema::Field> warmup_keys() {
  return {schema::int_field("warmup_steps", &ScheduleSpec::warmup_steps, 0),
          schema::real_field("min_lr_ratio", &ScheduleSpec::min_lr_ratio, schema::kUnitClosed)};
}

}  // namespace

const LrScheduleRegistry& lr_schedule_registry() {
  static const LrScheduleRegistry registry("an LR schedule", {
      // name, shape, keys only this schedule accepts, one-line doc
      {"constant", &constant, {}, "lr at every step"},
      {"warmup_cosine", &warmup_cosine, warmup_keys(), "linear warmup, then cosine decay to lr * min_lr_ratio"},
      {"warmup_linear", &warmup_linear, warmup_keys(), "linear warmup, then linear decay to lr * min_lr_ratio"},
  });
  return registry;
}

LrSchedule::LrSchedule(const OptimSpec& optim, int total_steps)
    : spec_(optim.schedule), lr_(optim.lr), total_(total_steps) {
  const LrScheduleRegistry& r = lr_schedule_registry();
  const auto* entry = r.find(spec_.type);
  if (!entry) fail_collective(r.not_one_of("optim.schedule.type", spec_.type));
  shape_ = entry->factory;
}

float LrSchedule::lr_at(int step) const { return shape_(spec_, lr_, total_, step); }

}  // namespace moempi
