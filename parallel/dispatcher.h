// Dispatcher: moves routed token rows to the ranks that hold their experts and back
// (DESIGN.md "The pluggable pieces"; ALGORITHMS.md 3). It isolates communication from the MoE
// layer: it only permutes and exchanges rows; weighting by router probs is the layer's job.
//
// One micro-batch on this rank has T tokens, each routed to K slots (t,k) with a global expert
// id in topk_ids_TK[t*K+k] (-1 = dropped slot, sent nowhere).
//   dispatch          = to_experts(x_TD, per_slot=false)
//   combine           = from_experts(y_RD) -> y_TKD
//   combine backward  = to_experts(dy_TKD, per_slot=true)
//   dispatch backward = from_experts(dx_RD) -> dx_TKD, then summed over k by the layer
// Every method marked "collective" is called by every rank of the EP group in the same order,
// with zero rows where a rank has nothing (DESIGN.md "Communication rules").
// Contract test: every implementation equals `local` (tests/dispatcher_mpitest.cpp, MPI at 1-4 ranks).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/placement.h"

namespace moempi {

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  virtual std::string name() const = 0;
  const ExpertPlacement& placement() const { return placement_; }
  // Wall time spent in plan/to_experts/from_experts so far (pack, exchange, unpack): the
  // "a2a" share of the step line. Implementations that communicate accumulate it.
  double exchange_seconds() const { return exchange_seconds_; }

  // Collective (count exchange). Builds the routing of this micro-batch.
  virtual void plan(const int32_t* topk_ids_TK, int T, int K) = 0;
  // Rows this rank's experts receive, in total and per local expert (valid after plan()).
  virtual int64_t rows() const = 0;
  virtual const std::vector<int64_t>& rows_per_local_expert() const = 0;

  // Collective. For every routed slot (t,k) sends row src[t] (per_slot=false; src is T×D) or
  // src[t*K+k] (per_slot=true; src is TK×D) to its expert's rank. dst_RD receives rows grouped
  // by local expert; within an expert by source EP rank, then by slot order (t*K+k) at the source.
  virtual void to_experts(float* dst_RD, const float* src, bool per_slot, int D) = 0;
  // Collective. The mirror: dst_TKD[t*K+k] = the row of src_RD for slot (t,k); dropped slots 0.
  virtual void from_experts(float* dst_TKD, const float* src_RD, int D) = 0;

 protected:
  explicit Dispatcher(ExpertPlacement placement) : placement_(placement) {}
  // Counts the routed slots per global expert into rows_per_expert_E (resized to E, zeroed)
  // and lists the dropped slots (id -1) in order; an id >= E is a local error.
  void count_slots(const int32_t* topk_ids_TK, int64_t slots, std::vector<int64_t>& rows_per_expert_E,
                   std::vector<int64_t>& dropped_slots) const;
  ExpertPlacement placement_;
  double exchange_seconds_ = 0;
};

}  // namespace moempi
