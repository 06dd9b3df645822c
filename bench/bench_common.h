// Shared pieces of the `moempi bench` collective benchmarks, after nccl-tests (STYLE.md habit 8):
// size parsing and the -b/-e/-f sweep, -n/-w/-c, interleaved timing of moempi and raw-MPI ops
// behind a barrier, slowest-rank reduction, the fixed-width `#` table and --json on rank 0.
// Test: tests/bench_common_test.cpp; every benchmark also verifies its own payload (#wrong).
#pragma once
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace moempi::bench {

// "4096", "1K", "16M", "1G", "64KiB", "2kb" -> bytes. K/M/G are powers of 1024 (nccl-tests).
// Collective error naming `flag` on a malformed or non-positive size.
int64_t parse_size(const std::string& text, const std::string& flag);
// 1024 -> "1K", 1536 -> "1536", 16777216 -> "16M" (exact multiples only).
std::string format_size(int64_t bytes);
// min, min*factor, ... up to max (inclusive), like nccl-tests -b/-e/-f. Collective error unless
// 0 < min <= max and factor > 1 (factor is ignored when min == max).
std::vector<int64_t> size_sweep(int64_t min_bytes, int64_t max_bytes, double factor);

struct TimingFlags {
  int iters = 20;   // -n: timed iterations
  int warmup = 5;   // -w: untimed iterations first
  int check = 1;    // -c: 0 = no payload check, 1 = verify before and after timing
  std::string json; // --json FILE: rank 0 writes the results there
};
void add_timing_flags(CLI::App& app, TimingFlags& flags);

// Runs warmup + iters rounds; in each round every op runs once, in order, each after a barrier
// over `group`, so moempi and raw alternate and see the same machine state. Collective over
// `group`. op(i) gets the round index i. Returns [op][timed round] seconds on this rank.
// unit > 0: the ops are consecutive units of `unit` ops (e.g. a forward and its backward), run
// in order within a unit, and round i starts at unit i mod (ops / unit): no variant always runs
// first (on a cold cache) or right after the same neighbour.
std::vector<std::vector<double>> time_interleaved(const std::vector<std::function<void(int)>>& ops,
                                                  int warmup, int iters, const Communicator& group,
                                                  int unit = 0);

double median(std::vector<double> v);

// Per-rank value -> min / mean / max over `group` (MPI_Reduce MIN, SUM, MAX to rank 0; the
// result is valid on rank 0 only). `max` is the slowest rank, the figure benchmarks report.
struct OverRanks {
  double min = 0, avg = 0, max = 0;
};
OverRanks over_ranks(double value, const Communicator& group);

// A fixed-width table in nccl-tests style, printed by rank 0 only: `#` comment lines, a header
// row of names and a units row (both starting with `#`), then right-aligned rows.
class Table {
 public:
  struct Column {
    std::string name, unit;
    int width;
  };
  // Prints only where `printing` is true (pass group.rank() == 0).
  Table(std::vector<Column> columns, bool printing)
      : columns_(std::move(columns)), printing_(printing) {}
  void print_header(const std::vector<std::string>& comment_lines) const;
  void print_row(const std::vector<std::string>& cells) const;
  void print_comment(const std::string& line) const;

 private:
  std::vector<Column> columns_;
  bool printing_;
};

// Number formatting for table cells: fixed decimals, or "N/A" for non-finite values.
std::string cell(double v, int decimals);
std::string cell(int64_t v);

// Writes `doc` to `path` on rank 0 of `group` (no-op if path is empty). Local error on I/O
// failure.
void write_json(const std::string& path, const nlohmann::json& doc, const Communicator& group);

// {"min", "avg", "max"} in microseconds, for a JSON row.
nlohmann::json microseconds_json(const OverRanks& t);

// The closing lines every verifying benchmark shares: the nccl-tests verdict line, the JSON
// document (with its total #wrong) on rank 0, and the exit code (1 if anything was wrong).
int finish_report(const Table& table, nlohmann::json& doc, int64_t all_wrong,
                  const std::string& json_path, const Communicator& group);

// algbw in GB/s (1e9 bytes/s) for `bytes` moved in `seconds`.
inline double gbps(double bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e9 : 0.0; }

// The CPU the table was measured on, for its `#` header: lscpu's "Model name" (read from
// /proc/cpuinfo) and the model number, e.g. "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.30GHz
// (model 207)"; "unknown CPU" where /proc/cpuinfo has no model name. Local, no communication.
std::string cpu_model();

// The copy limit: what one core does with memcpy of `bytes` from one buffer to another, the
// floor under any exchange that must move those bytes through memory on this rank. Source and
// destination are distinct, page-faulted allocations; the copy is checked once (memcmp), then
// run flags.warmup times untimed and flags.iters times timed; `seconds` is the median of the
// timed copies and `gbps` = bytes / seconds / 1e9. Local (no communication): on an
// oversubscribed or busy machine, ranks measuring at once share the memory bandwidth. Local
// error unless bytes > 0 and flags.iters > 0. Test: tests/bench_common_test.cpp (CopyLimit.*).
struct CopyLimit {
  double seconds = 0;
  double gbps = 0;
};
CopyLimit copy_limit(size_t bytes, const TimingFlags& flags);  // {0, 0} for 0 bytes

}  // namespace moempi::bench
