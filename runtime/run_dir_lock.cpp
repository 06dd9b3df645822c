#include "runtime/run_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <utility>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace moempi {

RunDirLock::RunDirLock(const std::string& run_dir, std::string* stale_note) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) fail_collective(fmt::format("job.run_dir: cannot create '{}': {}", run_dir, ec.message()));
  const std::string path = run_dir + "/.moempi.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0)
    fail_collective(fmt::format("job.run_dir: cannot create the lock file '{}': {}", path, std::strerror(errno)));
  char holder[512] = {};
  const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
  std::string previous = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string();
  while (!previous.empty() && (previous.back() == '\n' || previous.back() == '\0')) previous.pop_back();
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      fail_collective(fmt::format("job.run_dir '{}' is in use by another moempi job ({}); wait for it to end or "
                                  "set another job.run_dir (or job.name)",
                                  run_dir, previous.empty() ? "holder unknown" : previous));
    fail_collective(fmt::format("job.run_dir: cannot lock '{}': {}", path, std::strerror(err)));
  }
  if (stale_note)
    *stale_note = previous.empty() ? ""
                                   : fmt::format("job.run_dir '{}': took over a stale lock left by a job that has "
                                                 "ended ({})",
                                                 run_dir, previous);
  char host[256] = "?";
  gethostname(host, sizeof host);
  const std::time_t now = std::time(nullptr);
  char when[64] = "?";
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  const std::string me = fmt::format("pid {} on host {}, started {}\n", ::getpid(), host, when);
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    fail_collective(fmt::format("job.run_dir: cannot write the lock file '{}': {}", path, std::strerror(errno)));
}

RunDirLock::RunDirLock(RunDirLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

RunDirLock& RunDirLock::operator=(RunDirLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      if (::ftruncate(fd_, 0) != 0) {}  // ended cleanly: nothing stale left behind
      ::close(fd_);
    }
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

RunDirLock::~RunDirLock() {
  if (fd_ < 0) return;
  if (::ftruncate(fd_, 0) != 0) {}  // a clean end leaves an empty (not stale) lock file
  ::close(fd_);
}

}  // namespace moempi
