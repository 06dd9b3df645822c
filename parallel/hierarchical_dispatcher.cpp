// HierarchicalDispatcher: builds the hops of the chosen algorithm from the routing, runs them
// forward (dispatch, combine_backward) and in reverse (combine, dispatch_backward); see
// hierarchical_dispatcher.h.
#include "parallel/hierarchical_dispatcher.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "comm/mpi_check.h"
#include "comm/watchdog.h"
#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {

HierAlgorithm parse_hier_algorithm(const std::string& name) {
  if (name == "2dh") return HierAlgorithm::k2dh;
  if (name == "leader") return HierAlgorithm::kLeader;
  MOEMPI_CHECK_ALL(false, "moe.dispatch.algorithm: '{}' is not one of: 2dh, leader", name);
  return HierAlgorithm::k2dh;
}

const char* hier_algorithm_name(HierAlgorithm a) { return a == HierAlgorithm::k2dh ? "2dh" : "leader"; }

// Records of a slot row: its destination ep rank, local expert index there, source ep rank, slot.
namespace {
constexpr int kSlotWidth = 4;
enum SlotField { kDst = 0, kLe = 1, kSrc = 2, kSlot = 3 };

int64_t float_bits(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
float bits_float(int64_t v) {
  const int32_t b = static_cast<int32_t>(v);
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
}  // namespace

struct HierarchicalDispatcher::Plan final : DispatchPlan {
  std::vector<RoutedHop> hops;                 // hop 0 reads the token rows (x_TD / dout_TD)
  std::vector<FloatBuffer> send, recv;         // per hop, rows of width D
  std::vector<FloatBuffer> send_k, recv_k;     // dedup: per hop before the fan-out, rows of width K (dprobs)
  int H = 0;                                   // hops used this micro-batch
  int fan = -1;                                // dedup: the fan-out hop (the last)
  std::vector<int64_t> final_row;              // (R) expert row r = row final_row[r] of the last hop's recv
  SlotRows slots;                              // no dedup: slot -> hop 0 send row
  std::vector<float> fan_p;                    // dedup: (fan send rows) p_tk of the row's slot
  std::vector<int> fan_k;                      // dedup: (fan send rows) k of the row's slot
  std::vector<int64_t> slot_unit;              // dedup: (T*K) hop 0 send row of the slot's unit, -1 dropped
  const float* planned_x = nullptr;            // the x_TD plan() sent (dispatch() must be given the same)
  // Scratch for plan().
  std::vector<int64_t> from, records, recv_records, next_records;
  std::vector<int> peer;

  friend class HierarchicalDispatcher;
};

namespace {
HierarchicalDispatcher::Plan& as_hier(DispatchPlan& p) { return static_cast<HierarchicalDispatcher::Plan&>(p); }
}  // namespace

HierarchicalDispatcher::HierarchicalDispatcher(const ProcessGroups& groups, HierAlgorithm algorithm, bool dedup)
    : ep_(groups.ep.view()),
      node_(groups.ep_node.view()),
      inter_(groups.ep_inter.view()),
      algorithm_(algorithm),
      dedup_(dedup) {
  P_ = ep_.size();
  me_ = ep_.rank();
  G_ = node_.size();
  N_ = inter_.size();
  int all_ok = layout_ok(groups) ? 1 : 0;
  {
    watchdog::Pending pending("MPI_Allreduce", groups.world.name().c_str());
    MOEMPI_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, groups.world.comm()));
  }
  const std::string nodes = fmt::format("{}", fmt::join(groups.ep_rank_node, ","));
  MOEMPI_CHECK_ALL(all_ok == 1,
                   "moe.dispatch.type 'hierarchical' needs every ep group to be N nodes x G ranks, with the same G "
                   "on every node and consecutive ep ranks per node (this rank's ep group has nodes [{}] by ep rank "
                   "on some rank it does not hold); set parallel.ranks_per_node to a divisor of parallel.ep, or use "
                   "moe.dispatch.type flat",
                   nodes);
}

bool HierarchicalDispatcher::layout_ok(const ProcessGroups& groups) {
  const int P = groups.ep.size(), me = groups.ep.rank(), G = groups.ep_node.size(), N = groups.ep_inter.size();
  bool ok = G >= 1 && G * N == P && groups.ep_node.rank() == me % G && groups.ep_inter.rank() == me / G &&
            static_cast<int>(groups.ep_rank_node.size()) == P;
  for (int q = 0; ok && q < P; ++q) {
    const int first = groups.ep_rank_node[q / G * G];
    ok = groups.ep_rank_node[q] == first && (q < G || q % G != 0 || first > groups.ep_rank_node[q - G]);
  }
  return ok;
}

