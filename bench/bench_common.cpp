// Size parsing, sweep, timing, slowest-rank reduction, table and JSON output for moempi bench.
#include "bench/bench_common.h"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "comm/collectives.h"
#include "runtime/core/error.h"

namespace moempi::bench {

int64_t parse_size(const std::string& text, const std::string& flag) {
  size_t pos = 0;
  while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) ++pos;
  std::string unit = text.substr(pos);
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  int64_t scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") scale = int64_t{1} << 10;
  else if (unit == "M" || unit == "MB" || unit == "MIB") scale = int64_t{1} << 20;
  else if (unit == "G" || unit == "GB" || unit == "GIB") scale = int64_t{1} << 30;
  const bool ok = pos > 0 && pos <= 15 && scale > 0;
  MOEMPI_CHECK_ALL(ok, "{} '{}' is not a size; use bytes with an optional K, M or G suffix (powers "
                       "of 1024), e.g. 4096, 1K, 16M, 64KiB", flag, text);
  const int64_t number = std::stoll(text.substr(0, pos));
  MOEMPI_CHECK_ALL(number > 0 && number <= INT64_MAX / scale, "{} '{}' must be positive and below 8 EiB",
                   flag, text);
  return number * scale;
}

std::string format_size(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30) && bytes % (int64_t{1} << 30) == 0) return fmt::format("{}G", bytes >> 30);
  if (bytes >= (int64_t{1} << 20) && bytes % (int64_t{1} << 20) == 0) return fmt::format("{}M", bytes >> 20);
  if (bytes >= (int64_t{1} << 10) && bytes % (int64_t{1} << 10) == 0) return fmt::format("{}K", bytes >> 10);
  return std::to_string(bytes);
}

std::vector<int64_t> size_sweep(int64_t min_bytes, int64_t max_bytes, double factor) {
  MOEMPI_CHECK_ALL(min_bytes > 0 && min_bytes <= max_bytes,
                   "-b ({}) must be positive and at most -e ({})", min_bytes, max_bytes);
  std::vector<int64_t> sizes{min_bytes};
  if (min_bytes == max_bytes) return sizes;
  MOEMPI_CHECK_ALL(factor > 1.0, "-f ({}) must be > 1", factor);
  for (;;) {
    const int64_t next = std::max(sizes.back() + 1, static_cast<int64_t>(std::llround(sizes.back() * factor)));
    if (next > max_bytes) break;
    sizes.push_back(next);
  }
  return sizes;
}

void add_timing_flags(CLI::App& app, TimingFlags& flags) {
  app.add_option("-n,--iters", flags.iters, "timed iterations")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("-w,--warmup_iters", flags.warmup, "untimed warm-up iterations")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("-c,--check", flags.check, "verify payloads before and after timing (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1));
  app.add_option("--json", flags.json, "write results as JSON to FILE (rank 0)");
}

std::vector<std::vector<double>> time_interleaved(const std::vector<std::function<void(int)>>& ops,
                                                  int warmup, int iters, const Communicator& group,
                                                  int unit) {
  const size_t n = ops.size();
  MOEMPI_CHECK_ALL(unit >= 0 && (unit == 0 || (n > 0 && n % unit == 0)), "time_interleaved: {} ops in units of {}",
                   n, unit);
  std::vector<std::vector<double>> seconds(n);
  for (auto& s : seconds) s.reserve(iters);
  for (int round = 0; round < warmup + iters; ++round) {
    const size_t first = unit ? (static_cast<size_t>(round) * unit) % n : 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t j = (first + i) % n;
      barrier(group);
      const double t0 = MPI_Wtime();
      ops[j](round);
      const double dt = MPI_Wtime() - t0;
      if (round >= warmup) seconds[j].push_back(dt);
    }
  }
  return seconds;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + mid, v.end());
  if (v.size() % 2) return v[mid];
  const double hi = v[mid];
  return 0.5 * (hi + *std::max_element(v.begin(), v.begin() + mid));
}

OverRanks over_ranks(double value, const Communicator& group) {
  double mn = value, sum = value, mx = value;
  reduce(&mn, 1, ReduceOp::kMin, 0, group);
  reduce(&sum, 1, ReduceOp::kSum, 0, group);
  reduce(&mx, 1, ReduceOp::kMax, 0, group);
  return {mn, sum / group.size(), mx};
}

