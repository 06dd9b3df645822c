// `moempi bench router`: the router's products (logits = x · W_r forward; dW_r and dx backward)
// through OpenBLAS sgemm against moempi's kernels (models/moe/router_kernels.h), in the same run.
// Each timed call follows a sweep over a buffer larger than the caches, as in the MoE layer, where
// the expert GEMMs run between the router's calls. Guarantees: both variants are checked against
// double-precision sums before and after timing (#wrong); figures are medians, slowest rank.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/bench.h"
#include "bench/bench_common.h"
#include "comm/collectives.h"
#include "models/moe/router_kernels.h"
#include "runtime/core/blas.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi::bench {
namespace {

struct RouterArgs {
  int tokens = 2048;
  int d_model = 256;
  int experts = 8;
  int evict_mb = 64;
  TimingFlags timing;
};

struct RouterSetup {
  int N, D, E;
  std::vector<float> x_ND, w_DE, dz_NE, logits_NE, dx_ND, dw_DE;
  std::vector<float> sweep;  // evict_mb of floats, read and written between timed calls
  RouterProducts kernels;

  explicit RouterSetup(const RouterArgs& a) : N(a.tokens), D(a.d_model), E(a.experts) {
    Rng r(11, 0, 0, 0);
    auto fill = [&](std::vector<float>& v, size_t n, float scale) {
      v.resize(n);
      for (auto& f : v) f = scale * static_cast<float>(r.normal());
    };
    fill(x_ND, (size_t)N * D, 1.0f);
    fill(w_DE, (size_t)D * E, 0.05f);
    fill(dz_NE, (size_t)N * E, 0.1f);
    logits_NE.assign((size_t)N * E, 0.0f);
    dx_ND.assign((size_t)N * D, 0.0f);
    dw_DE.assign((size_t)D * E, 0.0f);
    sweep.assign((size_t)a.evict_mb * (1 << 20) / sizeof(float), 1.0f);
  }

  void evict() {
    for (float& f : sweep) f = f * 0.5f + 0.5f;
  }
  void forward(bool blas_path) {
    if (blas_path) blas::matmul(logits_NE.data(), x_ND.data(), w_DE.data(), N, E, D, false, false, false);
    else kernels.forward(logits_NE.data(), x_ND.data(), w_DE.data(), N, D, E);
  }
  // Overwrites dx and dW (zeroed first: the products accumulate) so each call can be checked.
  void backward(bool blas_path) {
    std::fill(dx_ND.begin(), dx_ND.end(), 0.0f);
    std::fill(dw_DE.begin(), dw_DE.end(), 0.0f);
    if (blas_path) {
      blas::matmul(dw_DE.data(), x_ND.data(), dz_NE.data(), D, E, N, true, false, true);
      blas::matmul(dx_ND.data(), dz_NE.data(), w_DE.data(), N, D, E, false, true, true);
    } else {
      kernels.backward(dx_ND.data(), dw_DE.data(), dz_NE.data(), x_ND.data(), w_DE.data(), N, D, E);
    }
  }

  // Elements off the double-precision sums by more than 1e-4 · (1 + sqrt(terms)) · max |term|.
  int64_t wrong_forward() const {
    int64_t bad = 0;
    for (int t = 0; t < N; ++t)
      for (int e = 0; e < E; ++e)
        bad += off_sum(logits_NE[(size_t)t * E + e], D,
                       [&](int d) { return (double)x_ND[(size_t)t * D + d] * w_DE[(size_t)d * E + e]; });
    return bad;
  }
  int64_t wrong_backward() const {
    int64_t bad = 0;
    for (int t = 0; t < N; t += 7)  // every 7th token's dx row: the dx pass is the same for all
      for (int d = 0; d < D; ++d)
        bad += off_sum(dx_ND[(size_t)t * D + d], E,
                       [&](int e) { return (double)dz_NE[(size_t)t * E + e] * w_DE[(size_t)d * E + e]; });
    for (int d = 0; d < D; ++d)
      for (int e = 0; e < E; ++e)
        bad += off_sum(dw_DE[(size_t)d * E + e], N,
                       [&](int t) { return (double)x_ND[(size_t)t * D + d] * dz_NE[(size_t)t * E + e]; });
    return bad;
  }