std::unique_ptr<DispatchPlan> HierarchicalDispatcher::new_plan() const { return std::make_unique<Plan>(); }

void HierarchicalDispatcher::count(const RoutedHop& hop, const HopTraffic& t) {
  stats_.rows += t.rows;
  (hop.inter() ? stats_.bytes_inter : stats_.bytes_intra) += t.bytes;
  (hop.inter() ? stats_.messages_inter : stats_.messages_intra) += t.messages;
}

void HierarchicalDispatcher::plan(DispatchPlan& base, const Routing& r, const float* x_TD, int D,
                                  const Placement& placement) {
  DispatchTimer timer(stats_, kCallPlan);
  Plan& p = as_hier(base);
  MOEMPI_CHECK_ALL(placement.group_size() == P_,
                   "hierarchical dispatcher: placement over {} ranks does not match the ep group '{}' of {}",
                   placement.group_size(), ep_.name(), P_);
  MOEMPI_CHECK_ONE(placement.rank() == me_, "hierarchical dispatcher: placement for rank {} used on ep rank {}",
                   placement.rank(), me_);
  p.reset(r, D);
  p.local_experts_ = placement.local_experts();
  const int K = r.K, T = r.T;
  const int64_t slots = static_cast<int64_t>(T) * K;
  const bool leader = node_.rank() == 0;

  // The hop sequence: (group, inter, how the peer follows from a slot row's destination).
  enum class To { kLocal, kNode, kLeader };
  struct HopKind {
    const Communicator* group;
    bool inter;
    To to;
  };
  std::vector<HopKind> kinds;
  if (algorithm_ == HierAlgorithm::k2dh) {
    if (dedup_)
      kinds = {{&inter_, true, To::kNode}, {&node_, false, To::kLocal}};
    else
      kinds = {{&node_, false, To::kLocal}, {&inter_, true, To::kNode}};
  } else {
    kinds.push_back({&node_, false, To::kLeader});
    if (leader) kinds.push_back({&inter_, true, To::kNode});  // only leaders talk across nodes
    kinds.push_back({&node_, false, To::kLocal});
  }
  p.H = static_cast<int>(kinds.size());
  // Each hop's x rows travel with its records (dispatch() then only reorders): one round per hop.
  HopTraffic plan_traffic;
  auto rows_of = [&](int h) {
    return HopRows{h == 0 ? x_TD : p.recv[h - 1].data(), &p.send[h], &p.recv[h], D};
  };
  p.planned_x = x_TD;
  if (static_cast<int>(p.hops.size()) < p.H) {
    p.hops.resize(p.H);
    p.send.resize(p.H);
    p.recv.resize(p.H);
    p.send_k.resize(p.H);
    p.recv_k.resize(p.H);
  }
  p.fan = dedup_ ? p.H - 1 : -1;
  auto peer_of = [&](To to, int64_t dst_or_node) -> int {
    switch (to) {
      case To::kLocal: return static_cast<int>(dst_or_node % G_);
      case To::kNode: return static_cast<int>(dst_or_node);
      case To::kLeader: return 0;
    }
    return 0;
  };

  // Hop 0's rows, from the tokens.
  p.from.clear();
  p.peer.clear();
  p.records.clear();
  int width = kSlotWidth;
  if (!dedup_) {
    for (int64_t s = 0; s < slots; ++s) {
      const int e = r.topk_ids_TK[s];
      if (e < 0) continue;
      MOEMPI_CHECK_ONE(e < placement.num_experts(), "expert id {} out of range [0, {})", e, placement.num_experts());
      const int dst = placement.destination(e, me_);
      p.from.push_back(s / K);
      p.peer.push_back(peer_of(kinds[0].to, kinds[0].to == To::kNode ? dst / G_ : dst));
      p.records.insert(p.records.end(), {dst, placement.local_index(dst, e), me_, s});
    }
  } else {
    // A unit (t, node n): [n, source, t, dst_k..., le_k..., p_k bits...], dst_k = -1 when slot k
    // is dropped or on another node.
    width = 3 + 3 * K;
    p.slot_unit.assign(slots, -1);
    std::vector<int> dst_k(K), le_k(K);
    std::vector<int64_t> unit_of_given;  // given unit index -> token slots: filled after the sort
    std::vector<int64_t> unit_slots;     // (given units * K) slot s or -1
    for (int t = 0; t < T; ++t) {
      for (int k = 0; k < K; ++k) {
        const int e = r.topk_ids_TK[static_cast<size_t>(t) * K + k];
        MOEMPI_CHECK_ONE(e < placement.num_experts(), "expert id {} out of range [0, {})", e,
                         placement.num_experts());
        dst_k[k] = e < 0 ? -1 : placement.destination(e, me_);
        le_k[k] = e < 0 ? -1 : placement.local_index(dst_k[k], e);
      }
      for (int n = 0; n < N_; ++n) {
        bool any = false;
        for (int k = 0; k < K; ++k) any |= dst_k[k] >= 0 && dst_k[k] / G_ == n;
        if (!any) continue;
        p.from.push_back(t);
        p.peer.push_back(peer_of(kinds[0].to, n));
        p.records.insert(p.records.end(), {n, me_, t});
        for (int k = 0; k < K; ++k) p.records.push_back(dst_k[k] >= 0 && dst_k[k] / G_ == n ? dst_k[k] : -1);
        for (int k = 0; k < K; ++k) p.records.push_back(le_k[k]);
        for (int k = 0; k < K; ++k) p.records.push_back(float_bits(r.probs_TK ? r.probs_TK[static_cast<size_t>(t) * K + k] : 1.0f));
        for (int k = 0; k < K; ++k)
          unit_slots.push_back(dst_k[k] >= 0 && dst_k[k] / G_ == n ? static_cast<int64_t>(t) * K + k : -1);
      }
    }
    (void)unit_of_given;
    const HopRows rows = rows_of(0);
    p.hops[0].plan(*kinds[0].group, kinds[0].inter, T, p.from, p.peer, p.records, width, p.recv_records, &rows,
                   &plan_traffic);
    count(p.hops[0], plan_traffic);
    const std::vector<int64_t>& pos = p.hops[0].sorted_position();
    for (size_t u = 0; u < pos.size(); ++u)
      for (int k = 0; k < K; ++k)
        if (unit_slots[u * K + k] >= 0) p.slot_unit[unit_slots[u * K + k]] = pos[u];
  }
  if (!dedup_) {
    const HopRows rows = rows_of(0);
    p.hops[0].plan(*kinds[0].group, kinds[0].inter, T, p.from, p.peer, p.records, width, p.recv_records, &rows,
                   &plan_traffic);
    count(p.hops[0], plan_traffic);
    p.slots.row_of_slot.assign(slots, -1);
    const std::vector<int64_t>& pos = p.hops[0].sorted_position();
    for (size_t i = 0; i < pos.size(); ++i)
      p.slots.row_of_slot[p.records[i * kSlotWidth + kSlot]] = SlotRows::encode_back(pos[i]);
  }

  // Hops 1..H-1: each row moves on by its record; the fan-out hop (dedup) turns units into slots.
  for (int h = 1; h < p.H; ++h) {
    const int64_t n = p.hops[h - 1].recv_rows();
    p.from.clear();
    p.peer.clear();
    p.next_records.clear();
    const bool fan = h == p.fan;
    if (fan) {
      p.fan_p.clear();
      p.fan_k.clear();
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t* rec = &p.recv_records[i * width];
      if (!fan) {
        const int64_t target = kinds[h].to == To::kNode ? (dedup_ ? rec[0] : rec[kDst] / G_) : rec[kDst];
        p.from.push_back(i);
        p.peer.push_back(peer_of(kinds[h].to, target));
        p.next_records.insert(p.next_records.end(), rec, rec + width);
        continue;
      }
      for (int k = 0; k < K; ++k) {
        const int64_t dst = rec[3 + k];
        if (dst < 0) continue;
        p.from.push_back(i);
        p.peer.push_back(peer_of(To::kLocal, dst));
        p.next_records.insert(p.next_records.end(), {dst, rec[3 + K + k], rec[1], rec[2] * K + k});
        p.fan_p.push_back(bits_float(rec[3 + 2 * K + k]));
        p.fan_k.push_back(k);
      }
    }
    const int next_width = fan ? kSlotWidth : width;
    const HopRows rows = rows_of(h);
    HopTraffic t;
    p.hops[h].plan(*kinds[h].group, kinds[h].inter, n, p.from, p.peer, p.next_records, next_width, p.recv_records,
                   &rows, &t);
    count(p.hops[h], t);
    if (fan) {  // fan_p / fan_k in send-row order
      const std::vector<int64_t>& pos = p.hops[h].sorted_position();
      std::vector<float> fp(pos.size());
      std::vector<int> fk(pos.size());
      for (size_t i = 0; i < pos.size(); ++i) {
        fp[pos[i]] = p.fan_p[i];
        fk[pos[i]] = p.fan_k[i];
      }
      p.fan_p.swap(fp);
      p.fan_k.swap(fk);
    }
    width = next_width;
  }

  // The expert side: rows by (local expert, source, slot).
  const int64_t R = p.hops[p.H - 1].recv_rows();
  const int El = placement.num_local();
  p.final_row.resize(R);
  std::iota(p.final_row.begin(), p.final_row.end(), int64_t{0});
  const std::vector<int64_t>& rec = p.recv_records;
  std::sort(p.final_row.begin(), p.final_row.end(), [&](int64_t a, int64_t b) {
    const int64_t* x = &rec[a * kSlotWidth];
    const int64_t* y = &rec[b * kSlotWidth];
    if (x[kLe] != y[kLe]) return x[kLe] < y[kLe];
    if (x[kSrc] != y[kSrc]) return x[kSrc] < y[kSrc];
    return x[kSlot] < y[kSlot];
  });
  p.rows_per_local_expert_.assign(El, 0);
  for (int64_t i = 0; i < R; ++i) {
    MOEMPI_CHECK_ONE(rec[i * kSlotWidth + kDst] == me_ && rec[i * kSlotWidth + kLe] >= 0 &&
                         rec[i * kSlotWidth + kLe] < El,
                     "hierarchical dispatcher: row for rank {} expert {} arrived at rank {}",
                     rec[i * kSlotWidth + kDst], rec[i * kSlotWidth + kLe], me_);
    ++p.rows_per_local_expert_[rec[i * kSlotWidth + kLe]];
  }
  p.rows_ = R;
  p.use_own_buffers();
  const float* last = p.recv[p.H - 1].data();  // the x rows, moved with the records
  for (size_t i = 0; i < p.final_row.size(); ++i)
    std::memcpy(p.x_RD_ + i * D, last + p.final_row[i] * D, sizeof(float) * D);
  for (int h = 0; h < p.H; ++h) {
    p.send[h].resize(static_cast<size_t>(p.hops[h].send_rows()) * D);
    p.recv[h].resize(static_cast<size_t>(p.hops[h].recv_rows()) * D);
    if (dedup_ && h < p.fan) {
      p.send_k[h].resize(static_cast<size_t>(p.hops[h].send_rows()) * K);
      p.recv_k[h].resize(static_cast<size_t>(p.hops[h].recv_rows()) * K);
    }
  }
}

