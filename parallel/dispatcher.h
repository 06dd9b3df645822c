// Dispatcher, contract v2 (DESIGN.md "The pluggable pieces"; ALGORITHMS.md 3): moves routed token
// rows to the ranks that run their experts, and owns the weighted combine and its backward, in the
// spirit of DeepEP's and Megatron-Core's dispatchers. The MoE layer only routes and runs experts.
//
// One micro-batch on this rank has T tokens, each routed to K slots (t,k) with a global expert id
// topk_ids_TK[t*K+k] (-1 = dropped slot, sent nowhere, weight 0) and a combine weight probs_TK.
// Per-micro-batch state lives in a DispatchPlan (one per MoE layer), never in the dispatcher, so
// one dispatcher serves every layer. The plan owns the expert-side row buffers (R rows of D
// floats, grouped by local expert in Placement::local_experts() order; within an expert by source
// rank, then by slot order t*K+k at the source), so a transport can place them in memory its
// peers write to directly (shm).
//
//   plan(P, routing, x_TD, placement)   collective: count exchange (hierarchical also moves the x
//                                       rows here); P.rows() valid afterwards
//   dispatch(P, x_TD)                   collective: P.x_RD() = x rows of every routed slot (x_TD is
//                                       plan's x_TD, unchanged)
//   ... experts: read P.x_RD(), write P.y_RD() ...
//   combine(P, out_TD)                  collective: out_t = Σ_k p_tk · y_tk (k ascending; dropped
//                                       slots contribute nothing), overwrites out_TD
//   combine_backward(P, dout_TD)        collective: P.dy_RD() = p_tk · dout_t per row; the
//                                       dprobs_tk = <dout_t, y_tk> are computed wherever y_tk is
//                                       held and stay pending in the plan
//   ... experts backward: read P.dy_RD(), P.x_RD(), write P.dx_RD() (it reuses y's storage) ...
//   dispatch_backward(P, dx_TD, dprobs_TK)  collective: ADDS Σ_k dx_tk into dx_TD (k ascending)
//                                       and writes the pending dprobs_TK (0 for dropped slots)
//
// dprobs are handed out by dispatch_backward, not combine_backward, because only the router
// backward reads them and it runs after dispatch_backward: a transport that computes dprobs away
// from the token's rank (hierarchical with dedup: on the node holding y_tk) returns them with the
// dx rows of dispatch_backward instead of in an exchange of their own.
//
// Buffer ownership: x_RD and dy_RD belong to the dispatcher from plan() until dispatch() /
// combine_backward() return (a shared-memory transport lets peers write them in that window), so
// callers only read them; y_RD and dx_RD belong to the experts between dispatch() and combine() /
// between combine_backward() and dispatch_backward().
// Every method marked collective is called by every rank of the dispatcher's group in the same
// order, with zero rows where a rank has nothing (DESIGN.md "Communication rules").
// Contract test: every registered dispatcher equals `local` (tests/dispatcher_mpitest.cpp, MPI at
// 1-4 ranks, also on 2x2 virtual nodes); finite differences through the whole chain in
// tests/moe_test.cpp.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/placement.h"
#include "runtime/core/arena.h"

namespace moempi {

// What one micro-batch routes: (T, K) ids and combine weights, read by plan() (copied).
struct Routing {
  const int32_t* topk_ids_TK = nullptr;
  const float* probs_TK = nullptr;
  int T = 0, K = 1;
};

// The collective calls of the contract, for the time spent in each (DispatchStats::call_seconds).
enum DispatchCall { kCallPlan, kCallDispatch, kCallCombine, kCallCombineBackward, kCallDispatchBackward, kDispatchCalls };
const char* dispatch_call_name(DispatchCall c);  // "plan", "dispatch", ...

// Accumulated traffic of a dispatcher (all layers, all calls). Rows and bytes count what this rank
// sends to other ranks (its own rows are copies, not traffic); messages count non-empty sends.
struct DispatchStats {
  double seconds = 0;       // wall time in plan/dispatch/combine and their backward
  // The same by call (DispatchCall order); wrappers (lsh, the link model) report their inner
  // transport's, so these sum to `seconds` only for the transports themselves.
  std::array<double, kDispatchCalls> call_seconds{};
  int64_t rows = 0;         // rows sent to other ranks
  int64_t bytes_intra = 0, bytes_inter = 0;        // to ranks on this node / on other nodes
  int64_t messages_intra = 0, messages_inter = 0;
  // Compressing dispatchers (lsh): routed slots of this rank, and the rows it handed to the
  // exchange for them (centroids); both stay 0 without compression. Ratio = exchange / slot rows.
  int64_t slot_rows = 0, exchange_rows = 0;
};

// Per-micro-batch state of one layer. Implementations derive from it; the base holds what every
// dispatcher needs and the expert-side buffers (a subclass may point them elsewhere).
class DispatchPlan {
 public:
  virtual ~DispatchPlan() = default;
  int64_t rows() const { return rows_; }  // R: expert rows on this rank
  int width() const { return D_; }
  // (number of local experts) rows per local expert, in Placement::local_experts() order.
  const std::vector<int64_t>& rows_per_local_expert() const { return rows_per_local_expert_; }
  const std::vector<int>& local_experts() const { return local_experts_; }
  // (R, D) expert-side rows; valid until the next plan() of this plan object.
  float* x_RD() { return x_RD_; }
  float* y_RD() { return y_RD_; }
  float* dy_RD() { return dy_RD_; }
  float* dx_RD() { return y_RD_; }  // y is dead once combine_backward has run
  int T() const { return T_; }
  int K() const { return K_; }
  const std::vector<int32_t>& topk_ids() const { return topk_ids_TK_; }
  const std::vector<float>& probs() const { return probs_TK_; }
  // (T*K) dprobs held between combine_backward and dispatch_backward (dispatchers that compute
  // them on this rank in combine_backward store them here); taking them empties the plan's copy,
  // so a second dispatch_backward without a combine_backward is an error, not stale values.
  float* pending_dprobs() {
    dprobs_TK_.resize(static_cast<size_t>(T_) * K_);
    return dprobs_TK_.data();
  }
  void take_pending_dprobs(float* dprobs_TK);

