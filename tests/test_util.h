// Helpers shared by the test suites.
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>

#include <unistd.h>

#include <filesystem>
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

// This process's rank in MPI_COMM_WORLD.
inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// Experts split over every rank (strategy ep, or dp on one rank, where ep must be 1).
inline ParallelSpec expert_parallel_over_world() {
  ParallelSpec spec;
  spec.strategy = world_size() > 1 ? "ep" : "dp";
  spec.ep = world_size();
  return spec;
}

// The small MoE model of the MPI training suites (train, checkpoint, preemption): 2 layers of
// d_model 32, 4 heads, sequences of 16, 12 experts (divisible by every ep in 1..4), top-2, d_ff 24.
inline void use_small_moe_model(JobSpec& s) {
  s.model.d_model = 32;
  s.model.n_layers = 2;
  s.model.n_heads = 4;
  s.model.seq_len = 16;
  s.moe.num_experts = 12;
  s.moe.top_k = 2;
  s.moe.d_ff_expert = 24;
}

// A path under the temp directory with the same name on every rank (rank 0's pid): collective.
inline std::string shared_temp_dir(const std::string& suite, const std::string& tag) {
  int pid = static_cast<int>(::getpid());
  MPI_Bcast(&pid, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return (std::filesystem::temp_directory_path() / ("moempi_" + suite + "_" + std::to_string(pid) + "_" + tag))
      .string();
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
