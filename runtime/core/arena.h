// Flat arenas with named views (STYLE.md habit 2, after llm.c): every parameter tensor is a view
// into one contiguous allocation, and its gradient sits at the same offset of a second one, so
// sharding, gradient sync, checkpoints and the optimizer work on contiguous spans.
// Layout: all kDense tensors first, then all kExpert tensors (in registration order within each),
// so dense_span() and expert_span() are each one contiguous range.
// Tests: tests/core_test.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/core/state_registry.h"

namespace moempi {

enum class ParamKind { kDense, kExpert };

// Names what the current thread is allocating, for the message of an allocation failure ("out of
// memory allocating 12.0 GiB for the optimizer state"): a scope; nested scopes restore the outer.
class AllocationLabel {
 public:
  explicit AllocationLabel(const char* what);  // a string literal (or outliving the scope)
  ~AllocationLabel();
  AllocationLabel(const AllocationLabel&) = delete;
  AllocationLabel& operator=(const AllocationLabel&) = delete;
  static const char* current();  // "" outside any scope

 private:
  const char* prev_;
};

struct ParamInfo {
  std::string name;            // global name, e.g. "layers.1.moe.experts.5.w1"
  std::vector<int64_t> shape;  // global shape of this tensor
  ParamKind kind = ParamKind::kDense;
  bool decay = true;           // AdamW weight decay applies (false for norms, biases)
  size_t offset = 0;           // into the arena (valid after allocate())
  size_t numel = 0;
};

class ParamArena {
 public:
  using Id = size_t;
  // Registers a tensor; call before allocate(). Names must be unique.
  Id add(std::string name, std::vector<int64_t> shape, ParamKind kind, bool decay);
  // Lays out dense then expert tensors and allocates zeroed params and grads (64-byte aligned).
  void allocate();
  bool allocated() const { return allocated_; }

  float* param(Id id) { return params_.data() + infos_[id].offset; }
  float* grad(Id id) { return grads_.data() + infos_[id].offset; }
  const float* param(Id id) const { return params_.data() + infos_[id].offset; }
  const ParamInfo& info(Id id) const { return infos_[id]; }
  const std::vector<ParamInfo>& infos() const { return infos_; }
  // The tensor of that name, or nullopt when this rank holds none (with expert parallelism a
  // name may exist on some ranks only, so a miss is not an error here).
  std::optional<Id> find(const std::string& name) const;
  // Gives tensor `id` a new name (FSSDP re-sharding: a slot of the arena now holds another expert,
  // of the same shape); the new name must be free. Bumps names_version().
  void rename(Id id, std::string name);
  // Changes with every rename: state views registered by name are stale once it changes.
  uint64_t names_version() const { return names_version_; }
  // Registers every tensor as "param/<name>" (dense: writer when writers.dense; experts: when
  // writers.experts) for checkpoints.
  void register_state(StateRegistry& registry, const StateWriters& writers);

  std::span<float> params() { return {params_.data(), total_}; }
  std::span<float> grads() { return {grads_.data(), total_}; }
  std::span<float> dense_params() { return {params_.data(), dense_numel_}; }
  std::span<float> dense_grads() { return {grads_.data(), dense_numel_}; }
  std::span<float> expert_params() { return {params_.data() + dense_numel_, total_ - dense_numel_}; }
  std::span<float> expert_grads() { return {grads_.data() + dense_numel_, total_ - dense_numel_}; }
  size_t numel() const { return total_; }
  size_t dense_numel() const { return dense_numel_; }
  void zero_grads();

 private:
  struct AlignedFree { void operator()(float* p) const; };
  struct Buffer {
    std::unique_ptr<float, AlignedFree> ptr;
    float* data() const { return ptr.get(); }
  };
  std::vector<ParamInfo> infos_;
  std::unordered_map<std::string, Id> index_;  // name -> id: add() and find() in O(1)
  Buffer params_, grads_;
  size_t total_ = 0, dense_numel_ = 0;
  bool allocated_ = false;
  uint64_t names_version_ = 0;
};

// A zero-initialised, 64-byte aligned float buffer (activations, scratch, optimizer moments).
class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(size_t n) { resize(n); }
  // Beyond the capacity: a new, zeroed allocation (the contents are not kept). Within it: the
  // contents are kept and not zeroed.
  void resize(size_t n);
  void zero();
  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  size_t size() const { return size_; }
  float& operator[](size_t i) { return data_.data()[i]; }
  float operator[](size_t i) const { return data_.data()[i]; }
  std::span<float> span() { return {data(), size_}; }

 private:
  struct AlignedFree { void operator()(float* p) const; };
  struct Holder {
    std::unique_ptr<float, AlignedFree> ptr;
    float* data() const { return ptr.get(); }
  } data_;
  size_t size_ = 0, capacity_ = 0;
};

}  // namespace moempi