 private:
  // 1 when got is off the double sum of term(0..n-1) by more than 1e-4 · (1 + sqrt(n)) · max |term|.
  template <class Term>
  static int64_t off_sum(float got, int n, Term term) {
    double want = 0, scale = 0;
    for (int i = 0; i < n; ++i) {
      const double v = term(i);
      want += v;
      scale = std::max(scale, std::fabs(v));
    }
    return !(std::fabs(got - want) <= 1e-4 * (1 + std::sqrt((double)n)) * scale + 1e-30);
  }
};

int run(const RouterArgs& a) {
  const Communicator world = Communicator::world();
  RouterSetup s(a);
  // [forward, backward] x [openblas, kernels]
  std::vector<int64_t> wrong(4, 0);
  auto check = [&] {
    for (int blas_path = 1; blas_path >= 0; --blas_path) {
      s.forward(blas_path);
      wrong[blas_path ? 0 : 1] += s.wrong_forward();
      s.backward(blas_path);
      wrong[blas_path ? 2 : 3] += s.wrong_backward();
    }
  };
  if (a.timing.check) check();
  auto evict = [&](int) { s.evict(); };
  const auto secs = time_interleaved({evict, [&](int) { s.forward(true); }, evict, [&](int) { s.forward(false); },
                                      evict, [&](int) { s.backward(true); }, evict, [&](int) { s.backward(false); }},
                                     a.timing.warmup, a.timing.iters, world, /*unit=*/2);
  if (a.timing.check) check();
  allreduce_sum(wrong.data(), (int64_t)wrong.size(), world);

  Table table({{"product", "", 9}, {"openblas", "(us)", 9}, {"kernels", "(us)", 9}, {"ratio", "kern/blas", 9},
               {"#wrong", "(blas)", 7}, {"#wrong", "(kern)", 7}},
              world.rank() == 0);
  table.print_header(
      {"moempi bench router: the router's skinny products, OpenBLAS sgemm against moempi's kernels",
       fmt::format("tokens N {} | d_model D {} | experts E {} | kernels {} | world {}", a.tokens, a.d_model,
                   a.experts, a.experts <= RouterProducts::kMaxVectorExperts
                       ? fmt::format("vector (E <= {})", RouterProducts::kMaxVectorExperts)
                       : fmt::format("OpenBLAS too (E > {})", RouterProducts::kMaxVectorExperts),
                   world.size()),
       "forward = logits (N,E) = x (N,D) . W (D,E); backward = dW += x^T dz and dx += dz W^T (both paths zero dx, dW "
       "first)",
       fmt::format("each timed call follows an untimed sweep over {} MiB (caches cold, as between the expert GEMMs); "
                   "median of {} after {} warm-up, slowest rank; the variants take turns to run first",
                   a.evict_mb, a.timing.iters, a.timing.warmup),
       fmt::format("{} | CPU: {}", blas::kernel_note(), cpu_model())});
  const char* names[2] = {"forward", "backward"};
  nlohmann::json doc = {{"benchmark", "router"}, {"cpu", cpu_model()}, {"tokens", a.tokens},
                        {"d_model", a.d_model},  {"experts", a.experts}, {"iters", a.timing.iters},
                        {"rows", nlohmann::json::array()}};
  for (int p = 0; p < 2; ++p) {
    const double blas_us = 1e6 * over_ranks(median(secs[4 * p + 1]), world).max;
    const double kern_us = 1e6 * over_ranks(median(secs[4 * p + 3]), world).max;
    const bool checked = a.timing.check != 0;
    table.print_row({names[p], cell(blas_us, 1), cell(kern_us, 1), cell(kern_us / blas_us, 2),
                     checked ? cell(wrong[2 * p]) : std::string("N/A"),
                     checked ? cell(wrong[2 * p + 1]) : std::string("N/A")});
    doc["rows"].push_back({{"product", names[p]},
                           {"openblas_us", blas_us},
                           {"kernels_us", kern_us},
                           {"ratio", kern_us / blas_us},
                           {"wrong_openblas", wrong[2 * p]},
                           {"wrong_kernels", wrong[2 * p + 1]}});
  }
  return finish_report(table, doc, wrong[0] + wrong[1] + wrong[2] + wrong[3], a.timing.json, world);
}

}  // namespace

void add_router_command(CLI::App& bench, int& exit_code) {
  auto args = std::make_shared<RouterArgs>();
  auto* cmd = bench.add_subcommand("router", "The router's products: OpenBLAS against moempi's vector kernels");
  cmd->add_option("--tokens", args->tokens, "tokens N")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--d_model", args->d_model, "model width D")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--experts", args->experts, "routed experts E")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--evict-mb", args->evict_mb, "MiB swept between timed calls (0 = warm caches)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  add_timing_flags(*cmd, args->timing);
  cmd->callback([args, &exit_code] { exit_code = run(*args); });
}

}  // namespace moempi::bench
