// Placement tables, built once per placement (not per slot). Test: tests/placement_test.cpp.
#include "parallel/placement.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace moempi {

Placement Placement::contiguous(int num_experts, int group_size, int rank) {
  return with_replicas(num_experts, group_size, rank, {});
}

Placement Placement::with_replicas(int num_experts, int group_size, int rank,
                                   const std::vector<std::vector<int>>& replicas_E) {
  MOEMPI_CHECK_ONE(num_experts >= 1 && group_size >= 1 && num_experts % group_size == 0 &&
                       rank >= 0 && rank < group_size,
                   "placement: {} experts over {} ranks (rank {}) is not a valid layout", num_experts,
                   group_size, rank);
  MOEMPI_CHECK_ONE(replicas_E.empty() || (int)replicas_E.size() == num_experts,
                   "placement: replicas given for {} experts, expected {}", replicas_E.size(), num_experts);
  Placement p;
  p.E_ = num_experts;
  p.P_ = group_size;
  p.rank_ = rank;
  const int per_rank = num_experts / group_size;
  p.holders_.assign(num_experts, {});
  for (int e = 0; e < num_experts; ++e) {
    p.holders_[e].push_back(e / per_rank);
    if (replicas_E.empty()) continue;
    std::vector<int> extra = replicas_E[e];
    std::sort(extra.begin(), extra.end());
    extra.erase(std::unique(extra.begin(), extra.end()), extra.end());
    for (int r : extra) {
      MOEMPI_CHECK_ONE(r >= 0 && r < group_size, "placement: replica rank {} of expert {} is outside [0, {})",
                       r, e, group_size);
      if (r != p.holders_[e][0]) p.holders_[e].push_back(r);
    }
  }
  p.finish();
  return p;
}

void Placement::finish() {
  experts_on_.assign(P_, {});
  local_index_.assign(P_, std::vector<int>(E_, -1));
  replicated_ = false;
  for (int e = 0; e < E_; ++e) {
    replicated_ |= holders_[e].size() > 1;
    for (int r : holders_[e]) experts_on_[r].push_back(e);  // e ascending: lists stay sorted
  }
  max_local_ = 0;
  for (int r = 0; r < P_; ++r) {
    for (size_t i = 0; i < experts_on_[r].size(); ++i) local_index_[r][experts_on_[r][i]] = (int)i;
    max_local_ = std::max(max_local_, (int)experts_on_[r].size());
  }
  destination_.assign(P_, std::vector<int>(E_, 0));
  for (int s = 0; s < P_; ++s)
    for (int e = 0; e < E_; ++e) {
      const auto& h = holders_[e];
      destination_[s][e] = local_index_[s][e] >= 0 ? s : h[s % h.size()];
    }
}

}  // namespace moempi