void Table::print_comment(const std::string& line) const {
  if (!printing_) return;
  std::fputs(("# " + line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

void Table::print_header(const std::vector<std::string>& comment_lines) const {
  if (!printing_) return;
  std::string out;
  for (const std::string& line : comment_lines) out += "# " + line + "\n";
  std::string names = "#", units = "#";
  for (size_t i = 0; i < columns_.size(); ++i) {
    // The first column gives up one character to the leading '#'.
    const int w = columns_[i].width - (i == 0 ? 1 : 0);
    names += fmt::format(" {:>{}}", columns_[i].name, w);
    units += fmt::format(" {:>{}}", columns_[i].unit, w);
  }
  out += names + "\n" + units + "\n";
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

void Table::print_row(const std::vector<std::string>& cells) const {
  if (!printing_) return;
  std::string out;
  for (size_t i = 0; i < columns_.size(); ++i)
    out += fmt::format(" {:>{}}", i < cells.size() ? cells[i] : "", columns_[i].width);
  out += "\n";
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

std::string cell(double v, int decimals) {
  if (!std::isfinite(v)) return "N/A";
  return fmt::format("{:.{}f}", v, decimals);
}

std::string cell(int64_t v) { return std::to_string(v); }

void write_json(const std::string& path, const nlohmann::json& doc, const Communicator& group) {
  if (path.empty() || group.rank() != 0) return;
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  out.close();
  MOEMPI_CHECK_ONE(out.good(), "cannot write --json file '{}'", path);
}

nlohmann::json microseconds_json(const OverRanks& t) {
  return {{"min", t.min * 1e6}, {"avg", t.avg * 1e6}, {"max", t.max * 1e6}};
}

int finish_report(const Table& table, nlohmann::json& doc, int64_t all_wrong,
                  const std::string& json_path, const Communicator& group) {
  table.print_comment(fmt::format("Out of bounds values : {} {}", all_wrong, all_wrong ? "FAILED" : "OK"));
  doc["wrong"] = all_wrong;
  write_json(json_path, doc, group);
  return all_wrong > 0 ? 1 : 0;
}

std::string cpu_model() {
  const auto trim = [](const std::string& t) {
    const size_t a = t.find_first_not_of(" \t"), b = t.find_last_not_of(" \t");
    return a == std::string::npos ? std::string() : t.substr(a, b - a + 1);
  };
  std::ifstream in("/proc/cpuinfo");
  std::string line, name, model;
  // The first processor's block only (up to the blank line): all cores here are one model.
  while (std::getline(in, line) && !line.empty()) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = trim(line.substr(0, colon)), value = trim(line.substr(colon + 1));
    if (key == "model name") name = value;
    if (key == "model") model = value;
  }
  if (name.empty()) return "unknown CPU";
  return model.empty() ? name : fmt::format("{} (model {})", name, model);
}

CopyLimit copy_limit(size_t bytes, const TimingFlags& flags) {
  if (bytes == 0) return {};  // nothing to move (a rank with no tokens): no floor
  MOEMPI_CHECK_ONE(flags.iters > 0, "copy_limit needs bytes > 0 and iters > 0 (got {} and {})",
                   bytes, flags.iters);
  // Two separate allocations, both written once so that no page fault lands in a timed copy.
  std::unique_ptr<unsigned char[]> src(new unsigned char[bytes]);
  std::unique_ptr<unsigned char[]> dst(new unsigned char[bytes]);
  for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<unsigned char>(i * 131 + 7);
  std::memset(dst.get(), 0, bytes);
  std::memcpy(dst.get(), src.get(), bytes);
  MOEMPI_CHECK_ONE(std::memcmp(dst.get(), src.get(), bytes) == 0, "copy_limit: memcpy of {} bytes differs", bytes);
  std::vector<double> seconds;
  seconds.reserve(flags.iters);
  for (int rep = 0; rep < flags.warmup + flags.iters; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(dst.get(), src.get(), bytes);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep >= flags.warmup) seconds.push_back(dt);
  }
  // Keeps the copies observable (the compiler may not drop a memcpy whose result is read).
  volatile unsigned char sink = dst[bytes - 1];
  (void)sink;
  const double s = median(seconds);
  return {s, gbps(static_cast<double>(bytes), s)};
}

}  // namespace moempi::bench
