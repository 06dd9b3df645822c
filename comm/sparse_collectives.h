// FSSDP's two sparse collectives (ALGORITHMS.md 4, Hecate arXiv:2502.02581) over a placement of
// items (experts, or experts of several layers) to ranks: item i has one owner and any number of
// replicas, `holders_I[i]` = {owner, replicas... in ascending rank} (Placement::holders order).
//   all_gather:     every replica's buffer of item i := the owner's buffer (parameters out).
//   reduce_scatter: the owner's buffer of item i += Σ replicas' buffers, in ascending replica
//                   rank order (gradients back; deterministic, so reruns are bit-identical).
// Every item is `numel` floats; buffer(i) gives this rank's buffer of an item it holds (it is
// called for no other item). Volume O(λS): only items with replicas move, once per replica.
// Two algorithms: point-to-point (one message per item and replica, straight from and into the
// buffers, no copy) and alltoallv (packed per peer, one MPI_Alltoallv). No communicator is created
// per call; counts follow from the placement, which every rank holds identically, so there is no
// count exchange. The alltoallv form is one collective every rank posts, even with nothing to move;
// the point-to-point form posts nothing where nothing moves. Waits are watched by the watchdog.
// Test: tests/sparse_collectives_mpitest.cpp. Benchmark: `moempi bench sparse`.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/collectives.h"
#include "comm/communicator.h"

namespace moempi {

enum class SparseAlgo { kPointToPoint, kAlltoallv };
SparseAlgo parse_sparse_algo(const std::string& name);  // "p2p" | "alltoallv"; local error otherwise
const char* name_of(SparseAlgo algo);

struct SparseStats {
  int64_t bytes_sent = 0;  // this rank, last call
  int64_t messages = 0;    // point-to-point messages this rank sent (alltoallv: peers with data)
};

class SparseCollectives {
 public:
  using Buffers = std::function<float*(int item)>;

  explicit SparseCollectives(SparseAlgo algo = SparseAlgo::kPointToPoint) : algo_(algo) {}

  void all_gather(const std::vector<std::vector<int>>& holders_I, int64_t numel, const Buffers& buffer,
                  const Communicator& group);
  void reduce_scatter(const std::vector<std::vector<int>>& holders_I, int64_t numel, const Buffers& buffer,
                      const Communicator& group);
  const SparseStats& stats() const { return stats_; }
  SparseAlgo algo() const { return algo_; }

 private:
  enum class Direction { kGather, kReduce };
  void exchange(Direction dir, const std::vector<std::vector<int>>& holders_I, int64_t numel,
                const Buffers& buffer, const Communicator& group);

  SparseAlgo algo_;
  SparseStats stats_;
  RowType item_;                            // numel contiguous floats
  RowBlockExchange blocks_;
  std::vector<float> send_, recv_;          // alltoallv packing; reduce: received copies
  std::vector<int> send_counts_, send_displs_, recv_counts_, recv_displs_;
};

}  // namespace moempi
