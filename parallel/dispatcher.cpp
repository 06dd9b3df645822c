// The plan base and the combine arithmetic shared by every dispatcher (bit-identical results).
#include "parallel/dispatcher.h"

#include <atomic>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/timer.h"

namespace moempi {

Dispatcher::Dispatcher() {
  static std::atomic<uint64_t> next{1};
  id_ = next++;
}

const char* dispatch_call_name(DispatchCall c) {
  static const char* const names[kDispatchCalls] = {"plan", "dispatch", "combine", "combine_backward",
                                                     "dispatch_backward"};
  return names[c];
}

DispatchTimer::DispatchTimer(DispatchStats& stats, DispatchCall call)
    : stats_(stats), call_(call), start_(now_seconds()) {}
DispatchTimer::~DispatchTimer() {
  const double s = now_seconds() - start_;
  stats_.seconds += s;
  stats_.call_seconds[call_] += s;
}

void DispatchPlan::reset(const Routing& r, int D) {
  MOEMPI_CHECK_ONE(r.T >= 0 && r.K >= 1 && D >= 1, "dispatch plan: bad shape T={} K={} D={}", r.T, r.K, D);
  T_ = r.T;
  K_ = r.K;
  D_ = D;
  const size_t slots = static_cast<size_t>(r.T) * r.K;
  topk_ids_TK_.assign(r.topk_ids_TK, r.topk_ids_TK + slots);
  dprobs_TK_.clear();  // pending only between this plan's combine_backward and dispatch_backward
  if (r.probs_TK)
    probs_TK_.assign(r.probs_TK, r.probs_TK + slots);
  else
    probs_TK_.assign(slots, 1.0f);
}

void DispatchPlan::take_pending_dprobs(float* dprobs_TK) {
  const size_t slots = static_cast<size_t>(T_) * K_;
  MOEMPI_CHECK_ONE(dprobs_TK_.size() == slots, "dispatch plan: dispatch_backward without combine_backward ({} of {} dprobs)",
                   dprobs_TK_.size(), slots);
  if (slots) std::memcpy(dprobs_TK, dprobs_TK_.data(), sizeof(float) * slots);
  dprobs_TK_.clear();
}

void DispatchPlan::use_own_buffers() {
  const size_t n = static_cast<size_t>(rows_) * D_;
  // FloatBuffer::resize keeps the allocation when it shrinks: no per-step reallocation.
  own_x_.resize(n);
  own_y_.resize(n);
  own_dy_.resize(n);
  x_RD_ = own_x_.data();
  y_RD_ = own_y_.data();
  dy_RD_ = own_dy_.data();
}

void count_slots(const int32_t* topk_ids_TK, int64_t slots, int E, std::vector<int64_t>& rows_per_expert_E) {
  rows_per_expert_E.assign(E, 0);
  for (int64_t s = 0; s < slots; ++s) {
    const int e = topk_ids_TK[s];
    if (e < 0) continue;
    MOEMPI_CHECK_ONE(e < E, "expert id {} out of range [0, {})", e, E);
    ++rows_per_expert_E[e];
  }
}

void SlotRows::point(const float* own_RD, const float* back, int D) {
  rows_.resize(row_of_slot.size());
  for (size_t s = 0; s < row_of_slot.size(); ++s) {
    const int64_t v = row_of_slot[s];
    rows_[s] = v >= 0 ? own_RD + v * D : v == -1 ? nullptr : back + back_row(v) * D;
  }
}

void SlotRows::weighted_sum(float* out_TD, const float* own_RD, const float* back, const float* probs_TK, int T,
                            int K, int D) {
  point(own_RD, back, D);
  weighted_sum_rows(out_TD, rows_.data(), probs_TK, T, K, D);
}

void SlotRows::add(float* dx_TD, const float* own_RD, const float* back, int T, int K, int D) {
  point(own_RD, back, D);
  add_slot_rows(dx_TD, rows_.data(), T, K, D);
}

void weighted_sum_rows(float* out_TD, const float* const* slot_rows_TK, const float* probs_TK, int T,
                       int K, int D) {
  for (int t = 0; t < T; ++t) {
    float* o = out_TD + static_cast<size_t>(t) * D;
    bool first = true;
    for (int k = 0; k < K; ++k) {
      const size_t s = static_cast<size_t>(t) * K + k;
      const float* y = slot_rows_TK[s];
      if (!y) continue;
      const float p = probs_TK[s];
      if (first) {
        for (int d = 0; d < D; ++d) o[d] = p * y[d];
        first = false;
      } else {
        for (int d = 0; d < D; ++d) o[d] += p * y[d];
      }
    }
    if (first) std::memset(o, 0, sizeof(float) * D);
  }
}

void add_slot_rows(float* dx_TD, const float* const* slot_rows_TK, int T, int K, int D) {
  for (int t = 0; t < T; ++t) {
    float* dx = dx_TD + static_cast<size_t>(t) * D;
    for (int k = 0; k < K; ++k) {
      const float* r = slot_rows_TK[static_cast<size_t>(t) * K + k];
      if (!r) continue;
      for (int d = 0; d < D; ++d) dx[d] += r[d];
    }
  }
}

float dot_row(const float* a, const float* b, int n) {
  float acc[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

void scale_row(float* dy, const float* g, float p, int D) {
  for (int d = 0; d < D; ++d) dy[d] = p * g[d];
}

}  // namespace moempi
