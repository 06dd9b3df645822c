// `moempi bench sparse`: FSSDP's SparseAllGather and SparseReduceScatter (comm/sparse_collectives.h)
// against raw MPI moving the same bytes, interleaved in one run, nccl-tests style, over λ = the
// fraction of experts that move. E experts of S bytes each, owned contiguously (expert e on rank
// e / (E/W)); the moved experts (round(λE) of them, a seeded choice) are replicated on every other
// rank, the "hot experts everywhere" case of Hecate's placement. The raw baselines: one
// MPI_Allgatherv of the moved experts (packed by owner) and one MPI_Reduce_scatter of their
// gradients, the collectives a dense system would use for the same placement. Payloads are checked
// (#wrong): gathered experts equal their owner's, reduced ones the sum of every rank's copy.
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

#include "bench/bench.h"
#include "bench/bench_common.h"
#include "comm/mpi_check.h"
#include "comm/payload.h"
#include "comm/sparse_collectives.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi::bench {
namespace {

struct SparseOptions {
  int experts = 32;
  std::string expert_size = "1M";
  std::string lambdas = "0.0625,0.125,0.25,0.5,1";
  std::string algo = "p2p";
  TimingFlags timing;
  uint64_t seed = 1;
};

std::vector<double> parse_lambdas(const std::string& text) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    MOEMPI_CHECK_ALL(end != item.c_str() && *end == '\0' && v >= 0.0 && v <= 1.0,
                     "--lambda: '{}' is not a fraction in [0, 1] (a comma-separated list, e.g. 0.125,0.5,1)",
                     item);
    out.push_back(v);
  }
  MOEMPI_CHECK_ALL(!out.empty(), "--lambda: give at least one fraction in [0, 1]");
  return out;
}

