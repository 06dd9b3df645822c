// ShmWindow: RAII owner of one MPI-3 shared-memory window (MPI_Win_allocate_shared) over the ranks
// of one node, so that every member can load and store straight into every other member's segment.
// Guarantees: all members agree on every segment's capacity without extra communication (ensure()
// takes the same vector on every rank and the capacities only grow, by a headroom factor);
// synchronisation is MPI only (fence() = MPI_Win_sync + MPI_Barrier + MPI_Win_sync, watchdog-
// wrapped), never a spin of ours on shared flags (MPI's own progress may poll), so runs with more
// ranks than cores do not starve.
// Test: tests/shm_mpitest.cpp (ShmWindow.*).
#pragma once
#include <mpi.h>

#include <cstdint>
#include <span>
#include <vector>

#include "comm/communicator.h"

namespace moempi {

class ShmWindow {
 public:
  ShmWindow() = default;  // null: no segment, ensure() and fence() are local errors
  // Collective over `group`, whose ranks must share memory (one host; MPI_Win_allocate_shared
  // fails otherwise). The window works on its own duplicate of `group`, so it outlives the object
  // it was built from. Segments start empty; `headroom` (>= 1) multiplies a size that must grow.
  explicit ShmWindow(const Communicator& group, double headroom = 1.25);
  ~ShmWindow();
  ShmWindow(ShmWindow&& other) noexcept;
  ShmWindow& operator=(ShmWindow&& other) noexcept;
  ShmWindow(const ShmWindow&) = delete;
  ShmWindow& operator=(const ShmWindow&) = delete;

  // Collective over the group: bytes_needed_by_rank[r] is what rank r needs in its segment; every
  // rank passes the same vector. If some rank's segment is too small, the window is freed and
  // allocated again (collectively) with that segment grown to ceil(need * headroom), rounded up to
  // 64 bytes; other segments keep their capacity (never shrinking). Returns true when it
  // reallocated: every segment pointer changed and the old contents are gone.
  bool ensure(std::span<const int64_t> bytes_needed_by_rank);

  // Collective over the group: every store any member made into any segment before its fence()
  // is visible to every member's loads after its fence().
  void fence() const;

  bool is_null() const { return win_ == MPI_WIN_NULL; }
  int rank() const { return group_.rank(); }
  int size() const { return group_.size(); }
  const Communicator& group() const { return group_; }
  // Segment of group rank r in this process's address space (64-byte aligned), and its capacity
  // in bytes. Valid until the next reallocating ensure().
  char* segment(int r) const { return bases_[r]; }
  char* mine() const { return bases_[group_.rank()]; }
  int64_t capacity(int r) const { return capacity_[r]; }
  int64_t reallocations() const { return reallocations_; }

 private:
  void allocate();  // collective: a window with capacity_ segments
  void release();   // collective when a window exists

  Communicator group_;  // owned duplicate of the group
  double headroom_ = 1.25;
  MPI_Win win_ = MPI_WIN_NULL;
  std::vector<char*> bases_;
  std::vector<int64_t> capacity_;
  int64_t reallocations_ = 0;
};

}  // namespace moempi