// Hops 1.. forward from hop 0's receive buffer, then the last receive buffer into x_RD order.
void HierarchicalDispatcher::exchange_forward(Plan& p, const float* in0, float* RD) {
  const int D = p.D_;
  for (int h = 0; h < p.H; ++h) {
    const float* in = h == 0 ? in0 : p.recv[h - 1].data();
    if (h > 0 || in0 != nullptr) p.hops[h].gather(in, p.send[h].data(), D);
    HopTraffic t;
    p.hops[h].exchange(p.send[h].data(), p.recv[h].data(), D, t);
    count(p.hops[h], t);
  }
  const float* last = p.recv[p.H - 1].data();
  for (size_t r = 0; r < p.final_row.size(); ++r)
    std::memcpy(RD + r * D, last + p.final_row[r] * D, sizeof(float) * D);
}

// x_RD-ordered rows back to hop 0's send buffer; the fan-out hop (dedup) reduces the copies of a
// unit, weighted by p_tk when `weighted` (combine) or plainly (dispatch_backward). With `dprobs`
// (dedup, dispatch_backward) the k dprobs of each unit, left in recv_k[fan - 1] by
// combine_backward, ride back with the unit's rows on the hops before the fan-out (same rounds).
void HierarchicalDispatcher::exchange_reverse(Plan& p, const float* RD, bool weighted, bool dprobs) {
  const int D = p.D_, K = p.K_;
  float* last = p.recv[p.H - 1].data();
  for (size_t r = 0; r < p.final_row.size(); ++r)
    std::memcpy(last + p.final_row[r] * D, RD + r * D, sizeof(float) * D);
  for (int h = p.H - 1; h >= 0; --h) {
    const bool side = dprobs && h < p.fan;
    HopTraffic t;
    p.hops[h].exchange_back(p.recv[h].data(), p.send[h].data(), D, t, side ? p.recv_k[h].data() : nullptr,
                            side ? p.send_k[h].data() : nullptr, side ? K : 0);
    count(p.hops[h], t);
    if (h == 0) break;
    if (h == p.fan) {
      p.hops[h].reduce(p.send[h].data(), p.recv[h - 1].data(), D, weighted ? p.fan_p.data() : nullptr, false);
    } else {
      p.hops[h].scatter(p.send[h].data(), p.recv[h - 1].data(), D);
      if (side) p.hops[h].scatter(p.send_k[h].data(), p.recv_k[h - 1].data(), K);
    }
  }
}

