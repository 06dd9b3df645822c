#include "runtime/core/state_registry.h"

#include "runtime/core/error.h"

namespace moempi {

const char* name_of(StateDType t) { return t == StateDType::kF32 ? "f32" : "i64"; }
size_t size_of(StateDType t) { return t == StateDType::kF32 ? 4 : 8; }

int64_t StateTensor::global_numel() const {
  int64_t n = 1;
  for (int64_t d : global_shape) n *= d;
  return n;
}

void StateRegistry::add(StateTensor t) {
  MOEMPI_CHECK_ONE(find(t.name) == nullptr, "state '{}' registered twice", t.name);
  for (int64_t d : t.global_shape) MOEMPI_CHECK_ONE(d >= 0, "state '{}' has a negative dimension", t.name);
  MOEMPI_CHECK_ONE(t.begin >= 0 && t.count >= 0 && t.begin + t.count <= t.global_numel(),
                   "state '{}': slice [{}, {}) outside its {} elements", t.name, t.begin, t.begin + t.count,
                   t.global_numel());
  index_.emplace(t.name, tensors_.size());
  tensors_.push_back(std::move(t));
}

void StateRegistry::add_f32(std::string name, std::vector<int64_t> global_shape, std::span<float> local,
                            int64_t begin, bool writer) {
  add({.name = std::move(name), .dtype = StateDType::kF32, .global_shape = std::move(global_shape),
       .begin = begin, .count = static_cast<int64_t>(local.size()), .data = local.data(), .writer = writer});
}

void StateRegistry::add_i64(std::string name, std::vector<int64_t> global_shape, std::span<int64_t> local,
                            int64_t begin, bool writer) {
  add({.name = std::move(name), .dtype = StateDType::kI64, .global_shape = std::move(global_shape),
       .begin = begin, .count = static_cast<int64_t>(local.size()), .data = local.data(), .writer = writer});
}

void StateRegistry::allow_absent(const std::string& name) {
  const auto it = index_.find(name);
  MOEMPI_CHECK_ONE(it != index_.end(), "allow_absent: no state '{}' registered", name);
  tensors_[it->second].zero_if_absent = true;
}

const StateTensor* StateRegistry::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace moempi
