// MOEMPI_MPI_CHECK(call): the one way an MPI return code is checked (STYLE.md habit 5).
// A failing call is a *local* error: rank, host, file:line, the call text and MPI's own error
// string, then MPI_Abort. Communicators made by comm/communicator.cpp use MPI_ERRORS_RETURN, so
// failures reach this macro instead of MPI's default abort. Test: tests/comm_mpitest.cpp
// (MpiCheck.*: error codes are returned, not fatal, and the message names the call).
#pragma once
#include <mpi.h>

#include <string>

#include "runtime/core/error.h"

namespace moempi::detail {

// "<call> failed: <MPI's error string>".
std::string describe_mpi_error(const char* call, int rc);
[[noreturn]] void fail_mpi(const char* file, int line, const char* call, int rc);

}  // namespace moempi::detail

#define MOEMPI_MPI_CHECK(call)                                                   \
  do {                                                                           \
    const int moempi_mpi_rc_ = (call);                                           \
    if (moempi_mpi_rc_ != MPI_SUCCESS)                                           \
      ::moempi::detail::fail_mpi(__FILE__, __LINE__, #call, moempi_mpi_rc_);     \
  } while (0)
