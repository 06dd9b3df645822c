// SparseAllGather / SparseReduceScatter; see the header for the contract.
#include "comm/sparse_collectives.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "comm/mpi_check.h"
#include "runtime/core/error.h"

namespace moempi {

SparseAlgo parse_sparse_algo(const std::string& name) {
  if (name == "p2p") return SparseAlgo::kPointToPoint;
  if (name == "alltoallv") return SparseAlgo::kAlltoallv;
  MOEMPI_CHECK_ALL(false, "unknown sparse collective algorithm '{}': use p2p or alltoallv", name);
  return SparseAlgo::kPointToPoint;
}

const char* name_of(SparseAlgo algo) { return algo == SparseAlgo::kPointToPoint ? "p2p" : "alltoallv"; }

void SparseCollectives::all_gather(const std::vector<std::vector<int>>& holders_I, int64_t numel,
                                   const Buffers& buffer, const Communicator& group) {
  exchange(Direction::kGather, holders_I, numel, buffer, group);
}

void SparseCollectives::reduce_scatter(const std::vector<std::vector<int>>& holders_I, int64_t numel,
                                       const Buffers& buffer, const Communicator& group) {
  exchange(Direction::kReduce, holders_I, numel, buffer, group);
}

// The placement is the same on every rank, so a bad one fails every rank alike (collective error).
// Both directions and both algorithms share one layout: what a rank sends to (receives from) peer
// p is the list of items, ascending, that move between them; the alltoallv buffers hold the peers'
// lists back to back in peer order, and the point-to-point receives land in the same slots.
void SparseCollectives::exchange(Direction dir, const std::vector<std::vector<int>>& holders_I, int64_t numel,
                                 const Buffers& buffer, const Communicator& group) {
  const int W = group.size(), me = group.rank();
  const int I = static_cast<int>(holders_I.size());
  MOEMPI_CHECK_ALL(numel >= 1 && numel <= INT_MAX, "sparse collective: item of {} floats (1..INT_MAX)", numel);
  for (int i = 0; i < I; ++i) {
    const auto& h = holders_I[i];
    MOEMPI_CHECK_ALL(!h.empty(), "sparse collective: item {} has no owner", i);
    for (size_t j = 0; j < h.size(); ++j) {
      MOEMPI_CHECK_ALL(h[j] >= 0 && h[j] < W, "sparse collective: item {} held by rank {} of {}", i, h[j], W);
      MOEMPI_CHECK_ALL(j < 2 || h[j] > h[j - 1], "sparse collective: item {}'s replicas not ascending", i);
      MOEMPI_CHECK_ALL(j == 0 || h[j] != h[0], "sparse collective: item {}'s owner is also its replica", i);
    }
  }
  int tag_ub = 32767, *attr = nullptr, flag = 0;
  MOEMPI_MPI_CHECK(MPI_Comm_get_attr(group.comm(), MPI_TAG_UB, &attr, &flag));
  if (flag) tag_ub = *attr;
  MOEMPI_CHECK_ALL(algo_ == SparseAlgo::kAlltoallv || I <= tag_ub,
                   "sparse collective: {} items exceed the MPI tag bound {} (use alltoallv)", I, tag_ub);
  item_.reset(static_cast<int>(numel));
  const size_t n = static_cast<size_t>(numel);

  // (item, peer) pairs this rank sends and receives; gather: owner -> replicas, reduce: back.
  struct Move {
    int item, peer;
  };
  std::vector<Move> sends, recvs;
  for (int i = 0; i < I; ++i) {
    const auto& h = holders_I[i];
    const bool gather = dir == Direction::kGather;
    if (h[0] == me)
      for (size_t j = 1; j < h.size(); ++j) (gather ? sends : recvs).push_back({i, h[j]});
    else if (std::find(h.begin() + 1, h.end(), me) != h.end())
      (gather ? recvs : sends).push_back({i, h[0]});
  }
  auto by_peer = [](const Move& a, const Move& b) { return a.peer != b.peer ? a.peer < b.peer : a.item < b.item; };
  std::stable_sort(sends.begin(), sends.end(), by_peer);
  std::stable_sort(recvs.begin(), recvs.end(), by_peer);
  stats_ = {};
  stats_.bytes_sent = static_cast<int64_t>(sends.size()) * numel * static_cast<int64_t>(sizeof(float));

  // Received copies of a reduce land in recv_ (then summed); a gather receives in place (p2p) or
  // via recv_ (alltoallv).
  const bool staged_recv = dir == Direction::kReduce || algo_ == SparseAlgo::kAlltoallv;
  if (staged_recv) recv_.resize(recvs.size() * n);
  if (algo_ == SparseAlgo::kPointToPoint) {
    std::vector<RowBlock> send_blocks, recv_blocks;
    for (const Move& m : sends) send_blocks.push_back({m.peer, m.item, buffer(m.item), 1});
    for (size_t s = 0; s < recvs.size(); ++s)
      recv_blocks.push_back({recvs[s].peer, recvs[s].item, staged_recv ? recv_.data() + s * n : buffer(recvs[s].item), 1});
    stats_.messages = static_cast<int64_t>(send_blocks.size());
    blocks_.start(send_blocks, recv_blocks, item_, group);
    blocks_.wait();
  } else {
    send_counts_.assign(W, 0), recv_counts_.assign(W, 0), send_displs_.assign(W, 0), recv_displs_.assign(W, 0);
    for (const Move& m : sends) ++send_counts_[m.peer];
    for (const Move& m : recvs) ++recv_counts_[m.peer];
    for (int p = 1; p < W; ++p) {
      send_displs_[p] = send_displs_[p - 1] + send_counts_[p - 1];
      recv_displs_[p] = recv_displs_[p - 1] + recv_counts_[p - 1];
    }
    send_.resize(sends.size() * n);
    for (size_t s = 0; s < sends.size(); ++s) std::memcpy(send_.data() + s * n, buffer(sends[s].item), n * sizeof(float));
    stats_.messages = std::count_if(send_counts_.begin(), send_counts_.end(), [](int c) { return c > 0; });
    alltoallv_rows(send_.data(), send_counts_.data(), send_displs_.data(), recv_.data(), recv_counts_.data(),
                   recv_displs_.data(), item_, group);
  }

  if (dir == Direction::kGather) {
    if (staged_recv)
      for (size_t s = 0; s < recvs.size(); ++s)
        std::memcpy(buffer(recvs[s].item), recv_.data() + s * n, n * sizeof(float));
    return;
  }
  // Reduce: slot of (item, replica) in recv_; add replicas in ascending rank order per item.
  std::vector<size_t> idx(recvs.size());
  for (size_t s = 0; s < idx.size(); ++s) idx[s] = s;
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    return recvs[a].item != recvs[b].item ? recvs[a].item < recvs[b].item : recvs[a].peer < recvs[b].peer;
  });
  for (size_t s : idx) {
    float* dst = buffer(recvs[s].item);
    const float* src = recv_.data() + s * n;
    for (size_t k = 0; k < n; ++k) dst[k] += src[k];
  }
}

}  // namespace moempi