int run_sparse(const SparseOptions& o) {
  const Communicator world = Communicator::world();
  const int W = world.size(), me = world.rank(), E = o.experts;
  MOEMPI_CHECK_ALL(E >= 1 && E % W == 0, "-E/--experts ({}) must be a positive multiple of the {} ranks", E, W);
  const int64_t numel = std::max<int64_t>(1, parse_size(o.expert_size, "-s") / 4);
  MOEMPI_CHECK_ALL(numel * E <= INT_MAX, "-s x -E: {} floats exceed INT_MAX (raw MPI counts)", numel * E);
  const SparseAlgo algo = parse_sparse_algo(o.algo);
  const std::vector<double> lambdas = parse_lambdas(o.lambdas);
  const int per_rank = E / W;
  const size_t n = static_cast<size_t>(numel);

  Table table({{"lambda", "", 7}, {"moved", "(exp)", 6}, {"sent", "(MB/rank)", 10}, {"spAG", "(us)", 10},
               {"raw AG", "(us)", 10}, {"ratio", "AG/raw", 7}, {"spRS", "(us)", 10}, {"raw RS", "(us)", 10},
               {"ratio", "RS/raw", 7}, {"busbw", "(GB/s)", 7}, {"#wrong", "", 7}},
              me == 0);
  table.print_header({
      fmt::format("moempi bench sparse: {} ranks, {} experts of {} B ({} per rank), algorithm {}, warmup {}, "
                  "iters {}, check {}",
                  W, E, numel * 4, per_rank, name_of(algo), o.timing.warmup, o.timing.iters, o.timing.check),
      "lambda = fraction of experts moved; each moved expert is copied from its owner to every other rank",
      "spAG = SparseAllGather (owner -> replicas), spRS = SparseReduceScatter (replicas -> owner, summed)",
      "raw AG = MPI_Allgatherv of the moved experts, raw RS = MPI_Reduce_scatter of them (same bytes);",
      "  the four alternate round by round; time = median per rank, slowest rank shown",
      "sent = bytes this rank sends in spAG (owner side, max over ranks); busbw = spAG bytes moved in",
      "  total / spAG time",
      fmt::format("CPU: {}", cpu_model()),
  });
  nlohmann::json doc = {{"benchmark", "sparse"}, {"cpu", cpu_model()},   {"ranks", W},
                        {"experts", E},          {"expert_bytes", numel * 4}, {"algorithm", name_of(algo)},
                        {"rows", nlohmann::json::array()}};

  // A fixed random order of the experts: the first round(λE) of it move.
  std::vector<int> order(E);
  for (int e = 0; e < E; ++e) order[e] = e;
  Rng rng(o.seed, 0, 0, Rng::stream_of("bench sparse"));
  for (int e = E - 1; e > 0; --e) std::swap(order[e], order[rng.below(e + 1)]);

  std::vector<float> experts(static_cast<size_t>(E) * n);  // this rank's copy of every expert
  auto buffer = [&](int e) { return experts.data() + static_cast<size_t>(e) * n; };
  std::vector<float> raw_send, raw_recv;
  int64_t all_wrong = 0;
  SparseCollectives sc(algo);
  for (const double lambda : lambdas) {
    const int moved = static_cast<int>(std::lround(lambda * E));
    std::vector<int> moved_ids(order.begin(), order.begin() + moved);
    std::sort(moved_ids.begin(), moved_ids.end());
    std::vector<std::vector<int>> holders(E);
    for (int e = 0; e < E; ++e) holders[e] = {e / per_rank};
    for (int e : moved_ids)
      for (int r = 0; r < W; ++r)
        if (r != e / per_rank) holders[e].push_back(r);
    // Raw layouts: the moved experts in ascending id are grouped by owner already.
    std::vector<int> counts(W, 0), displs(W, 0);
    for (int e : moved_ids) counts[e / per_rank] += static_cast<int>(numel);
    for (int r = 1; r < W; ++r) displs[r] = displs[r - 1] + counts[r - 1];
    raw_send.assign(moved_ids.size() * n, 0.0f);
    raw_recv.assign(moved_ids.size() * n, 0.0f);

    auto fill = [&](bool owner_values_only) {  // gather: owners' payload; reduce: every holder's
      for (int e = 0; e < E; ++e) {
        const bool holds = std::find(holders[e].begin(), holders[e].end(), me) != holders[e].end();
        if (!holds) continue;
        if (holders[e][0] == me || !owner_values_only) payload_fill(buffer(e), numel, o.seed, me, e);
        else std::fill(buffer(e), buffer(e) + n, std::nanf(""));
      }
    };
    auto check_gather = [&]() {
      int64_t wrong = 0;
      for (int e = 0; e < E; ++e)
        if (std::find(holders[e].begin(), holders[e].end(), me) != holders[e].end())
          wrong += payload_check(buffer(e), numel, o.seed, holders[e][0], e);
      return wrong;
    };
    auto check_reduce = [&]() {
      int64_t wrong = 0;
      std::vector<float> want(n), part(n);
      for (int e = me * per_rank; e < (me + 1) * per_rank; ++e) {
        payload_fill(want.data(), numel, o.seed, me, e);
        for (size_t j = 1; j < holders[e].size(); ++j) {
          payload_fill(part.data(), numel, o.seed, holders[e][j], e);
          for (size_t k = 0; k < n; ++k) want[k] += part[k];
        }
        for (size_t k = 0; k < n; ++k) wrong += buffer(e)[k] != want[k];
      }
      return wrong;
    };

    auto ag = [&](int) { sc.all_gather(holders, numel, buffer, world); };
    auto rs = [&](int) { sc.reduce_scatter(holders, numel, buffer, world); };
    // The baselines on purpose call MPI directly: what a dense exchange of the same bytes costs.
    auto raw_ag = [&](int) {
      MOEMPI_MPI_CHECK(MPI_Allgatherv(raw_send.data() + displs[me], counts[me], MPI_FLOAT, raw_recv.data(),
                                      counts.data(), displs.data(), MPI_FLOAT, world.comm()));
    };
    auto raw_rs = [&](int) {
      MOEMPI_MPI_CHECK(MPI_Reduce_scatter(raw_send.data(), raw_recv.data(), counts.data(), MPI_FLOAT, MPI_SUM,
                                          world.comm()));
    };

    int64_t wrong = 0;
    if (o.timing.check) {
      fill(true);
      ag(0);
      wrong += check_gather();
      fill(false);
      rs(0);
      wrong += check_reduce();
    }
    const auto seconds = time_interleaved({ag, raw_ag, rs, raw_rs}, o.timing.warmup, o.timing.iters, world);
    if (o.timing.check) {  // the timed rounds left the owners' values alone: gather once more
      fill(true);
      ag(0);
      wrong += check_gather();
    }
    allreduce_sum(&wrong, 1, world);
    all_wrong += wrong;
    const OverRanks t_ag = over_ranks(median(seconds[0]), world), t_rag = over_ranks(median(seconds[1]), world);
    const OverRanks t_rs = over_ranks(median(seconds[2]), world), t_rrs = over_ranks(median(seconds[3]), world);
    sc.all_gather(holders, numel, buffer, world);  // for its stats
    const OverRanks sent = over_ranks(static_cast<double>(sc.stats().bytes_sent), world);
    const double total_moved = static_cast<double>(moved) * (W - 1) * numel * 4;
    auto ratio = [](double a, double b) { return b > 0 ? a / b : std::nan(""); };
    table.print_row({cell(lambda, 4), cell(static_cast<int64_t>(moved)), cell(sent.max / 1e6, 2),
                     cell(t_ag.max * 1e6, 1), cell(t_rag.max * 1e6, 1), cell(ratio(t_ag.max, t_rag.max), 2),
                     cell(t_rs.max * 1e6, 1), cell(t_rrs.max * 1e6, 1), cell(ratio(t_rs.max, t_rrs.max), 2),
                     cell(gbps(total_moved, t_ag.max), 2), cell(wrong)});
    doc["rows"].push_back({{"lambda", lambda},
                           {"moved_experts", moved},
                           {"bytes_sent_max", sent.max},
                           {"spag_us", microseconds_json(t_ag)},
                           {"raw_ag_us", microseconds_json(t_rag)},
                           {"sprs_us", microseconds_json(t_rs)},
                           {"raw_rs_us", microseconds_json(t_rrs)},
                           {"wrong", wrong}});
  }
  return finish_report(table, doc, all_wrong, o.timing.json, world);
}

}  // namespace

void add_sparse_command(CLI::App& bench, int& exit_code) {
  auto o = std::make_shared<SparseOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "sparse", "FSSDP SparseAllGather / SparseReduceScatter vs raw MPI_Allgatherv / MPI_Reduce_scatter, over λ");
  cmd->add_option("-E,--experts", o->experts, "experts (a multiple of the ranks)")->capture_default_str();
  cmd->add_option("-s,--expert-size", o->expert_size, "bytes per expert (1M, 256K, ...)")->capture_default_str();
  cmd->add_option("--lambda", o->lambdas, "fractions of experts moved, comma-separated")->capture_default_str();
  cmd->add_option("--algo", o->algo, "p2p | alltoallv")->capture_default_str();
  add_timing_flags(*cmd, o->timing);
  cmd->add_option("--seed", o->seed, "payload and choice seed")->capture_default_str();
  cmd->callback([o, &exit_code] { exit_code = run_sparse(*o); });
}

}  // namespace moempi::bench
