// Preemption (README "Preemption"): SIGTERM, SIGUSR1 and SIGINT, as batch systems and people send
// them, only set a flag here (async-signal-safe). The trainer reads it at every step boundary and
// agrees on it over the world (one int64 MPI_Allreduce MAX per step, posted by every rank), so a
// signal that reached one rank only stops every rank after the same step. They then save a whole
// checkpoint (the ordinary writer, `latest` moved) and the binary exits with kPreemptedExitCode and
// one line naming the signal, the step and the checkpoint. Signals that arrive while the job
// finishes the step or saves are counted and otherwise ignored: nothing is cut short.
// Tests: tests/e2e/preempt.sh (one rank signalled, mpirun signalled, repeated signals during the
// save, a signal in the first step; resume continues bit for bit), tests/e2e/slurm.sh.
#pragma once
#include <string>

namespace moempi::preemption {

// Exit code of a job stopped by a signal after saving its checkpoint: 75 (EX_TEMPFAIL in
// sysexits.h: "temporary failure; the user is invited to retry"). Rerun (resume: auto) to continue.
constexpr int kPreemptedExitCode = 75;

// Blocks SIGTERM, SIGUSR1 and SIGINT until install(): they stay pending, across an execve too
// (blas::ensure_fast_kernel may re-execute the binary, which resets handlers but keeps the mask).
void hold();

// Installs the handlers for SIGTERM, SIGUSR1 and SIGINT (SA_RESTART: interrupted system calls
// resume) and unblocks them; a signal held since hold() is delivered then. Idempotent.
void install();

// The first signal received since start (0 = none), and how many were received in all.
// Async-signal-safe reads; collective agreement is the caller's (runtime/trainer.cpp).
int pending_signal();
int signals_received();

// "SIGTERM", "SIGUSR1", "SIGINT", or "signal N".
std::string signal_name(int signo);

// Tests in one process: as if `signo` had been delivered (without raising it), and forget every
// signal received.
void simulate(int signo);
void clear();

}  // namespace moempi::preemption
