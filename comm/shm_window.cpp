// The shared-memory window: one passive-target epoch (MPI_Win_lock_all) for the window's whole life,
// so loads and stores need no per-access MPI call; MPI_Win_sync around a barrier orders them
// (the MPI-3 "unified memory model" idiom for shared windows).
#include "comm/shm_window.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "comm/collectives.h"
#include "comm/mpi_check.h"
#include "comm/watchdog.h"

namespace moempi {
namespace {

constexpr int64_t kAlign = 64;

int64_t round_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

}  // namespace

ShmWindow::ShmWindow(const Communicator& group, double headroom) : headroom_(headroom) {
  MOEMPI_CHECK_ONE(!group.is_null(), "shm window: null group");
  MOEMPI_CHECK_ONE(headroom >= 1.0, "shm window: headroom {} must be >= 1", headroom);
  MPI_Comm dup = MPI_COMM_NULL;
  {
    watchdog::Pending pending("MPI_Comm_dup", group.name().c_str());
    MOEMPI_MPI_CHECK(MPI_Comm_dup(group.comm(), &dup));
  }
  group_ = Communicator::adopt(dup, group.name() + ".shm");
  capacity_.assign(group_.size(), 0);
  allocate();
}

ShmWindow::~ShmWindow() { release(); }

ShmWindow::ShmWindow(ShmWindow&& other) noexcept
    : group_(std::move(other.group_)),
      headroom_(other.headroom_),
      win_(std::exchange(other.win_, MPI_WIN_NULL)),
      bases_(std::move(other.bases_)),
      capacity_(std::move(other.capacity_)),
      reallocations_(other.reallocations_) {}

ShmWindow& ShmWindow::operator=(ShmWindow&& other) noexcept {
  if (this != &other) {
    release();
    group_ = std::move(other.group_);
    headroom_ = other.headroom_;
    win_ = std::exchange(other.win_, MPI_WIN_NULL);
    bases_ = std::move(other.bases_);
    capacity_ = std::move(other.capacity_);
    reallocations_ = other.reallocations_;
  }
  return *this;
}

void ShmWindow::allocate() {
  watchdog::Pending pending("MPI_Win_allocate_shared", group_.name().c_str());
  MPI_Info info;
  MOEMPI_MPI_CHECK(MPI_Info_create(&info));
  // Each segment is its own allocation (page-aligned in Open MPI, local to its rank's NUMA node).
  MOEMPI_MPI_CHECK(MPI_Info_set(info, "alloc_shared_noncontig", "true"));
  // Open MPI packs the segments without aligning them: ask kAlign bytes more and align each base
  // here. Mappings are page-aligned, so every process finds the same aligned start.
  char* mine = nullptr;
  MOEMPI_MPI_CHECK(MPI_Win_allocate_shared(static_cast<MPI_Aint>(capacity_[group_.rank()] + kAlign), 1,
                                           info, group_.comm(), &mine, &win_));
  MOEMPI_MPI_CHECK(MPI_Info_free(&info));
  MOEMPI_MPI_CHECK(MPI_Win_set_errhandler(win_, MPI_ERRORS_RETURN));
  bases_.assign(group_.size(), nullptr);
  for (int r = 0; r < group_.size(); ++r) {
    MPI_Aint bytes = 0;
    int disp_unit = 0;
    char* raw = nullptr;
    MOEMPI_MPI_CHECK(MPI_Win_shared_query(win_, r, &bytes, &disp_unit, &raw));
    MOEMPI_CHECK_ONE(bytes >= capacity_[r] + kAlign,
                     "shm window over '{}': segment of rank {} has {} bytes, asked {}", group_.name(), r,
                     static_cast<int64_t>(bytes), capacity_[r] + kAlign);
    const auto addr = reinterpret_cast<uintptr_t>(raw);
    bases_[r] = raw + (kAlign - addr % kAlign) % kAlign;
  }
  MOEMPI_MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_));
}

void ShmWindow::release() {
  if (win_ == MPI_WIN_NULL) return;
  if (!mpi_finalized()) {
    watchdog::Pending pending("MPI_Win_free", group_.name().c_str());
    MOEMPI_MPI_CHECK(MPI_Win_unlock_all(win_));
    MOEMPI_MPI_CHECK(MPI_Win_free(&win_));
  }
  win_ = MPI_WIN_NULL;
  bases_.assign(bases_.size(), nullptr);
}

bool ShmWindow::ensure(std::span<const int64_t> bytes_needed_by_rank) {
  MOEMPI_CHECK_ONE(!is_null(), "shm window: ensure() on a null window");
  const int n = group_.size();
  MOEMPI_CHECK_ONE(static_cast<int>(bytes_needed_by_rank.size()) == n,
                   "shm window over '{}': {} sizes for {} ranks", group_.name(), bytes_needed_by_rank.size(), n);
  bool grow = false;
  for (int r = 0; r < n; ++r) grow |= bytes_needed_by_rank[r] > capacity_[r];
  if (!grow) return false;
  // Same vector and same history on every rank: every rank takes this branch and computes the
  // same capacities, so the collective free/allocate below needs no agreement round.
  for (int r = 0; r < n; ++r) {
    const int64_t need = bytes_needed_by_rank[r];
    MOEMPI_CHECK_ONE(need >= 0, "shm window over '{}': negative size {} for rank {}", group_.name(), need, r);
    if (need > capacity_[r])
      capacity_[r] = round_up(static_cast<int64_t>(std::ceil(static_cast<double>(need) * headroom_)));
  }
  release();
  allocate();
  ++reallocations_;
  return true;
}

void ShmWindow::fence() const {
  MOEMPI_CHECK_ONE(!is_null(), "shm window: fence() on a null window");
  MOEMPI_MPI_CHECK(MPI_Win_sync(win_));  // my stores reach memory before peers pass the barrier
  barrier(group_);
  MOEMPI_MPI_CHECK(MPI_Win_sync(win_));  // my later loads see what peers stored before it
}

}  // namespace moempi
