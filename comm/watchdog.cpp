#include "comm/watchdog.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

#include <algorithm>
#include <cctype>
#include <vector>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "runtime/core/log.h"
#include "runtime/core/timer.h"

namespace moempi::watchdog {
namespace {

// One rank's progress record in the job's table (shared by the ranks of a machine).
struct alignas(64) ProgressSlot {
  std::atomic<int64_t> heartbeat_ms;  // steady clock of the monitor's last beat; 0 = never attached
  std::atomic<int64_t> entered;       // outermost collectives entered so far
  std::atomic<int64_t> step;
  std::atomic<int32_t> pending;       // 1 while inside a collective
  std::atomic<int32_t> pid;
};
static_assert(std::atomic<int64_t>::is_always_lock_free);

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::atomic<const char*> g_op{nullptr};
std::atomic<const char*> g_group{nullptr};
std::atomic<double> g_since{0.0};
std::atomic<int64_t> g_step{0};
std::atomic<int> g_rank{-1};  // set by attach_progress (before MPI exists); else log::rank()
double g_timeout = 0;
std::thread g_thread;
std::mutex g_mutex;
std::condition_variable g_cv;
bool g_stop = false;

ProgressSlot* g_table = nullptr;  // world_size slots, or null without a launcher job id
int g_table_size = 0;
std::string g_table_path;

int my_rank() { return g_rank.load() >= 0 ? g_rank.load() : log::rank(); }
ProgressSlot* my_slot() {
  const int r = my_rank();
  return g_table && r >= 0 && r < g_table_size ? &g_table[r] : nullptr;
}

// What the other ranks on this machine were doing: the ranks that had not reached the collective
// this rank waits in, and those that stopped responding. "" without a progress table.
std::string stuck_ranks() {
  ProgressSlot* me = my_slot();
  if (!me) return "";
  const int64_t now = steady_ms(), mine = me->entered.load();
  const int64_t stale_ms = static_cast<int64_t>(std::max(3000.0, 3000 * std::min(1.0, g_timeout / 10)));
  std::vector<std::string> behind, silent, absent;
  for (int r = 0; r < g_table_size; ++r) {
    if (r == my_rank()) continue;
    const ProgressSlot& s = g_table[r];
    const int64_t hb = s.heartbeat_ms.load();
    if (hb == 0) {
      absent.push_back(std::to_string(r));
    } else if (now - hb > stale_ms) {
      silent.push_back(fmt::format("{} (pid {}, silent for {:.0f} s: stopped or dead)", r, s.pid.load(),
                                   (now - hb) / 1e3));
    } else if (s.entered.load() < mine || (s.entered.load() == mine && !s.pending.load())) {
      behind.push_back(fmt::format("{} (at step {}, {})", r, s.step.load(),
                                   s.pending.load() ? "in an earlier collective" : "computing"));
    }
  }
  std::string out;
  auto add = [&](const char* what, const std::vector<std::string>& ranks) {
    if (ranks.empty()) return;
    std::string list;
    for (size_t i = 0; i < ranks.size() && i < 8; ++i) list += (i ? ", " : "") + ranks[i];
    if (ranks.size() > 8) list += fmt::format(" and {} more", ranks.size() - 8);
    out += fmt::format("; {} rank{} {}", what, ranks.size() == 1 ? "" : "s", list);
  };
  add("not responding:", silent);
  add("had not reached it:", behind);
  add("no progress record (not started, or on another machine):", absent);
  if (out.empty()) out = "; every other rank on this machine is waiting in it too";
  return out;
}

void monitor() {
  const auto period = std::chrono::duration<double>(std::min(1.0, g_timeout / 10));
  std::unique_lock lock(g_mutex);
  double last_wake = now_seconds();
  while (!g_cv.wait_for(lock, period, [] { return g_stop; })) {
    const double now = now_seconds();
    // A gap much longer than the period means this process was suspended (SIGSTOP): the time it
    // was stopped does not count against the collective it waits in (the others report it).
    if (now - last_wake > 2.0 + 5 * period.count()) {
      const double since = g_since.load();
      if (since != 0.0) g_since.store(since + (now - last_wake));
    }
    last_wake = now;
    if (ProgressSlot* s = my_slot()) s->heartbeat_ms.store(steady_ms());
    const double since = g_since.load();
    if (since == 0.0 || now - since < g_timeout) continue;
    char host[256] = "?";
    gethostname(host, sizeof host);
    const char* op = g_op.load();
    const char* group = g_group.load();
    const std::string others = stuck_ranks();
    std::fprintf(stderr,
                 "moempi: error on rank %d (%s): collective '%s' on group '%s' at step %lld did not "
                 "complete within comm.timeout_s = %g s (a rank skipped it, died or is stuck)%s; "
                 "ending the job\n",
                 my_rank(), host, op ? op : "?", group ? group : "?", static_cast<long long>(g_step.load()), g_timeout,
                 others.c_str());
    std::fflush(stderr);
    if (!g_table_path.empty()) ::unlink(g_table_path.c_str());
    std::_Exit(3);  // no MPI call from this thread: mpirun ends the job when a rank dies
  }
}

// The launcher's job id, this rank, the world size and this rank's index on its node (-1 when the
// launcher does not say), from the environment (before MPI exists).
bool launcher_identity(std::string& job, int& rank, int& size, int& local_rank) {
  auto env = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
  };
  if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE") && (env("PMIX_NAMESPACE") || env("OMPI_MCA_ess_base_jobid"))) {
    job = env("PMIX_NAMESPACE") ? env("PMIX_NAMESPACE") : env("OMPI_MCA_ess_base_jobid");
    rank = std::atoi(env("OMPI_COMM_WORLD_RANK"));
    size = std::atoi(env("OMPI_COMM_WORLD_SIZE"));
    local_rank = env("OMPI_COMM_WORLD_LOCAL_RANK") ? std::atoi(env("OMPI_COMM_WORLD_LOCAL_RANK")) : -1;
  } else if (env("SLURM_JOB_ID") && env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    job = fmt::format("slurm{}.{}", env("SLURM_JOB_ID"), env("SLURM_STEP_ID") ? env("SLURM_STEP_ID") : "0");
    rank = std::atoi(env("SLURM_PROCID"));
    size = std::atoi(env("SLURM_NTASKS"));
    local_rank = env("SLURM_LOCALID") ? std::atoi(env("SLURM_LOCALID")) : -1;
  } else {
    return false;
  }
  for (char& c : job)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.') c = '_';
  return size >= 1 && size <= (1 << 20) && rank >= 0 && rank < size;
}

