// The collective watchdog (DESIGN.md "Communication rules"): every blocking collective moempi
// posts is wrapped in a watchdog::Pending scope naming the operation and the group. If one stays
// pending longer than comm.timeout_s (a rank skipped it, died, or deadlocked), a monitor thread
// prints rank, host, the operation, the group and the training step, and ends the process, which
// makes mpirun end the job (Open MPI is fail-stop) instead of hanging silently.
// The monitor thread makes no MPI call. Test: tests/e2e/watchdog.sh (a rank that skips a
// collective is caught and named).
#pragma once
#include <cstdint>

namespace moempi::watchdog {

void start(double timeout_s);  // starts the monitor (idempotent); timeout <= 0 disables it
void stop();
void set_step(int64_t step);   // 1-based training step shown in the report (0 = outside training)

class Pending {
 public:
  Pending(const char* op, const char* group);  // both must be string literals (or outlive the scope)
  ~Pending();
  Pending(const Pending&) = delete;
  Pending& operator=(const Pending&) = delete;

 private:
  const char* prev_op_;
  const char* prev_group_;
  double prev_since_;
};

}  // namespace moempi::watchdog
