// RoutingStats: one optimizer step's routing counts of every MoE layer — top-k selections per
// expert before capacity drops, and dropped slots — summed over the step's training micro-batches.
// The trainer reduces values() in ONE int64 all-reduce over ProcessGroups::data (all ranks that
// see different data); the step metrics and every pass's on_step_end read the reduced copy.
// Evaluation forwards are never added. Test: tests/balancing_mpitest.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "models/moe/router.h"

namespace moempi {

struct RoutingStats {
  int layers = 0, E = 0;
  std::vector<int64_t> values;  // (layers·E + 1): counts (L, E), then the dropped slots

  void reset(int num_layers, int num_experts) {
    layers = num_layers;
    E = num_experts;
    values.assign((size_t)layers * E + 1, 0);
  }
  int64_t* counts(int l) { return values.data() + (size_t)l * E; }        // (E) of MoE layer l
  const int64_t* counts(int l) const { return values.data() + (size_t)l * E; }
  std::vector<int64_t> layer(int l) const { return {counts(l), counts(l) + E}; }
  int64_t dropped() const { return values.back(); }
  // Adds one micro-batch's routing of MoE layer l.
  void add(int l, const RoutingPlan& plan) {
    int64_t* c = counts(l);
    for (int e = 0; e < E; ++e) c[e] += plan.selected_per_expert_E[e];
    values.back() += plan.dropped_slots;
  }
};

}  // namespace moempi
