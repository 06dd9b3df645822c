// Checked collective wrappers. Each names the group it runs over (its `group` argument) and is
// collective over exactly that group: every member calls it in the same order, with zero-length
// contributions where it has nothing (DESIGN.md "Communication rules"). Counts travel as int64.
// Test: tests/comm_mpitest.cpp (Collectives.*).
#pragma once
#include <mpi.h>

#include <cstdint>
#include <span>

#include "comm/communicator.h"

namespace moempi {

// In-place element-wise sum over `group` (MPI_Allreduce, MPI_SUM). Counts beyond INT_MAX are
// sent in chunks, so any count works.
void allreduce_sum(float* data, int64_t count, const Communicator& group);
void allreduce_sum(double* data, int64_t count, const Communicator& group);
void allreduce_sum(int64_t* data, int64_t count, const Communicator& group);

enum class ReduceOp { kSum, kMin, kMax };

// In-place MPI_Allreduce with `op` over `group` (any count).
void allreduce(double* data, int64_t count, ReduceOp op, const Communicator& group);
void allreduce(int64_t* data, int64_t count, ReduceOp op, const Communicator& group);
// MPI_Reduce with `op` to `root` over `group`; `data` is input everywhere and the result on root
// only (other ranks' data is left unchanged). Used for slowest-rank timings.
void reduce(double* data, int64_t count, ReduceOp op, int root, const Communicator& group);

// MPI_Alltoall over `group` of `per_peer` int64 values to each peer: send and recv hold
// group.size() * per_peer values, peer p's block at p * per_peer. Used for count exchanges.
void alltoall_i64(const int64_t* send, int64_t* recv, int per_peer, const Communicator& group);

// MPI_Alltoallv of floats over `group`. Counts and displacements are in floats, int64, one per
// peer (size group.size()). Open MPI 4.1 takes int: if any count or displacement on ANY rank
// exceeds INT_MAX, every rank throws CollectiveError. That check costs one MPI_Allreduce of one
// int over `group` before the exchange; hot paths with already validated counts use
// alltoallv_rows below instead.
void alltoallv_float(const float* send, std::span<const int64_t> send_counts,
                     std::span<const int64_t> send_displs, float* recv,
                     std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                     const Communicator& group);

// A committed MPI datatype of `width` contiguous floats (one token row). Counting in rows keeps
// counts far below INT_MAX for any realistic width. Movable, not copyable; freed on destruction.
class RowType {
 public:
  RowType() = default;
  explicit RowType(int width) { reset(width); }
  ~RowType();
  RowType(RowType&& other) noexcept;
  RowType& operator=(RowType&& other) noexcept;
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;

  // Re-creates the type only if the width changes (not collective).
  void reset(int width);
  int width() const { return width_; }
  MPI_Datatype type() const { return type_; }

 private:
  void release();
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
  int width_ = 0;
};

// MPI_Alltoallv over `group` of rows of row.width() floats; counts and displacements are in rows,
// already int (the caller validated them collectively, e.g. FlatDispatcher::plan). No extra
// communication: this is the dispatcher's hot path.
void alltoallv_rows(const float* send, const int* send_counts, const int* send_displs, float* recv,
                    const int* recv_counts, const int* recv_displs, const RowType& row,
                    const Communicator& group);

// MPI_Barrier over `group`.
void barrier(const Communicator& group);

// MPI_Bcast from `root` (a rank of `group`) over `group`; any count (chunked beyond INT_MAX).
void bcast(float* data, int64_t count, int root, const Communicator& group);
void bcast(double* data, int64_t count, int root, const Communicator& group);
void bcast(int64_t* data, int64_t count, int root, const Communicator& group);
void bcast_bytes(void* data, int64_t bytes, int root, const Communicator& group);

}  // namespace moempi
