// Placement: where each routed expert of one MoE layer lives over a dispatcher's group (the EP
// group), and which rank runs each slot. Every expert has one owner and any number of replicas
// (FSSDP materialises replicas per step; dp and ep have none). Expert ids are global.
// Destination rule (stated, deterministic, identical on every rank): a slot of source rank s
// routed to expert e runs on s itself when s holds e; otherwise on holders(e)[s % n], n = number
// of holders. With no replicas that is the owner. Local experts are kept in ascending global id.
// Tests: tests/placement_test.cpp.
#pragma once
#include <cstdint>
#include <vector>

namespace moempi {

class Placement {
 public:
  Placement() = default;
  // `ep`: expert e on group rank e / (E/P), no replicas (today's layout). E >= 1, P >= 1,
  // P divides E, 0 <= rank < P (a local error otherwise: callers validate the spec first).
  static Placement contiguous(int num_experts, int group_size, int rank);
  // Every expert owned by the contiguous rule, plus copies: replicas[e] lists extra ranks.
  static Placement with_replicas(int num_experts, int group_size, int rank,
                                 const std::vector<std::vector<int>>& replicas_E);
  // Expert e owned by owner_E[e] (every rank owning E/P experts: FSSDP re-sharding keeps the
  // count), plus copies: replicas[e] lists extra ranks (may be empty: none).
  static Placement with_owners(const std::vector<int>& owner_E, int group_size, int rank,
                               const std::vector<std::vector<int>>& replicas_E = {});
  // The contiguous rule's owners: expert e on rank e / (E/P).
  static std::vector<int> contiguous_owners(int num_experts, int group_size);
  std::vector<int> owner_list() const;  // owner(e) for every e

  int num_experts() const { return E_; }
  int group_size() const { return P_; }
  int rank() const { return rank_; }
  int owner(int expert) const { return holders_[expert][0]; }
  // Ranks holding a copy of the expert: the owner first, then replicas in ascending rank.
  const std::vector<int>& holders(int expert) const { return holders_[expert]; }
  bool holds(int rank, int expert) const { return local_index_[rank][expert] >= 0; }
  // Global ids of the experts on a rank (ascending): the order of its expert-row groups.
  const std::vector<int>& experts_on(int rank) const { return experts_on_[rank]; }
  const std::vector<int>& local_experts() const { return experts_on_[rank_]; }
  int num_local() const { return static_cast<int>(experts_on_[rank_].size()); }
  // Index of the expert among experts_on(rank), or -1.
  int local_index(int rank, int expert) const { return local_index_[rank][expert]; }
  // The rank that runs a slot of source rank `src` routed to `expert` (rule above).
  int destination(int expert, int src) const { return destination_[src][expert]; }
  // Most experts on any rank (a stride for count exchanges).
  int max_local() const { return max_local_; }
  bool has_replicas() const { return replicated_; }
  // A hash of E, P and every expert's holders: equal on every rank of a group that agrees on the
  // placement (the rank itself is not in it). Transports that write into peers' memory check it.
  uint64_t fingerprint() const;

 private:
  void finish();
  int E_ = 0, P_ = 0, rank_ = 0, max_local_ = 0;
  bool replicated_ = false;
  std::vector<std::vector<int>> holders_;      // [e] owner, replicas...
  std::vector<std::vector<int>> experts_on_;   // [rank] global ids, ascending
  std::vector<std::vector<int>> local_index_;  // [rank][e]
  std::vector<std::vector<int>> destination_;  // [src][e]
};

}  // namespace moempi
