#include "runtime/core/test_hooks.h"

#include <atomic>

namespace moempi::test_hooks {
namespace {
std::atomic<StepHook> g_step_hook{nullptr};
std::atomic<GradHook> g_grad_hook{nullptr};
std::atomic<SaveHook> g_save_hook{nullptr};
}  // namespace

void install_save_hook(SaveHook hook) { g_save_hook.store(hook); }

void in_checkpoint_save(int rank, int64_t step) {
  if (SaveHook hook = g_save_hook.load()) hook(rank, step);
}

void install_grad_hook(GradHook hook) { g_grad_hook.store(hook); }

void after_backward(int rank, int64_t step, ParamArena& arena) {
  if (GradHook hook = g_grad_hook.load()) hook(rank, step, arena);
}

void install_step_hook(StepHook hook) { g_step_hook.store(hook); }

void at_step(int rank, int64_t step) {
  if (StepHook hook = g_step_hook.load()) hook(rank, step);
}

}  // namespace moempi::test_hooks
