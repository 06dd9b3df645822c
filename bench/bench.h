// `moempi bench ...`: each benchmark adds its own subcommand and flags to the `bench` app. The
// callbacks run after MPI_Init, on every rank, and set exit_code (0 = ran and verified).
#pragma once
#include <CLI/CLI.hpp>

namespace moempi::bench {

void add_alltoall_command(CLI::App& bench, int& exit_code);  // bench/bench_alltoall.cpp
void add_dispatch_command(CLI::App& bench, int& exit_code);  // bench/bench_dispatch.cpp
void add_experts_command(CLI::App& bench, int& exit_code);   // bench/bench_experts.cpp
void add_train_command(CLI::App& bench, int& exit_code);     // bench/bench_train.cpp
void add_sparse_command(CLI::App& bench, int& exit_code);    // bench/bench_sparse.cpp
void add_router_command(CLI::App& bench, int& exit_code);    // bench/bench_router.cpp

}  // namespace moempi::bench
