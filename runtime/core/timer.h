// Wall-clock timing for step metrics and per-phase breakdowns.
#pragma once
#include <chrono>

namespace moempi {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Accumulates seconds into a slot while in scope: { ScopedTimer t(phase_seconds[kAttention]); ... }
class ScopedTimer {
 public:
  explicit ScopedTimer(double& slot) : slot_(slot), start_(now_seconds()) {}
  ~ScopedTimer() { slot_ += now_seconds() - start_; }

 private:
  double& slot_;
  double start_;
};

}  // namespace moempi
