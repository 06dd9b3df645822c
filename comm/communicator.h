// Communicator: RAII owner of one MPI_Comm with a name used in logs and error messages.
// Guarantees: an owned communicator is freed exactly once (movable, not copyable); the wrapper
// of MPI_COMM_WORLD is never freed. Test: tests/comm_mpitest.cpp (Communicator.*).
#pragma once
#include <mpi.h>

#include <string>

namespace moempi {

class Communicator {
 public:
  Communicator() = default;  // null: comm() == MPI_COMM_NULL, rank() == -1, size() == 0
  ~Communicator();
  Communicator(Communicator&& other) noexcept;
  Communicator& operator=(Communicator&& other) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // Wraps MPI_COMM_WORLD (not owned) and switches it to MPI_ERRORS_RETURN so failures reach
  // MOEMPI_MPI_CHECK with file:line. Not collective.
  static Communicator world();
  // Wraps an existing communicator without owning it (never freed here), e.g. MPI_COMM_SELF for
  // a single-rank reference run inside an MPI test. Switches it to MPI_ERRORS_RETURN. Not
  // collective.
  static Communicator borrow(MPI_Comm comm, std::string name);
  // Collective over `parent`: MPI_Comm_split(color, key). The result is owned.
  static Communicator split(const Communicator& parent, int color, int key, std::string name);
  // Collective over `parent`: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED): ranks on one host.
  static Communicator split_shared(const Communicator& parent, int key, std::string name);
  // Takes ownership of an existing communicator (it will be freed) unless it is WORLD or SELF.
  static Communicator adopt(MPI_Comm comm, std::string name);
  // A non-owning view of this communicator (same handle, name, rank, size), for objects such as
  // dispatchers that use a group owned by ProcessGroups; valid while the owner is alive, even if
  // the owner object is moved. Not collective.
  Communicator view() const;

  MPI_Comm comm() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  bool is_null() const { return comm_ == MPI_COMM_NULL; }

 private:
  Communicator(MPI_Comm comm, std::string name, bool owned);
  void release();

  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string name_ = "null";
  int rank_ = -1;
  int size_ = 0;
  bool owned_ = false;
};

}  // namespace moempi
