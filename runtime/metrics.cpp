#include "runtime/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <utility>

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
  if (m.compressed) line += fmt::format(" | lsh {:.2f}", m.compression_ratio);
  if (m.dropped_frac) line += fmt::format(" | drop {:.1f}%", 100.0 * *m.dropped_frac);
  if (m.skipped) line += " | SKIPPED (non-finite)";
  line += fmt::format(" | cv {:.2f}", m.load_cv);
  if (m.bias_max_abs) line += fmt::format(" | bias {:.2e}", *m.bias_max_abs);
  if (m.replicas) line += fmt::format(" | rep {}", *m.replicas);
  if (m.maxvio_global) line += fmt::format(" | maxvio_g {:.2f}", *m.maxvio_global);
  if (!m.specialisation_norm_layers.empty())
    line += fmt::format(" | spec {:.2f}", mean_of(m.specialisation_norm_layers));
  if (m.resumed_from) line += fmt::format(" | resumed from step {}", *m.resumed_from);
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

double load_cv(const std::vector<int64_t>& counts) {
  if (counts.empty()) return 0;
  double total = 0;
  for (int64_t c : counts) total += static_cast<double>(c);
  if (total == 0) return 0;
  const double mean = total / counts.size();
  double var = 0;
  for (int64_t c : counts) var += (c - mean) * (c - mean);
  return std::sqrt(var / counts.size()) / mean;
}

double mean_of(const std::vector<double>& values) {
  double m = 0;
  for (double v : values) m += v / values.size();
  return m;
}

Specialisation specialisation(const int64_t* joint_DE, int domains, int E) {
  std::vector<double> pd(domains, 0.0), pe(E, 0.0);
  double total = 0;
  for (int d = 0; d < domains; ++d)
    for (int e = 0; e < E; ++e) {
      const double n = static_cast<double>(joint_DE[static_cast<size_t>(d) * E + e]);
      pd[d] += n;
      pe[e] += n;
      total += n;
    }
  Specialisation s;
  if (total == 0) return s;
  for (int d = 0; d < domains; ++d)
    for (int e = 0; e < E; ++e) {
      const double n = static_cast<double>(joint_DE[static_cast<size_t>(d) * E + e]);
      if (n > 0) s.mi_bits += n / total * std::log2(n * total / (pd[d] * pe[e]));
    }
  double h = 0;
  for (double n : pd)
    if (n > 0) h -= n / total * std::log2(n / total);
  s.mi_bits = std::max(0.0, s.mi_bits);  // rounding can give -1e-17
  s.normalised = h > 0 ? s.mi_bits / h : 0.0;
  return s;
}

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MOEMPI_CHECK_ONE(fd_ >= 0, "cannot open metrics file '{}' for writing: {}", path, std::strerror(errno));
}

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), size_(other.size_), path_(std::move(other.path_)) {}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
    path_ = std::move(other.path_);
  }
  return *this;
}

MetricsWriter::~MetricsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

MetricsWriter::MetricsWriter(const std::string& path, int resumed_step) : path_(path) {
  std::string kept;
  {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<int64_t>() > resumed_step)
        break;  // steps after the checkpoint: the resumed run writes them again
      kept += line + '\n';
    }
  }
  const std::string tmp = path + ".tmp";
  {
    MetricsWriter out(tmp);
    out.write_line(kept, resumed_step);
    MOEMPI_CHECK_ONE(::fsync(out.fd_) == 0, "cannot sync '{}': {}", tmp, std::strerror(errno));
  }
  MOEMPI_CHECK_ONE(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp, path,
                   std::strerror(errno));
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  MOEMPI_CHECK_ONE(fd_ >= 0, "cannot open metrics file '{}' for appending: {}", path, std::strerror(errno));
  size_ = static_cast<int64_t>(kept.size());
}

void MetricsWriter::write(const StepMetrics& m) {
  if (fd_ < 0) return;
  nlohmann::json j;
  j["step"] = m.step;
  j["loss"] = m.loss;
  if (m.val_loss) j["val_loss"] = *m.val_loss;
  j["lr"] = m.lr;
  j["grad_norm"] = m.grad_norm;
  if (m.skipped) j["skipped"] = true;
  j["step_ms"] = m.step_ms;
  j["tokens_per_s"] = m.tokens_per_s;
  j["mfu"] = m.mfu;
  j["maxvio"] = m.maxvio;
  j["aux_loss"] = m.aux_loss;
  j["a2a_frac"] = m.a2a_frac;
  j["a2a_bytes_intra"] = m.a2a_bytes_intra;
  j["a2a_bytes_inter"] = m.a2a_bytes_inter;
  j["a2a_bytes_intra_all"] = m.a2a_bytes_intra_all;
  j["a2a_bytes_inter_all"] = m.a2a_bytes_inter_all;
  for (const auto& [call, ms] : m.a2a_call_ms) j["a2a_call_ms"][call] = ms;
  j["compression_ratio"] = m.compression_ratio;
  j["wire_bytes"] = m.wire_bytes;
  if (m.dropped_frac) j["dropped_frac"] = *m.dropped_frac;
  j["tokens"] = m.tokens;
  j["maxvio_layers"] = m.maxvio_layers;
  j["expert_load"] = m.expert_load;
  j["load_cv"] = m.load_cv;
  j["load_cv_layers"] = m.load_cv_layers;
  if (!m.bias.empty()) j["bias"] = m.bias;
  if (m.bias_max_abs) j["bias_max_abs"] = *m.bias_max_abs;
  if (m.replicas) j["replicas"] = *m.replicas;
  if (m.sparse_bytes) j["sparse_bytes"] = *m.sparse_bytes;
  if (m.replica_bytes_max) j["replica_bytes_max"] = *m.replica_bytes_max;
  if (m.experts_moved) j["experts_moved"] = *m.experts_moved;
  if (m.maxvio_global) {
    j["maxvio_global"] = *m.maxvio_global;
    j["maxvio_global_layers"] = m.maxvio_global_layers;
    j["specialisation"] = m.specialisation_layers;
    j["specialisation_norm"] = m.specialisation_norm_layers;
  }
  if (m.resumed_from) j["resumed_from"] = *m.resumed_from;
  write_line(j.dump() + '\n', m.step);
}

void MetricsWriter::write_line(const std::string& line, int step) {
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      if (done > 0 && ::ftruncate(fd_, size_) == 0) ::lseek(fd_, size_, SEEK_SET);  // no cut-off line
      ::close(fd_);
      fd_ = -1;
      fail_local(__FILE__, __LINE__,
                 fmt::format("cannot write step {} to metrics file '{}': {} (the file keeps the {} bytes of "
                             "whole lines written before)",
                             step, path_, std::strerror(err), size_));
    }
    done += static_cast<size_t>(n);
  }
  size_ += static_cast<int64_t>(line.size());
}

}  // namespace moempi
