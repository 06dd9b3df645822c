// Errors that declare their scope (STYLE.md habit 5, after LAMMPS error->all / error->one).
// Collective: every rank reaches the check the same way (bad config, bad shape) -> CollectiveError
//   is thrown, the binary catches it, rank 0 prints one message, exit code 2.
// Local: only this rank knows (I/O, corrupt shard, NaN) -> rank, host, file:line, then MPI_Abort.
// Tests: tests/core_test.cpp (collective errors are catchable and carry the message).
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace moempi {

struct CollectiveError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail_collective(const std::string& msg);
[[noreturn]] void fail_local(const char* file, int line, const std::string& msg);

}  // namespace moempi

// Reached by all ranks alike: clean exit 2 with one message.
#define MOEMPI_CHECK_ALL(cond, ...)                                   \
  do {                                                                \
    if (!(cond)) ::moempi::fail_collective(fmt::format(__VA_ARGS__)); \
  } while (0)
// Reached by this rank only: print rank, host, file:line and abort the world.
#define MOEMPI_CHECK_ONE(cond, ...)                                                 \
  do {                                                                              \
    if (!(cond)) ::moempi::fail_local(__FILE__, __LINE__, fmt::format(__VA_ARGS__)); \
  } while (0)