 protected:
  friend class Dispatcher;
  // Records routing and shape; sizes the default (private) expert buffers when `own_buffers`.
  void reset(const Routing& r, int D);
  void use_own_buffers();  // after rows_ is known
  int T_ = 0, K_ = 1, D_ = 0;
  int64_t rows_ = 0;
  std::vector<int32_t> topk_ids_TK_;
  std::vector<float> probs_TK_;
  std::vector<float> dprobs_TK_;
  std::vector<int64_t> rows_per_local_expert_;
  std::vector<int> local_experts_;
  float* x_RD_ = nullptr;
  float* y_RD_ = nullptr;
  float* dy_RD_ = nullptr;
  FloatBuffer own_x_, own_y_, own_dy_;
};

// Adds the wall time of its scope to stats.seconds and stats.call_seconds[call].
class DispatchTimer {
 public:
  DispatchTimer(DispatchStats& stats, DispatchCall call);
  ~DispatchTimer();

 private:
  DispatchStats& stats_;
  DispatchCall call_;
  double start_;
};

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual std::string name() const = 0;
  // A fresh plan object of this dispatcher's kind (one per MoE layer; reused every micro-batch).
  virtual std::unique_ptr<DispatchPlan> new_plan() const = 0;

  // Collective: the count exchange. `x_TD` is the input that dispatch() will send (T, D), the same
  // buffer with the same contents: flat transports do not read it, compressing ones plan on it, and
  // hierarchical sends it already with each hop's counts (dispatch() then only reorders). The placement must match the
  // dispatcher's group (size and rank) and stay alive until dispatch_backward.
  virtual void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
                    const Placement& placement) = 0;
  virtual void dispatch(DispatchPlan& plan, const float* x_TD) = 0;
  virtual void combine(DispatchPlan& plan, float* out_TD) = 0;
  virtual void combine_backward(DispatchPlan& plan, const float* dout_TD) = 0;
  virtual void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) = 0;

  // Called by the trainer before the first plan() of every optimizer step (0-based; validation
  // passes run under the step just done). Dispatchers that depend on the step (lsh: its hash
  // projections rotate every rotation_interval steps) read it; wrappers forward it. Not collective.
  virtual void begin_step(int64_t step) { (void)step; }
  // Called by the trainer around validation passes (true before, false after). Approximating
  // dispatchers (lsh unless compress_eval) run exact while it is set; wrappers forward it. Not
  // collective (every rank calls it at the same point anyway).
  virtual void set_evaluating(bool evaluating) { (void)evaluating; }

  const DispatchStats& stats() const { return stats_; }
  // Unique per dispatcher object in this process (never reused), so a plan's owner can be told
  // apart from a new dispatcher that happens to live at the same address.
  uint64_t id() const { return id_; }

 protected:
  Dispatcher();
  DispatchStats stats_;

 private:
  uint64_t id_;
};

// Where each slot's expert row is, for dispatchers that hold rows in two buffers: this rank's
// expert rows (own_RD) and rows that came back from other ranks (back). row_of_slot[s] >= 0 is row
// v of own_RD, -1 a dropped slot, <= -2 row back_row(v) of back. weighted_sum / add run the shared
// combine arithmetic below over those rows.
struct SlotRows {
  std::vector<int64_t> row_of_slot;  // (T*K)
  static int64_t encode_back(int64_t row) { return -row - 2; }
  static int64_t back_row(int64_t v) { return -(v + 2); }
  void weighted_sum(float* out_TD, const float* own_RD, const float* back, const float* probs_TK, int T, int K,
                    int D);
  void add(float* dx_TD, const float* own_RD, const float* back, int T, int K, int D);

 private:
  void point(const float* own_RD, const float* back, int D);
  std::vector<const float*> rows_;  // (T*K) scratch
};

// Counts routed slots per global expert into rows_per_expert_E (resized to E, zeroed); an id
// outside [-1, E) is a local error. Not communicating.
void count_slots(const int32_t* topk_ids_TK, int64_t slots, int E, std::vector<int64_t>& rows_per_expert_E);

// The combine arithmetic every dispatcher shares, so that they agree bit for bit. slot_rows_TK[s]
// points at the y (or dx) row of slot s, nullptr for a dropped slot.
//   out_t = Σ_k p_tk · y_tk, k ascending (overwrites; a token with no routed slot gets 0)
void weighted_sum_rows(float* out_TD, const float* const* slot_rows_TK, const float* probs_TK, int T,
                       int K, int D);
//   dx_t += dx_tk, k ascending
void add_slot_rows(float* dx_TD, const float* const* slot_rows_TK, int T, int K, int D);
//   dprobs_tk = <dout_t, y_tk> (0 for dropped), 16 partial sums (vectorises without fast-math)
float dot_row(const float* a, const float* b, int D);
// dy = p · g over D floats.
void scale_row(float* dy, const float* g, float p, int D);

}  // namespace moempi
