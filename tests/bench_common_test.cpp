// Tests of bench/bench_common: size parsing and the -b/-e/-f sweep (nccl-tests conventions),
// median, interleaved timing order, slowest-rank reduction on one rank, the `#` table layout,
// the copy limit's units and the CPU model line (values only, never speeds: timing is for benches).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "runtime/core/error.h"

namespace moempi::bench {
namespace {

TEST(ParseSize, SuffixesArePowersOf1024) {
  EXPECT_EQ(parse_size("4096", "-b"), 4096);
  EXPECT_EQ(parse_size("1K", "-b"), 1024);
  EXPECT_EQ(parse_size("64KiB", "-b"), 65536);
  EXPECT_EQ(parse_size("2kb", "-b"), 2048);
  EXPECT_EQ(parse_size("16M", "-e"), 16 << 20);
  EXPECT_EQ(parse_size("1G", "-e"), int64_t{1} << 30);
  EXPECT_EQ(parse_size("7B", "-e"), 7);
}

TEST(ParseSize, MalformedIsCollectiveErrorNamingTheFlag) {
  for (const char* bad : {"", "K", "1Q", "-1K", "1.5M", "0", "999999999999999G"}) {
    try {
      parse_size(bad, "-e");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const CollectiveError& e) {
      EXPECT_NE(std::string(e.what()).find("-e"), std::string::npos) << e.what();
    }
  }
}

TEST(FormatSize, ExactMultiplesOnly) {
  EXPECT_EQ(format_size(1024), "1K");
  EXPECT_EQ(format_size(1536), "1536");
  EXPECT_EQ(format_size(16 << 20), "16M");
  EXPECT_EQ(format_size(int64_t{3} << 30), "3G");
}

TEST(SizeSweep, FactorStepsUpToMaxInclusive) {
  EXPECT_EQ(size_sweep(1024, 16384, 2.0), (std::vector<int64_t>{1024, 2048, 4096, 8192, 16384}));
  EXPECT_EQ(size_sweep(1024, 10000, 4.0), (std::vector<int64_t>{1024, 4096}));
  EXPECT_EQ(size_sweep(8, 8, 0.5), (std::vector<int64_t>{8}));  // factor unused when min == max
  EXPECT_EQ(size_sweep(1, 3, 1.1), (std::vector<int64_t>{1, 2, 3}));  // always advances
  EXPECT_THROW(size_sweep(2048, 1024, 2.0), CollectiveError);
  EXPECT_THROW(size_sweep(1024, 2048, 1.0), CollectiveError);
}

TEST(Median, OddEvenEmpty) {
  EXPECT_EQ(median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_EQ(median({4.0, 1.0, 3.0, 2.0}), 2.5);
  EXPECT_EQ(median({}), 0.0);
}

TEST(TimeInterleaved, OpsAlternateAndWarmupIsNotRecorded) {
  const Communicator world = Communicator::world();
  std::string trace;
  const auto seconds = time_interleaved(
      {[&](int r) { trace += "a" + std::to_string(r); }, [&](int r) { trace += "b" + std::to_string(r); }},
      2, 3, world);
  EXPECT_EQ(trace, "a0b0a1b1a2b2a3b3a4b4");
  ASSERT_EQ(seconds.size(), 2u);
  EXPECT_EQ(seconds[0].size(), 3u);
  EXPECT_EQ(seconds[1].size(), 3u);
  for (const auto& per_op : seconds)
    for (double s : per_op) EXPECT_GE(s, 0.0);
}

TEST(OverRanks, SingleRankIsItsOwnMinAvgMax) {
  const Communicator world = Communicator::world();
  if (world.size() != 1) GTEST_SKIP() << "serial test";
  const OverRanks r = over_ranks(2.5, world);
  EXPECT_EQ(r.min, 2.5);
  EXPECT_EQ(r.avg, 2.5);
  EXPECT_EQ(r.max, 2.5);
}

TEST(Table, HashHeaderUnitsRowAndRightAlignedCells) {
  Table table({{"size", "(B)", 8}, {"time", "(us)", 7}, {"#wrong", "", 6}}, true);
  testing::internal::CaptureStdout();
  table.print_header({"a title"});
  table.print_row({cell(int64_t{1024}), cell(12.345, 1), cell(int64_t{0})});
  table.print_comment("done");
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(out,
            "# a title\n"
            "#    size    time #wrong\n"
            "#     (B)    (us)       \n"
            "     1024    12.3      0\n"
            "# done\n");
  Table silent({{"x", "", 3}}, false);
  testing::internal::CaptureStdout();
  silent.print_header({"t"});
  silent.print_row({"1"});
  EXPECT_EQ(testing::internal::GetCapturedStdout(), "");
}

TEST(Cell, NonFiniteIsNA) {
  EXPECT_EQ(cell(1.0 / 0.0, 2), "N/A");
  EXPECT_EQ(cell(0.125, 2), "0.12");
}

// Units and bookkeeping only, no speed asserted: odd sizes, one byte, and a size past the caches.
TEST(CopyLimit, MedianSecondsAndGigabytesPerSecondAgree) {
  TimingFlags flags;
  flags.iters = 5;
  flags.warmup = 1;
  for (size_t bytes : {size_t{1}, size_t{4097}, size_t{64} << 20}) {
    SCOPED_TRACE("bytes=" + std::to_string(bytes));
    const CopyLimit c = copy_limit(bytes, flags);
    ASSERT_TRUE(std::isfinite(c.seconds));
    ASSERT_GE(c.seconds, 0.0);
    EXPECT_DOUBLE_EQ(c.gbps, gbps(static_cast<double>(bytes), c.seconds));
    if (bytes >= (size_t{1} << 20)) {
      EXPECT_GT(c.seconds, 0.0);  // 64 MiB cannot be copied within one clock tick
      std::printf("copy limit, %zu bytes: %.3f ms, %.2f GB/s\n", bytes, 1e3 * c.seconds, c.gbps);
    }
  }
}

TEST(CpuModel, OneLineNamingTheCpu) {
  const std::string m = cpu_model();
  EXPECT_FALSE(m.empty());
  EXPECT_EQ(m.find('\n'), std::string::npos);
  std::printf("cpu: %s\n", m.c_str());
}

}  // namespace
}  // namespace moempi::bench
