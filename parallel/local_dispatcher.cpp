#include "parallel/local_dispatcher.h"

#include <cstring>

#include "runtime/core/error.h"

namespace moempi {

LocalDispatcher::LocalDispatcher(ExpertPlacement placement) : Dispatcher(placement) {
  MOEMPI_CHECK_ALL(placement.ep_size == 1,
                   "moe.dispatch.type 'local' needs parallel.ep = 1 (got {}); use 'flat'",
                   placement.ep_size);
}

void LocalDispatcher::plan(const int32_t* topk_ids_TK, int T, int K) {
  T_ = T;
  K_ = K;
  const int E = placement_.num_experts;
  const int64_t slots = static_cast<int64_t>(T) * K;
  count_slots(topk_ids_TK, slots, rows_per_expert_, dropped_slots_);
  // Counting sort of slots by expert: stable, so within an expert rows follow slot order.
  std::vector<int64_t> next(E, 0);
  for (int e = 1; e < E; ++e) next[e] = next[e - 1] + rows_per_expert_[e - 1];
  const int64_t R = E ? next[E - 1] + rows_per_expert_[E - 1] : 0;
  slot_of_row_.resize(R);
  for (int64_t s = 0; s < slots; ++s) {
    const int e = topk_ids_TK[s];
    if (e >= 0) slot_of_row_[next[e]++] = s;
  }
}

void LocalDispatcher::to_experts(float* dst_RD, const float* src, bool per_slot, int D) {
  const int64_t R = rows();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t s = slot_of_row_[r];
    const int64_t src_row = per_slot ? s : s / K_;
    std::memcpy(dst_RD + r * D, src + src_row * D, sizeof(float) * D);
  }
}

void LocalDispatcher::from_experts(float* dst_TKD, const float* src_RD, int D) {
  for (int64_t s : dropped_slots_) std::memset(dst_TKD + s * D, 0, sizeof(float) * D);
  const int64_t R = rows();
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(dst_TKD + slot_of_row_[r] * D, src_RD + r * D, sizeof(float) * D);
}

}  // namespace moempi
