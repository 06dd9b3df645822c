// Formats a failed MPI call for MOEMPI_MPI_CHECK and aborts the world (local error).
#include "comm/mpi_check.h"

#include <fmt/format.h>

namespace moempi::detail {

std::string describe_mpi_error(const char* call, int rc) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return fmt::format("{} failed: code {}", call, rc);
  return fmt::format("{} failed: {}", call, std::string(text, len));
}

void fail_mpi(const char* file, int line, const char* call, int rc) {
  fail_local(file, line, describe_mpi_error(call, rc));
}

}  // namespace moempi::detail
