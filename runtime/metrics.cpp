#include "runtime/metrics.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.h"

namespace moempi {

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const long t = std::lround(s);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string format_step_line(const StepMetrics& m) {
  const double tps = m.tokens_per_s;
  const std::string tok = tps >= 1e3 ? fmt::format("{:.1f}k", tps / 1e3) : fmt::format("{:.0f}", tps);
  std::string line = fmt::format("step {}/{} | loss {:.4f} | aux {:.4f}", m.step, m.total_steps,
                                 m.loss, m.aux_loss);
  if (m.val_loss) line += fmt::format(" | val {:.4f}", *m.val_loss);
  line += fmt::format(" | lr {:.1e} | gnorm {:.2f} | {:.0f} ms | {} tok/s | mfu {:.0f}% | maxvio {:.2f} | a2a {:.0f}% | eta {}",
                      m.lr, m.grad_norm, m.step_ms, tok, 100.0 * m.mfu, m.maxvio,
                      100.0 * m.a2a_frac, format_duration(m.eta_s));
  if (m.dropped_frac) line += fmt::format(" | drop {:.1f}%", 100.0 * *m.dropped_frac);
  return line;
}

double max_violation(const std::vector<int64_t>& counts) {
  if (counts.empty()) return 0;
  int64_t total = 0, mx = 0;
  for (int64_t c : counts) {
    total += c;
    mx = std::max(mx, c);
  }
  if (total == 0) return 0;
  const double mean = static_cast<double>(total) / counts.size();
  return (mx - mean) / mean;
}

MetricsWriter::MetricsWriter(const std::string& path) : out_(path, std::ios::trunc), path_(path) {
  MOEMPI_CHECK_ONE(out_.is_open(), "cannot open metrics file '{}' for writing", path);
}

void MetricsWriter::write(const StepMetrics& m) {
  if (!out_.is_open()) return;
  nlohmann::json j;
  j["step"] = m.step;
  j["loss"] = m.loss;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  j["step_ms"] = m.step_ms;
  j["tokens_per_s"] = m.tokens_per_s;
  j["mfu"] = m.mfu;
  j["maxvio"] = m.maxvio;
  j["aux_loss"] = m.aux_loss;
  j["a2a_frac"] = m.a2a_frac;
  j["a2a_bytes_intra"] = m.a2a_bytes_intra;
  j["a2a_bytes_inter"] = m.a2a_bytes_inter;
  if (m.dropped_frac) j["dropped_frac"] = *m.dropped_frac;
  j["tokens"] = m.tokens;
  j["maxvio_layers"] = m.maxvio_layers;
  j["expert_load"] = m.expert_load;
  out_ << j.dump() << '\n';
  out_.flush();
  MOEMPI_CHECK_ONE(out_.good(), "write to metrics file '{}' failed", path_);
}

}  // namespace moempi
