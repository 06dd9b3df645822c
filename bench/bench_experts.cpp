// `moempi bench experts`: grouped expert FFN forward+backward (one GEMM pair per expert over its
// block of rows) against ONE dense FFN with the same GEMM shapes fused ((N·k)×D · D×F, ...), and
// the whole MoE layer (router, local dispatch, weighting) on the same tokens, in the same run.
// Guarantees: outputs are verified against a naive per-row reference before and after timing
// (#wrong); figures are medians, slowest rank. Target: grouped >= 90% of dense GFLOP/s.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bench/bench.h"
#include "bench/bench_common.h"
#include "comm/collectives.h"
#include "models/moe/expert_reference.h"
#include "models/moe/grouped_experts.h"
#include "models/moe/moe_layer.h"
#include "parallel/local_dispatcher.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi::bench {
namespace {

struct ExpertsArgs {
  int tokens = 2048;
  int d_model = 256;
  int d_ff = 512;
  int experts = 8;
  int top_k = 2;
  std::string activation = "gelu";
  TimingFlags timing;
};

// 1 if any element of got differs from want by more than 1e-3 · (1 + max|want|).
int64_t differs(const float* got, const std::vector<double>& want) {
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t d = 0; d < want.size(); ++d)
    if (!(std::fabs(got[d] - want[d]) <= 1e-3 * (1.0 + scale))) return 1;
  return 0;
}

// One bench setup: the same tokens through a dense FFN, the grouped experts and the MoE layer.
struct Setup {
  ModelSpec model;
  MoeSpec moe;
  int N, R, D, F;
  Activation act;
  ParamArena dense_arena, grouped_arena, layer_arena;
  std::unique_ptr<GroupedExperts> dense, grouped;  // dense = the same code with one expert
  std::unique_ptr<MoeLayer> layer;
  Placement placement;
  std::unique_ptr<LocalDispatcher> dispatcher;
  std::vector<int64_t> dense_rows, grouped_rows;
  FloatBuffer x_ND, x_RD, dy_RD, y_RD, dx_RD, out_ND, dout_ND, dx_ND;

  explicit Setup(const ExpertsArgs& a) {
    N = a.tokens;
    D = a.d_model;
    F = a.d_ff;
    R = a.tokens * a.top_k;
    act = a.activation == "swiglu" ? Activation::kSwiglu : Activation::kGelu;
    model.d_model = D;
    model.n_layers = 1;
    model.seq_len = N;
    model.activation = act;
    moe.num_experts = a.experts;
    moe.top_k = a.top_k;
    moe.d_ff_expert = F;
    BalancingSpec aux;
    aux.type = "aux_loss";
    moe.balancing = {aux};
    MoeSpec one = moe;
    one.num_experts = 1;
    one.top_k = 1;
    dense = std::make_unique<GroupedExperts>(model, one, 0, Placement::contiguous(1, 1, 0), dense_arena);
    grouped = std::make_unique<GroupedExperts>(model, moe, 0, Placement::contiguous(moe.num_experts, 1, 0),
                                               grouped_arena);
    placement = Placement::contiguous(moe.num_experts, 1, 0);
    layer = std::make_unique<MoeLayer>(model, moe, 0, placement, layer_arena);
    dispatcher = std::make_unique<LocalDispatcher>();
    dense_arena.allocate();
    grouped_arena.allocate();
    layer_arena.allocate();
    const float std = 1.0f / std::sqrt((float)D);
    dense->init_params(dense_arena, 1, std, 1.0f);
    grouped->init_params(grouped_arena, 2, std, 1.0f);
    layer->init_params(layer_arena, 3, std);
    for (auto* b : {&x_RD, &dy_RD, &y_RD, &dx_RD}) b->resize((size_t)R * D);
    for (auto* b : {&x_ND, &out_ND, &dout_ND, &dx_ND}) b->resize((size_t)N * D);
    Rng rng(7, 0, 0, Rng::stream_of("bench.experts.inputs"));
    for (size_t i = 0; i < x_RD.size(); ++i) x_RD[i] = rng.normal();
    for (size_t i = 0; i < dy_RD.size(); ++i) dy_RD[i] = rng.normal();
    for (size_t i = 0; i < x_ND.size(); ++i) x_ND[i] = rng.normal();
    for (size_t i = 0; i < dout_ND.size(); ++i) dout_ND[i] = rng.normal();
    // The grouped experts get the blocks the layer's router makes of these tokens, so that
    // moe_layer − grouped is exactly the layer's own overhead (router, permutation, weighting).
    dense_rows = {R};
    layer_forward();
    grouped_rows = layer->dispatch_plan()->rows_per_local_expert();
  }

