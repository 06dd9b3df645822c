// The shm dispatcher (see shm_dispatcher.h). Every rank's segment of a plan's window is three
// regions of R_r rows of D floats, each rounded up to 64 bytes: [x_RD | y_RD (= dx_RD) | dy_RD].
// Rows are grouped as parallel/dispatcher.h specifies: by the receiver's local expert (ascending
// global id), then by source ep rank, then by slot order t*K+k at the source.
//
// Why no rank stores into a region a peer still loads (one plan; other plans have other windows):
//   dispatch          stores x (peers' x regions)      then fence
//   experts forward   load own x, store own y
//   combine           fence, then loads y (peers)       -- y is not stored again before the
//   combine_backward  loads y (peers), stores dy         fence closing combine_backward, after
//                     (peers), then fence                which experts backward store dx into y
//   experts backward  load own x and dy, store own dx (= y)
//   dispatch_backward fence, then loads dx (peers)
//   next plan()       allgather: it returns only once every peer has entered it, i.e. finished
//                     its loads of this micro-batch; the next stores (the next dispatch, or a
//                     reallocation, itself collective) come after it.
// Each fence is MPI_Win_sync + MPI_Barrier + MPI_Win_sync (comm/shm_window.h): no spinning.
#include "parallel/shm_dispatcher.h"

