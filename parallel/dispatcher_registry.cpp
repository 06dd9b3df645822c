// The dispatcher table: name -> factory, and the `auto` rule.
#include "parallel/dispatcher_registry.h"

#include <fmt/format.h>

#include "comm/collectives.h"
#include "comm/link_model.h"
#include "comm/link_probe.h"
#include "parallel/flat_dispatcher.h"
#include "parallel/hierarchical_dispatcher.h"
#include "parallel/link_model_dispatcher.h"
#include "parallel/local_dispatcher.h"
#include "parallel/lsh_dispatcher.h"
#include "parallel/shm_dispatcher.h"
#include "runtime/core/error.h"

namespace moempi {

namespace {

template <FlatExchange kExchange>
std::unique_ptr<Dispatcher> make_flat(const DispatchSpec& s, const ProcessGroups& g) {
  return std::make_unique<FlatDispatcher>(g, kExchange, s.wire_dtype);
}

}  // namespace

const DispatcherRegistry& dispatcher_registry() {
  // shm's own keys; auto accepts them too, since it may become shm.
  static const std::vector<schema::Field> shm_keys = {
      schema::lift(&DispatchSpec::shm, schema::real_field("headroom", &ShmDispatchSpec::headroom,
                                                          schema::Interval{1, 16, false, false}))};
  // hierarchical's own keys; auto accepts them too, since it may become hierarchical.
  static const std::vector<schema::Field> hierarchical_keys = {
      schema::lift(&DispatchSpec::hierarchical,
                   schema::choice_field("algorithm", &HierarchicalDispatchSpec::algorithm, {"2dh", "leader"})),
      schema::lift(&DispatchSpec::hierarchical, schema::bool_field("dedup", &HierarchicalDispatchSpec::dedup))};
  static const std::vector<schema::Field> auto_keys = [] {
    std::vector<schema::Field> keys = shm_keys;
    keys.insert(keys.end(), hierarchical_keys.begin(), hierarchical_keys.end());
    return keys;
  }();
  static const DispatcherRegistry registry(
      "a dispatcher",
      {
          {"local",
           [](const DispatchSpec&, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
             MOEMPI_CHECK_ALL(g.ep_size == 1,
                              "moe.dispatch.type 'local' needs parallel.ep = 1 (got {}); use 'auto' or 'flat'",
                              g.ep_size);
             return std::make_unique<LocalDispatcher>();
           },
           {}, "reference, no communication (parallel.ep = 1)"},
          {"flat", make_flat<FlatExchange::kBlocks>, {},
           "one contiguous MPI message per (peer, local expert) block, received in place"},
          {"flat_packed", make_flat<FlatExchange::kPacked>, {},
           "memcpy pack, one MPI_Alltoallv of rows per direction, memcpy regroup"},
          {"flat_typed", make_flat<FlatExchange::kTyped>, {},
           "one MPI_Alltoallw of rows per direction, rows placed by MPI datatypes"},
          {"shm",
           [](const DispatchSpec& s, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
             MOEMPI_CHECK_ALL(s.wire_dtype == WireDtype::kFp32,
                              "moe.dispatch.wire_dtype bf16 does not apply to moe.dispatch.type shm: its rows "
                              "never cross a wire (one copy through shared memory); use wire_dtype fp32, or "
                              "type flat or auto (auto picks flat for a bf16 wire)");
             return std::make_unique<ShmDispatcher>(g, s.shm.headroom);
           },
           shm_keys,
           "single copy per row through an MPI-3 shared-memory window; the ep group within one node"},
          {"hierarchical",
           [](const DispatchSpec& s, const ProcessGroups& g) -> std::unique_ptr<Dispatcher> {
             MOEMPI_CHECK_ALL(s.wire_dtype == WireDtype::kFp32,
                              "moe.dispatch.wire_dtype bf16 does not apply to moe.dispatch.type hierarchical: its "
                              "hops move fp32 rows; use wire_dtype fp32, or type flat or auto (auto picks flat "
                              "for a bf16 wire)");
             return std::make_unique<HierarchicalDispatcher>(g, parse_hier_algorithm(s.hierarchical.algorithm),
                                                             s.hierarchical.dedup);
           },
           hierarchical_keys,
           "two-level all-to-all over nodes (algorithm 2dh | leader), optionally one copy per token and node "
           "(dedup); the ep group N nodes x G ranks"},
          {"auto", nullptr, auto_keys, "local for parallel.ep 1, shm within a node (flat with wire_dtype bf16); "
           "across nodes hierarchical (2dh, dedup) with one ep rank per node, top_k >= 2 and an inter-node "
           "link of at most 0.45 Gbit/s (measured at start-up, or comm.link_model), else flat (bench/README.md)"},
      });
  return registry;
}

Placement make_placement(int num_experts, const ProcessGroups& groups) {
  MOEMPI_CHECK_ALL(num_experts >= 1 && num_experts % groups.ep_size == 0,
                   "moe.num_experts ({}) is not divisible by parallel.ep ({})", num_experts,
                   groups.ep_size);
  return Placement::contiguous(num_experts, groups.ep_size, groups.ep.rank());
}

std::vector<schema::TypeChoice> compression_choices() {
  using C = CompressionSpec;
  return {
      {"none", {}, "rows travel as they are"},
      {"lsh",
       {
           schema::int_field("num_hashes", &C::num_hashes, 1, 16),
           schema::int_field("buckets_per_hash", &C::buckets_per_hash, 2, 65536),
           schema::u64_field("rotation_seed", &C::rotation_seed),
           schema::int_field("rotation_interval", &C::rotation_interval, 0),
           schema::int_field("min_tokens", &C::min_tokens, 0),
           schema::bool_field("residual", &C::residual),
           schema::real_field("max_residual", &C::max_residual, schema::kNonNegative),
           schema::bool_field("compress_eval", &C::compress_eval),
       },
       "cross-polytope buckets per destination expert; centroids travel, residuals stay (ALGORITHMS.md 3.3)"},
  };
}

std::vector<std::string> dispatcher_names() { return dispatcher_registry().names(); }

AutoInputs auto_inputs(const DispatchSpec& spec, int top_k, const LinkModelSpec& link, const ProcessGroups& groups) {
  AutoInputs in;
  in.top_k = top_k;
  if (spec.type != "auto") return in;
  double one_per_node =
      groups.ep_num_nodes() >= 2 && groups.ep_node.size() == 1 && HierarchicalDispatcher::layout_ok(groups) ? 1.0 : 0.0;
  allreduce(&one_per_node, 1, ReduceOp::kMin, groups.world);
  in.one_rank_per_node = one_per_node == 1.0;
  const bool compressed = spec.compression.type != "none";  // lsh: centroids travel with k = 1
  if (!in.one_rank_per_node || top_k < 2 || compressed || spec.wire_dtype == WireDtype::kBf16) return in;
  if (link.inter_node_gbps > 0) {
    in.inter_node_gbps = link.inter_node_gbps;
    in.link_source = "comm.link_model";
    return in;
  }
  std::vector<int64_t> node(groups.world.size());
  const int64_t mine = groups.node_index;
  allgather_i64(&mine, node.data(), 1, groups.world);
  in.inter_node_gbps = probe_inter_node_gbps(groups.world, std::vector<int>(node.begin(), node.end()));
  in.link_source = "measured";
  return in;
}

DispatcherChoice resolve_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups, const AutoInputs& in) {
  if (spec.type != "auto") return {spec.type, ""};
  if (groups.ep_size == 1) return {"local", "parallel.ep is 1: no expert leaves its rank"};
  if (spec.wire_dtype == WireDtype::kBf16)
    return {"flat", "moe.dispatch.wire_dtype is bf16: rows travel as bf16 messages (shm has no wire)"};
  if (groups.every_ep_within_node)
    return {"shm", fmt::format("every ep group ({} ranks) is on one node: single copy per row through "
                               "shared memory", groups.ep_size)};
  const std::string link =
      in.inter_node_gbps > 0 ? fmt::format("the inter-node link is {:.3g} Gbit/s ({})", in.inter_node_gbps, in.link_source)
                             : std::string("the inter-node link was not measured");
  const bool one_per_node = in.one_rank_per_node && groups.ep_node.size() == 1 && groups.ep_num_nodes() >= 2 &&
                            HierarchicalDispatcher::layout_ok(groups);
  const bool compressed = spec.compression.type != "none";
  if (one_per_node && in.top_k >= 2 && !compressed && in.inter_node_gbps > 0 &&
      in.inter_node_gbps <= kAutoHierarchicalMaxGbps)
    return {"hierarchical", fmt::format("one ep rank per node over {} nodes, top_k {}, and {} (at most {}): {} "
                                        "with dedup sends a token once per destination node (bench/README.md)",
                                        groups.ep_num_nodes(), in.top_k, link, kAutoHierarchicalMaxGbps,
                                        spec.hierarchical.algorithm)};
  std::string why = fmt::format("the ep groups ({} ranks each) do not all lie within one node (this rank's spans {})",
                                groups.ep_size, groups.ep_num_nodes());
  if (!one_per_node)
    why += "; hierarchical only with one ep rank per node (nodes in ep rank order)";
  else if (in.top_k < 2)
    why += "; hierarchical only for top_k >= 2 (dedup)";
  else if (compressed)
    why += "; hierarchical not under moe.dispatch.compression (centroids travel with k = 1: nothing to dedup)";
  else
    why += fmt::format("; {}, hierarchical only at most {}", link, kAutoHierarchicalMaxGbps);
  return {"flat", why};
}

std::unique_ptr<Dispatcher> make_dispatcher(const DispatchSpec& spec, const ProcessGroups& groups,
                                            const AutoInputs& inputs) {
  const DispatcherRegistry& registry = dispatcher_registry();
  registry.at("moe.dispatch.type", spec.type);  // unknown names: one message listing the registry
  const std::string name = resolve_dispatcher(spec, groups, inputs).name;
  DispatchSpec chosen = spec;
  if (spec.type == "auto" && name == "hierarchical") chosen.hierarchical.dedup = true;
  std::unique_ptr<Dispatcher> d = registry.at("moe.dispatch.type", name).factory(chosen, groups);
  if (spec.compression.type != "none") {
    MOEMPI_CHECK_ALL(spec.compression.type == "lsh", "moe.dispatch.compression.type: {}",
                     schema::not_one_of(spec.compression.type, {"none", "lsh"}));
    d = std::make_unique<LshDispatcher>(std::move(d), spec.compression);
  }
  if (link_model().active()) return std::make_unique<LinkModelDispatcher>(std::move(d));  // sees the wire bytes
  return d;
}

}  // namespace moempi
