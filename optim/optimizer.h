// Optimizers over the flat parameter arena: AdamW (decoupled decay, none on norms and biases)
// and SGD with momentum. They step whatever the arena holds on this rank (with expert
// parallelism: only the local experts, so expert optimizer state lives with its shard).
// Gradient sync and clipping happen before step(); see parallel/sharding_strategy.h. Chosen by
// optim.type through one Registry (optimizer.cpp), each entry with its own keys (adamw: beta1,
// beta2, eps; sgd: momentum).
// Tests: tests/optim_test.cpp (against hand-computed updates).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/arena.h"
#include "runtime/core/config.h"
#include "runtime/core/registry.h"
#include "runtime/core/state_registry.h"

namespace moempi {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual std::string name() const = 0;
  // One update of every parameter in the arena from its gradient, at learning rate lr.
  virtual void step(ParamArena& arena, float lr) = 0;
  int64_t steps_taken() const { return t_; }
  // Registers the optimizer's state for checkpoints: the step count "optim/step" (shape {1},
  // dense writer) and one moment tensor per parameter and moment, "optim/<type>.<moment>/<param
  // name>" (e.g. optim/adamw.m/wte), laid out like the arena, written like the parameter.
  void register_state(StateRegistry& registry, ParamArena& arena, const StateWriters& writers);
  // The moment buffers, laid out like the arena: adamw {m, v}, sgd {momentum}.
  struct Moment {
    std::string name;
    FloatBuffer* buffer;
  };
  virtual std::vector<Moment> moments() = 0;

 protected:
  int64_t t_ = 0;
};

using OptimizerFactory = std::unique_ptr<Optimizer> (*)(const OptimSpec& spec, const ParamArena& arena);
using OptimizerRegistry = Registry<OptimizerFactory>;

// optim.type -> optimizer, in registration order, with each optimizer's own keys.
const OptimizerRegistry& optimizer_registry();

// Chooses by optim.type; collective error naming the path and the registered names otherwise.
std::unique_ptr<Optimizer> make_optimizer(const OptimSpec& spec, const ParamArena& arena);

// Multiplies every gradient in the arena by `factor` (global-norm clipping applies
// factor = min(1, clip / norm), with the norm computed over all ranks by the strategy).
void scale_grads(ParamArena& arena, float factor);
float clip_factor(double grad_norm, float clip);

}  // namespace moempi
