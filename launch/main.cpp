#include <mpi.h>
#include "runtime/core/blas_env.h"
int main(int argc, char** argv) { moempi::blas::ensure_fast_kernel(argc, argv); MPI_Init(&argc, &argv); MPI_Finalize(); }
