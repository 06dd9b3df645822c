// Placement tables, built once per placement (not per slot). Test: tests/placement_test.cpp.
#include "parallel/placement.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace moempi {

Placement Placement::contiguous(int num_experts, int group_size, int rank) {
  return with_replicas(num_experts, group_size, rank, {});
}

std::vector<int> Placement::contiguous_owners(int num_experts, int group_size) {
  MOEMPI_CHECK_ONE(num_experts >= 1 && group_size >= 1 && num_experts % group_size == 0,
                   "placement: {} experts over {} ranks is not a valid layout", num_experts, group_size);
  std::vector<int> owners(num_experts);
  for (int e = 0; e < num_experts; ++e) owners[e] = e / (num_experts / group_size);
  return owners;
}

std::vector<int> Placement::owner_list() const {
  std::vector<int> out(E_);
  for (int e = 0; e < E_; ++e) out[e] = owner(e);
  return out;
}

Placement Placement::with_replicas(int num_experts, int group_size, int rank,
                                   const std::vector<std::vector<int>>& replicas_E) {
  return with_owners(contiguous_owners(num_experts, group_size), group_size, rank, replicas_E);
}

Placement Placement::with_owners(const std::vector<int>& owner_E, int group_size, int rank,
                                 const std::vector<std::vector<int>>& replicas_E) {
  const int num_experts = static_cast<int>(owner_E.size());
  MOEMPI_CHECK_ONE(num_experts >= 1 && group_size >= 1 && num_experts % group_size == 0 &&
                       rank >= 0 && rank < group_size,
                   "placement: {} experts over {} ranks (rank {}) is not a valid layout", num_experts,
                   group_size, rank);
  std::vector<int> owned(group_size, 0);
  for (int e = 0; e < num_experts; ++e) {
    MOEMPI_CHECK_ONE(owner_E[e] >= 0 && owner_E[e] < group_size, "placement: owner {} of expert {} is outside [0, {})",
                     owner_E[e], e, group_size);
    ++owned[owner_E[e]];
  }
  for (int r = 0; r < group_size; ++r)
    MOEMPI_CHECK_ONE(owned[r] == num_experts / group_size, "placement: rank {} owns {} experts, not {}", r, owned[r],
                     num_experts / group_size);
  MOEMPI_CHECK_ONE(replicas_E.empty() || (int)replicas_E.size() == num_experts,
                   "placement: replicas given for {} experts, expected {}", replicas_E.size(), num_experts);
  Placement p;
  p.E_ = num_experts;
  p.P_ = group_size;
  p.rank_ = rank;
  p.holders_.assign(num_experts, {});
  for (int e = 0; e < num_experts; ++e) {
    p.holders_[e].push_back(owner_E[e]);
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

uint64_t Placement::fingerprint() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the words below
  auto mix = [&h](int64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ static_cast<uint8_t>(v >> (8 * i))) * 1099511628211ull;
  };
  mix(E_);
  mix(P_);
  for (const auto& hs : holders_) {
    mix(static_cast<int64_t>(hs.size()));
    for (int r : hs) mix(r);
  }
  return h;
}

}  // namespace moempi
