// Dispatcher test problems shared by the MPI suites: one rank's micro-batch as a pure function of
// (case, world rank, round), so that every rank can rebuild every other rank's inputs without
// communication; the "experts" are row-wise functions of (global expert id, row), so every
// dispatcher must reproduce `local`'s outputs bit for bit whatever its row grouping.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "comm/payload.h"
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

}  // namespace moempi::test_util
