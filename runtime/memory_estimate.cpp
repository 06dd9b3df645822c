#include "runtime/memory_estimate.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

#include <fmt/format.h>

#include "runtime/core/error.h"

namespace moempi {

std::string format_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.{}f} {}", b, b < 10 ? 1 : 0, units[u]);
}

std::string MemoryEstimate::describe_model_state() const {
  return fmt::format("params {} (experts {}), grads {} (experts {}), optimizer {} (experts {})", format_bytes(params),
                     format_bytes(expert_params), format_bytes(grads), format_bytes(expert_params),
                     format_bytes(optimizer), format_bytes(expert_optimizer));
}

std::string MemoryEstimate::describe() const {
  return fmt::format("{} per rank ({}, activations {}, dispatch {}{})", format_bytes(total()), describe_model_state(),
                     format_bytes(activations), format_bytes(dispatch),
                     replicas > 0 ? fmt::format(", fssdp replicas {}", format_bytes(replicas)) : std::string());
}

double fssdp_replica_bytes(const JobSpec& s, int ep) {
  if (s.parallel.strategy != "fssdp") return 0;
  const ModelSpec& m = s.model;
  const MoeSpec& moe = s.moe;
  const double D = m.d_model, Fe = moe.d_ff_expert, Fe1 = m.activation == Activation::kSwiglu ? 2 * Fe : Fe;
  const double L_moe = std::floor(static_cast<double>(m.n_layers) / std::max(1, moe.every_n_layers));
  const double E = moe.num_experts, E_local = E / std::max(1, ep);
  const double per_layer = std::min<double>(s.parallel.fssdp.max_materialized_experts, E - E_local);
  const double expert = D * Fe1 + Fe * D;  // floats of one expert (w1, w2)
  if (!s.parallel.fssdp.rematerialize) return 4 * L_moe * per_layer * 2 * expert;  // params and grads, every layer
  // Re-materialised: one layer's parameters at a time; gradients of one layer at a time when a step
  // is one micro-batch, else of every layer from its first backward to the step's last.
  const double grad_layers = s.train.grad_accum > 1 ? L_moe : std::min(1.0, L_moe);
  return 4 * per_layer * (std::min(1.0, L_moe) + grad_layers) * expert;
}

// Counts in double: the point is to refuse sizes that overflow every integer type.
MemoryEstimate estimate_memory(const JobSpec& s, int ep) {
  const ModelSpec& m = s.model;
  const MoeSpec& moe = s.moe;
  const double V = m.vocab_size, D = m.d_model, T = m.seq_len, L = m.n_layers, H = m.n_heads;
  const bool swiglu = m.activation == Activation::kSwiglu;
  const double F = m.d_ff, FI = swiglu ? 2 * F : F;
  const double Fe = moe.d_ff_expert, Fe1 = swiglu ? 2 * Fe : Fe;
  const double E = moe.num_experts, K = moe.top_k, S = moe.num_shared_experts;
  const double E_local = E / std::max(1, ep);
  const double L_moe = std::floor(L / std::max(1, moe.every_n_layers)), L_dense = L - L_moe;
  const double norm = m.norm == NormType::kLayerNorm ? 2 * D : D;

  double params = V * D + T * D + norm;  // embeddings (tied head), final norm
  params += L * (2 * norm + 3 * D * D + 3 * D + D * D + D);  // norms, attention
  params += L_dense * (D * FI + FI + F * D + D);
  params += L_moe * (D * E + (E_local + S) * (D * Fe1 + Fe * D));

  const double B = s.train.micro_batch, N = B * T;
  // Per block (gpt_moe.cpp forward): ln1, qkv, attention probabilities, attention out, residuals,
  // ln2, ffn out, norm statistics; dense FFN hidden, or the router's (N, E) buffers and the
  // expert rows (N k on average per rank) of the MoE layer.
  double act = L * (10 * N * D + B * H * T * T + 4 * N);
  act += L_dense * (N * FI + N * F);
  act += L_moe * (6 * N * E + 4 * N * K + N * K * (Fe1 + Fe) + S * N * (Fe1 + Fe) + 2 * N * D);
  act += N * D + 2 * N * V + 3 * N;  // final norm, logits and probabilities
  act += 5 * N * D + std::max(FI, Fe1) * N + std::max(F, Fe) * N;  // backward scratch
  act += 2 * N;                       // tokens and targets (int32)
  // Every MoE layer keeps its own plan (a micro-batch's rows live from forward to backward): three
  // row regions (expert inputs x, outputs y = dx, and dy) of about N k rows each, grown by the
  // headroom (shm's windows never shrink), and the slot tables.
  const double headroom = std::max(1.0f, moe.dispatch.shm.headroom);
  const double dispatch = L_moe * (3 * N * K * D * headroom + 4 * N * K);

  const double expert_params = L_moe * E_local * (D * Fe1 + Fe * D);
  const double moments = s.optim.type == "sgd" ? 1 : 2;  // adamw: m and v, laid out like the arena
  MemoryEstimate out;
  out.params = 4 * params;
  out.grads = 4 * params;
  out.optimizer = 4 * moments * params;
  out.expert_params = 4 * expert_params;
  out.expert_optimizer = 4 * moments * expert_params;
  out.replicas = fssdp_replica_bytes(s, ep);
  out.activations = 4 * act;
  out.dispatch = 4 * dispatch;
  return out;
}

