// Learning-rate schedules, chosen by optim.schedule.type through one Registry (lr_schedule.cpp):
// constant, warmup_cosine, warmup_linear (linear warmup from 0 over warmup_steps, then decay to
// lr * min_lr_ratio at the last step; both own warmup_steps and min_lr_ratio).
// Test: tests/optim_test.cpp.
#pragma once
#include "runtime/core/config.h"
#include "runtime/core/registry.h"

namespace moempi {

// The learning rate at `step` (from 0) of `total` steps, for peak rate `lr`.
using LrShape = float (*)(const ScheduleSpec& spec, float lr, int total, int step);
using LrScheduleRegistry = Registry<LrShape>;

// optim.schedule.type -> shape, in registration order, with each schedule's own keys.
const LrScheduleRegistry& lr_schedule_registry();

class LrSchedule {
 public:
  LrSchedule(const OptimSpec& optim, int total_steps);  // collective error on unknown type
  float lr_at(int step) const;                           // step counts from 0

 private:
  ScheduleSpec spec_;
  float lr_;
  int total_;
  LrShape shape_;
};

}  // namespace moempi
