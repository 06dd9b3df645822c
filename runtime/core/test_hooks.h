// Fault injection points for tests. The production binary installs no hook, so these calls do
// nothing there; the test binary (moempi_test_hooks, built with the tests from launch/main.cpp
// with MOEMPI_TEST_HOOKS) installs one that reads MOEMPI_TEST_HANG="RANK:STEP" and makes that rank
// stop responding at that step, as a stuck or deadlocked rank would (tests/e2e/watchdog.sh).
#pragma once
#include <cstdint>

namespace moempi::test_hooks {

using StepHook = void (*)(int rank, int64_t step);
void install_step_hook(StepHook hook);
// Called by the trainer at the start of every step (1-based).
void at_step(int rank, int64_t step);

}  // namespace moempi::test_hooks