MemoryEstimate allocated_model_memory(const ParamArena& arena, const std::vector<size_t>& moment_floats) {
  const double all = static_cast<double>(arena.numel()), experts = all - static_cast<double>(arena.dense_numel());
  MemoryEstimate out;
  out.params = out.grads = 4 * all;
  out.expert_params = 4 * experts;
  for (size_t n : moment_floats) {
    MOEMPI_CHECK_ONE(n == arena.numel(), "an optimizer moment of {} floats is not laid out like the arena ({})", n,
                     arena.numel());
    out.optimizer += 4 * all;
    out.expert_optimizer += 4 * experts;
  }
  return out;
}

double machine_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemTotal:", 0) != 0) continue;
    std::istringstream ss(line.substr(9));
    double kib = 0;
    if (ss >> kib && kib > 0) return kib * 1024;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0;
}

void check_memory_fits(const JobSpec& s, const MemoryEstimate& m, int ranks_on_machine, double machine_bytes) {
  const ModelSpec& model = s.model;
  const double N = static_cast<double>(s.train.micro_batch) * model.seq_len;
  // Buffers are indexed with int in the kernels: each must hold fewer than 2^31 elements.
  struct Extent {
    double n;
    const char* what;
    const char* keys;
  };
  const Extent extents[] = {
      {N, "tokens per micro-batch", "train.micro_batch × model.seq_len"},
      {N * model.vocab_size, "logits per micro-batch", "train.micro_batch × model.seq_len × model.vocab_size"},
      {static_cast<double>(s.train.micro_batch) * model.n_heads * model.seq_len * model.seq_len,
       "attention probabilities per layer", "train.micro_batch × model.n_heads × model.seq_len²"},
      {N * 3 * model.d_model, "qkv activations per layer", "train.micro_batch × model.seq_len × 3 model.d_model"},
      {N * s.moe.num_experts, "router scores per layer", "train.micro_batch × model.seq_len × moe.num_experts"},
      {N * s.moe.top_k * 2.0 * std::max(s.moe.d_ff_expert, model.d_ff), "expert hidden activations per layer",
       "train.micro_batch × model.seq_len × moe.top_k × moe.d_ff_expert"},
  };
  for (const Extent& e : extents)
    MOEMPI_CHECK_ALL(e.n < static_cast<double>(INT_MAX),
                     "the {} ({} = {:.4g}) exceed 2^31 - 1 elements, the largest buffer moempi indexes; lower {}",
                     e.what, e.keys, e.n, e.keys);
  if (machine_bytes <= 0) return;
  const double need = m.total() * std::max(1, ranks_on_machine);
  if (need <= machine_bytes) return;
  const double model_part = m.params + m.grads + m.optimizer + m.replicas;
  const char* advice = model_part >= m.activations + m.dispatch
                           ? "the model state (params, grads, optimizer) dominates: lower model.n_layers, "
                             "model.d_model, model.vocab_size, moe.num_experts or moe.d_ff_expert, or split the "
                             "experts over more ranks (parallel.ep), or lower "
                             "parallel.fssdp.max_materialized_experts"
                           : "activations dominate: lower train.micro_batch (raise train.grad_accum to keep the "
                             "global batch), model.seq_len or model.n_layers";
  fail_collective(fmt::format("the job needs about {}{}, more than this machine's {} of memory; {}", m.describe(),
                              ranks_on_machine > 1 ? fmt::format(", {} for the {} ranks on this machine",
                                                                 format_bytes(need), ranks_on_machine)
                                                   : std::string(),
                              format_bytes(machine_bytes), advice));
}

}  // namespace moempi
