// An exclusive lock on a run directory (job.run_dir), so that two jobs never write the same
// job.yaml and metrics.jsonl. flock(2) on <run_dir>/.moempi.lock, held for the life of the
// object: the kernel releases it when the process ends, however it ends, so a lock file left by a
// dead job is stale by construction and is taken over (and reported). The file records the holder
// (host, pid, start time) for the refusal message. Test: tests/e2e/run_dir.sh.
#pragma once
#include <string>

namespace moempi {

class RunDirLock {
 public:
  RunDirLock() = default;
  // Creates the directory if needed and takes the lock. A directory held by a live job is a
  // CollectiveError naming the directory and the holder; `stale_note` receives a line when a
  // lock left by a job that has ended was taken over ("" otherwise).
  RunDirLock(const std::string& run_dir, std::string* stale_note);
  RunDirLock(RunDirLock&& other) noexcept;
  RunDirLock& operator=(RunDirLock&& other) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  ~RunDirLock();

 private:
  int fd_ = -1;
};

}  // namespace moempi
