// Communicator lifetime and construction by split. Every MPI call goes through MOEMPI_MPI_CHECK.
#include "comm/communicator.h"

#include <utility>

#include "comm/mpi_check.h"
#include "comm/watchdog.h"

namespace moempi {

Communicator::Communicator(MPI_Comm comm, std::string name, bool owned)
    : comm_(comm), name_(std::move(name)), owned_(owned) {
  if (comm_ == MPI_COMM_NULL) {
    owned_ = false;
    return;
  }
  MOEMPI_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  MOEMPI_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MOEMPI_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

Communicator::~Communicator() { release(); }

Communicator::Communicator(Communicator&& other) noexcept
    : comm_(std::exchange(other.comm_, MPI_COMM_NULL)),
      name_(std::exchange(other.name_, "null")),
      rank_(std::exchange(other.rank_, -1)),
      size_(std::exchange(other.size_, 0)),
      owned_(std::exchange(other.owned_, false)) {}

Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    release();
    comm_ = std::exchange(other.comm_, MPI_COMM_NULL);
    name_ = std::exchange(other.name_, "null");
    rank_ = std::exchange(other.rank_, -1);
    size_ = std::exchange(other.size_, 0);
    owned_ = std::exchange(other.owned_, false);
  }
  return *this;
}

void Communicator::release() {
  if (owned_ && comm_ != MPI_COMM_NULL) {
    // A communicator outliving MPI_Finalize (a static, a leaked object) is simply dropped.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MOEMPI_MPI_CHECK(MPI_Comm_free(&comm_));
  }
  comm_ = MPI_COMM_NULL;
  owned_ = false;
}

Communicator Communicator::world() { return borrow(MPI_COMM_WORLD, "world"); }

Communicator Communicator::borrow(MPI_Comm comm, std::string name) {
  return Communicator(comm, std::move(name), false);
}

Communicator Communicator::split(const Communicator& parent, int color, int key, std::string name) {
  MPI_Comm comm = MPI_COMM_NULL;
  watchdog::Pending pending("MPI_Comm_split", parent.name().c_str());
  MOEMPI_MPI_CHECK(MPI_Comm_split(parent.comm(), color, key, &comm));
  return Communicator(comm, std::move(name), true);
}

Communicator Communicator::split_shared(const Communicator& parent, int key, std::string name) {
  MPI_Comm comm = MPI_COMM_NULL;
  watchdog::Pending pending("MPI_Comm_split_type", parent.name().c_str());
  MOEMPI_MPI_CHECK(MPI_Comm_split_type(parent.comm(), MPI_COMM_TYPE_SHARED, key, MPI_INFO_NULL, &comm));
  return Communicator(comm, std::move(name), true);
}

Communicator Communicator::view() const {
  Communicator v;
  v.comm_ = comm_;
  v.name_ = name_;
  v.rank_ = rank_;
  v.size_ = size_;
  v.owned_ = false;
  return v;
}

Communicator Communicator::adopt(MPI_Comm comm, std::string name) {
  const bool predefined = comm == MPI_COMM_WORLD || comm == MPI_COMM_SELF;
  return Communicator(comm, std::move(name), !predefined);
}

}  // namespace moempi