  void dense_forward() { dense->forward(dense_arena, y_RD.data(), x_RD.data(), dense_rows); }
  void dense_backward() { dense->backward(dense_arena, dx_RD.data(), dy_RD.data(), x_RD.data()); }
  void grouped_forward() { grouped->forward(grouped_arena, y_RD.data(), x_RD.data(), grouped_rows); }
  void grouped_backward() {
    grouped->backward(grouped_arena, dx_RD.data(), dy_RD.data(), x_RD.data());
  }
  void layer_forward() {
    layer->forward(layer_arena, out_ND.data(), x_ND.data(), N, *dispatcher, placement, true);
  }
  void layer_backward() {
    layer->backward(layer_arena, dx_ND.data(), dout_ND.data(), 1.0f, *dispatcher);
  }

  // Forward outputs of a few rows against the naive reference: [dense, grouped, layer] #wrong.
  std::vector<int64_t> verify() {
    std::vector<int64_t> wrong(3, 0);
    const int samples = 8;
    dense_forward();
    for (int i = 0; i < samples; ++i) {
      const int r = (int)((int64_t)i * (R - 1) / (samples - 1));
      wrong[0] += differs(y_RD.data() + (size_t)r * D,
                          expert_ffn_reference(x_RD.data() + (size_t)r * D, dense_arena.param(dense->w1_id(0)),
                                  dense_arena.param(dense->w2_id(0)), D, F, act));
    }
    grouped_forward();
    for (int i = 0; i < samples; ++i) {
      const int r = (int)((int64_t)i * (R - 1) / (samples - 1));
      int e = 0;
      for (int64_t end = grouped_rows[0]; r >= end; end += grouped_rows[++e]) {}
      wrong[1] += differs(y_RD.data() + (size_t)r * D,
                          expert_ffn_reference(x_RD.data() + (size_t)r * D,
                                  grouped_arena.param(grouped->w1_id(e)),
                                  grouped_arena.param(grouped->w2_id(e)), D, F, act));
    }
    layer_forward();
    const RoutingPlan& plan = layer->routing();
    for (int i = 0; i < samples; ++i) {
      const int t = (int)((int64_t)i * (N - 1) / (samples - 1));
      std::vector<double> want(D, 0.0);
      for (int k = 0; k < moe.top_k; ++k) {
        const int e = plan.topk_ids_NK[(size_t)t * moe.top_k + k];
        const auto y = expert_ffn_reference(x_ND.data() + (size_t)t * D,
                               layer_arena.param(layer->experts().w1_id(e)),
                               layer_arena.param(layer->experts().w2_id(e)), D, F, act);
        for (int d = 0; d < D; ++d) want[d] += plan.probs_NK[(size_t)t * moe.top_k + k] * y[d];
      }
      wrong[2] += differs(out_ND.data() + (size_t)t * D, want);
    }
    return wrong;
  }
};

