// `local`: the reference dispatcher. No communication; all experts are on this rank
// (placement.ep_size must be 1). Every other dispatcher is tested against it.
#pragma once
#include "parallel/dispatcher.h"

namespace moempi {

class LocalDispatcher final : public Dispatcher {
 public:
  explicit LocalDispatcher(ExpertPlacement placement);
  std::string name() const override { return "local"; }
  void plan(const int32_t* topk_ids_TK, int T, int K) override;
  int64_t rows() const override { return static_cast<int64_t>(slot_of_row_.size()); }
  const std::vector<int64_t>& rows_per_local_expert() const override { return rows_per_expert_; }
  void to_experts(float* dst_RD, const float* src, bool per_slot, int D) override;
  void from_experts(float* dst_TKD, const float* src_RD, int D) override;

 private:
  int T_ = 0, K_ = 0;
  std::vector<int64_t> rows_per_expert_;  // (E_local)
  std::vector<int64_t> slot_of_row_;      // (R) slot index t*K+k of each expert row
  std::vector<int64_t> dropped_slots_;    // slots with expert id -1 (zeroed by from_experts)
};

}  // namespace moempi
