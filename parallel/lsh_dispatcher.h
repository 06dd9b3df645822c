// `moe.dispatch.compression: {type: lsh, ...}`: LSH-compressed dispatch (ALGORITHMS.md 3.3,
// LSH-MoE arXiv:2411.08446) as a wrapper over ANY Dispatcher (flat, shm, hierarchical, ...). On the
// sender, the slots routed to each destination expert e are grouped into buckets by the tuple of
// their tokens' cross-polytope codes (parallel/lsh_hash.h); each bucket j becomes one row, its
// centroid c_j = mean of its tokens, routed to e with weight 1 through the inner dispatcher
// (T' virtual tokens, K' = 1). Residuals stay on the sender. Each slot s = (t, k) in bucket j gets
//   z_s = E(c_j) + (x_t - c_j)   (residual: true)    or    z_s = E(c_j)   (residual: false)
// and out_t = Σ_k p_tk z_s. A destination expert with fewer than min_tokens slots from this rank
// sends every slot as its own bucket (uncompressed). max_residual > 0 bounds a bucket's spread: a
// slot whose token is farther than max_residual·|c| from its bucket's centroid c goes alone (one
// pass: the centroid of the rest is not re-checked). Validation passes run exact (every bucket a
// singleton) unless compress_eval.
// Backward (derived in ALGORITHMS.md 3.3; ρ = 1 with residual, else 0), with buckets held fixed:
//   G_j = Σ_{s in j} p_s g_t          one vector per centroid out (dy of the expert row)
//   H_j = J_E(c_j)ᵀ G_j               one vector per centroid back (the inner dispatch_backward)
//   dx_t += Σ_k [ ρ p_s g_t + (H_j - ρ G_j) / N_j ]   (k ascending; a singleton adds H_j exactly)
//   dprobs_s = <g_t, z_s>             from rows this rank holds (E(c_j) came back in combine)
// Guarantees: when every bucket is a singleton the outputs, dprobs, expert rows, dy and dx are
// bit-identical to the inner dispatcher alone; bucket assignment is a function of (x, seed, epoch,
// max_residual, evaluating) only. Tests: tests/lsh_mpitest.cpp (MPI at 1-4 ranks, over flat and shm).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "parallel/dispatcher.h"
#include "parallel/lsh_hash.h"
#include "runtime/core/config.h"

namespace moempi {

class LshDispatcher final : public Dispatcher {
 public:
  // Wraps `inner` (owned). `spec` is moe.dispatch.compression with type lsh.
  LshDispatcher(std::unique_ptr<Dispatcher> inner, const CompressionSpec& spec);
  std::string name() const override { return "lsh(" + inner_->name() + ")"; }
  std::unique_ptr<DispatchPlan> new_plan() const override;

  // Each is collective exactly as the inner dispatcher's same method (and nothing more): plan()
  // hashes, buckets and averages locally, then plans the inner dispatcher on the centroids.
  void plan(DispatchPlan& plan, const Routing& routing, const float* x_TD, int D,
            const Placement& placement) override;
  void dispatch(DispatchPlan& plan, const float* x_TD) override;
  void combine(DispatchPlan& plan, float* out_TD) override;
  void combine_backward(DispatchPlan& plan, const float* dout_TD) override;
  void dispatch_backward(DispatchPlan& plan, float* dx_TD, float* dprobs_TK) override;
  // Sets the hash epoch to step / rotation_interval (0 when the interval is 0); forwards to inner.
  void begin_step(int64_t step) override;
  // true: plan() makes every slot its own bucket (exact) unless compress_eval; forwarded to inner.
  void set_evaluating(bool evaluating) override;

  const Dispatcher& inner() const { return *inner_; }
  // The hash of the current epoch (its projections are drawn at the first plan() of a width).
  const CrossPolytopeHash* hash() const { return hash_.get(); }

  struct Plan;  // defined in the .cpp
  // Tests: bucket of every slot (T*K, -1 dropped) and size of every bucket of the last plan().
  static const std::vector<int32_t>& bucket_of_slot(const DispatchPlan& plan);
  static const std::vector<int32_t>& bucket_sizes(const DispatchPlan& plan);

 private:
  void sync_stats(double seconds);
  int64_t keep_near(Plan& p, const float* x_TD, int64_t i, int64_t j, int D) const;
  std::unique_ptr<Dispatcher> inner_;
  CompressionSpec spec_;
  std::unique_ptr<CrossPolytopeHash> hash_;
  int64_t epoch_ = 0;
  bool exact_ = false;  // evaluating without compress_eval
  double own_seconds_ = 0;
};

}  // namespace moempi
