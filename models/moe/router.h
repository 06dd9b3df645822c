// The MoE router (ALGORITHMS.md 1): logits_NE = x_ND · W_r, scores by softmax or sigmoid, top-k
// on the scores as shifted by the balancing passes, combine weights from the unbiased scores,
// optional capacity drops; it owns the balancing passes of its layer. With node-limited routing
// (moe.max_nodes_per_token M over moe.routing_nodes G contiguous expert groups, DeepSeek-V3) a
// token first keeps the M groups whose top ceil(k/M) selection scores sum highest (ties -> lower
// group), then takes top-k among their experts: its experts span at most M nodes.
// Guarantees: deterministic (ties -> lower expert id; drops by token index, then slot); the
// backward is the exact gradient with routing held fixed. Test: tests/moe_test.cpp (Router.*,
// MoeLayerGrad.*).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/moe/balancing_pass.h"
#include "models/moe/router_kernels.h"
#include "runtime/core/arena.h"
#include "runtime/core/config.h"

namespace moempi {

// The routing of one micro-batch: what the dispatcher and the combine need.
struct RoutingPlan {
  int N = 0, K = 0, E = 0;
  int64_t capacity = -1;                        // per expert per micro-batch; -1 = dropless
  std::vector<int32_t> selected_NK;             // (N, K) top-k choice, best first, before drops
  std::vector<int32_t> topk_ids_NK;             // (N, K) after capacity drops; -1 = dropped slot
  FloatBuffer probs_NK;                         // (N, K) combine weights (kept for dropped slots,
                                                //        which meet a zero row)
  std::vector<int64_t> selected_per_expert_E;   // (E) selections before drops (c_i of the passes)
  std::vector<int64_t> tokens_per_expert_E;     // (E) rows actually routed, after drops
  int64_t dropped_slots = 0;
};

// moe.force_routing (benchmarks): the top-k choice replaced by K distinct experts drawn per token
// without replacement, with weights: balanced 1 each; zipf:S 1/(e+1)^S (expert 0 hottest); hot:F
// expert 0 drawn first with probability F, the others equally; rotating = hot:0.5 with the hot
// expert (step mod E). The draws come from Rng(seed, layer, step, global token index), so they are
// the same on any rank layout. The combine weights stay the router's scores of the drawn experts
// (renormalised if moe.normalize_topk), so the router still gets the gradient of those weights;
// balancing passes see the drawn experts as the selection (their losses and gradients keep their
// form, but nothing the router learns changes the choice).
struct ForcedRouting {
  enum Kind { kNone, kBalanced, kZipf, kHot, kRotating } kind = kNone;
  double param = 0;  // S of zipf, F of hot
};
// Parses moe.force_routing into *out (may be nullptr); returns what is wrong, or "".
std::string parse_force_routing(const std::string& text, ForcedRouting* out);

// Why moe.max_nodes_per_token M cannot route over moe.routing_nodes G groups ("" = it can):
// G must divide E and exceed M (M >= G limits nothing), and M groups must hold k experts.
std::string node_limit_problem(const MoeSpec& moe);

class Router {
 public:
  // Builds the passes of moe.balancing (collective error naming the path on a bad spec).
  Router(const MoeSpec& moe, int D, const BalancingEnv& env = {});
  // With explicit passes (moe.balancing ignored): tests, or passes built elsewhere.
  Router(const MoeSpec& moe, int D, std::vector<std::unique_ptr<BalancingPass>> passes);

  // w_DE: (D, E) router weight. seq_len: tokens per sequence (for per-sequence passes).
  // Runs adjust_scores and forward of every pass; passes update step state only if training.
  void forward(const float* x_ND, const float* w_DE, int N, int seq_len, bool training);
  // dprobs_NK: dL/dprobs_NK of the combine. ADDS dL/dx into dx_ND (nullptr = not wanted) and
  // dL/dW_r into dw_DE, including loss_scale times the balancing losses' gradients.
  void backward(float* dx_ND, float* dw_DE, const float* dprobs_NK, const float* x_ND,
                const float* w_DE, float loss_scale);
  // Where the next forward's tokens are, for moe.force_routing draws: token t of the next forward
  // is global token first_token + t of `step` (0-based) in this layer.
  void set_position(uint64_t seed, int layer, int64_t step, int64_t first_token);
  // counts_E: this layer's step counts over all data ranks (RoutingStats), to every pass.
  void on_step_end(const int64_t* counts_E);
  void on_step_discarded();  // a skipped step: every pass drops what it accumulated

  const RoutingPlan& plan() const { return plan_; }
  RouterState state() const;
  double balancing_loss() const;                  // Σ over passes, last forward
  const std::vector<double>& balancing_losses() const { return losses_; }  // per pass
  const std::vector<std::unique_ptr<BalancingPass>>& passes() const { return passes_; }
  const float* logits_NE() const { return logits_NE_.data(); }
  const float* scores_NE() const { return scores_NE_.data(); }

 private:
  MoeSpec moe_;
  int D_;
  int seq_len_ = 0;
  std::vector<std::unique_ptr<BalancingPass>> passes_;
  std::vector<double> losses_;
  RoutingPlan plan_;
  FloatBuffer logits_NE_, scores_NE_, select_NE_;  // (N, E); select = scores + pass shifts
  FloatBuffer dscores_NE_, dlogits_NE_;            // (N, E) backward scratch
  RouterProducts products_;                        // x · W_r and its backward
  ForcedRouting forced_;
  uint64_t draw_seed_ = 0;
  int draw_layer_ = 0;
  int64_t draw_step_ = 0, draw_first_ = 0;
  std::vector<double> draw_w_E_;                   // (E) draw weights, forced routing
  std::vector<uint8_t> allowed_E_;                 // (E) node-limited routing: experts a token may pick
  std::vector<float> group_score_G_, group_top_;   // (G), (E/G) scratch of the group choice
};

}  // namespace moempi
