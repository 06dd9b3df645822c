#include "runtime/core/error.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace moempi {

void fail_collective(const std::string& msg) { throw CollectiveError(msg); }

void fail_local(const char* file, int line, const std::string& msg) {
  int initialized = 0, finalized = 0, rank = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi_live = initialized && !finalized;
  if (mpi_live) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  char host[256] = "?";
  gethostname(host, sizeof host);
  std::fprintf(stderr, "moempi: error on rank %d (%s) at %s:%d: %s\n", rank, host, file, line,
               msg.c_str());
  std::fflush(stderr);
  if (mpi_live) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

}  // namespace moempi
