// FSSDP strategy; see the header. Test: tests/fssdp_test.cpp, tests/train_mpitest.cpp.
#include "parallel/fssdp_strategy.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>

#include "comm/collectives.h"
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

std::vector<int> fssdp_reshard_owners(const std::vector<double>& load_E, const std::vector<int>& owners_E,
                                      int W) {
  const int E = static_cast<int>(owners_E.size());
  MOEMPI_CHECK_ONE(W >= 1 && E % W == 0 && static_cast<int>(load_E.size()) == E,
                   "fssdp re-sharding: {} experts, {} loads over {} ranks", E, load_E.size(), W);
  auto max_load = [&](const std::vector<int>& owners) {
    std::vector<double> rank_load(W, 0.0);
    for (int e = 0; e < E; ++e) rank_load[owners[e]] += load_E[e];
    return *std::max_element(rank_load.begin(), rank_load.end());
  };
  std::vector<int> order(E);
  for (int e = 0; e < E; ++e) order[e] = e;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return load_E[a] > load_E[b]; });
  std::vector<double> rank_load(W, 0.0);
  std::vector<int> slots(W, E / W), next(E, -1);
  for (int e : order) {
    int best = -1;
    for (int r = 0; r < W; ++r) {
      if (slots[r] == 0) continue;
      if (best < 0 || rank_load[r] < rank_load[best] || (rank_load[r] == rank_load[best] && r == owners_E[e] && best != owners_E[e]))
        best = r;
    }
    next[e] = best;
    rank_load[best] += load_E[e];
    --slots[best];
  }
  return max_load(next) < max_load(owners_E) ? next : owners_E;
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
    host_ = &experts;
    grads_live_.assign(L, false);
    holders_.assign(L, {});
    stats_ = {};
    apply_owners(experts);  // after a resume: the checkpoint's owners
    for (int l = 0; l < L; ++l) {
      const Placement& owners = experts.owners(l);
      std::vector<std::vector<int>> replicas(owners.num_experts());
      if (observed_ > 0) replicas = fssdp_replicas(predicted_load(l, owners.num_experts()), owners,
                                                       spec_.max_materialized_experts);
      const Placement step = Placement::with_owners(owners.owner_list(), owners.group_size(), owners.rank(),
                                                    replicas);
      experts.set_placement(l, step);
      for (int e = 0; e < owners.num_experts(); ++e) {
        holders_[l].push_back(step.holders(e));
        stats_.replicas += static_cast<int64_t>(replicas[e].size());
      }
      if (spec_.rematerialize) continue;  // gathered before each forward and backward instead
      experts.set_replica_buffers(l, true, true);
      gather(experts, l);
    }
    note_peak(experts);
  }

  // Re-materialisation (ALGORITHMS.md 4, Hecate-RM): a layer's replicas hold their parameters only
  // during its forward and its backward (gathered from the owners before each, freed after), and
  // their gradients from the first backward to the reduce-scatter after the step's last one. The
  // same copies and the same sums in the same order: the math is that of rematerialize: false.
  void begin_micro_batch(bool last) override { last_micro_batch_ = last; }
  void before_forward(int l) override {
    if (!rematerializing()) return;
    host_->set_replica_buffers(l, true, grads_live_[l]);
    gather(*host_, l);
    note_peak(*host_);
  }
  void after_forward(int l) override {
    if (rematerializing()) host_->set_replica_buffers(l, false, grads_live_[l]);
  }
  void before_backward(int l) override {
    if (!rematerializing()) return;
    host_->set_replica_buffers(l, true, true);
    grads_live_[l] = true;
    gather(*host_, l);
    note_peak(*host_);
  }
  void after_backward(int l) override {
    if (!rematerializing()) return;
    if (last_micro_batch_) {
      reduce_scatter(*host_, l);
      grads_live_[l] = false;
    }
    host_->set_replica_buffers(l, false, grads_live_[l]);
  }

  void end_backward(ExpertHost& experts) override {
    if (!spec_.rematerialize)
      for (int l = 0; l < experts.num_moe_layers(); ++l) reduce_scatter(experts, l);
  }

  void end_step(ExpertHost& experts) override {
    for (int l = 0; l < experts.num_moe_layers(); ++l) experts.set_placement(l, experts.owners(l));
    host_ = nullptr;  // evaluation forwards run on the owners, outside any step
    const int interval = spec_.reshard_interval;
    // Only on a step whose loads were observed (a skipped step observes none): so a re-sharding
    // never repeats at the same count, and a resumed run decides as the uninterrupted one would.
    const bool observed_now = observed_this_step_;
    observed_this_step_ = false;
    if (interval <= 0 || !observed_now || observed_ % interval != 0) return;
    for (int l = 0; l < experts.num_moe_layers(); ++l) {
      const std::vector<int> now = experts.owners(l).owner_list();
      const std::vector<int> next = fssdp_reshard_owners(predicted_load(l, E_), now, g_.ep.size());
      if (next == now) continue;
      std::copy(next.begin(), next.end(), owners_LE_.begin() + static_cast<size_t>(l) * E_);
      stats_.experts_moved += move_experts(experts, l, next);
    }
  }

  void attach_optimizer_state(ParamArena& arena, std::vector<FloatBuffer*> moments) override {
    arena_ = &arena;
    moments_ = std::move(moments);
  }

  void observe_loads(const int64_t* counts_LE, int L, int E) override {
    size_history(L, E);
    MOEMPI_CHECK_ONE(L == L_ && E == E_, "fssdp: load history sized for ({}, {}), given ({}, {})", L_, E_, L, E);
    const size_t slot = static_cast<size_t>(observed_ % spec_.load_window) * L * E;
    std::copy(counts_LE, counts_LE + static_cast<size_t>(L) * E, history_LE_.begin() + slot);
    ++observed_;
    observed_this_step_ = true;
  }

  // The load history (its ring of load_window (L, E) counts and the steps observed) is state: the
  // replica placement, and so the summation order of expert gradients, follows from it.
  void register_state(StateRegistry& registry, const StateWriters& writers, int L, int E) override {
    size_history(L, E);
    registry.add_i64("strategy/fssdp.load_history", {spec_.load_window, L, E}, history_LE_, writers.dense);
    registry.add_i64("strategy/fssdp.steps_observed", {1}, {&observed_, 1}, writers.dense);
    registry.add_i64("strategy/fssdp.owners", {L, E}, owners_LE_, writers.dense);
  }

  void sync_grads(ParamArena& arena) override { ep_->sync_grads(arena); }
  // ep's norm, with the expert gradients summed in (layer, expert id, w1, w2) order instead of
  // storage order: re-sharding keeps a staying expert's slot, so storage order depends on the
  // history of re-shardings, which a resumed job does not repeat (the norm feeds clipping). While
  // the slots are in ascending expert order (no re-sharding yet) this is ep's order to the bit.
  double grad_norm(ParamArena& arena) override {
    if (host_ == nullptr) return ep_->grad_norm(arena);
    const int me = g_.ep.rank();
    double expert_sq = 0;
    for (int l = 0; l < host_->num_moe_layers(); ++l) {
      const std::vector<int> owners = host_->owners(l).owner_list();
      for (int e = 0; e < static_cast<int>(owners.size()); ++e) {
        if (owners[e] != me) continue;
        for (int part = 0; part < 2; ++part)
          expert_sq = sum_squares({host_->expert_grad(l, e, part), static_cast<size_t>(host_->part_numel(part))},
                                  expert_sq);
      }
    }
    if (g_.ep.size() > 1) allreduce_sum(&expert_sq, 1, g_.ep);
    return std::sqrt(sum_squares(arena.dense_grads()) + expert_sq);
  }
  StepStats step_stats() const override { return stats_; }

 private:
  bool rematerializing() const { return spec_.rematerialize && host_ != nullptr; }
  void gather(ExpertHost& experts, int l) {
    for (int part = 0; part < 2; ++part) {
      sparse_.all_gather(holders_[l], experts.part_numel(part),
                         [&](int e) { return experts.expert_param(l, e, part); }, g_.ep);
      stats_.bytes_sent += sparse_.stats().bytes_sent;
    }
  }
  void reduce_scatter(ExpertHost& experts, int l) {
    for (int part = 0; part < 2; ++part) {
      sparse_.reduce_scatter(holders_[l], experts.part_numel(part),
                             [&](int e) { return experts.expert_grad(l, e, part); }, g_.ep);
      stats_.bytes_sent += sparse_.stats().bytes_sent;
    }
  }
  void note_peak(const ExpertHost& experts) {
    stats_.replica_floats = std::max(stats_.replica_floats, experts.replica_floats());
  }
  void size_history(int L, int E) {
    if (!history_LE_.empty()) return;
    L_ = L;
    E_ = E;
    history_LE_.assign(static_cast<size_t>(spec_.load_window) * L * E, 0);
    const std::vector<int> owners = Placement::contiguous_owners(E, g_.ep.size());
    for (int l = 0; l < L; ++l) owners_LE_.insert(owners_LE_.end(), owners.begin(), owners.end());
  }

  // Moves the experts whose owners differ from owners_LE_ (a resumed job's checkpoint) to them.
  // Owners that are not a valid equal split over this world (a checkpoint of another world size,
  // or none: zeros) are replaced by the current ones: nothing moves.
  void apply_owners(ExpertHost& experts) {
    size_history(experts.num_moe_layers(), experts.owners(0).num_experts());
    const int W = g_.ep.size();
    for (int l = 0; l < L_; ++l) {
      const auto row = owners_LE_.begin() + static_cast<size_t>(l) * E_;
      std::vector<int> want(row, row + E_), count(W, 0);
      const std::vector<int> now = experts.owners(l).owner_list();
      if (want == now) continue;
      bool valid = true;
      for (int o : want) valid = valid && o >= 0 && o < W && ++count[o] <= E_ / W;
      if (valid) move_experts(experts, l, want);
      else std::copy(now.begin(), now.end(), row);
    }
  }

  // Collective: experts of layer l whose owner changes move from the old owner to the new one with
  // their parameters and every optimizer moment (one SparseAllGather of packed items, old owner ->
  // new owner); then the host takes the new owners and the new owners unpack. Returns the count.
  int64_t move_experts(ExpertHost& experts, int l, const std::vector<int>& to) {
    MOEMPI_CHECK_ONE(arena_ != nullptr, "fssdp re-sharding without the optimizer state (attach_optimizer_state)");
    const std::vector<int> from = experts.owners(l).owner_list();
    const int me = g_.ep.rank();
    const int64_t n[2] = {experts.part_numel(0), experts.part_numel(1)};
    const int64_t item = static_cast<int64_t>(1 + moments_.size()) * (n[0] + n[1]);
    std::vector<int> moving;
    std::vector<std::vector<int>> holders;
    for (int e = 0; e < E_; ++e)
      if (from[e] != to[e]) moving.push_back(e), holders.push_back({from[e], to[e]});
    // Each state buffer of expert e, part p: its parameters, then each moment at the same offset.
    auto for_each_span = [&](int e, const std::function<void(float*, int64_t)>& f) {
      for (int part = 0; part < 2; ++part) {
        float* p = experts.expert_param(l, e, part);
        f(p, n[part]);
        for (FloatBuffer* m : moments_) f(m->data() + (p - arena_->params().data()), n[part]);
      }
    };
    std::vector<std::vector<float>> items(moving.size());
    for (size_t i = 0; i < moving.size(); ++i) {
      if (from[moving[i]] != me && to[moving[i]] != me) continue;
      items[i].resize(static_cast<size_t>(item));
      if (from[moving[i]] != me) continue;
      float* out = items[i].data();
      for_each_span(moving[i], [&](float* src, int64_t count) { out = std::copy(src, src + count, out); });
    }
    sparse_.all_gather(holders, item, [&](int i) { return items[i].data(); }, g_.ep);
    stats_.bytes_sent += sparse_.stats().bytes_sent;
    experts.set_owners(l, to);
    for (size_t i = 0; i < moving.size(); ++i) {
      if (to[moving[i]] != me) continue;
      const float* in = items[i].data();
      for_each_span(moving[i], [&](float* dst, int64_t count) {
        std::copy(in, in + count, dst);
        in += count;
      });
    }
    return static_cast<int64_t>(moving.size());
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
  ExpertHost* host_ = nullptr;  // between begin_step and end_step
  bool last_micro_batch_ = true;
  std::vector<bool> grads_live_;  // [layer] re-materialisation: replica gradients allocated
  std::vector<int64_t> owners_LE_;  // (L, E) the experts' owners (checkpoint state)
  bool observed_this_step_ = false;  // observe_loads ran since the last end_step
  ParamArena* arena_ = nullptr;     // the optimizer state moves with the experts
  std::vector<FloatBuffer*> moments_;
};

}  // namespace

std::unique_ptr<ShardingStrategy> make_fssdp_strategy(const ParallelSpec& spec, const ProcessGroups& groups) {
  return std::make_unique<Fssdp>(spec, groups);
}

}  // namespace moempi
