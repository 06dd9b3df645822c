// Shared GoogleTest main for serial and MPI suites: fast OpenBLAS kernel, MPI_Init, and only
// rank 0 prints every result, other ranks only their failures; a failure on any rank fails
// the process and so the ctest entry.
#include <gtest/gtest.h>
#include <mpi.h>

#include "runtime/core/blas_env.h"
#include "runtime/core/log.h"

int main(int argc, char** argv) {
  moempi::blas::ensure_fast_kernel(argc, argv);
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  moempi::log::init(rank, size);
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) GTEST_FLAG_SET(brief, true);  // other ranks print their failures only
  int failed = RUN_ALL_TESTS() != 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}