// plan() moved the x rows with the records (the contract: plan's x_TD is what dispatch sends).
void HierarchicalDispatcher::dispatch(DispatchPlan& base, const float* x_TD) {
  DispatchTimer timer(stats_, kCallDispatch);
  Plan& p = as_hier(base);
  MOEMPI_CHECK_ONE(x_TD == p.planned_x || p.T_ == 0,
                   "hierarchical dispatcher: dispatch() of other rows than plan() was given (plan sends them)");
}

void HierarchicalDispatcher::combine(DispatchPlan& base, float* out_TD) {
  DispatchTimer timer(stats_, kCallCombine);
  Plan& p = as_hier(base);
  exchange_reverse(p, p.y_RD_, true, false);
  if (dedup_)  // per-node partial sums, already weighted: out_t = Σ over the token's nodes
    p.hops[0].reduce(p.send[0].data(), out_TD, p.D_, nullptr, false);
  else  // y rows of every slot, kept in send[0] for dprobs
    p.slots.weighted_sum(out_TD, nullptr, p.send[0].data(), p.probs_TK_.data(), p.T_, p.K_, p.D_);
}

void HierarchicalDispatcher::combine_backward(DispatchPlan& base, const float* dout_TD) {
  DispatchTimer timer(stats_, kCallCombineBackward);
  Plan& p = as_hier(base);
  const int D = p.D_, K = p.K_;
  const int64_t slots = static_cast<int64_t>(p.T_) * K;
  if (!dedup_) {
    // dprobs from the y rows in send[0] (pending until dispatch_backward); then dy = p·dout over
    // them, and the hops forward.
    float* dprobs_TK = p.pending_dprobs();
    float* rows = p.send[0].data();
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t v = p.slots.row_of_slot[s];
      if (v == -1) {
        dprobs_TK[s] = 0.0f;
        continue;
      }
      const float* g = dout_TD + s / K * D;
      float* row = rows + SlotRows::back_row(v) * D;
      dprobs_TK[s] = dot_row(g, row, D);
      scale_row(row, g, p.probs_TK_[s], D);
    }
    exchange_forward(p, nullptr, p.dy_RD_);
    return;
  }
  // dedup: dout_t once per node up to the fan-out hop, where y_tk is held.
  for (int h = 0; h < p.H; ++h) {
    const float* in = h == 0 ? dout_TD : p.recv[h - 1].data();
    RoutedHop& hop = p.hops[h];
    if (h == p.fan) {
      float* units_k = h == 0 ? nullptr : p.recv_k[h - 1].data();  // (units, K) dprobs of the node's slots
      if (units_k) std::memset(units_k, 0, sizeof(float) * hop.in_rows() * K);
      float* y = p.send[h].data();
      for (int64_t i = 0; i < hop.send_rows(); ++i) {
        const float* g = in + hop.from()[i] * D;
        float* row = y + i * D;
        const float dp = dot_row(g, row, D);
        if (units_k) units_k[hop.from()[i] * K + p.fan_k[i]] = dp;
        scale_row(row, g, p.fan_p[i], D);
      }
    } else {
      hop.gather(in, p.send[h].data(), D);
    }
    HopTraffic t;
    hop.exchange(p.send[h].data(), p.recv[h].data(), D, t);
    count(hop, t);
  }
  const float* last = p.recv[p.H - 1].data();
  for (size_t r = 0; r < p.final_row.size(); ++r)
    std::memcpy(p.dy_RD_ + r * D, last + p.final_row[r] * D, sizeof(float) * D);
  // The k dprobs of each unit stay in recv_k[fan - 1]; they return with dispatch_backward's rows.
}

void HierarchicalDispatcher::dispatch_backward(DispatchPlan& base, float* dx_TD, float* dprobs_TK) {
  DispatchTimer timer(stats_, kCallDispatchBackward);
  Plan& p = as_hier(base);
  exchange_reverse(p, p.dx_RD(), false, dedup_);
  if (!dedup_) {
    p.slots.add(dx_TD, nullptr, p.send[0].data(), p.T_, p.K_, p.D_);
    p.take_pending_dprobs(dprobs_TK);
    return;
  }
  p.hops[0].reduce(p.send[0].data(), dx_TD, p.D_, nullptr, true);
  const int K = p.K_;
  const int64_t slots = static_cast<int64_t>(p.T_) * K;
  const float* units_k = p.send_k[0].data();
  for (int64_t s = 0; s < slots; ++s)
    dprobs_TK[s] = p.slot_unit[s] < 0 ? 0.0f : units_k[p.slot_unit[s] * K + s % K];
}

}  // namespace moempi
