// Rank-aware logging on spdlog: rank 0 logs at info, other ranks only warnings and errors
// unless MOEMPI_LOG_ALL_RANKS=1. Every line carries the rank when the world has more than one.
#pragma once
#include <spdlog/spdlog.h>

namespace moempi::log {

void init(int rank, int world_size);
int rank();

}  // namespace moempi::log
