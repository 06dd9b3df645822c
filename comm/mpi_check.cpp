// Formats a failed MPI call for MOEMPI_MPI_CHECK and aborts the world (local error).
#include "comm/mpi_check.h"

#include <fmt/format.h>

namespace moempi::detail {

void fail_mpi(const char* file, int line, const char* call, int rc) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) fmt::format_to_n(text, sizeof text - 1, "code {}", rc);
  fail_local(file, line, fmt::format("{} failed: {}", call, text));
}

}  // namespace moempi::detail
