// Helpers shared by the test suites.
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>

#include <functional>
#include <string>
#include <vector>

#include "runtime/core/config.h"
#include "runtime/core/error.h"

namespace moempi::test_util {

// Ranks in MPI_COMM_WORLD (the MPI suites run at 1-4).
inline int world_size() {
  int w = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  return w;
}

// Experts split over every rank (strategy ep, or dp on one rank, where ep must be 1).
inline ParallelSpec expert_parallel_over_world() {
  ParallelSpec spec;
  spec.strategy = world_size() > 1 ? "ep" : "dp";
  spec.ep = world_size();
  return spec;
}

// The message of the CollectiveError `f` throws ("" and a test failure when it throws none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CollectiveError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a CollectiveError";
  return "";
}

// Every one of `parts` occurs in `msg`.
inline void expect_contains(const std::string& msg, const std::vector<std::string>& parts) {
  for (const auto& p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}

}  // namespace moempi::test_util
