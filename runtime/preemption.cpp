#include "runtime/preemption.h"

#include <atomic>
#include <csignal>
#include <cstring>

#include <fmt/format.h>

namespace moempi::preemption {
namespace {

// Lock-free atomics are async-signal-safe; the handler does nothing else.
std::atomic<int> g_first{0};
std::atomic<int> g_count{0};
static_assert(std::atomic<int>::is_always_lock_free);

void on_signal(int signo) {
  int none = 0;
  g_first.compare_exchange_strong(none, signo);
  g_count.fetch_add(1);
}

sigset_t preemption_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int signo : {SIGTERM, SIGUSR1, SIGINT}) sigaddset(&set, signo);
  return set;
}

}  // namespace

void hold() {
  const sigset_t set = preemption_signals();
  sigprocmask(SIG_BLOCK, &set, nullptr);
}

void install() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = &on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int signo : {SIGTERM, SIGUSR1, SIGINT}) sigaction(signo, &sa, nullptr);
  const sigset_t set = preemption_signals();
  sigprocmask(SIG_UNBLOCK, &set, nullptr);  // what hold() kept pending is delivered now
}

int pending_signal() { return g_first.load(); }
int signals_received() { return g_count.load(); }

std::string signal_name(int signo) {
  switch (signo) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    default: return fmt::format("signal {}", signo);
  }
}

void simulate(int signo) { on_signal(signo); }

void clear() {
  g_first.store(0);
  g_count.store(0);
}

}  // namespace moempi::preemption
