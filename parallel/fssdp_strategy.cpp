// FSSDP strategy; see the header. Test: tests/fssdp_test.cpp, tests/train_mpitest.cpp.
#include "parallel/fssdp_strategy.h"

#include <algorithm>
#include <deque>

#include "comm/sparse_collectives.h"
#include "runtime/core/error.h"

namespace moempi {

std::vector<std::vector<int>> fssdp_replicas(const std::vector<double>& load_E, const Placement& owners,
                                             int budget_per_rank) {
  const int E = owners.num_experts(), W = owners.group_size();
  std::vector<std::vector<int>> holders(E);
  std::vector<double> rank_load(W, 0.0);
  for (int e = 0; e < E; ++e) {
    holders[e] = {owners.owner(e)};
    rank_load[owners.owner(e)] += load_E[e];
  }
  std::vector<int> used(W, 0);
  budget_per_rank = std::min(budget_per_rank, E);  // more than E replicas per rank cannot be used
  for (int64_t round = 0; round < static_cast<int64_t>(W) * budget_per_rank; ++round) {
    const int hot = static_cast<int>(std::max_element(rank_load.begin(), rank_load.end()) - rank_load.begin());
    int best = -1;
    double best_share = 0;
    for (int e = 0; e < E; ++e) {
      const auto& h = holders[e];
      if (static_cast<int>(h.size()) >= W || std::find(h.begin(), h.end(), hot) == h.end()) continue;
      const double share = load_E[e] / static_cast<double>(h.size());
      if (share > best_share) best = e, best_share = share;
    }
    if (best < 0) break;
    int target = -1;
    for (int r = 0; r < W; ++r) {
      const auto& h = holders[best];
      if (used[r] >= budget_per_rank || std::find(h.begin(), h.end(), r) != h.end()) continue;
      if (target < 0 || rank_load[r] < rank_load[target]) target = r;
    }
    if (target < 0) break;
    const double after = load_E[best] / static_cast<double>(holders[best].size() + 1);
    std::vector<double> next = rank_load;
    for (int r : holders[best]) next[r] -= best_share - after;
    next[target] += after;
    if (!(*std::max_element(next.begin(), next.end()) < rank_load[hot])) break;  // no better
    rank_load = next;
    holders[best].push_back(target);
    ++used[target];
  }
  std::vector<std::vector<int>> replicas(E);
  for (int e = 0; e < E; ++e) {
    replicas[e].assign(holders[e].begin() + 1, holders[e].end());
    std::sort(replicas[e].begin(), replicas[e].end());
  }
  return replicas;
}

namespace {

class Fssdp final : public ShardingStrategy {
 public:
  Fssdp(const ParallelSpec& spec, const ProcessGroups& g)
      : spec_(spec.fssdp), g_(g), ep_(make_expert_parallel(g)) {
    MOEMPI_CHECK_ALL(g.ep.size() == g.world.size(),
                     "parallel.strategy fssdp needs parallel.ep = the world size ({}), got {}", g.world.size(),
                     g.ep.size());
  }
  std::string name() const override { return "fssdp"; }

  void begin_step(ExpertHost& experts) override {
    const int L = experts.num_moe_layers();
    holders_.assign(L, {});
    stats_ = {};
    for (int l = 0; l < L; ++l) {
      const Placement& owners = experts.owners();
      std::vector<std::vector<int>> replicas(owners.num_experts());
      if (observed_ > 0) replicas = fssdp_replicas(predicted_load(l, owners.num_experts()), owners,
                                                       spec_.max_materialized_experts);
      const Placement step = Placement::with_replicas(owners.num_experts(), owners.group_size(), owners.rank(),
                                                      replicas);
      experts.set_placement(l, step);
      for (int e = 0; e < owners.num_experts(); ++e) {
        holders_[l].push_back(step.holders(e));
        stats_.replicas += static_cast<int64_t>(replicas[e].size());
      }
      for (int part = 0; part < 2; ++part) {
        sparse_.all_gather(holders_[l], experts.part_numel(part),
                           [&](int e) { return experts.expert_param(l, e, part); }, g_.ep);
        stats_.bytes_sent += sparse_.stats().bytes_sent;
      }
    }
    stats_.replica_floats = experts.replica_floats();
  }