#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "comm/collectives.h"
#include "comm/shm_window.h"
#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {
namespace {

std::function<double()>& test_delay() {
  static std::function<double()> delay;
  return delay;
}

void test_pause() {
  const auto& delay = test_delay();
  if (!delay) return;
  const double s = delay();
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

int64_t round_up_64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

// Per-micro-batch state of one layer: the window and where every slot's rows live.
class ShmPlan final : public DispatchPlan {
  friend class ::moempi::ShmDispatcher;  // reads and sets the base's protected fields

 public:  // file-local type: its state is the dispatcher's
  std::unique_ptr<ShmWindow> window;  // created by the first plan()
  std::vector<int64_t> exchange_send;  // (E+2) counts per global expert, then D, then the placement fingerprint
  std::vector<int64_t> counts;         // (P, E+2) every rank's exchange_send
  std::vector<int64_t> base_row;       // (E) first row of this rank's block for e at its destination
  std::vector<int64_t> next_row;       // (E) scratch
  std::vector<int64_t> region_bytes;   // (P) bytes of one region of each rank's segment
  std::vector<int64_t> segment_bytes;  // (P) bytes each rank needs (three regions)
  std::vector<char> peer_used;         // (P) scratch
  // (T*K) where each slot's rows live, in this process's address space; nullptr when dropped.
  std::vector<float*> x_slot, y_slot, dy_slot;
  // Traffic per direction: rows this rank stores into peers' segments (dispatch,
  // combine_backward), and rows of its own segment that peers load (combine, dispatch_backward).
  int64_t rows_out = 0, rows_in = 0, peers_out = 0, peers_in = 0;
};

}  // namespace

ShmDispatcher::ShmDispatcher(const ProcessGroups& groups, float headroom)
    : ep_(groups.ep.view()), headroom_(headroom) {
  MOEMPI_CHECK_ALL(headroom >= 1.0f, "shm dispatcher: headroom ({}) must be >= 1", headroom);
  // One host is what MPI_Win_allocate_shared needs; virtual nodes larger than a host would pass
  // the node test below but not this one.
  const Communicator host = Communicator::split_shared(groups.ep, groups.ep.rank(), "ep_host");
  int64_t worst[3] = {groups.ep_num_nodes(), host.size() < groups.ep.size() ? 1 : 0, groups.node.size()};
  allreduce(worst, 3, ReduceOp::kMax, groups.world);
  const std::string layout =
      groups.virtual_nodes
          ? fmt::format("parallel.ep = {}, parallel.ranks_per_node = {}", groups.ep_size, worst[2])
          : fmt::format("parallel.ep = {}, nodes of up to {} ranks", groups.ep_size, worst[2]);
  MOEMPI_CHECK_ALL(worst[0] == 1,
                   "moe.dispatch.type shm needs the ep group within one node, but it spans {} nodes ({}); "
                   "use flat or auto",
                   worst[0], layout);
  MOEMPI_CHECK_ALL(worst[1] == 0,
                   "moe.dispatch.type shm needs the ep group on one host (shared memory), but its ranks "
                   "are on several hosts ({}); use flat or auto",
                   layout);
}

std::unique_ptr<DispatchPlan> ShmDispatcher::new_plan() const { return std::make_unique<ShmPlan>(); }

void ShmDispatcher::set_test_delay(std::function<double()> delay) { test_delay() = std::move(delay); }

namespace {

ShmPlan& as_shm(DispatchPlan& plan, bool planned) {
  auto* p = dynamic_cast<ShmPlan*>(&plan);
  MOEMPI_CHECK_ONE(p, "shm dispatcher: the plan was made by another dispatcher");
  MOEMPI_CHECK_ONE(!planned || p->window, "shm dispatcher: plan() has not run on this plan");
  return *p;
}

}  // namespace

void ShmDispatcher::plan(DispatchPlan& plan_base, const Routing& routing, const float* x_TD, int D,
                         const Placement& placement) {
  DispatchTimer timer(stats_, kCallPlan);
  ShmPlan& p = as_shm(plan_base, false);
  p.reset(routing, D);
  const int P = ep_.size(), me = ep_.rank(), E = placement.num_experts();
  MOEMPI_CHECK_ALL(placement.group_size() == P,
                   "shm dispatcher: placement over {} ranks, but the ep group has {} (parallel.ep)",
                   placement.group_size(), P);
  MOEMPI_CHECK_ONE(placement.rank() == me, "shm dispatcher: placement for rank {} used on ep rank {}",
                   placement.rank(), me);
  const int64_t TK = static_cast<int64_t>(p.T_) * p.K_;

  // The count exchange: every rank learns every rank's counts per global expert, D and placement
  // fingerprint (ranks that disagree on where rows go would write past each other's segments).
  count_slots(p.topk_ids_TK_.data(), TK, E, p.exchange_send);
  p.exchange_send.push_back(D);
  p.exchange_send.push_back(static_cast<int64_t>(placement.fingerprint()));
  p.counts.resize(static_cast<size_t>(P) * (E + 2));
  allgather_i64(p.exchange_send.data(), p.counts.data(), E + 2, ep_);
  auto count = [&](int src, int e) { return p.counts[static_cast<size_t>(src) * (E + 2) + e]; };
  for (int q = 0; q < P; ++q) {  // every rank sees the same table: all reach this the same way
    MOEMPI_CHECK_ALL(count(q, E) == D, "shm dispatcher: ep rank {} dispatches rows of {} floats, rank {} of {}",
                     q, count(q, E), me, D);
    MOEMPI_CHECK_ALL(count(q, E + 1) == count(0, E + 1),
                     "shm dispatcher: ep ranks 0 and {} place this layer's experts differently (their placements "
                     "differ)", q);
  }

  // Every receiver's row layout, from the placement's destination rule.
  p.local_experts_ = placement.local_experts();
  p.rows_per_local_expert_.clear();
  p.base_row.assign(E, 0);
  p.region_bytes.assign(P, 0);
  p.segment_bytes.assign(P, 0);
  p.rows_in = p.peers_in = 0;
  for (int r = 0; r < P; ++r) {
    int64_t at = 0;
    for (int e : placement.experts_on(r)) {
      const int64_t first = at;
      for (int s = 0; s < P; ++s) {
        if (placement.destination(e, s) != r) continue;
        if (s == me) p.base_row[e] = at;
        at += count(s, e);
      }
      if (r == me) p.rows_per_local_expert_.push_back(at - first);
    }
    p.region_bytes[r] = round_up_64(at * D * static_cast<int64_t>(sizeof(float)));
    p.segment_bytes[r] = 3 * p.region_bytes[r];
    if (r == me) p.rows_ = at;
  }
  for (int s = 0; s < P; ++s) {
    if (s == me) continue;
    int64_t from_s = 0;
    for (int e : placement.local_experts())
      if (placement.destination(e, s) == me) from_s += count(s, e);
    p.rows_in += from_s;
    p.peers_in += from_s > 0;
  }

  if (!p.window) p.window = std::make_unique<ShmWindow>(ep_, headroom_);
  p.window->ensure(p.segment_bytes);
  auto region = [&](int r, int which) {
    return reinterpret_cast<float*>(p.window->segment(r) + which * p.region_bytes[r]);
  };
  p.x_RD_ = region(me, 0);
  p.y_RD_ = region(me, 1);
  p.dy_RD_ = region(me, 2);

  // Where each slot's rows live: its destination's segment, row base_row[e] + (its rank among
  // this rank's slots routed to e, in slot order).
  p.x_slot.assign(TK, nullptr);
  p.y_slot.assign(TK, nullptr);
  p.dy_slot.assign(TK, nullptr);
  p.next_row = p.base_row;
  p.peer_used.assign(P, 0);
  p.rows_out = p.peers_out = 0;
  for (int64_t s = 0; s < TK; ++s) {
    const int e = p.topk_ids_TK_[s];
    if (e < 0) continue;
    const int r = placement.destination(e, me);
    const int64_t at = p.next_row[e]++ * D;
    p.x_slot[s] = region(r, 0) + at;
    p.y_slot[s] = region(r, 1) + at;
    p.dy_slot[s] = region(r, 2) + at;
    if (r != me) {
      ++p.rows_out;
      p.peers_out += !p.peer_used[r];
      p.peer_used[r] = 1;
    }
  }
  (void)x_TD;
}

void ShmDispatcher::dispatch(DispatchPlan& plan_base, const float* x_TD) {
  DispatchTimer timer(stats_, kCallDispatch);
  ShmPlan& p = as_shm(plan_base, true);
  const int K = p.K_, D = p.D_;
  const int64_t TK = static_cast<int64_t>(p.T_) * K;
  const size_t row_bytes = sizeof(float) * D;
  test_pause();
  for (int64_t s = 0; s < TK; ++s)
    if (p.x_slot[s]) std::memcpy(p.x_slot[s], x_TD + (s / K) * D, row_bytes);
  test_pause();
  p.window->fence();  // every x row is in place
  stats_.rows += p.rows_out;
  stats_.bytes_intra += p.rows_out * static_cast<int64_t>(row_bytes);
  stats_.messages_intra += p.peers_out;
}

void ShmDispatcher::combine(DispatchPlan& plan_base, float* out_TD) {
  DispatchTimer timer(stats_, kCallCombine);
  ShmPlan& p = as_shm(plan_base, true);
  test_pause();
  p.window->fence();  // every expert has written its y rows
  test_pause();
  weighted_sum_rows(out_TD, p.y_slot.data(), p.probs_TK_.data(), p.T_, p.K_, p.D_);
  stats_.rows += p.rows_in;
  stats_.bytes_intra += p.rows_in * static_cast<int64_t>(sizeof(float)) * p.D_;
  stats_.messages_intra += p.peers_in;
}

void ShmDispatcher::combine_backward(DispatchPlan& plan_base, const float* dout_TD) {
  DispatchTimer timer(stats_, kCallCombineBackward);
  ShmPlan& p = as_shm(plan_base, true);
  float* dprobs_TK = p.pending_dprobs();
  const int K = p.K_, D = p.D_;
  const int64_t TK = static_cast<int64_t>(p.T_) * K;
  test_pause();
  for (int64_t s = 0; s < TK; ++s) {
    if (!p.y_slot[s]) {
      dprobs_TK[s] = 0.0f;
      continue;
    }
    const float* dout = dout_TD + (s / K) * D;
    dprobs_TK[s] = dot_row(dout, p.y_slot[s], D);
    scale_row(p.dy_slot[s], dout, p.probs_TK_[s], D);
  }
  test_pause();
  // Every dy row is in place, and every y load is done before any expert overwrites y with dx.
  p.window->fence();
  stats_.rows += p.rows_out;
  stats_.bytes_intra += p.rows_out * static_cast<int64_t>(sizeof(float)) * D;
  stats_.messages_intra += p.peers_out;
}

void ShmDispatcher::dispatch_backward(DispatchPlan& plan_base, float* dx_TD, float* dprobs_TK) {
  DispatchTimer timer(stats_, kCallDispatchBackward);
  ShmPlan& p = as_shm(plan_base, true);
  test_pause();
  p.window->fence();  // every expert has written its dx rows (into y's region)
  test_pause();
  add_slot_rows(dx_TD, p.y_slot.data(), p.T_, p.K_, p.D_);
  p.take_pending_dprobs(dprobs_TK);
  stats_.rows += p.rows_in;
  stats_.bytes_intra += p.rows_in * static_cast<int64_t>(sizeof(float)) * p.D_;
  stats_.messages_intra += p.peers_in;
}

}  // namespace moempi
