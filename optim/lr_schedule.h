// Learning-rate schedules: constant, warmup_cosine, warmup_linear (linear warmup from 0 over
// warmup_steps, then decay to lr * min_lr_ratio at the last step). Test: tests/optim_test.cpp.
#pragma once
#include "runtime/core/config.h"

namespace moempi {

class LrSchedule {
 public:
  LrSchedule(const OptimSpec& optim, int total_steps);  // collective error on unknown type
  float lr_at(int step) const;                           // step counts from 0

 private:
  ScheduleSpec spec_;
  float lr_;
  int total_;
};

}  // namespace moempi