// Progress tables of jobs that ended without removing theirs (a rank killed, the job torn down by
// mpirun): a table older than a minute in which no recorded process is alive is removed, so faults
// do not pile files up in /dev/shm. Best effort; only this user's tables.
void remove_stale_tables(const std::string& keep) {
  const std::string suffix = fmt::format("-{}", getuid());
  DIR* dir = ::opendir("/dev/shm");
  if (!dir) return;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (name.rfind("moempi-progress-", 0) != 0 || name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string path = "/dev/shm/" + name;
    if (path == keep) continue;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    bool stale = ::fstat(fd, &st) == 0 && st.st_uid == getuid() && std::time(nullptr) - st.st_mtime > 60 &&
                 st.st_size % static_cast<off_t>(sizeof(ProgressSlot)) == 0;
    if (stale && st.st_size > 0) {
      void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        stale = false;
      } else {
        const auto* slots = static_cast<const ProgressSlot*>(p);
        for (size_t r = 0; stale && r < static_cast<size_t>(st.st_size) / sizeof(ProgressSlot); ++r) {
          const int32_t pid = slots[r].pid.load();
          if (pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH)) stale = false;  // alive (or not ours to probe)
        }
        ::munmap(p, static_cast<size_t>(st.st_size));
      }
    }
    ::close(fd);
    if (stale) ::unlink(path.c_str());
  }
  ::closedir(dir);
}

}  // namespace

void attach_progress() {
  std::string job;
  int rank = 0, size = 0, local_rank = -1;
  if (g_table || !launcher_identity(job, rank, size, local_rank)) return;
  g_rank.store(rank);
  const std::string path = fmt::format("/dev/shm/moempi-progress-{}-{}", job, getuid());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;  // best effort: reports then name no other rank
  const size_t bytes = sizeof(ProgressSlot) * static_cast<size_t>(size);
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    ::close(fd);
    return;
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return;
  g_table = static_cast<ProgressSlot*>(p);  // zero-filled by ftruncate: every slot "never attached"
  g_table_size = size;
  g_table_path = path;
  g_table[rank].pid.store(static_cast<int32_t>(::getpid()));
  g_table[rank].heartbeat_ms.store(steady_ms());
  // One rank per node looks for tables that faults left behind (each node has its own /dev/shm).
  if (local_rank == 0 || (local_rank < 0 && rank == 0)) remove_stale_tables(path);
}

void detach_progress() {
  if (!g_table) return;
  if (ProgressSlot* s = my_slot()) s->heartbeat_ms.store(0);
  // Every rank: each node has its own file (the first unlink removes it, the rest find none); ranks
  // still running keep their mappings, and every rank attached before MPI_Init completed.
  ::unlink(g_table_path.c_str());
  ::munmap(g_table, sizeof(ProgressSlot) * static_cast<size_t>(g_table_size));
  g_table = nullptr;
}

bool start(double timeout_s) {
  std::lock_guard lock(g_mutex);
  if (timeout_s <= 0 || g_thread.joinable()) return false;
  g_timeout = timeout_s;
  g_stop = false;
  g_thread = std::thread(monitor);
  return true;
}

bool in_scope() { return g_since.load() != 0.0; }

void stop() {
  {
    std::lock_guard lock(g_mutex);
    g_stop = true;
  }
  g_cv.notify_all();
  if (g_thread.joinable()) g_thread.join();
}

void set_step(int64_t step) {
  g_step.store(step);
  if (ProgressSlot* s = my_slot()) s->step.store(step);
}

Pending::Pending(const char* op, const char* group)
    : prev_op_(g_op.load()), prev_group_(g_group.load()), prev_since_(g_since.load()) {
  g_op.store(op);
  g_group.store(group);
  if (prev_since_ == 0.0) {  // nested scopes keep the outer start
    g_since.store(now_seconds());
    if (ProgressSlot* s = my_slot()) {
      s->entered.fetch_add(1);
      s->pending.store(1);
    }
  }
}

Pending::~Pending() {
  g_op.store(prev_op_);
  g_group.store(prev_group_);
  g_since.store(prev_since_);
  if (prev_since_ == 0.0)
    if (ProgressSlot* s = my_slot()) s->pending.store(0);
}

}  // namespace moempi::watchdog
