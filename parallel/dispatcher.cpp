#include "parallel/dispatcher.h"

#include "runtime/core/error.h"

namespace moempi {

void Dispatcher::count_slots(const int32_t* topk_ids_TK, int64_t slots,
                             std::vector<int64_t>& rows_per_expert_E,
                             std::vector<int64_t>& dropped_slots) const {
  const int E = placement_.num_experts;
  rows_per_expert_E.assign(E, 0);
  dropped_slots.clear();
  for (int64_t s = 0; s < slots; ++s) {
    const int e = topk_ids_TK[s];
    if (e < 0) {
      dropped_slots.push_back(s);
      continue;
    }
    MOEMPI_CHECK_ONE(e < E, "expert id {} out of range [0, {})", e, E);
    ++rows_per_expert_E[e];
  }
}

}  // namespace moempi
