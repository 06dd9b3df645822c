// The routed experts held by this rank: FFN_e(x) = act(x · w1_e) · w2_e, run as one GEMM pair per
// local expert over its contiguous block of dispatched rows (never every expert on every token).
// Guarantees: params under GLOBAL names "layers.{l}.moe.experts.{global_id}.w1/.w2" (kExpert),
// init independent of the rank that holds them. Test: tests/moe_test.cpp (GroupedExperts.*,
// MoeLayerGrad.*); bench: `moempi bench experts`.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "parallel/placement.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"

namespace moempi {

// One FFN over N rows. F1 = F for gelu, 2F for swiglu (w1 columns [gate | up]).
//   pre_NF1 = x_ND · w1_DF1, act_NF = act(pre_NF1), y_ND (+)= act_NF · w2_FD.
void expert_ffn_forward(float* y_ND, float* pre_NF1, float* act_NF, const float* x_ND,
                        const float* w1_DF1, const float* w2_FD, int N, int D, int F,
                        Activation act, bool accumulate_y);
// ADDS into dw1_DF1 and dw2_FD; dx_ND is added to if accumulate_dx, else overwritten (nullptr =
// not wanted). dact_NF and dpre_NF1 are scratch.
void expert_ffn_backward(float* dx_ND, float* dw1_DF1, float* dw2_FD, float* dact_NF,
                         float* dpre_NF1, const float* dy_ND, const float* x_ND,
                         const float* pre_NF1, const float* act_NF, const float* w1_DF1,
                         const float* w2_FD, int N, int D, int F, Activation act,
                         bool accumulate_dx);

// Fills one arena tensor with N(0, std²) drawn from Rng(seed, 0, 0, stream_of(its global name)),
// so its values depend on the name only (not on the rank or the registration order).
void init_param_normal(ParamArena& arena, ParamArena::Id id, uint64_t seed, float std);

class GroupedExperts {
 public:
  // Registers w1 (D, F1) and w2 (F, D) of each expert in placement.local_experts() (ascending global
  // id, the dispatcher's row-group order) as kExpert, decay on.
  GroupedExperts(const ModelSpec& model, const MoeSpec& moe, int layer,
                 const Placement& placement, ParamArena& arena);
  // w1 ~ N(0, init_std²), w2 ~ N(0, (init_std · w2_scale)²).
  void init_params(ParamArena& arena, uint64_t seed, float init_std, float w2_scale);

  // The experts this rank runs from now on (ascending global ids, a step placement's
  // local_experts()): the ones it owns (arena) plus replicas, whose parameters and gradients live
  // here, outside the arena (FSSDP; they hold parameters only, never optimizer state). New
  // replicas hold no buffers yet (set_replica_buffers); replicas no longer listed are freed.
  // Local error if an owned expert is missing.
  void set_local_experts(const std::vector<int>& local_experts);
  // Every replica's parameter buffers (params) and gradient buffers (grads): true allocates what
  // is missing (parameters to be filled by the caller, gradients zeroed) and keeps what is there;
  // false frees them (FSSDP re-materialisation frees parameters between forward and backward).
  void set_replica_buffers(bool params, bool grads);
  // FSSDP re-sharding: the experts this rank owns from now on (ascending global ids, as many as
  // it owns now). An expert it keeps keeps its arena slot; each new one takes a slot freed by an
  // expert that left (in ascending order), and those slots are renamed to the new experts' global
  // names. The slots' contents are the caller's to fill (params and optimizer state move with the
  // owner). Replicas are dropped; the local experts become the owned ones.
  void set_owned_experts(ParamArena& arena, const std::vector<int>& owned);
  const std::vector<int>& local_experts() const { return step_experts_; }
  // Expert e's part (0 = w1 (D, F1), 1 = w2 (F, D)) on this rank, owned or replica.
  float* param(ParamArena& arena, int e, int part);
  float* grad(ParamArena& arena, int e, int part);
  int64_t part_numel(int part) const { return part == 0 ? (int64_t)D_ * F1_ : (int64_t)F_ * D_; }
  int64_t replica_floats() const;  // replica parameter + gradient floats allocated now

  // x_RD: rows grouped by local expert, rows_per_local_expert (E_local) counts per block.
  // Writes y_RD; keeps the hidden activations for backward.
  void forward(ParamArena& arena, float* y_RD, const float* x_RD,
               const std::vector<int64_t>& rows_per_local_expert);
  // Mirrors the last forward (same x_RD). WRITES dx_RD (a dispatcher row buffer); ADDS into the
  // experts' grads in the arena.
  void backward(ParamArena& arena, float* dx_RD, const float* dy_RD, const float* x_RD);

  int num_local() const { return (int)w1_.size(); }
  int64_t rows() const { return rows_total_; }
  ParamArena::Id w1_id(int local) const { return w1_[local]; }
  ParamArena::Id w2_id(int local) const { return w2_[local]; }

 private:
  int layer_, D_, F_, F1_;
  Activation act_;
  std::vector<ParamArena::Id> w1_, w2_;   // per owned expert (construction placement order)
  std::map<int, int> owned_;              // global id -> index into w1_/w2_
  struct Replica {
    FloatBuffer w1, w2, dw1, dw2;
  };
  std::map<int, Replica> replicas_;       // global id -> a copy this rank runs this step
  std::vector<int> step_experts_;         // the local experts of forward/backward, ascending
  std::vector<int64_t> rows_;             // (E_local) rows per block, last forward
  int64_t rows_total_ = 0, rows_max_ = 0;
  FloatBuffer pre_RF1_, act_RF_;          // kept for backward
  FloatBuffer dact_F_, dpre_F1_;          // scratch for one block (max block rows)
};

}  // namespace moempi
