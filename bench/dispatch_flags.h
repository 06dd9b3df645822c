// The dispatcher flags `bench alltoall` and `bench dispatch` share: which dispatcher (and
// hierarchical's sub-spec), the node layout (virtual nodes), the software link model, an optional
// second dispatcher timed in the same run (--versus), and the per-rank traffic of one round.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "comm/process_groups.h"
#include "parallel/dispatcher.h"
#include "runtime/core/config.h"

namespace moempi::bench {

struct DispatchFlags {
  std::string dispatcher = "auto";
  std::string algorithm = "2dh";   // hierarchical: 2dh | leader
  bool dedup = false;              // hierarchical: one copy per token and destination node
  int ranks_per_node = 0;          // 0 = real nodes, > 0 = virtual nodes
  double link_gbps = 0.0, link_latency_us = 0.0;  // comm.link_model (inter-node messages only)
  std::string versus;              // a second dispatcher timed in the same run ("" = none)
};
void add_dispatch_flags(CLI::App& app, DispatchFlags& flags);

// ep = world over parallel.ranks_per_node; sets the process-wide link model first.
ProcessGroups build_bench_groups(const DispatchFlags& flags);
// The dispatcher `type` names with the flags' hierarchical keys, auto resolved as training
// resolves it (parallel/dispatcher_registry.h auto_inputs: top_k, and the link model's bandwidth or
// a probe of the link). Collective over the world.
std::unique_ptr<Dispatcher> make_bench_dispatcher(const DispatchFlags& flags, const std::string& type, int top_k,
                                                  const ProcessGroups& groups);
// "flat" or "hierarchical(2dh, dedup)" for headers: what the built dispatcher does.
std::string dispatcher_label(const Dispatcher& d);
// The built dispatcher deduplicates (hierarchical with dedup, e.g. as auto builds it).
bool dispatcher_dedups(const Dispatcher& d);

// The header lines both benchmarks print about the layout: the nodes and the link model, what
// intra/inter count, and the --versus dispatcher (vlabel; "" when there is none).
std::vector<std::string> layout_header_lines(const ProcessGroups& groups, const DispatchFlags& flags,
                                             const std::string& vlabel);

// Per-rank traffic of one round (stats delta / rounds), averaged over the ranks (collective).
struct RoundTraffic {
  double messages_intra = 0, bytes_intra = 0, messages_inter = 0, bytes_inter = 0;
};
RoundTraffic traffic_per_round(const DispatchStats& before, const DispatchStats& after, int rounds,
                               const Communicator& group);

// moempi's dispatcher, raw MPI and, with `versus`, the versus dispatcher, timed round by round
// (time_interleaved: moempi_op, raw_op, versus_op) and each dispatcher's traffic per round over
// the warm-up and timed rounds (collective over `world`).
struct VersusTiming {
  std::vector<std::vector<double>> seconds;  // [op][timed round]: moempi, raw, versus
  RoundTraffic traffic, versus_traffic;      // versus_traffic all 0 without `versus`
};
VersusTiming time_against_raw(const Dispatcher& dispatcher, const Dispatcher* versus,
                              const std::function<void(int)>& moempi_op, const std::function<void(int)>& raw_op,
                              const std::function<void(int)>& versus_op, const TimingFlags& timing,
                              const Communicator& world);

}  // namespace moempi::bench
