// `moempi bench alltoall`: the dispatcher's exchange path against a raw MPI_Alltoallv of the same
// bytes, interleaved in one run, nccl-tests style. It is also a correctness test: every element
// is a payload formula of (seed, source, destination, index), checked on arrival (#wrong).
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "bench/bench.h"
#include "runtime/memory_estimate.h"
#include "bench/bench_common.h"
#include "bench/dispatch_flags.h"
#include "comm/collectives.h"
#include "comm/mpi_check.h"
#include "comm/payload.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "runtime/core/error.h"

namespace moempi::bench {
namespace {

struct AlltoallOptions {
  std::string min_size = "1K", max_size = "16M";
  double factor = 2.0;
  TimingFlags timing;
  DispatchFlags flags;
  int experts_per_rank = 2;
  uint64_t seed = 1;
};

int run_alltoall(const AlltoallOptions& o) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank();
  const ProcessGroups groups = build_bench_groups(o.flags);
  MOEMPI_CHECK_ALL(o.experts_per_rank >= 1, "--experts-per-rank ({}) must be >= 1", o.experts_per_rank);
  const int El = o.experts_per_rank;
  const Placement placement = make_placement(W * El, groups);
  std::unique_ptr<Dispatcher> dispatcher = make_bench_dispatcher(o.flags, o.flags.dispatcher, 1, groups);  // k = 1
  std::unique_ptr<DispatchPlan> plan = dispatcher->new_plan();
  const bool versus = !o.flags.versus.empty();
  std::unique_ptr<Dispatcher> vdispatcher = versus ? make_bench_dispatcher(o.flags, o.flags.versus, 1, groups) : nullptr;
  std::unique_ptr<DispatchPlan> vplan = versus ? vdispatcher->new_plan() : nullptr;
  const std::string label = dispatcher_label(*dispatcher);
  const std::string vlabel = versus ? dispatcher_label(*vdispatcher) : "";
  const std::vector<int64_t> sizes =
      size_sweep(parse_size(o.min_size, "-b"), parse_size(o.max_size, "-e"), o.factor);
  {  // Refuse a sweep whose largest size cannot fit before allocating it: per rank the input, the
     // raw baseline's receive buffer and the dispatcher's send and receive rows (about 4 copies of
     // size x ranks), times the ranks on this machine.
    MPI_Comm shared = MPI_COMM_NULL;
    MPI_Comm_split_type(world.comm(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared);
    int on_machine = 1;
    MPI_Comm_size(shared, &on_machine);
    MPI_Comm_free(&shared);
    const double largest = sizes.empty() ? 0.0 : static_cast<double>(*std::max_element(sizes.begin(), sizes.end()));
    const double need = 4.0 * largest * W * on_machine, machine = machine_memory_bytes();
    MOEMPI_CHECK_ALL(machine <= 0 || need <= machine,
                     "-e {}: the largest size needs about {} per rank ({} bytes to each of {} ranks, 4 buffers), {} "
                     "for the {} ranks on this machine, more than its {} of memory; lower -e",
                     o.max_size, format_bytes(4.0 * largest * W), static_cast<int64_t>(largest), W, format_bytes(need),
                     on_machine, format_bytes(machine));
  }

  Table table({{"size", "(B/peer)", 10}, {"count", "(floats)", 10}, {"min", "(us)", 9},
               {"avg", "(us)", 9}, {"max", "(us)", 9}, {"algbw", "(GB/s)", 7}, {"busbw", "(GB/s)", 7},
               {"raw", "(us)", 9}, {"algbw", "(GB/s)", 7}, {"busbw", "(GB/s)", 7}, {"copy", "(us)", 9},
               {"#wrong", "", 7}, {"ratio", "moe/raw", 7}, {"ratio", "moe/copy", 8}, {"intra", "(msg/rk)", 8},
               {"intra", "(KB/rk)", 9}, {"inter", "(msg/rk)", 8}, {"inter", "(KB/rk)", 9}, {"vs", "(us)", 9},
               {"vs_inter", "(msg/rk)", 8}, {"vs_inter", "(KB/rk)", 9}, {"ratio", "moe/vs", 7}},
              me == 0);
  std::vector<std::string> header = {
      fmt::format("moempi bench alltoall: {} ranks, dispatcher '{}', {} experts ({} per rank), "
                  "warmup {}, iters {}, check {}",
                  W, label, W * El, El, o.timing.warmup, o.timing.iters, o.timing.check),
      "moempi path = the dispatcher's plan (count exchange) + dispatch (rows to experts), where",
      fmt::format("  {} = {}", dispatcher->name(), dispatcher_registry().find(dispatcher->name())->doc),
      "raw = one MPI_Alltoallv of the same bytes, already packed; the two alternate round by round",
      "size = bytes to each peer (incl. self); time = median over iterations per rank, then",
      "  min/avg/max over ranks; algbw = size*W / max; busbw = algbw*(W-1)/W; ratio = max/raw",
      "copy = the copy limit: one core's memcpy of the bytes a rank receives (size*W), slowest rank",
      fmt::format("CPU: {}", cpu_model()),
  };
  const auto layout = layout_header_lines(groups, o.flags, vlabel);
  header.insert(header.begin() + 1, layout.begin(), layout.end());
  table.print_header(header);

  nlohmann::json doc = {{"benchmark", "alltoall"},
                        {"cpu", cpu_model()},
                        {"ranks", W},
                        {"dispatcher", label},
                        {"versus", vlabel},
                        {"nodes", groups.num_nodes},
                        {"link_gbps", o.flags.link_gbps},
                        {"link_latency_us", o.flags.link_latency_us},
                        {"experts_per_rank", El},
                        {"iters", o.timing.iters},
                        {"warmup", o.timing.warmup},
                        {"rows", nlohmann::json::array()}};
  int64_t all_wrong = 0;
  std::vector<float> x, raw_recv;
  std::vector<int32_t> topk;
  std::vector<int> raw_counts(W), raw_displs(W);
  for (const int64_t size : sizes) {
    // Rows of D floats (D | floats per peer, D <= 256): rp rows to each peer, token t = p*rp + q
    // goes to peer p's local expert q*El/rp, so the send side is already in peer order.
    const int64_t c = std::max<int64_t>(1, size / 4);
    const int64_t bytes = c * 4;
    MOEMPI_CHECK_ALL(c * W <= INT_MAX, "-e: {} bytes per peer x {} ranks exceeds INT_MAX floats", bytes, W);
    const int D = static_cast<int>(std::gcd(c, int64_t{256}));
    const int64_t rp = c / D;
    const int T = static_cast<int>(W * rp);
    topk.resize(T);
    for (int p = 0; p < W; ++p)
      for (int64_t q = 0; q < rp; ++q) topk[p * rp + q] = static_cast<int32_t>(p * El + q * El / rp);
    x.resize(W * c);
    raw_recv.resize(W * c);
    for (int p = 0; p < W; ++p) {
      payload_fill(x.data() + p * c, c, o.seed, me, p);
      raw_counts[p] = static_cast<int>(c);
      raw_displs[p] = static_cast<int>(p * c);
    }

    auto moempi_op = [&](int) {
      dispatcher->plan(*plan, Routing{topk.data(), nullptr, T, 1}, x.data(), D, placement);
      dispatcher->dispatch(*plan, x.data());
    };
    auto raw_op = [&](int) {
      // The baseline on purpose calls MPI directly: what a hand-written exchange would cost.
      MOEMPI_MPI_CHECK(MPI_Alltoallv(x.data(), raw_counts.data(), raw_displs.data(), MPI_FLOAT,
                                     raw_recv.data(), raw_counts.data(), raw_displs.data(), MPI_FLOAT,
                                     world.comm()));
    };
    // Expected layout at the expert side: (local expert le, source s, q), q in [q0(le), q1(le)).
    auto verify = [&]() {
      const float* out = plan->x_RD();
      int64_t wrong = plan->rows() * D == W * c ? 0 : W * c;  // every element accounted for
      int64_t at = 0;
      for (int le = 0; le < El; ++le) {
        int64_t q0 = 0;
        while (q0 < rp && q0 * El / rp < le) ++q0;
        int64_t q1 = q0;
        while (q1 < rp && q1 * El / rp == le) ++q1;
        for (int s = 0; s < W; ++s, at += (q1 - q0) * D)
          wrong += payload_check(out + at, (q1 - q0) * D, o.seed, s, me, q0 * D);
      }
      for (int s = 0; s < W; ++s) wrong += payload_check(raw_recv.data() + s * c, c, o.seed, s, me);
      return wrong;
    };
    auto poison = [&]() {
      std::memset(plan->x_RD(), 0xff, plan->rows() * D * sizeof(float));  // NaN: must be overwritten
      std::memset(raw_recv.data(), 0xff, raw_recv.size() * sizeof(float));
    };

    auto versus_op = [&](int) {
      vdispatcher->plan(*vplan, Routing{topk.data(), nullptr, T, 1}, x.data(), D, placement);
      vdispatcher->dispatch(*vplan, x.data());
    };
    int64_t wrong = 0;
    if (o.timing.check) {
      moempi_op(0);  // plans, so that the expert rows exist to be poisoned
      poison();
      moempi_op(0);
      raw_op(0);
      wrong += verify();
      poison();
    }
    const VersusTiming timed =
        time_against_raw(*dispatcher, vdispatcher.get(), moempi_op, raw_op, versus_op, o.timing, world);
    const auto& seconds = timed.seconds;
    const RoundTraffic& tr = timed.traffic;
    const RoundTraffic& vtr = timed.versus_traffic;
    const OverRanks vs = over_ranks(versus ? median(seconds[2]) : 0.0, world);
    if (o.timing.check) wrong += verify();
    allreduce_sum(&wrong, 1, world);
    all_wrong += wrong;

    const OverRanks m = over_ranks(median(seconds[0]), world);
    const OverRanks r = over_ranks(median(seconds[1]), world);
    const OverRanks cp = over_ranks(copy_limit(static_cast<size_t>(bytes) * W, o.timing).seconds, world);
    const double total = static_cast<double>(bytes) * W;
    const double busf = double(W - 1) / W;
    const double ratio = r.max > 0 ? m.max / r.max : 0.0;
    table.print_row({cell(bytes), cell(c), cell(m.min * 1e6, 1), cell(m.avg * 1e6, 1),
                     cell(m.max * 1e6, 1), cell(gbps(total, m.max), 2), cell(gbps(total, m.max) * busf, 2),
                     cell(r.max * 1e6, 1), cell(gbps(total, r.max), 2), cell(gbps(total, r.max) * busf, 2),
                     cell(cp.max * 1e6, 1), cell(wrong), cell(ratio, 2), cell(m.max / cp.max, 2),
                     cell(tr.messages_intra, 1), cell(tr.bytes_intra / 1024, 1), cell(tr.messages_inter, 1),
                     cell(tr.bytes_inter / 1024, 1), versus ? cell(vs.max * 1e6, 1) : std::string("-"),
                     versus ? cell(vtr.messages_inter, 1) : std::string("-"),
                     versus ? cell(vtr.bytes_inter / 1024, 1) : std::string("-"),
                     versus && vs.max > 0 ? cell(m.max / vs.max, 2) : std::string("-")});
    doc["rows"].push_back({{"bytes_per_peer", bytes},
                           {"floats_per_peer", c},
                           {"row_width", D},
                           {"moempi_us", microseconds_json(m)},
                           {"raw_us", microseconds_json(r)},
                           {"algbw_gbps", gbps(total, m.max)},
                           {"busbw_gbps", gbps(total, m.max) * busf},
                           {"raw_busbw_gbps", gbps(total, r.max) * busf},
                           {"wrong", wrong},
                           {"ratio", ratio},
                           {"copy_us", microseconds_json(cp)},
                           {"ratio_copy", m.max / cp.max},
                           {"per_rank_round", {{"messages_intra", tr.messages_intra}, {"bytes_intra", tr.bytes_intra},
                                               {"messages_inter", tr.messages_inter}, {"bytes_inter", tr.bytes_inter}}},
                           {"versus_us", microseconds_json(vs)},
                           {"versus_per_rank_round", {{"messages_intra", vtr.messages_intra}, {"bytes_intra", vtr.bytes_intra},
                                                      {"messages_inter", vtr.messages_inter}, {"bytes_inter", vtr.bytes_inter}}},
                           {"ratio_versus", versus && vs.max > 0 ? m.max / vs.max : 0.0}});
  }
  return finish_report(table, doc, all_wrong, o.timing.json, world);
}

}  // namespace

void add_alltoall_command(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<AlltoallOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "alltoall", "all-to-all exchange: the dispatcher path vs raw MPI_Alltoallv (sizes per peer)");
  cmd->add_option("-b,--minbytes", o->min_size, "smallest size, bytes per peer (1K, 64KiB, ...)")->capture_default_str();
  cmd->add_option("-e,--maxbytes", o->max_size, "largest size, bytes per peer")->capture_default_str();
  cmd->add_option("-f,--stepfactor", o->factor, "size multiplier between steps")->capture_default_str();
  add_timing_flags(*cmd, o->timing);
  add_dispatch_flags(*cmd, o->flags);
  cmd->add_option("--experts-per-rank", o->experts_per_rank, "local experts per rank (regroup fan-out)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "payload seed")->capture_default_str();
  cmd->callback([o, &exit_code] { exit_code = run_alltoall(*o); });
}

}  // namespace moempi::bench
