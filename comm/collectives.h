// Checked collective wrappers. Each names the group it runs over (its `group` argument) and is
// collective over exactly that group: every member calls it in the same order, with zero-length
// contributions where it has nothing (DESIGN.md "Communication rules"). Counts travel as int64.
// Test: tests/comm_mpitest.cpp (Collectives.*).
#pragma once
#include <mpi.h>

#include <cstdint>
#include <span>
#include <vector>

#include "comm/communicator.h"
#include "runtime/core/config.h"

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

// MPI_Allgather over `group` of `per_rank` int64 values from every rank: recv holds
// group.size() * per_rank values, rank p's block at p * per_rank. Used for count exchanges that
// every rank needs whole (the shm dispatcher's plan).
void allgather_i64(const int64_t* send, int64_t* recv, int per_rank, const Communicator& group);

// MPI_Alltoallv of floats over `group`. Counts and displacements are in floats, int64, one per
// peer (size group.size()). Open MPI 4.1 takes int: if any count or displacement on ANY rank
// exceeds INT_MAX, every rank throws CollectiveError. That check costs one MPI_Allreduce of one
// int over `group` before the exchange; hot paths with already validated counts use
// alltoallv_rows below instead.
void alltoallv_float(const float* send, std::span<const int64_t> send_counts,
                     std::span<const int64_t> send_displs, float* recv,
                     std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                     const Communicator& group);

// A committed MPI datatype of one token row on the wire: `width` contiguous floats, or `width`
// uint16 when the wire dtype is bf16 (moe.dispatch.wire_dtype; the exchanges below convert at the
// edges, comm/wire_dtype.h). Counting in rows keeps counts far below INT_MAX for any realistic
// width. Movable, not copyable; freed on destruction.
class RowType {
 public:
  RowType() = default;
  explicit RowType(int width, WireDtype wire = WireDtype::kFp32) { reset(width, wire); }
  ~RowType();
  RowType(RowType&& other) noexcept;
  RowType& operator=(RowType&& other) noexcept;
  RowType(const RowType&) = delete;
  RowType& operator=(const RowType&) = delete;

  // Re-creates the type only if the width or the wire dtype changes (not collective).
  void reset(int width, WireDtype wire = WireDtype::kFp32);
  int width() const { return width_; }
  WireDtype wire() const { return wire_; }
  int64_t wire_bytes() const { return static_cast<int64_t>(width_) * (wire_ == WireDtype::kBf16 ? 2 : 4); }
  MPI_Datatype type() const { return type_; }

 private:
  void release();
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
  int width_ = 0;
  WireDtype wire_ = WireDtype::kFp32;
};

// MPI_Alltoallv over `group` of rows of row.width() floats; counts and displacements are in rows,
// already int (the caller validated them collectively, e.g. FlatDispatcher::plan). No extra
// communication: this is the dispatcher's hot path. With a bf16 RowType the rows are converted
// into a bf16 staging buffer, exchanged as bf16, and widened into `recv`.
void alltoallv_rows(const float* send, const int* send_counts, const int* send_displs, float* recv,
                    const int* recv_counts, const int* recv_displs, const RowType& row,
                    const Communicator& group);

// Where each peer's rows live in one buffer, as one MPI datatype per peer (derived from a
// RowType), so that MPI gathers and scatters rows itself during the exchange instead of through
// separate pack/unpack copies (alltoallw_rows). Byte offsets are relative to the buffer passed to
// the exchange. Not collective; movable, not copyable; frees its datatypes on reset/destruction.
class PeerLayouts {
 public:
  PeerLayouts() = default;
  ~PeerLayouts();
  PeerLayouts(PeerLayouts&& other) noexcept;
  PeerLayouts& operator=(PeerLayouts&& other) noexcept;
  PeerLayouts(const PeerLayouts&) = delete;
  PeerLayouts& operator=(const PeerLayouts&) = delete;

  // Frees every datatype and sizes the set for `peers` peers, all empty.
  void reset(int peers);
  // Peer p's data is rows row_index[0..n) of the buffer, in that order (may repeat rows).
  void set_rows(int peer, const int64_t* row_index, int64_t n, const RowType& row);
  // Peer p's data is `blocks` runs: run b is n_rows[b] rows starting at row first_row[b].
  void set_runs(int peer, const int64_t* first_row, const int64_t* n_rows, int blocks, const RowType& row);
  // Peer p sends/receives nothing.
  void set_empty(int peer);

  int peers() const { return static_cast<int>(types_.size()); }
  const int* counts() const { return counts_.data(); }       // 1 where the peer has data, else 0
  const int* displs() const { return zeros_.data(); }        // all 0: offsets live in the types
  const MPI_Datatype* types() const { return types_.data(); }

 private:
  void free_type(int peer);
  std::vector<MPI_Datatype> types_;
  std::vector<bool> owned_;
  std::vector<int> counts_, zeros_;
  std::vector<MPI_Aint> byte_offsets_;  // scratch
  std::vector<int> run_lengths_;        // scratch
};

// MPI_Alltoallw over `group`: peer p receives send_layout's rows for p from `send`, this rank
// receives into `recv` as recv_layout describes for each source. One collective call; MPI moves
// rows straight from their source rows to their destination rows.
void alltoallw_rows(const float* send, const PeerLayouts& send_layout, float* recv,
                    const PeerLayouts& recv_layout, const Communicator& group);

// A run of contiguous rows to or from one peer of a group (point-to-point exchange below).
struct RowBlock {
  int peer = 0;         // rank in the group
  int tag = 0;          // matches the peer's block of the same tag
  float* rows = nullptr;
  int64_t count = 0;    // rows; > 0 (empty blocks are not posted)
};

// Point-to-point exchange over `group`: start() posts every receive block (MPI_Irecv), then every
// send block (MPI_Isend); wait() waits for all of them. Each block is one contiguous message of
// rows of row.width() floats, so MPI can move it with a single copy on shared memory (CMA) or
// straight from the user buffer on a network; work between start() and wait() overlaps the
// transfer (send buffers must stay untouched, receive buffers unread, until wait() returns). Both
// sides know the counts (a count exchange came first); each (peer, tag) pair occurs at most once
// per direction. Every rank that names a peer must post the matching block.
// With a bf16 RowType, start() converts every send block into one bf16 staging buffer (so the send
// rows may be reused as soon as start() returns) and receives into another; wait() widens the
// received blocks into their fp32 rows. This is where moe.dispatch.wire_dtype bf16 happens for
// `flat` (and whatever exchanges rows through RowBlockExchange).
class RowBlockExchange {
 public:
  void start(const std::vector<RowBlock>& sends, const std::vector<RowBlock>& recvs, const RowType& row,
             const Communicator& group);
  void wait();  // blocking; watched by the collective watchdog

 private:
  std::vector<MPI_Request> requests_;
  const Communicator* group_ = nullptr;
  // bf16 wire: staging buffers, and where each received block goes.
  std::vector<uint16_t> send_stage_, recv_stage_;
  std::vector<RowBlock> recv_blocks_;
  std::vector<int64_t> recv_offsets_;
  int width_ = 0;
};

// MPI_Barrier over `group`.
void barrier(const Communicator& group);

// MPI_Bcast from `root` (a rank of `group`) over `group`; any count (chunked beyond INT_MAX).
void bcast(float* data, int64_t count, int root, const Communicator& group);
void bcast(double* data, int64_t count, int root, const Communicator& group);
void bcast(int64_t* data, int64_t count, int root, const Communicator& group);
void bcast_bytes(void* data, int64_t bytes, int root, const Communicator& group);

}  // namespace moempi