int run(const ExpertsArgs& a) {
  MOEMPI_CHECK_ALL(a.top_k <= a.experts, "--top_k ({}) must be at most --experts ({})", a.top_k,
                   a.experts);
  const Communicator world = Communicator::world();
  Setup s(a);

  std::vector<int64_t> wrong(3, 0);
  auto check = [&] {
    const auto w = s.verify();
    for (int i = 0; i < 3; ++i) wrong[i] += w[i];
  };
  if (a.timing.check) check();
  const auto secs = time_interleaved(
      {[&](int) { s.dense_forward(); }, [&](int) { s.dense_backward(); },
       [&](int) { s.grouped_forward(); }, [&](int) { s.grouped_backward(); },
       [&](int) { s.layer_forward(); }, [&](int) { s.layer_backward(); }},
      a.timing.warmup, a.timing.iters, world, /*unit=*/2);
  if (a.timing.check) check();
  allreduce_sum(wrong.data(), (int64_t)wrong.size(), world);

  // FLOPs: forward 2·R·D·F1 + 2·R·F·D; backward twice that (dact, dw2, dw1, dx).
  const int F1 = s.act == Activation::kSwiglu ? 2 * s.F : s.F;
  const double fwd_flop = 2.0 * s.R * s.D * F1 + 2.0 * s.R * s.F * s.D;
  const double gflop = 3.0 * fwd_flop / 1e9;
  struct Row {
    const char* name;
    double fwd_ms, bwd_ms, total_ms, gflops;
  };
  const char* names[] = {"dense", "grouped", "moe_layer"};
  std::vector<Row> rows;
  for (int v = 0; v < 3; ++v) {
    std::vector<double> total(secs[2 * v].size());
    for (size_t i = 0; i < total.size(); ++i) total[i] = secs[2 * v][i] + secs[2 * v + 1][i];
    Row r{names[v], 1e3 * over_ranks(median(secs[2 * v]), world).max,
          1e3 * over_ranks(median(secs[2 * v + 1]), world).max,
          1e3 * over_ranks(median(total), world).max, 0.0};
    r.gflops = gflop / (r.total_ms / 1e3);
    rows.push_back(r);
  }
  const double grouped_over_dense = rows[1].gflops / rows[0].gflops;
  // The layer's overhead: the median over rounds of the paired ratio (layer ÷ grouped, measured
  // seconds apart in the same round), so machine drift between rounds cancels; the largest such
  // median over the ranks.
  std::vector<double> paired(secs[4].size());
  for (size_t i = 0; i < paired.size(); ++i)
    paired[i] = (secs[4][i] + secs[5][i]) / (secs[2][i] + secs[3][i]);
  const double layer_overhead = over_ranks(median(paired), world).max - 1.0;
  const double overhead_of_medians = rows[2].total_ms / rows[1].total_ms - 1.0;

  Table table({{"variant", "", 10}, {"rows", "", 7}, {"GFLOP", "", 7}, {"fwd", "(ms)", 8},
               {"bwd", "(ms)", 8}, {"total", "(ms)", 8}, {"GFLOP/s", "", 8}, {"vs_dense", "", 8},
               {"#wrong", "", 6}},
              world.rank() == 0);
  table.print_header(
      {"moempi bench experts: grouped expert FFN vs one dense FFN of the same GEMM shapes fused",
       fmt::format("tokens {} | d_model {} | d_ff {} | experts {} | top_k {} | {} | rows N*k {} | "
                   "world {}",
                   a.tokens, a.d_model, a.d_ff, a.experts, a.top_k, a.activation, s.R,
                   world.size()),
       fmt::format("{} | median of {} iterations after {} warm-up, slowest rank; forward+backward; the variants "
                   "take turns to run first in a round",
                   blas::kernel_note(), a.timing.iters, a.timing.warmup),
       fmt::format("rows per expert (the layer's routing, dropless): min {} max {} | moe_layer = "
                   "router + aux_loss + local dispatch + grouped experts + weighted combine",
                   *std::min_element(s.grouped_rows.begin(), s.grouped_rows.end()),
                   *std::max_element(s.grouped_rows.begin(), s.grouped_rows.end()))});
  for (int v = 0; v < 3; ++v) {
    const Row& r = rows[v];
    table.print_row({r.name, cell((int64_t)s.R), cell(gflop, 3), cell(r.fwd_ms, 2),
                     cell(r.bwd_ms, 2), cell(r.total_ms, 2), cell(r.gflops, 1),
                     cell(r.gflops / rows[0].gflops, 3),
                     a.timing.check ? cell(wrong[v]) : std::string("N/A")});
  }
  table.print_comment(fmt::format("grouped/dense {:.3f} (target >= 0.90) | moe_layer overhead "
                                  "over grouped experts {:+.1f}% (median of per-round paired ratios; "
                                  "ratio of the medians {:+.1f}%)",
                                  grouped_over_dense, 100.0 * layer_overhead, 100.0 * overhead_of_medians));

  nlohmann::json doc = {{"bench", "experts"},       {"tokens", a.tokens},
                        {"d_model", a.d_model},     {"d_ff", a.d_ff},
                        {"experts", a.experts},     {"top_k", a.top_k},
                        {"activation", a.activation}, {"world", world.size()},
                        {"iters", a.timing.iters},  {"gflop", gflop},
                        {"grouped_over_dense", grouped_over_dense},
                        {"layer_overhead", layer_overhead},
                        {"layer_overhead_of_medians", overhead_of_medians}};
  for (int v = 0; v < 3; ++v)
    doc["results"].push_back({{"variant", rows[v].name},
                              {"fwd_ms", rows[v].fwd_ms},
                              {"bwd_ms", rows[v].bwd_ms},
                              {"total_ms", rows[v].total_ms},
                              {"gflops", rows[v].gflops},
                              {"wrong", wrong[v]}});
  write_json(a.timing.json, doc, world);
  return wrong[0] + wrong[1] + wrong[2] == 0 ? 0 : 1;
}

}  // namespace

void add_experts_command(CLI::App& bench, int& exit_code) {
  auto args = std::make_shared<ExpertsArgs>();
  auto* cmd = bench.add_subcommand(
      "experts", "Grouped expert FFN vs one dense FFN of the same FLOPs, and the MoE layer");
  cmd->add_option("--tokens", args->tokens, "tokens N")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--d_model", args->d_model, "model width D")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--d_ff", args->d_ff, "expert hidden width F")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--experts", args->experts, "routed experts E")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--top_k", args->top_k, "experts per token k")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--activation", args->activation, "expert activation")
      ->capture_default_str()
      ->check(CLI::IsMember({"gelu", "swiglu"}));
  add_timing_flags(*cmd, args->timing);
  cmd->callback([args, &exit_code] { exit_code = run(*args); });
}

}  // namespace moempi::bench
