// Checked collectives: int64 counts at the API, int (or row-typed) counts at Open MPI.
#include "comm/collectives.h"

#include <algorithm>
#include <climits>
#include <utility>
#include <vector>

#include "comm/mpi_check.h"

namespace moempi {
namespace {

constexpr int64_t kChunk = int64_t{1} << 30;  // elements per MPI call when a count exceeds INT_MAX

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kMax: return MPI_MAX;
  }
  return MPI_SUM;
}

template <class T>
void allreduce_chunked(T* data, int64_t count, MPI_Datatype type, MPI_Op op,
                       const Communicator& group) {
  for (int64_t off = 0; off < count; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - off));
    MOEMPI_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + off, n, type, op, group.comm()));
  }
}

template <class T>
void bcast_chunked(T* data, int64_t count, MPI_Datatype type, int root, const Communicator& group) {
  for (int64_t off = 0; off < count; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - off));
    MOEMPI_MPI_CHECK(MPI_Bcast(data + off, n, type, root, group.comm()));
  }
}

}  // namespace

void allreduce_sum(float* data, int64_t count, const Communicator& group) {
  allreduce_chunked(data, count, MPI_FLOAT, MPI_SUM, group);
}
void allreduce_sum(double* data, int64_t count, const Communicator& group) {
  allreduce_chunked(data, count, MPI_DOUBLE, MPI_SUM, group);
}
void allreduce_sum(int64_t* data, int64_t count, const Communicator& group) {
  allreduce_chunked(data, count, MPI_INT64_T, MPI_SUM, group);
}

void allreduce(double* data, int64_t count, ReduceOp op, const Communicator& group) {
  allreduce_chunked(data, count, MPI_DOUBLE, mpi_op(op), group);
}
void allreduce(int64_t* data, int64_t count, ReduceOp op, const Communicator& group) {
  allreduce_chunked(data, count, MPI_INT64_T, mpi_op(op), group);
}

void reduce(double* data, int64_t count, ReduceOp op, int root, const Communicator& group) {
  for (int64_t off = 0; off < count; off += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - off));
    void* send = group.rank() == root ? MPI_IN_PLACE : static_cast<void*>(data + off);
    MOEMPI_MPI_CHECK(MPI_Reduce(send, data + off, n, MPI_DOUBLE, mpi_op(op), root, group.comm()));
  }
}

void alltoall_i64(const int64_t* send, int64_t* recv, int per_peer, const Communicator& group) {
  MOEMPI_MPI_CHECK(
      MPI_Alltoall(send, per_peer, MPI_INT64_T, recv, per_peer, MPI_INT64_T, group.comm()));
}

void alltoallv_float(const float* send, std::span<const int64_t> send_counts,
                     std::span<const int64_t> send_displs, float* recv,
                     std::span<const int64_t> recv_counts, std::span<const int64_t> recv_displs,
                     const Communicator& group) {
  const size_t n = static_cast<size_t>(group.size());
  MOEMPI_CHECK_ONE(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n &&
                       recv_displs.size() == n,
                   "alltoallv over '{}': counts/displacements need {} entries (got {}, {}, {}, {})",
                   group.name(), n, send_counts.size(), send_displs.size(), recv_counts.size(),
                   recv_displs.size());
  // Thread-local scratch so repeated calls do not allocate.
  thread_local std::vector<int> sc, sd, rc, rd;
  sc.resize(n), sd.resize(n), rc.resize(n), rd.resize(n);
  int64_t worst = 0;
  for (size_t p = 0; p < n; ++p) {
    worst = std::max({worst, send_counts[p], send_displs[p], recv_counts[p], recv_displs[p]});
    MOEMPI_CHECK_ONE(send_counts[p] >= 0 && send_displs[p] >= 0 && recv_counts[p] >= 0 &&
                         recv_displs[p] >= 0,
                     "alltoallv over '{}': negative count or displacement for peer {}",
                     group.name(), p);
  }
  int overflow = worst > INT_MAX ? 1 : 0;
  MOEMPI_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &overflow, 1, MPI_INT, MPI_MAX, group.comm()));
  MOEMPI_CHECK_ALL(!overflow,
                   "alltoallv over group '{}': a count or displacement exceeds INT_MAX ({}) floats "
                   "on some rank (largest here: {}); Open MPI 4.1 takes int counts — exchange in "
                   "rows (alltoallv_rows) or in several rounds",
                   group.name(), INT_MAX, worst);
  for (size_t p = 0; p < n; ++p) {
    sc[p] = static_cast<int>(send_counts[p]);
    sd[p] = static_cast<int>(send_displs[p]);
    rc[p] = static_cast<int>(recv_counts[p]);
    rd[p] = static_cast<int>(recv_displs[p]);
  }
  MOEMPI_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(),
                                 MPI_FLOAT, group.comm()));
}

RowType::~RowType() { release(); }

RowType::RowType(RowType&& other) noexcept
    : type_(std::exchange(other.type_, MPI_DATATYPE_NULL)), width_(std::exchange(other.width_, 0)) {}

RowType& RowType::operator=(RowType&& other) noexcept {
  if (this != &other) {
    release();
    type_ = std::exchange(other.type_, MPI_DATATYPE_NULL);
    width_ = std::exchange(other.width_, 0);
  }
  return *this;
}

void RowType::reset(int width) {
  if (width == width_ && type_ != MPI_DATATYPE_NULL) return;
  MOEMPI_CHECK_ONE(width > 0, "row width must be positive (got {})", width);
  release();
  MOEMPI_MPI_CHECK(MPI_Type_contiguous(width, MPI_FLOAT, &type_));
  MOEMPI_MPI_CHECK(MPI_Type_commit(&type_));
  width_ = width;
}

void RowType::release() {
  if (type_ != MPI_DATATYPE_NULL) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MOEMPI_MPI_CHECK(MPI_Type_free(&type_));
  }
  type_ = MPI_DATATYPE_NULL;
  width_ = 0;
}

void alltoallv_rows(const float* send, const int* send_counts, const int* send_displs, float* recv,
                    const int* recv_counts, const int* recv_displs, const RowType& row,
                    const Communicator& group) {
  MOEMPI_MPI_CHECK(MPI_Alltoallv(send, send_counts, send_displs, row.type(), recv, recv_counts,
                                 recv_displs, row.type(), group.comm()));
}

void barrier(const Communicator& group) { MOEMPI_MPI_CHECK(MPI_Barrier(group.comm())); }

void bcast(float* data, int64_t count, int root, const Communicator& group) {
  bcast_chunked(data, count, MPI_FLOAT, root, group);
}
void bcast(double* data, int64_t count, int root, const Communicator& group) {
  bcast_chunked(data, count, MPI_DOUBLE, root, group);
}
void bcast(int64_t* data, int64_t count, int root, const Communicator& group) {
  bcast_chunked(data, count, MPI_INT64_T, root, group);
}
void bcast_bytes(void* data, int64_t bytes, int root, const Communicator& group) {
  bcast_chunked(static_cast<char*>(data), bytes, MPI_BYTE, root, group);
}

}  // namespace moempi
