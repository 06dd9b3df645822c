// AdamW and SGD over arena spans, and their registry (optim.type); per-tensor loops so decay can
// be switched per tensor and the inner loops vectorise. Test: tests/optim_test.cpp.
#include "optim/optimizer.h"

#include <cmath>

#include "runtime/core/error.h"

namespace moempi {
namespace {

class AdamW final : public Optimizer {
 public:
  AdamW(const OptimSpec& spec, const ParamArena& arena)
      : spec_(spec), m_(arena.numel()), v_(arena.numel()) {}
  std::string name() const override { return "adamw"; }
  std::vector<Moment> moments() override { return {{"m", &m_}, {"v", &v_}}; }

  void step(ParamArena& arena, float lr) override {
    ++t_;
    const float b1 = spec_.beta1, b2 = spec_.beta2, eps = spec_.eps;
    const float bc1 = 1.0f - std::pow(b1, static_cast<float>(t_));
    const float bc2 = 1.0f - std::pow(b2, static_cast<float>(t_));
    const float step_size = lr / bc1;
    const float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
    for (size_t id = 0; id < arena.infos().size(); ++id) {
      const ParamInfo& info = arena.info(id);
      float* p = arena.param(id);
      const float* g = arena.grad(id);
      float* m = m_.data() + info.offset;
      float* v = v_.data() + info.offset;
      const float decay = info.decay ? lr * spec_.weight_decay : 0.0f;
      for (size_t i = 0; i < info.numel; ++i) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        const float denom = std::sqrt(v[i]) * inv_sqrt_bc2 + eps;
        p[i] -= step_size * m[i] / denom + decay * p[i];
      }
    }
  }

 private:
  OptimSpec spec_;
  FloatBuffer m_, v_;  // moments, laid out like the arena
};

class Sgd final : public Optimizer {
 public:
  Sgd(const OptimSpec& spec, const ParamArena& arena) : spec_(spec), buf_(arena.numel()) {}
  std::string name() const override { return "sgd"; }
  std::vector<Moment> moments() override { return {{"momentum", &buf_}}; }

  void step(ParamArena& arena, float lr) override {
    ++t_;
    const float mu = spec_.momentum;
    for (size_t id = 0; id < arena.infos().size(); ++id) {
      const ParamInfo& info = arena.info(id);
      float* p = arena.param(id);
      const float* g = arena.grad(id);
      float* b = buf_.data() + info.offset;
      const float wd = info.decay ? spec_.weight_decay : 0.0f;
      for (size_t i = 0; i < info.numel; ++i) {
        const float d = g[i] + wd * p[i];
        b[i] = mu * b[i] + d;
        p[i] -= lr * b[i];
      }
    }
  }

 private:
  OptimSpec spec_;
  FloatBuffer buf_;  // momentum buffer
};

}  // namespace

void Optimizer::register_state(StateRegistry& registry, ParamArena& arena, const StateWriters& writers) {
  registry.add_i64("optim/step", {1}, {&t_, 1}, writers.dense);
  for (const Moment& m : moments())
    for (size_t id = 0; id < arena.infos().size(); ++id) {
      const ParamInfo& info = arena.info(id);
      registry.add_f32(fmt::format("optim/{}.{}/{}", name(), m.name, info.name), info.shape,
                       {m.buffer->data() + info.offset, info.numel},
                       info.kind == ParamKind::kDense ? writers.dense : writers.experts);
    }
}

const OptimizerRegistry& optimizer_registry() {
  using schema::real_field;
  static const OptimizerRegistry registry("an optimizer", {
      // name, factory, keys only this optimizer accepts (lr, weight_decay, grad_clip: every one), doc
      {"adamw",
       [](const OptimSpec& s, const ParamArena& a) -> std::unique_ptr<Optimizer> { return std::make_unique<AdamW>(s, a); },
       {real_field("beta1", &OptimSpec::beta1, schema::kUnitOpen), real_field("beta2", &OptimSpec::beta2, schema::kUnitOpen),
        real_field("eps", &OptimSpec::eps, schema::kPositive)},
       "Adam with decoupled weight decay (none on norms and biases)"},
      {"sgd",
       [](const OptimSpec& s, const ParamArena& a) -> std::unique_ptr<Optimizer> { return std::make_unique<Sgd>(s, a); },
       {real_field("momentum", &OptimSpec::momentum, schema::kUnitOpen)}, "SGD with heavy-ball momentum"},
  });
  return registry;
}

std::unique_ptr<Optimizer> make_optimizer(const OptimSpec& spec, const ParamArena& arena) {
  const OptimizerRegistry& r = optimizer_registry();
  const auto* entry = r.find(spec.type);
  if (!entry) fail_collective(r.not_one_of("optim.type", spec.type));
  return entry->factory(spec, arena);
}

void scale_grads(ParamArena& arena, float factor) {
  if (factor == 1.0f) return;
  for (float& g : arena.grads()) g *= factor;
}

float clip_factor(double grad_norm, float clip) {
  if (clip <= 0.0f || !(grad_norm > clip)) return 1.0f;
  return static_cast<float>(clip / grad_norm);
}

}  // namespace moempi
