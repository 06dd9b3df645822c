// The process-wide link model and its delay.
#include "comm/link_model.h"

#include <chrono>
#include <thread>

namespace moempi {
namespace {
LinkModel g_link;
}

double LinkModel::seconds(int64_t messages, int64_t bytes) const {
  double s = 0.0;
  if (latency_us > 0.0) s += static_cast<double>(messages) * latency_us * 1e-6;
  if (gbps > 0.0) s += static_cast<double>(bytes) * 8.0 / (gbps * 1e9);
  return s;
}

void set_link_model(const LinkModelSpec& spec) {
  g_link.gbps = spec.inter_node_gbps;
  g_link.latency_us = spec.inter_node_latency_us;
}

const LinkModel& link_model() { return g_link; }

double link_delay(int64_t messages, int64_t bytes) {
  const double s = g_link.seconds(messages, bytes);
  if (s <= 0.0) return 0.0;
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace moempi
