// Dispatcher test problems shared by the MPI suites: one rank's micro-batch as a pure function of
// (case, world rank, round), so that every rank can rebuild every other rank's inputs without
// communication; the "experts" are row-wise functions of (global expert id, row), so every
// dispatcher must reproduce `local`'s outputs bit for bit whatever its row grouping; and the
// harness that runs one layer's forward and backward halves and checks them against `local`.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <cstring>
#include <memory>

#include "comm/payload.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/rng.h"

namespace moempi::test_util {

// balanced | zero_rank | hot_expert | dropped | all_dropped | empty
struct DispatchProblem {
  int T = 0, K = 1, D = 1;
  std::vector<int32_t> topk;  // (T*K)
  std::vector<float> probs;   // (T*K)
  std::vector<float> x;       // (T, D)
  std::vector<float> dout;    // (T, D)
};

inline DispatchProblem make_dispatch_problem(const std::string& pattern, int E, int K, int D,
                                             int world_rank, int world_size, int round) {
  DispatchProblem p;
  p.K = K;
  p.D = D;
  const int zero_rank = std::min(1, world_size - 1);
  p.T = 29 + 7 * world_rank + 5 * round;
  if (pattern == "empty" || (pattern == "zero_rank" && world_rank == zero_rank)) p.T = 0;
  Rng rng(1000 + round, world_rank, 0, Rng::stream_of(pattern));
  const int hot = E / 2 + 1 < E ? E / 2 + 1 : 0;
  p.topk.resize(static_cast<size_t>(p.T) * K);
  for (int t = 0; t < p.T; ++t) {
    int32_t* ids = &p.topk[static_cast<size_t>(t) * K];
    for (int k = 0; k < K; ++k) {
      int e;
      do {
        e = (k == 0 && pattern == "hot_expert" && rng.uniform() < 0.8f) ? hot
                                                                       : static_cast<int>(rng.below(E));
      } while (std::find(ids, ids + k, e) != ids + k);
      ids[k] = e;
    }
  }
  for (int32_t& e : p.topk) {
    if (pattern == "all_dropped") e = -1;
    if (pattern == "dropped" && rng.uniform() < 0.3f) e = -1;
  }
  p.probs.resize(p.topk.size());
  for (float& v : p.probs) v = 0.05f + 0.9f * rng.uniform();
  p.x.resize(static_cast<size_t>(p.T) * D);
  p.dout.resize(static_cast<size_t>(p.T) * D);
  payload_fill(p.x.data(), p.x.size(), 100 + round, world_rank, 0);
  payload_fill(p.dout.data(), p.dout.size(), 200 + round, world_rank, 1);
  return p;
}

// The test "experts", row-wise: forward y = tanh(x)·(1 + e/8), backward dx = dy·(1 − tanh²(x))·(1 + e/8).
inline void expert_rows_forward(float* y, const float* x, int64_t rows, int D, int e) {
  const float s = 1.0f + e / 8.0f;
  for (int64_t i = 0; i < rows * D; ++i) y[i] = std::tanh(x[i]) * s;
}
inline void expert_rows_backward(float* dx, const float* dy, const float* x, int64_t rows, int D, int e) {
  const float s = 1.0f + e / 8.0f;
  for (int64_t i = 0; i < rows * D; ++i) {
    const float t = std::tanh(x[i]);
    dx[i] = dy[i] * (1.0f - t * t) * s;
  }
}

// What one rank observes of one layer: expert-side rows and token-side results.
struct Result {
  std::vector<int> local_experts;
  std::vector<int64_t> rows_per_local_expert;
  std::vector<float> x_RD, dy_RD;      // (R, D), as the plan holds them after the backward half
  std::vector<float> out, dprobs, dx;  // (T, D), (T*K), (T, D); dx starts at x
};

inline void run_experts_forward(DispatchPlan& plan) {
  int64_t at = 0;
  const int D = plan.width();
  for (size_t le = 0; le < plan.local_experts().size(); ++le) {
    const int64_t n = plan.rows_per_local_expert()[le];
    test_util::expert_rows_forward(plan.y_RD() + at * D, plan.x_RD() + at * D, n, D, plan.local_experts()[le]);
    at += n;
  }
}

inline void run_experts_backward(DispatchPlan& plan) {
  int64_t at = 0;
  const int D = plan.width();
  for (size_t le = 0; le < plan.local_experts().size(); ++le) {
    const int64_t n = plan.rows_per_local_expert()[le];
    test_util::expert_rows_backward(plan.dx_RD() + at * D, plan.dy_RD() + at * D, plan.x_RD() + at * D, n, D,
                                    plan.local_experts()[le]);
    at += n;
  }
}

// The forward half and the backward half of one layer, as the MoE layer runs them (other layers'
// halves may run in between).
inline void run_forward(Dispatcher& d, DispatchPlan& plan, const DispatchProblem& p, const Placement& placement,
                 Result& r) {
  d.plan(plan, Routing{p.topk.data(), p.probs.data(), p.T, p.K}, p.x.data(), p.D, placement);
  d.dispatch(plan, p.x.data());
  run_experts_forward(plan);
  r.out.assign(static_cast<size_t>(p.T) * p.D, -7.0f);
  d.combine(plan, r.out.data());
}

inline void run_backward(Dispatcher& d, DispatchPlan& plan, const DispatchProblem& p, Result& r) {
  r.dprobs.assign(p.topk.size(), -7.0f);
  d.combine_backward(plan, p.dout.data());
  run_experts_backward(plan);
  r.dx = p.x;
  d.dispatch_backward(plan, r.dx.data(), r.dprobs.data());
  r.local_experts = plan.local_experts();
  r.rows_per_local_expert = plan.rows_per_local_expert();
  const size_t n = static_cast<size_t>(plan.rows()) * p.D;
  r.x_RD.assign(plan.x_RD(), plan.x_RD() + n);
  r.dy_RD.assign(plan.dy_RD(), plan.dy_RD() + n);
}

// The reference: `local` (every expert on this rank, no communication) on one rank's problem.
inline Result local_reference(const DispatchProblem& p, int num_experts) {
  LocalDispatcher local;
  auto plan = local.new_plan();
  Result r;
  run_forward(local, *plan, p, Placement::contiguous(num_experts, 1, 0), r);
  run_backward(local, *plan, p, r);
  return r;
}

// Expected expert-side rows on ep rank m: by local expert (ascending id), then source ep rank, then
// slot; x rows (x_t) or dy rows (p_tk · dout_t, the product scale_row computes).
inline std::vector<float> expected_rows(const std::vector<DispatchProblem>& group, const Placement& pl, int m, bool dy,
                                 std::vector<int64_t>* rows_per_local_expert) {
  std::vector<float> out;
  rows_per_local_expert->clear();
  for (int e : pl.experts_on(m)) {
    int64_t n = 0;
    for (int q = 0; q < static_cast<int>(group.size()); ++q) {
      const DispatchProblem& p = group[q];
      if (pl.destination(e, q) != m) continue;
      for (size_t s = 0; s < p.topk.size(); ++s) {
        if (p.topk[s] != e) continue;
        const float* src = (dy ? p.dout.data() : p.x.data()) + (s / p.K) * p.D;
        for (int d = 0; d < p.D; ++d) out.push_back(dy ? p.probs[s] * src[d] : src[d]);
        ++n;
      }
    }
    rows_per_local_expert->push_back(n);
  }
  return out;
}

// Elements where a and b differ bitwise (a size mismatch counts as every element wrong); with
// rel_tol > 0, elements that differ by more than rel_tol * (1 + max |b|) instead.
inline int64_t differing(const std::vector<float>& a, const std::vector<float>& b, float rel_tol = 0.0f) {
  if (a.size() != b.size()) return static_cast<int64_t>(std::max(a.size(), b.size())) + 1;
  int64_t n = 0;
  if (rel_tol > 0.0f) {
    float scale = 0.0f;
    for (float v : b) scale = std::max(scale, std::fabs(v));
    const float tol = rel_tol * (1.0f + scale);
    for (size_t i = 0; i < a.size(); ++i) n += !(std::fabs(a[i] - b[i]) <= tol);
    return n;
  }
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

// #wrong of ep rank m's result (all of out, dprobs, dx, x_RD, dy_RD and the row layout) against
// `local` on its own problem and the rows its group sends it; `what` says where. sum_tol > 0:
// out and dx (sums whose order a dispatcher may change, e.g. hierarchical dedup) within sum_tol
// of their scale (differing()); everything else still bit for bit.
inline int64_t check_against_local(const Result& got, const std::vector<DispatchProblem>& group, const Placement& placement,
                            std::string* what, float sum_tol = 0.0f) {
  const int m = placement.rank();
  const Result want = local_reference(group[m], placement.num_experts());
  std::vector<int64_t> want_rows;
  const std::vector<float> want_x = expected_rows(group, placement, m, false, &want_rows);
  const std::vector<float> want_dy = expected_rows(group, placement, m, true, &want_rows);
  const int64_t wrong[6] = {
      differing(got.out, want.out, sum_tol), differing(got.dprobs, want.dprobs), differing(got.dx, want.dx, sum_tol),
      differing(got.x_RD, want_x),  differing(got.dy_RD, want_dy),
      got.rows_per_local_expert == want_rows && got.local_experts == placement.local_experts() ? 0 : 1};
  *what = fmt::format("#wrong out {} dprobs {} dx {} x_RD {} dy_RD {} layout {}", wrong[0], wrong[1], wrong[2],
                      wrong[3], wrong[4], wrong[5]);
  int64_t total = 0;
  for (int64_t w : wrong) total += w;
  return total;
}

}  // namespace moempi::test_util
