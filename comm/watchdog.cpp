#include "comm/watchdog.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "runtime/core/log.h"
#include "runtime/core/timer.h"

namespace moempi::watchdog {
namespace {

std::atomic<const char*> g_op{nullptr};
std::atomic<const char*> g_group{nullptr};
std::atomic<double> g_since{0.0};
std::atomic<int64_t> g_step{0};
double g_timeout = 0;
std::thread g_thread;
std::mutex g_mutex;
std::condition_variable g_cv;
bool g_stop = false;

void monitor() {
  const auto period = std::chrono::duration<double>(std::min(1.0, g_timeout / 10));
  std::unique_lock lock(g_mutex);
  while (!g_cv.wait_for(lock, period, [] { return g_stop; })) {
    const double since = g_since.load();
    if (since == 0.0 || now_seconds() - since < g_timeout) continue;
    char host[256] = "?";
    gethostname(host, sizeof host);
    const char* op = g_op.load();
    const char* group = g_group.load();
    std::fprintf(stderr,
                 "moempi: error on rank %d (%s): collective '%s' on group '%s' at step %lld did not "
                 "complete within comm.timeout_s = %g s (a rank skipped it, died or is stuck); "
                 "ending the job\n",
                 log::rank(), host, op ? op : "?", group ? group : "?",
                 static_cast<long long>(g_step.load()), g_timeout);
    std::fflush(stderr);
    std::_Exit(3);  // no MPI call from this thread: mpirun ends the job when a rank dies
  }
}

}  // namespace

void start(double timeout_s) {
  std::lock_guard lock(g_mutex);
  if (timeout_s <= 0 || g_thread.joinable()) return;
  g_timeout = timeout_s;
  g_stop = false;
  g_thread = std::thread(monitor);
}

void stop() {
  {
    std::lock_guard lock(g_mutex);
    g_stop = true;
  }
  g_cv.notify_all();
  if (g_thread.joinable()) g_thread.join();
}

void set_step(int64_t step) { g_step.store(step); }

Pending::Pending(const char* op, const char* group)
    : prev_op_(g_op.load()), prev_group_(g_group.load()), prev_since_(g_since.load()) {
  g_op.store(op);
  g_group.store(group);
  if (prev_since_ == 0.0) g_since.store(now_seconds());  // nested scopes keep the outer start
}

Pending::~Pending() {
  g_op.store(prev_op_);
  g_group.store(prev_group_);
  g_since.store(prev_since_);
}

}  // namespace moempi::watchdog
