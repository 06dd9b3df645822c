// `moempi bench dispatch`: a dispatcher's plan + dispatch + combine of T tokens x D per rank under
// the traffic patterns of ALGORITHMS.md 5, next to raw MPI_Alltoallv of the same bytes both ways.
// Before timing, every pattern is verified: experts add their global id to each row, and
// combine(dispatch(x)) must return x + id at every slot (#wrong counts the elements that do not).
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <vector>

#include "bench/bench.h"
#include "bench/bench_common.h"
#include "bench/dispatch_flags.h"
#include "comm/collectives.h"
#include "comm/mpi_check.h"
#include "comm/payload.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher_registry.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi::bench {
namespace {

const std::vector<std::string> kPatterns = {"balanced", "hot_expert", "hot_rank",
                                            "zipf",     "zero_rank",  "rotating"};
constexpr float kHotShare = 0.75f;  // hot_expert / hot_rank / rotating: share of slots to the hotspot

struct DispatchOptions {
  int T = 4096, D = 256, E = 8, k = 2;
  std::vector<std::string> patterns;  // empty = all
  double zipf_s = 1.2;
  TimingFlags timing;
  DispatchFlags flags;
  uint64_t seed = 1;
};

// k distinct experts for one token: `draw` proposes, duplicates are redrawn.
template <class Draw>
void pick_distinct(int32_t* ids, int k, Draw&& draw) {
  for (int j = 0; j < k; ++j) {
    int32_t e;
    do e = draw(j);
    while (std::find(ids, ids + j, e) != ids + j);
    ids[j] = e;
  }
}

// The routings (topk_ids_TK) this rank uses for `pattern`; one per round, cycled (only
// `rotating` has more than one). Every rank draws from its own stream, so ranks differ.
std::vector<std::vector<int32_t>> make_routings(const std::string& pattern, const DispatchOptions& o,
                                                int rank, int W, int& T) {
  const int E = o.E, k = o.k, El = E / W;
  T = (pattern == "zero_rank" && rank == W - 1) ? 0 : o.T;
  Rng rng(o.seed, rank, 0, Rng::stream_of(pattern));
  auto uniform = [&](int) { return static_cast<int32_t>(rng.below(E)); };
  std::vector<std::vector<int32_t>> routings;
  const int count = pattern == "rotating" ? E : 1;
  for (int r = 0; r < count; ++r) {
    std::vector<int32_t> ids(static_cast<size_t>(T) * k);
    for (int t = 0; t < T; ++t) {
      int32_t* row = &ids[static_cast<size_t>(t) * k];
      if (pattern == "balanced" || pattern == "zero_rank") {
        // Round robin from a per-rank offset: every expert gets T*k/E rows from every rank.
        for (int j = 0; j < k; ++j) row[j] = static_cast<int32_t>((static_cast<int64_t>(t) * k + j + rank) % E);
      } else if (pattern == "hot_expert" || pattern == "rotating") {
        const int32_t hot = pattern == "rotating" ? r : 0;
        pick_distinct(row, k, [&](int j) {
          return j == 0 && rng.uniform() < kHotShare ? hot : uniform(j);
        });
      } else if (pattern == "hot_rank") {
        // Slots prefer rank 0's experts; once those are used up by the token, uniform.
        pick_distinct(row, k, [&](int j) {
          return j < El && rng.uniform() < kHotShare ? static_cast<int32_t>(rng.below(El)) : uniform(j);
        });
      } else {  // zipf: P(e) ~ 1 / (e+1)^s
        std::vector<double> cdf(E);
        double sum = 0;
        for (int e = 0; e < E; ++e) cdf[e] = (sum += 1.0 / std::pow(e + 1.0, o.zipf_s));
        pick_distinct(row, k, [&](int) {
          const double u = rng.uniform() * sum;
          return static_cast<int32_t>(std::min<ptrdiff_t>(
              E - 1, std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin()));
        });
      }
    }
    routings.push_back(std::move(ids));
  }
  return routings;
}

int run_dispatch(const DispatchOptions& o) {
  const int W = Communicator::world().size();
  const ProcessGroups groups = build_bench_groups(o.flags);
  const Communicator& world = groups.world;
  const int me = world.rank();
  MOEMPI_CHECK_ALL(o.T >= 0, "-T ({}) must be >= 0 (tokens per rank)", o.T);
  MOEMPI_CHECK_ALL(o.D >= 1, "-D ({}) must be >= 1 (row width in floats)", o.D);
  MOEMPI_CHECK_ALL(o.k >= 1 && o.k <= o.E, "-k ({}) must be in [1, -E ({})]", o.k, o.E);
  MOEMPI_CHECK_ALL(o.E % W == 0, "-E ({}) is not divisible by the number of ranks ({}); try -E {}", o.E, W,
                   (o.E / W + 1) * W);
  const Placement placement = make_placement(o.E, groups);
  std::unique_ptr<Dispatcher> dispatcher = make_bench_dispatcher(o.flags, o.flags.dispatcher, o.k, groups);
  std::unique_ptr<DispatchPlan> plan = dispatcher->new_plan();
  // --versus: a second dispatcher, verified and timed the same way in the same rounds.
  const bool versus = !o.flags.versus.empty();
  std::unique_ptr<Dispatcher> vdispatcher = versus ? make_bench_dispatcher(o.flags, o.flags.versus, o.k, groups) : nullptr;
  std::unique_ptr<DispatchPlan> vplan = versus ? vdispatcher->new_plan() : nullptr;
  const std::string label = dispatcher_label(*dispatcher);
  const std::string vlabel = versus ? dispatcher_label(*vdispatcher) : "";
  const bool dedup = dispatcher_dedups(*dispatcher), vdedup = versus && dispatcher_dedups(*vdispatcher);
  const int D = o.D, k = o.k, El = placement.num_local();
  // Combine weights 2^-(k+1): products are exact, so the expected sums below are exact to
  // recompute in the same order whether or not the compiler fuses multiply-adds.
  auto weight = [](int slot_k) { return std::ldexp(1.0f, -(slot_k + 1)); };
  const std::vector<std::string> patterns = o.patterns.empty() ? kPatterns : o.patterns;

  Table table({{"pattern", "", 11}, {"rows", "(total)", 9}, {"max_in", "(rows)", 8}, {"MB", "(/dir)", 8},
               {"min", "(us)", 9}, {"avg", "(us)", 9}, {"time", "(us)", 9}, {"raw", "(us)", 9},
               {"busbw", "(GB/s)", 7}, {"copy", "(us)", 9}, {"#wrong", "", 7}, {"ratio", "moe/raw", 7},
               {"ratio", "moe/copy", 8}, {"intra", "(msg/rk)", 8}, {"intra", "(KB/rk)", 9},
               {"inter", "(msg/rk)", 8}, {"inter", "(KB/rk)", 9}, {"vs", "(us)", 9}, {"vs_inter", "(KB/rk)", 9},
               {"ratio", "moe/vs", 7}},
              me == 0);
  std::vector<std::string> header = {
      fmt::format("moempi bench dispatch: {} ranks, dispatcher '{}', T {} tokens x D {} per rank, "
                  "E {} ({} per rank), k {}, warmup {}, iters {}",
                  W, label, o.T, D, o.E, El, k, o.timing.warmup, o.timing.iters),
      fmt::format("moempi = plan (count exchange) + dispatch + combine (weighted sum) per round; {} = {}",
                  dispatcher->name(), dispatcher_registry().find(dispatcher->name())->doc),
      "raw = MPI_Alltoallv of the same bytes there and back, packed; the two alternate round by round",
      "rows = routed rows summed over ranks; max_in = most rows one rank's experts receive;",
      "MB = bytes per direction summed over ranks; time = median over iterations per rank, then",
      fmt::format("  min/avg/max over ranks (time = slowest); busbw from raw; hot share {:.2f}, zipf s {}",
                  kHotShare, o.zipf_s),
      "copy = the copy limit: one core's memcpy of the bytes a rank's dispatch and combine deliver",
      "  (rows into its experts + rows back to its tokens, self included), slowest rank",
      fmt::format("CPU: {}", cpu_model()),
  };
  const auto layout = layout_header_lines(groups, o.flags, vlabel);
  header.insert(header.begin() + 1, layout.begin(), layout.end());
  table.print_header(header);
  nlohmann::json doc = {{"benchmark", "dispatch"}, {"cpu", cpu_model()}, {"ranks", W},
                        {"dispatcher", label}, {"versus", vlabel}, {"nodes", groups.num_nodes},
                        {"link_gbps", o.flags.link_gbps}, {"link_latency_us", o.flags.link_latency_us},
                        {"T", o.T}, {"D", D}, {"E", o.E}, {"k", k}, {"iters", o.timing.iters},
                        {"warmup", o.timing.warmup}, {"rows", nlohmann::json::array()}};

  int64_t all_wrong = 0;
  std::vector<float> x, z, raw_send, raw_recv, probs;
  for (const std::string& pattern : patterns) {
    int T = 0;
    const auto routings = make_routings(pattern, o, me, W, T);
    const int64_t TK = static_cast<int64_t>(T) * k;
    x.resize(static_cast<size_t>(T) * D);
    payload_fill(x.data(), x.size(), o.seed, me, 0);
    z.resize(static_cast<size_t>(T) * D);
    probs.resize(TK);
    for (int64_t s = 0; s < TK; ++s) probs[s] = weight(static_cast<int>(s % k));
    auto routing = [&](const std::vector<int32_t>& ids) { return Routing{ids.data(), probs.data(), T, k}; };
    // z_t expected from combine when every routed slot's expert row is x_t + add(e).
    auto expected_combine = [&](const std::vector<int32_t>& ids, int t, int d, bool add_e) {
      float out = 0.0f;
      bool first = true;
      for (int kk = 0; kk < k; ++kk) {
        const int e = ids[static_cast<size_t>(t) * k + kk];
        if (e < 0) continue;
        const float y = x[static_cast<size_t>(t) * D + d] + (add_e ? static_cast<float>(e) : 0.0f);
        out = first ? weight(kk) * y : out + weight(kk) * y;
        first = false;
      }
      return out;
    };

    // Exact, or (dedup: a token's per-node partial sums) within 1e-5 of the scale.
    auto same = [](float got, float want, bool near) {
      return near ? std::fabs(got - want) <= 1e-5f * (1.0f + std::fabs(want)) : got == want;
    };
    // Per routing: rows this rank sends to / receives from each peer (the raw baseline's counts).
    struct RawLayout {
      std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
      int64_t send_floats = 0, recv_floats = 0;
    };
    std::vector<RawLayout> raw(routings.size());
    int64_t rows_total = 0, max_in = 0, copy_rows = 0;  // copy_rows: most rows a rank delivers
    for (size_t r = 0; r < routings.size(); ++r) {
      std::vector<int64_t> send_rows(W, 0), recv_rows(W, 0);
      for (int32_t e : routings[r])
        if (e >= 0) ++send_rows[placement.destination(e, me)];
      alltoall_i64(send_rows.data(), recv_rows.data(), 1, world);
      RawLayout& L = raw[r];
      for (int p = 0; p < W; ++p) {
        MOEMPI_CHECK_ALL(L.send_floats + send_rows[p] * D <= INT_MAX && L.recv_floats + recv_rows[p] * D <= INT_MAX,
                         "-T x -k x -D too large for int counts in the raw baseline");
        L.send_counts.push_back(static_cast<int>(send_rows[p] * D));
        L.send_displs.push_back(static_cast<int>(L.send_floats));
        L.recv_counts.push_back(static_cast<int>(recv_rows[p] * D));
        L.recv_displs.push_back(static_cast<int>(L.recv_floats));
        L.send_floats += send_rows[p] * D;
        L.recv_floats += recv_rows[p] * D;
      }
      rows_total += L.send_floats / D;
      max_in = std::max(max_in, L.recv_floats / D);
      copy_rows = std::max(copy_rows, (L.send_floats + L.recv_floats) / D);
    }
    int64_t sums[2] = {rows_total, max_in};
    allreduce_sum(&sums[0], 1, world);
    allreduce(&sums[1], 1, ReduceOp::kMax, world);
    rows_total = sums[0] / static_cast<int64_t>(routings.size());
    max_in = sums[1];
    size_t raw_send_max = 0, raw_recv_max = 0;
    for (const RawLayout& L : raw) {
      raw_send_max = std::max<size_t>(raw_send_max, L.send_floats);
      raw_recv_max = std::max<size_t>(raw_recv_max, L.recv_floats);
    }
    raw_send.assign(raw_send_max, 1.0f);
    raw_recv.assign(raw_recv_max, 0.0f);

    // Verify every routing before timing, nccl-tests style. Expert side: every rank regenerates
    // every source's routing (a pure function of its rank) and checks that local expert le holds,
    // source by source, the rows of the tokens routed to it in slot order, with the source's
    // payload. Round trip: experts add their global id, so combine must return x[t] + e at slot
    // (t, k) and zero at dropped slots.
    int64_t wrong = 0;
    if (o.timing.check) {
      std::vector<std::vector<std::vector<int32_t>>> all_routings(W);  // [src][routing]
      for (int src = 0; src < W; ++src) {
        int T_src = 0;
        all_routings[src] = make_routings(pattern, o, src, W, T_src);
      }
      // The timed dispatcher, then (--versus) the second one: the body below checks whichever
      // under the names `dispatcher` and `plan` (they shadow the outer ones on purpose).
      for (int which = 0; which < (versus ? 2 : 1); ++which)
      for (size_t r = 0; r < routings.size(); ++r) {
        Dispatcher* const checked = which ? vdispatcher.get() : dispatcher.get();
        DispatchPlan* const checked_plan = which ? vplan.get() : plan.get();
        const bool near_ok = which == 0 ? dedup : vdedup;  // dedup: per-node partial sums
        const auto& ids = routings[r];
        Dispatcher* const dispatcher = checked;
        DispatchPlan* const plan = checked_plan;
        dispatcher->plan(*plan, routing(ids), x.data(), D, placement);
        const int64_t R = plan->rows();
        // No poisoning of x_RD here: with shm, peers may already be writing it (dispatcher.h).
        dispatcher->dispatch(*plan, x.data());
        const float* xr = plan->x_RD();
        float* y = plan->y_RD();
        int64_t row = 0;
        for (int le = 0; le < El; ++le) {
          const int e = placement.local_experts()[le];
          const int64_t first = row;
          for (int src = 0; src < W; ++src) {
            const auto& src_ids = all_routings[src][r];
            for (size_t slot = 0; slot < src_ids.size(); ++slot) {
              if (src_ids[slot] != e) continue;
              if (row < R)
                wrong += payload_check(&xr[row * D], D, o.seed, src, 0, static_cast<int64_t>(slot / k) * D);
              else
                wrong += D;  // a row the dispatcher did not deliver
              ++row;
            }
          }
          wrong += std::abs(plan->rows_per_local_expert()[le] - (row - first));
          // The "experts": y = x + global expert id.
          for (int64_t i = first * D; i < std::min(row, R) * D; ++i) y[i] = xr[i] + static_cast<float>(e);
        }
        wrong += std::abs(R - row);
        std::fill(z.begin(), z.end(), -1.0f);
        dispatcher->combine(*plan, z.data());
        for (int t = 0; t < T; ++t)
          for (int d = 0; d < D; ++d)
            wrong += !same(z[static_cast<size_t>(t) * D + d], expected_combine(ids, t, d, true), near_ok);
      }
    }

    const size_t n_routings = routings.size();
    auto moempi_op = [&](int round) {
      const auto& ids = routings[round % n_routings];
      dispatcher->plan(*plan, routing(ids), x.data(), D, placement);
      dispatcher->dispatch(*plan, x.data());
      dispatcher->combine(*plan, z.data());  // the experts' rows hold stale (finite) values here
    };
    auto versus_op = [&](int round) {
      const auto& ids = routings[round % n_routings];
      vdispatcher->plan(*vplan, routing(ids), x.data(), D, placement);
      vdispatcher->dispatch(*vplan, x.data());
      vdispatcher->combine(*vplan, z.data());
    };
    auto raw_op = [&](int round) {
      const RawLayout& L = raw[round % n_routings];
      // The baseline on purpose calls MPI directly: what a hand-written exchange would cost.
      MOEMPI_MPI_CHECK(MPI_Alltoallv(raw_send.data(), L.send_counts.data(), L.send_displs.data(), MPI_FLOAT,
                                     raw_recv.data(), L.recv_counts.data(), L.recv_displs.data(),
                                     MPI_FLOAT, world.comm()));
      MOEMPI_MPI_CHECK(MPI_Alltoallv(raw_recv.data(), L.recv_counts.data(), L.recv_displs.data(), MPI_FLOAT,
                                     raw_send.data(), L.send_counts.data(), L.send_displs.data(),
                                     MPI_FLOAT, world.comm()));
    };
    const VersusTiming timed =
        time_against_raw(*dispatcher, vdispatcher.get(), moempi_op, raw_op, versus_op, o.timing, world);
    const auto& seconds = timed.seconds;
    const RoundTraffic& tr = timed.traffic;
    const RoundTraffic& vtr = timed.versus_traffic;
    const OverRanks vs = over_ranks(versus ? median(seconds[2]) : 0.0, world);
    if (o.timing.check) {
      // After timing: the last round again with identity experts (y = x), checked.
      const auto& ids = routings[(o.timing.warmup + o.timing.iters - 1) % n_routings];
      dispatcher->plan(*plan, routing(ids), x.data(), D, placement);
      dispatcher->dispatch(*plan, x.data());
      std::copy(plan->x_RD(), plan->x_RD() + plan->rows() * D, plan->y_RD());
      std::fill(z.begin(), z.end(), -1.0f);
      dispatcher->combine(*plan, z.data());
      for (int t = 0; t < T; ++t)
        for (int d = 0; d < D; ++d) wrong += !same(z[static_cast<size_t>(t) * D + d], expected_combine(ids, t, d, false), dedup);
    }
    allreduce_sum(&wrong, 1, world);
    all_wrong += wrong;
    const OverRanks m = over_ranks(median(seconds[0]), world);
    const OverRanks r = over_ranks(median(seconds[1]), world);
    const OverRanks cp = over_ranks(copy_limit(static_cast<size_t>(copy_rows) * D * sizeof(float), o.timing).seconds, world);
    const double bytes_dir = static_cast<double>(rows_total) * D * sizeof(float);
    // busbw of the raw exchange: 2 directions, each rank moves its share; all-to-all factor.
    const double busf = double(W - 1) / W;
    const double raw_busbw = gbps(2.0 * bytes_dir / W, r.max) * busf;
    const double ratio = r.max > 0 ? m.max / r.max : 0.0;
    table.print_row({pattern, cell(rows_total), cell(max_in), cell(bytes_dir / 1e6, 1), cell(m.min * 1e6, 1),
                     cell(m.avg * 1e6, 1), cell(m.max * 1e6, 1), cell(r.max * 1e6, 1), cell(raw_busbw, 2),
                     cell(cp.max * 1e6, 1), cell(wrong), cell(ratio, 2), cell(cp.max > 0 ? m.max / cp.max : 0.0, 2),
                     cell(tr.messages_intra, 1), cell(tr.bytes_intra / 1024, 1), cell(tr.messages_inter, 1),
                     cell(tr.bytes_inter / 1024, 1), versus ? cell(vs.max * 1e6, 1) : std::string("-"),
                     versus ? cell(vtr.bytes_inter / 1024, 1) : std::string("-"),
                     versus && vs.max > 0 ? cell(m.max / vs.max, 2) : std::string("-")});
    doc["rows"].push_back({{"pattern", pattern},
                           {"rows_total", rows_total},
                           {"max_rows_in", max_in},
                           {"bytes_per_direction", bytes_dir},
                           {"moempi_us", microseconds_json(m)},
                           {"raw_us", microseconds_json(r)},
                           {"wrong", wrong},
                           {"ratio", ratio},
                           {"copy_us", microseconds_json(cp)},
                           {"ratio_copy", cp.max > 0 ? m.max / cp.max : 0.0},
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

void add_dispatch_command(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<DispatchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "dispatch", "MoE dispatch + combine under traffic patterns vs raw MPI_Alltoallv both ways");
  cmd->add_option("-T,--tokens", o->T, "tokens per rank")->capture_default_str();
  cmd->add_option("-D,--dim", o->D, "row width (floats)")->capture_default_str();
  cmd->add_option("-E,--experts", o->E, "routed experts (divisible by the number of ranks)")->capture_default_str();
  cmd->add_option("-k,--topk", o->k, "experts per token")->capture_default_str();
  cmd->add_option("--pattern", o->patterns, "traffic patterns, comma-separated (default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember(kPatterns));
  cmd->add_option("--zipf-s", o->zipf_s, "Zipf exponent for --pattern zipf")->capture_default_str();
  add_timing_flags(*cmd, o->timing);
  add_dispatch_flags(*cmd, o->flags);
  cmd->add_option("--seed", o->seed, "routing and payload seed")->capture_default_str();
  cmd->callback([o, &exit_code] { exit_code = run_dispatch(*o); });
}

}  // namespace moempi::bench
