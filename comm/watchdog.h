// The collective watchdog (DESIGN.md "Communication rules"): every blocking collective moempi
// posts is wrapped in a watchdog::Pending scope naming the operation and the group. If one stays
// pending longer than comm.timeout_s (a rank skipped it, died, or deadlocked), a monitor thread
// prints rank, host, the operation, the group and the training step, and ends the process, which
// makes mpirun end the job (Open MPI is fail-stop) instead of hanging silently.
// The monitor thread makes no MPI call. It also covers the start-up: the binary starts it before
// MPI_Init, inside a Pending scope, so a rank that never arrives cannot hang MPI_Init forever.
// Each rank keeps a progress record (collectives entered, step, heartbeat) in a table shared by
// the ranks of a machine (/dev/shm, named after the launcher's job id), so a report names the
// ranks that had not reached the collective or stopped responding. A process that was itself
// suspended (SIGSTOP) does not count the suspension against its collective. Every rank removes the
// table at a clean end; one rank per machine (the launcher's local rank 0) removes the tables of
// earlier jobs that ended without removing theirs (a killed rank).
// Non-blocking operations (MPI_Isend/Irecv) are watched where they are waited for: a Pending
// scope around the MPI_Waitall (RowBlockExchange::wait, the hierarchical hop).
// Tests: tests/e2e/watchdog.sh (a rank that skips a collective, a SIGSTOPped rank mid-run and
// before MPI_Init: caught within the timeout, the stuck rank named); tests/e2e/faults.sh (kill -9
// and SIGSTOP of a rank, then resume; every blocking MPI call audited to be inside a scope).
#pragma once
#include <cstdint>

namespace moempi::watchdog {

// Starts the monitor; timeout <= 0 disables it. Idempotent: true only for the call that started
// it, so a caller stops only a monitor it started (the binary keeps it up to MPI_Finalize).
bool start(double timeout_s);
// This rank's progress record, from the launcher's environment (Open MPI, SLURM); works before
// MPI_Init. No-op without a launcher (a singleton run). detach_progress() at a clean end.
void attach_progress();
void detach_progress();
void stop();
void set_step(int64_t step);  // 1-based training step shown in the report (0 = outside training)
// True inside a Pending scope: every blocking MPI call moempi makes must be (the test binary
// checks it on each call: launch/watchdog_audit.cpp, tests/e2e/faults.sh).
bool in_scope();

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
