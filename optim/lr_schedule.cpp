#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "runtime/core/error.h"

namespace moempi {

LrSchedule::LrSchedule(const OptimSpec& optim, int total_steps)
    : spec_(optim.schedule), lr_(optim.lr), total_(total_steps) {
  MOEMPI_CHECK_ALL(spec_.type == "constant" || spec_.type == "warmup_cosine" ||
                       spec_.type == "warmup_linear",
                   "optim.schedule.type: '{}' is not one of constant, warmup_cosine, warmup_linear",
                   spec_.type);
}

float LrSchedule::lr_at(int step) const {
  if (spec_.type == "constant") return lr_;
  if (step < spec_.warmup_steps) return lr_ * static_cast<float>(step + 1) / spec_.warmup_steps;
  const int decay_steps = std::max(1, total_ - spec_.warmup_steps - 1);
  const float progress = std::min(1.0f, static_cast<float>(step - spec_.warmup_steps) / decay_steps);
  const float min_lr = lr_ * spec_.min_lr_ratio;
  if (spec_.type == "warmup_linear") return lr_ + (min_lr - lr_) * progress;
  return min_lr + 0.5f * (lr_ - min_lr) * (1.0f + std::cos(static_cast<float>(M_PI) * progress));
}

}  // namespace moempi
