#include "runtime/core/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>
#include <string>

namespace moempi::log {
namespace {
int g_rank = 0;
}

void init(int rank, int world_size) {
  g_rank = rank;
  auto logger = spdlog::stdout_logger_mt("moempi");
  std::string pattern = world_size > 1 ? fmt::format("[r{}] %v", rank) : "%v";
  logger->set_pattern(pattern);
  const char* all = std::getenv("MOEMPI_LOG_ALL_RANKS");
  const bool verbose = all && std::string(all) == "1";
  logger->set_level(rank == 0 || verbose ? spdlog::level::info : spdlog::level::warn);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

int rank() { return g_rank; }

}  // namespace moempi::log
