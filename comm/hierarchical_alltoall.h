// Hierarchical all-to-all for variable (dropless) splits (ALGORITHMS.md 3.2): an exchange of rows
// broken into hops, each over one sub-group (the ranks of a node, or one rank per node), each with
// its own count exchange, and local reorders between hops. The hops of the two algorithms, for a
// group of N nodes x G ranks (group rank = node * G + local index):
//   2dh    (Tutel): hop 1 over the node (to the local index of the destination), hop 2 over the
//                   ranks with that local index (to the destination node): G-1 intra + N-1 inter
//                   messages per rank instead of N*G-1;
//   leader (HetuMoE): hop 1 to the node leader (local index 0), hop 2 among the leaders, hop 3
//                   from the leader to the destination rank: only leaders talk across nodes.
// A hop may fan a row out to several peers (node-level deduplication: a token crosses once per
// destination node and is copied inside it); its reverse then reduces the copies into one row.
//
// One RoutedHop is one hop. plan() (collective over the hop's group) takes, for every row the hop
// sends, its input row, its peer and a fixed-width int64 record (the routing metadata, e.g. the
// final destination); it sorts the sends by peer (stable), exchanges the counts and the records,
// and returns the records received, in arrival order (by source peer, then the peer's order).
// Afterwards, per call (collective over the group; every member calls it even with zero rows):
//   gather(in, send)        send row i = in row from(i) (times scale[i] if given)   not collective
//   exchange(send, recv)    one message per peer with rows (own rows copied)          collective
//   exchange_back(recv, send)  the mirror: rows return to where they came from         collective
//   scatter(send, in)       in row from(i) = send row i (permutation hops)            not collective
//   reduce(send, in, scale) in row j = Σ_{i: from(i) = j} scale_i · send_i, i ascending; rows that
//                           nothing maps to become 0 (or keep their value with accumulate)
// Traffic of exchange/exchange_back (rows to other ranks, their bytes, non-empty messages) is
// added to a HopTraffic. Used by parallel/hierarchical_dispatcher.h. Test:
// tests/hierarchical_mpitest.cpp (and the dispatcher contract test).
#pragma once
#include <cstdint>
#include <vector>

#include "comm/collectives.h"
#include "comm/communicator.h"
#include "runtime/core/arena.h"

namespace moempi {

enum class HierAlgorithm { k2dh, kLeader };

// Accumulated traffic of hops (this rank's sends to other ranks).
struct HopTraffic {
  int64_t rows = 0, bytes = 0, messages = 0;
};

// Rows plan() moves in the same round as the records (the hop's first exchange folded into its
// plan: on a slow network every round pays its latency): send row i = in row from(i), `width`
// floats each, into *send; *recv gets the rows received, in arrival order (resized by plan()).
struct HopRows {
  const float* in = nullptr;
  FloatBuffer* send = nullptr;
  FloatBuffer* recv = nullptr;
  int width = 0;
};

class RoutedHop {
 public:
  // Collective over `group` (a view; it must outlive the hop). `inter`: the group's members are on
  // different nodes (traffic counted as inter-node). from/peer: (n_send) input row and peer of
  // each send; records: (n_send * width) int64. recv_records gets (recv_rows() * width). One
// message per peer (MPI_Isend + MPI_Mprobe/MPI_Mrecv): the count travels with the records.
  // With `rows` the hop's rows travel in the same round (their traffic is added to *traffic).
  void plan(const Communicator& group, bool inter, int64_t in_rows, const std::vector<int64_t>& from,
            const std::vector<int>& peer, const std::vector<int64_t>& records, int width,
            std::vector<int64_t>& recv_records, const HopRows* rows = nullptr, HopTraffic* traffic = nullptr);

  int64_t in_rows() const { return in_rows_; }
  int64_t send_rows() const { return static_cast<int64_t>(from_.size()); }
  int64_t recv_rows() const { return recv_first_.empty() ? 0 : recv_first_.back(); }
  bool inter() const { return inter_; }
  // Input row of send row i (sends are ordered by peer, stable in the order plan() got them).
  const std::vector<int64_t>& from() const { return from_; }
  // Send row of the i-th send as plan() got it (the inverse of the sort).
  const std::vector<int64_t>& sorted_position() const { return position_; }

  void gather(const float* in, float* send, int width, const float* scale = nullptr) const;
  void exchange(const float* send, float* recv, int width, HopTraffic& traffic);
  // With a side payload (side_width floats per row, e.g. the k dprobs of a unit returning with its
  // dx row): recv_side rows move to send_side in the same round, as a second message per peer
  // posted next to the rows' (its bytes are counted, its messages are not).
  void exchange_back(const float* recv, float* send, int width, HopTraffic& traffic,
                     const float* recv_side = nullptr, float* send_side = nullptr, int side_width = 0);
  void scatter(const float* send, float* in, int width) const;
  void reduce(const float* send, float* in, int width, const float* scale, bool accumulate) const;

 private:
  void move_rows(const float* from_buf, const std::vector<int64_t>& from_first, float* to_buf,
                 const std::vector<int64_t>& to_first, int width, HopTraffic& traffic,
                 const float* from_side = nullptr, float* to_side = nullptr, int side_width = 0);

  Communicator view_;  // the hop's group (a view)
  bool inter_ = false;
  int64_t in_rows_ = 0;
  std::vector<int64_t> from_;      // (n_send) input row of each send row
  std::vector<int64_t> position_;  // (n_send) sorted position of the i-th given send
  std::vector<int64_t> send_first_, recv_first_;  // (peers + 1) first row per peer
  RowType row_, side_row_, plan_row_;  // plan_row_: the rows that travel with plan()'s records
  RowBlockExchange blocks_, side_blocks_;
  std::vector<RowBlock> sends_, recvs_, side_sends_, side_recvs_;  // scratch
};

}  // namespace moempi
