// Shared dispatcher flags of the exchange benchmarks; see dispatch_flags.h.
#include "bench/dispatch_flags.h"

#include <fmt/format.h>

#include "comm/collectives.h"
#include "comm/link_model.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/hierarchical_dispatcher.h"
#include "parallel/link_model_dispatcher.h"

namespace moempi::bench {

void add_dispatch_flags(CLI::App& app, DispatchFlags& f) {
  app.add_option("--dispatcher", f.dispatcher, "dispatcher to time (moe.dispatch.type: a registered name or auto)")
      ->capture_default_str();
  app.add_option("--algorithm", f.algorithm, "hierarchical: 2dh | leader (moe.dispatch.algorithm)")
      ->check(CLI::IsMember({"2dh", "leader"}))
      ->capture_default_str();
  app.add_flag("--dedup", f.dedup, "hierarchical: send a token once per destination node (moe.dispatch.dedup)");
  app.add_option("--ranks-per-node", f.ranks_per_node, "virtual nodes of this many ranks (0 = real nodes)")
      ->capture_default_str();
  app.add_option("--link-gbps", f.link_gbps, "link model: inter-node bandwidth in Gbit/s (0 = off)")
      ->capture_default_str();
  app.add_option("--link-latency-us", f.link_latency_us, "link model: inter-node latency per message in us")
      ->capture_default_str();
  app.add_option("--versus", f.versus, "a second dispatcher (e.g. flat) timed in the same run, interleaved");
}

ProcessGroups build_bench_groups(const DispatchFlags& f) {
  set_link_model({.inter_node_gbps = f.link_gbps, .inter_node_latency_us = f.link_latency_us});
  ParallelSpec spec;
  spec.strategy = "ep";
  spec.ep = 0;
  spec.ranks_per_node = f.ranks_per_node;
  int W = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &W);
  spec.ep = W;
  return ProcessGroups::build(spec);
}

std::unique_ptr<Dispatcher> make_bench_dispatcher(const DispatchFlags& f, const std::string& type, int top_k,
                                                  const ProcessGroups& groups) {
  DispatchSpec spec;
  spec.type = type;
  spec.hierarchical.algorithm = f.algorithm;
  spec.hierarchical.dedup = f.dedup;
  const AutoInputs in =
      auto_inputs(spec, top_k, {.inter_node_gbps = f.link_gbps, .inter_node_latency_us = f.link_latency_us}, groups);
  return make_dispatcher(spec, groups, in);
}

namespace {
const HierarchicalDispatcher* as_hierarchical(const Dispatcher& d) {
  if (const auto* link = dynamic_cast<const LinkModelDispatcher*>(&d)) return as_hierarchical(link->inner());
  return dynamic_cast<const HierarchicalDispatcher*>(&d);
}
}  // namespace

std::string dispatcher_label(const Dispatcher& d) {
  const HierarchicalDispatcher* h = as_hierarchical(d);
  if (!h) return d.name();
  return fmt::format("hierarchical({}{})", hier_algorithm_name(h->algorithm()), h->dedup() ? ", dedup" : "");
}

bool dispatcher_dedups(const Dispatcher& d) {
  const HierarchicalDispatcher* h = as_hierarchical(d);
  return h && h->dedup();
}

RoundTraffic traffic_per_round(const DispatchStats& a, const DispatchStats& b, int rounds, const Communicator& group) {
  double v[4] = {static_cast<double>(b.messages_intra - a.messages_intra), static_cast<double>(b.bytes_intra - a.bytes_intra),
                 static_cast<double>(b.messages_inter - a.messages_inter), static_cast<double>(b.bytes_inter - a.bytes_inter)};
  allreduce_sum(v, 4, group);
  const double n = static_cast<double>(rounds > 0 ? rounds : 1) * group.size();
  return {v[0] / n, v[1] / n, v[2] / n, v[3] / n};
}

std::vector<std::string> layout_header_lines(const ProcessGroups& groups, const DispatchFlags& flags,
                                             const std::string& vlabel) {
  const bool link = flags.link_gbps > 0 || flags.link_latency_us > 0;
  return {
      fmt::format("nodes: {} {} ({} ranks each); link model: {}", groups.num_nodes,
                  groups.virtual_nodes ? "virtual" : "real", groups.node.size(),
                  link ? fmt::format("{} Gbit/s, {} us per inter-node message", flags.link_gbps, flags.link_latency_us)
                       : std::string("off")),
      "intra/inter = messages and KB one rank sends to its node / other nodes per round (mean over ranks)",
      !vlabel.empty() ? fmt::format("vs = '{}' in the same rounds (interleaved); ratio moe/vs = time / vs", vlabel)
                      : std::string("vs = none (--versus NAME times a second dispatcher in the same run)"),
  };
}

VersusTiming time_against_raw(const Dispatcher& dispatcher, const Dispatcher* versus,
                              const std::function<void(int)>& moempi_op, const std::function<void(int)>& raw_op,
                              const std::function<void(int)>& versus_op, const TimingFlags& timing,
                              const Communicator& world) {
  const DispatchStats before = dispatcher.stats();
  const DispatchStats vbefore = versus ? versus->stats() : DispatchStats{};
  std::vector<std::function<void(int)>> ops = {moempi_op, raw_op};
  if (versus) ops.push_back(versus_op);
  VersusTiming t;
  t.seconds = time_interleaved(ops, timing.warmup, timing.iters, world);
  const int rounds = timing.warmup + timing.iters;
  t.traffic = traffic_per_round(before, dispatcher.stats(), rounds, world);
  t.versus_traffic = traffic_per_round(vbefore, versus ? versus->stats() : DispatchStats{}, rounds, world);
  return t;
}

}  // namespace moempi::bench