  void end_backward(ExpertHost& experts) override {
    for (int l = 0; l < experts.num_moe_layers(); ++l)
      for (int part = 0; part < 2; ++part)
      {
        sparse_.reduce_scatter(holders_[l], experts.part_numel(part),
                               [&](int e) { return experts.expert_grad(l, e, part); }, g_.ep);
        stats_.bytes_sent += sparse_.stats().bytes_sent;
      }
  }

  void end_step(ExpertHost& experts) override {
    for (int l = 0; l < experts.num_moe_layers(); ++l) experts.set_placement(l, experts.owners());
  }

  void observe_loads(const int64_t* counts_LE, int L, int E) override {
    size_history(L, E);
    MOEMPI_CHECK_ONE(L == L_ && E == E_, "fssdp: load history sized for ({}, {}), given ({}, {})", L_, E_, L, E);
    const size_t slot = static_cast<size_t>(observed_ % spec_.load_window) * L * E;
    std::copy(counts_LE, counts_LE + static_cast<size_t>(L) * E, history_LE_.begin() + slot);
    ++observed_;
  }

  // The load history (its ring of load_window (L, E) counts and the steps observed) is state: the
  // replica placement, and so the summation order of expert gradients, follows from it.
  void register_state(StateRegistry& registry, const StateWriters& writers, int L, int E) override {
    size_history(L, E);
    registry.add_i64("strategy/fssdp.load_history", {spec_.load_window, L, E}, history_LE_, writers.dense);
    registry.add_i64("strategy/fssdp.steps_observed", {1}, {&observed_, 1}, writers.dense);
  }

  void sync_grads(ParamArena& arena) override { ep_->sync_grads(arena); }
  double grad_norm(ParamArena& arena) override { return ep_->grad_norm(arena); }
  StepStats step_stats() const override { return stats_; }

 private:
  void size_history(int L, int E) {
    if (!history_LE_.empty()) return;
    L_ = L;
    E_ = E;
    history_LE_.assign(static_cast<size_t>(spec_.load_window) * L * E, 0);
  }
  // Mean of the last min(observed, load_window) steps' counts, oldest first.
  std::vector<double> predicted_load(int l, int E) const {
    std::vector<double> load(E, 0.0);
    const int64_t n = std::min<int64_t>(observed_, spec_.load_window);
    for (int64_t i = observed_ - n; i < observed_; ++i) {
      const int64_t* step = history_LE_.data() + static_cast<size_t>(i % spec_.load_window) * L_ * E_;
      for (int e = 0; e < E; ++e) load[e] += static_cast<double>(step[static_cast<size_t>(l) * E_ + e]);
    }
    for (double& x : load) x /= static_cast<double>(n);
    return load;
  }

  FssdpSpec spec_;
  const ProcessGroups& g_;
  std::unique_ptr<ShardingStrategy> ep_;  // dense and owned-expert gradients, norm: as under ep
  SparseCollectives sparse_;
  std::vector<int64_t> history_LE_;  // (load_window, L, E) ring: step i's counts in slot i % load_window
  int64_t observed_ = 0;             // steps observed
  int L_ = 0;
  int E_ = 0;
  StepStats stats_;
  std::vector<std::vector<std::vector<int>>> holders_;  // [layer][expert] this step's holders
};

}  // namespace

std::unique_ptr<ShardingStrategy> make_fssdp_strategy(const ParallelSpec& spec, const ProcessGroups& groups) {
  return std::make_unique<Fssdp>(spec, groups);
}

}  // namespace moempi
