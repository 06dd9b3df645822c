#include "runtime/core/arena.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "runtime/core/error.h"

namespace moempi {
namespace {
thread_local const char* t_allocation_label = "";

std::string bytes_text(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) b /= 1024, ++u;
  return fmt::format("{:.1f} {}", b, units[u]);
}

float* aligned_zeroed(size_t n, const char* what) {
  const std::string label = *AllocationLabel::current() ? fmt::format(" ({})", AllocationLabel::current()) : "";
  MOEMPI_CHECK_ONE(n <= (SIZE_MAX - 63) / sizeof(float), "cannot allocate {} floats for {}{}: the size overflows",
                   n, what, label);
  size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
  if (bytes == 0) bytes = 64;
  void* p = std::aligned_alloc(64, bytes);
  MOEMPI_CHECK_ONE(p != nullptr, "out of memory allocating {} ({} bytes) for {}{}", bytes_text(static_cast<double>(bytes)),
                   bytes, what, label);
  std::memset(p, 0, bytes);
  return static_cast<float*>(p);
}
}  // namespace

AllocationLabel::AllocationLabel(const char* what) : prev_(t_allocation_label) { t_allocation_label = what; }
AllocationLabel::~AllocationLabel() { t_allocation_label = prev_; }
const char* AllocationLabel::current() { return t_allocation_label; }

void ParamArena::AlignedFree::operator()(float* p) const { std::free(p); }
void FloatBuffer::AlignedFree::operator()(float* p) const { std::free(p); }

ParamArena::Id ParamArena::add(std::string name, std::vector<int64_t> shape, ParamKind kind,
                               bool decay) {
  MOEMPI_CHECK_ALL(!allocated_, "ParamArena::add({}) after allocate()", name);
  MOEMPI_CHECK_ALL(index_.emplace(name, infos_.size()).second, "parameter '{}' registered twice", name);
  ParamInfo info;
  info.name = std::move(name);
  info.numel = 1;
  for (int64_t d : shape) info.numel *= static_cast<size_t>(d);
  info.shape = std::move(shape);
  info.kind = kind;
  info.decay = decay;
  infos_.push_back(std::move(info));
  return infos_.size() - 1;
}

void ParamArena::allocate() {
  size_t off = 0;
  for (auto kind : {ParamKind::kDense, ParamKind::kExpert}) {
    for (auto& info : infos_) {
      if (info.kind != kind) continue;
      info.offset = off;
      off += (info.numel + 15) / 16 * 16;  // keep every view 64-byte aligned
    }
    if (kind == ParamKind::kDense) dense_numel_ = off;
  }
  total_ = off;
  params_.ptr.reset(aligned_zeroed(total_, "the parameters"));
  grads_.ptr.reset(aligned_zeroed(total_, "the gradients"));
  allocated_ = true;
}

void ParamArena::rename(Id id, std::string name) {
  MOEMPI_CHECK_ONE(id < infos_.size(), "ParamArena::rename: no tensor {}", id);
  if (infos_[id].name == name) return;
  MOEMPI_CHECK_ONE(!index_.count(name), "ParamArena::rename: '{}' is taken", name);
  index_.erase(infos_[id].name);
  index_.emplace(name, id);
  infos_[id].name = std::move(name);
  ++names_version_;
}

std::optional<ParamArena::Id> ParamArena::find(const std::string& name) const {
  if (auto it = index_.find(name); it != index_.end()) return it->second;
  return std::nullopt;
}

void ParamArena::register_state(StateRegistry& registry, const StateWriters& writers) {
  for (size_t id = 0; id < infos_.size(); ++id) {
    const ParamInfo& info = infos_[id];
    registry.add_f32("param/" + info.name, info.shape, {param(id), info.numel},
                     info.kind == ParamKind::kDense ? writers.dense : writers.experts);
  }
}

void ParamArena::zero_grads() { std::memset(grads_.data(), 0, total_ * sizeof(float)); }

void FloatBuffer::resize(size_t n) {
  if (n > capacity_) {
    data_.ptr.reset(aligned_zeroed(n, "a float buffer"));
    capacity_ = n;
  }
  size_ = n;
}

void FloatBuffer::zero() {
  if (size_) std::memset(data(), 0, size_ * sizeof(float));
}

}  // namespace moempi
