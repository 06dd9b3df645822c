// StateRegistry (DESIGN.md "Checkpoints"): every piece of training state registers here under a
// global name, with its global shape and this rank's slice of it (a range of the flattened
// global tensor), as a view into the state's owner. Checkpoint code (runtime/checkpoint/) saves
// and restores through the registry and never knows the types: parameters (runtime arena),
// optimizer moments and step counts (optim/), balancing-pass state (models/moe/), the step.
// A name lookup returns nullptr when absent (a lookup that may miss on some ranks never raises
// an error on one rank only). Test: tests/core_test.cpp (StateRegistry.*).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace moempi {

enum class StateDType : int { kF32 = 1, kI64 = 2 };
const char* name_of(StateDType t);
size_t size_of(StateDType t);

struct StateTensor {
  std::string name;                   // global, e.g. "param/layers.1.moe.experts.5.w1"
  StateDType dtype = StateDType::kF32;
  std::vector<int64_t> global_shape;  // of the whole tensor, on every rank alike
  int64_t begin = 0;                  // this rank's slice: elements [begin, begin + count) of the
  int64_t count = 0;                  // flattened global tensor
  void* data = nullptr;               // count elements of dtype, owned by the registrant
  // This rank writes its slice to checkpoints. Replicated slices (dense params on every rank,
  // experts on every expert_dp replica) have exactly one writer; every rank reads what it holds.
  bool writer = true;
  // State added after checkpoints without it existed: such a checkpoint loads zeros here, which
  // its owner reads as "not saved" (StateRegistry::allow_absent).
  bool zero_if_absent = false;

  int64_t global_numel() const;
  size_t bytes() const { return static_cast<size_t>(count) * size_of(dtype); }
};

// Who writes replicated state on this rank (one holder of each slice): dense state is written by
// world rank 0, expert state by the ranks of the first ep group (world rank < ep size).
struct StateWriters {
  bool dense = true;
  bool experts = true;
};

class StateRegistry {
 public:
  // Registers a view of this rank's slice. Names are unique (local error otherwise); count must
  // fit the global shape.
  void add_f32(std::string name, std::vector<int64_t> global_shape, std::span<float> local, int64_t begin,
               bool writer);
  void add_i64(std::string name, std::vector<int64_t> global_shape, std::span<int64_t> local, int64_t begin,
               bool writer);
  // A whole tensor held by this rank (begin 0, count = global numel).
  void add_f32(std::string name, std::vector<int64_t> shape, std::span<float> local, bool writer) {
    add_f32(std::move(name), std::move(shape), local, 0, writer);
  }
  void add_i64(std::string name, std::vector<int64_t> shape, std::span<int64_t> local, bool writer) {
    add_i64(std::move(name), std::move(shape), local, 0, writer);
  }

  // A checkpoint without this (registered) state loads zeros into it instead of being refused.
  void allow_absent(const std::string& name);

  const StateTensor* find(const std::string& name) const;  // nullptr when this rank has no such state
  const std::vector<StateTensor>& tensors() const { return tensors_; }
  size_t size() const { return tensors_.size(); }

 private:
  void add(StateTensor t);
  std::vector<StateTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;  // name -> tensors_ index (400,000 experts register in O(n))
};

}  // namespace moempi
