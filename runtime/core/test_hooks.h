// Fault injection points for tests. The production binary installs no hook, so these calls do
// nothing there; the test binary (moempi_test_hooks, built with the tests from launch/main.cpp
// with MOEMPI_TEST_HOOKS) installs one that reads MOEMPI_TEST_HANG="RANK:STEP" and makes that rank
// stop responding at that step, as a stuck or deadlocked rank would (tests/e2e/watchdog.sh), and
// MOEMPI_TEST_NAN_GRAD (below).
#pragma once
#include <cstdint>

namespace moempi {
class ParamArena;
}

namespace moempi::test_hooks {

using StepHook = void (*)(int rank, int64_t step);
void install_step_hook(StepHook hook);
// Called by the trainer at the start of every step (1-based).
void at_step(int rank, int64_t step);

// Called after the step's backward passes, before the gradients are synchronised: may poison a
// gradient (MOEMPI_TEST_NAN_GRAD="RANK:STEP:TENSOR" in the test binary, tests/e2e/nonfinite.sh).
using GradHook = void (*)(int rank, int64_t step, ParamArena& arena);
void install_grad_hook(GradHook hook);
void after_backward(int rank, int64_t step, ParamArena& arena);

// Called by save_checkpoint on every rank once every shard of step `step` is on disk, before rank 0
// writes the manifest that makes the checkpoint complete: MOEMPI_TEST_KILL_IN_SAVE="RANK:STEP" in
// the test binary kills that rank there (SIGKILL), a crash in the middle of a save
// (tests/e2e/faults.sh).
using SaveHook = void (*)(int rank, int64_t step);
void install_save_hook(SaveHook hook);
void in_checkpoint_save(int rank, int64_t step);

}  // namespace moempi::test_hooks
