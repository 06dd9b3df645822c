#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "comm/agreement.h"
#include "comm/collectives.h"
#include "comm/link_model.h"
#include "comm/watchdog.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "models/moe/router.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/sharding_strategy.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/core/blas.h"
#include "runtime/core/blas_env.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/test_hooks.h"
#include "runtime/core/timer.h"
#include "runtime/data/data_source.h"
#include "runtime/job_spec.h"
#include "runtime/metrics.h"
#include "runtime/preemption.h"
#include "runtime/run_dir_lock.h"

namespace moempi {
namespace {

double allreduce_scalar(double x, const Communicator& comm) {
  allreduce_sum(&x, 1, comm);
  return x;
}

// What an evaluation pass measured (collective: reduced over the data ranks): the mean loss and,
// per MoE layer, the joint counts of (domain of the token, chosen expert) over every top-k slot.
struct EvalResult {
  double loss = 0;
  int domains = 1;
  std::vector<std::vector<int64_t>> joint_LDE;  // [moe layer] (domains, E)
};

class TrainLoop {
 public:
  TrainLoop(const JobSpec& spec, const ProcessGroups& groups, const TrainOptions& options)
      : spec_(spec), g_(groups), opt_(options) {
    const AutoInputs auto_in = auto_inputs(spec.moe.dispatch, spec.moe.top_k, spec.comm.link_model, groups);
    dispatch_choice_ = resolve_dispatcher(spec.moe.dispatch, groups, auto_in);
    set_link_model(spec.comm.link_model);  // comm.link_model: make_dispatcher wraps the dispatcher in it
    // Passes that reduce counts do it over the data group (every rank that sees different data).
    BalancingEnv env;
    env.allreduce_counts_data = [&g = g_](int64_t* counts, int n) { allreduce_sum(counts, n, g.data); };
    AllocationLabel label("building the model: parameters and gradients");
    model_ = std::make_unique<GptMoe>(spec.model, spec.moe, make_placement(spec.moe.num_experts, groups),
                                      make_dispatcher(spec.moe.dispatch, groups, auto_in), env);
    model_->init_params(spec.job.seed);
    // Data files may be missing or unreadable on some ranks only: fail every rank alike.
    agree_on_errors(groups.world, [&] { data_ = make_data_source(spec.data, spec.model, spec.job.seed); });
    {
      AllocationLabel optimizer_label("the optimizer state");
      optimizer_ = make_optimizer(spec.optim, model_->arena());
    }
    schedule_ = std::make_unique<LrSchedule>(spec.optim, spec.train.steps);
    strategy_ = make_sharding_strategy(spec.parallel, groups);
    model_->set_layer_hooks(strategy_.get());
    {
      std::vector<FloatBuffer*> moments;
      for (const Optimizer::Moment& m : optimizer_->moments()) moments.push_back(m.buffer);
      strategy_->attach_optimizer_state(model_->arena(), moments);
    }
    {
      std::vector<size_t> moment_floats;
      for (const Optimizer::Moment& m : optimizer_->moments()) moment_floats.push_back(m.buffer->size());
      memory_ = allocated_model_memory(model_->arena(), moment_floats);
    }
    data_ranks_ = groups.world.size();
    B_ = spec.train.micro_batch;
    T_ = spec.model.seq_len;
    // Every piece of training state, for checkpoints. The RNG position is a function of the step
    // and the data position (counter-based RNG); the data position is the count of training
    // sequences consumed, saved, so that a resume at another world size or grad_accum continues
    // where the data stopped rather than at step × the new step's sequences.
    register_state();
  }

  // Every piece of training state, by name, into state_ (afresh). Expert names follow the arena:
  // after an fssdp re-sharding renames its slots, state() registers again.
  void register_state() {
    state_ = StateRegistry();
    const StateWriters writers{.dense = g_.world.rank() == 0, .experts = g_.world.rank() < g_.ep_size};
    model_->register_state(state_, writers);
    optimizer_->register_state(state_, model_->arena(), writers);
    strategy_->register_state(state_, writers, static_cast<int>(model_->moe_layers().size()), spec_.moe.num_experts);
    state_.add_i64("train/step", {1}, {&steps_done_, 1}, writers.dense);
    state_.add_i64("train/sequences", {1}, {&sequences_done_, 1}, writers.dense);
    state_.allow_absent("train/sequences");  // checkpoints from before it: derived in resume()
    state_names_version_ = model_->arena().names_version();
  }
  const StateRegistry& state() {
    if (state_names_version_ != model_->arena().names_version()) register_state();
    return state_;
  }

  TrainSummary run() {
    TrainSummary summary;
    summary.memory = memory_;
    summary.sgemm_gflops = allreduce_scalar(measure_sgemm_gflops(), g_.world) / g_.world.size();
    summary.flops_per_token = model_->flops_per_token();
    summary.dispatcher = dispatch_choice_.name;
    summary.routed_flops_per_token = model_->routed_flops_per_token();
    summary.tokens_per_step = sequences_per_step() * T_;
    // Rank 0 locks and prepares the run directory; a directory in use ends every rank alike.
    agree_on_errors(g_.world, [&] {
      if (opt_.write_files && g_.world.rank() == 0) prepare_run_dir();
    });
    announce(summary);
    const int start = opt_.checkpoints ? resume() : 0;
    summary.start_step = start;
    if (opt_.write_files && g_.world.rank() == 0) open_metrics(start);

    const int steps = spec_.train.steps;
    const float grad_scale = 1.0f / (spec_.train.grad_accum * data_ranks_);
    const auto moe_layers = model_->moe_layers();
    struct StopWatchdog {  // a monitor this run started (the binary's runs to MPI_Finalize)
      bool mine;
      ~StopWatchdog() { if (mine) watchdog::stop(); }  // also when a collective error unwinds the loop
    } stop_watchdog{watchdog::start(spec_.comm.timeout_s)};
    double elapsed = 0;
    AllocationLabel label("activations and dispatch buffers of a training step");
    const int stop_after = stop_after_step();
    for (int step = start; step < steps; ++step) {
      watchdog::set_step(step + 1);
      test_hooks::at_step(g_.world.rank(), step + 1);  // fault injection in the test binary only
      const double t0 = now_seconds();
      const double exchange0 = model_->exchange_seconds();
      model_->dispatcher().begin_step(step);
      const DispatchStats traffic0 = model_->dispatcher().stats();
      model_->arena().zero_grads();
      strategy_->begin_step(*model_);  // fssdp: place and gather this step's replicas
      double loss_sum = 0, aux_sum = 0;
      RoutingStats routing;  // this step's counts, local until the one all-reduce below
      routing.reset(static_cast<int>(moe_layers.size()), spec_.moe.num_experts);
      for (int a = 0; a < spec_.train.grad_accum; ++a) {
        const int64_t first = sequences_done_ + (static_cast<int64_t>(a) * data_ranks_ + g_.world.rank()) * B_;
        data_->get(batch_, Split::kTrain, first, B_);
        model_->set_position(spec_.job.seed, step, first);
        strategy_->begin_micro_batch(a + 1 == spec_.train.grad_accum);
        loss_sum += model_->forward(batch_.tokens_BT.data(), batch_.targets_BT.data(), B_, true);
        aux_sum += model_->aux_loss();
        model_->add_routing(routing);  // before capacity drops; training forwards only
        model_->backward(grad_scale);
      }
      test_hooks::after_backward(g_.world.rank(), step + 1, model_->arena());  // test binary only
      // One all-reduce of every layer's counts (and dropped slots) over the data ranks: read by
      // the passes' step end and by the metrics.
      allreduce_sum(routing.values.data(), static_cast<int64_t>(routing.values.size()), g_.data);
      double grad_norm;
      {
        ScopedTimer t(summary.phase_seconds[kPhaseGradSync]);
        strategy_->end_backward(*model_);  // fssdp: replica gradients into their owners
        strategy_->sync_grads(model_->arena());
        grad_norm = strategy_->grad_norm(model_->arena());
      }
      // Step metrics (collective): global mean losses, before the update so that a non-finite
      // step can be skipped (train.nonfinite).
      const double denom = static_cast<double>(spec_.train.grad_accum) * data_ranks_;
      const double loss = allreduce_scalar(loss_sum, g_.world) / denom;
      const double aux = allreduce_scalar(aux_sum, g_.world) / denom;
      const float lr = schedule_->lr_at(step);
      const bool skipped = !std::isfinite(loss) || !std::isfinite(grad_norm);  // global values: every rank agrees
      if (skipped) {
        const std::string what = describe_nonfinite(step + 1, loss, grad_norm);  // collective
        if (spec_.train.nonfinite != "skip")
          fail_collective(what + "; lower optim.lr, set optim.grad_clip, or set train.nonfinite: skip to skip "
                                 "such steps");
        if (g_.world.rank() == 0) spdlog::warn("{}; step skipped (train.nonfinite: skip), parameters unchanged", what);
        model_->on_step_discarded();  // e.g. global_batch_aux_loss's buffer: the next step starts afresh
        ++summary.skipped_steps;
      } else {
        ScopedTimer t(summary.phase_seconds[kPhaseOptimizer]);
        model_->on_step_end(routing);
        scale_grads(model_->arena(), clip_factor(grad_norm, spec_.optim.grad_clip));
        optimizer_->step(model_->arena(), lr);
        strategy_->observe_loads(routing.values.data(), routing.layers, routing.E);  // applied steps only
        warn_on_loss_spike(step + 1, loss);
      }
      strategy_->end_step(*model_);  // fssdp drops the replicas, applied or skipped
      const double dt = now_seconds() - t0;
      const double exchange_s = model_->exchange_seconds() - exchange0;  // before eval adds to it
      const DispatchStats traffic = model_->dispatcher().stats();
      elapsed += dt;
      summary.losses.push_back(loss);
      summary.step_seconds.push_back(dt);
      const ShardingStrategy::StepStats sharded = strategy_->step_stats();
      summary.replicas.push_back(sharded.replicas);
      summary.experts_moved.push_back(sharded.experts_moved);
      moved_since_line_ += sharded.experts_moved;  // a re-sharding on a step without a line counts in the next
      if (sharded.experts_moved > 0 && g_.world.rank() == 0 && opt_.log_steps)
        spdlog::info("step {}: fssdp re-sharded expert ownership: {} experts moved with their optimizer state",
                     step + 1, sharded.experts_moved);
      summary.memory.replicas = std::max(summary.memory.replicas, 4.0 * static_cast<double>(sharded.replica_floats));
      if (opt_.after_step) opt_.after_step(step + 1, loss, model_->arena());
      if (opt_.after_step_state) opt_.after_step_state(step + 1, state());
      steps_done_ = step + 1;
      sequences_done_ += sequences_per_step();  // applied or skipped: the data was consumed
      const bool last = step + 1 == steps;
      // Preemption: every rank posts this every step; a signal on any rank stops all of them here.
      const int signo = agreed_signal();
      const bool preempt = signo != 0 && !last;
      const bool due = spec_.checkpoint.interval > 0 && ((step + 1) % spec_.checkpoint.interval == 0 || last);
      // After the step's metrics line is written: a job that dies before the save completes
      // resumes from the previous checkpoint and writes the line again. Saved first, a death
      // between the save and the line would lose that step's line for good.
      auto checkpoint_now = [&] {
        if (opt_.checkpoints && (due || preempt)) {
          const std::string dir = save(summary);
          if (preempt) summary.preempted_checkpoint = dir;
        }
        if (preempt) summary.preempted_signal = signo;
      };

      const bool eval_now = spec_.eval.interval > 0 && ((step + 1) % spec_.eval.interval == 0 || last);
      std::optional<EvalResult> eval;
      if (eval_now) eval = evaluate();
      std::optional<double> val;
      if (eval) val = eval->loss;
      if (last && val) summary.final_val_loss = val;
      const bool first_after_resume = start > 0 && step == start;
      const bool log_now =
          (step + 1) % spec_.train.log_interval == 0 || step == 0 || last || eval_now || first_after_resume;
      const bool stop_now = (stop_after > 0 && step + 1 == stop_after) || preempt;
      if (!log_now && !stop_now) {
        checkpoint_now();
        continue;
      }
      StepMetrics m;
      m.step = step + 1;
      m.total_steps = steps;
      m.loss = loss;
      m.aux_loss = aux;
      m.val_loss = val;
      m.lr = lr;
      m.grad_norm = grad_norm;
      m.skipped = skipped;
      m.step_ms = 1e3 * dt;
      m.a2a_frac = exchange_s / dt;
      m.a2a_bytes_intra = traffic.bytes_intra - traffic0.bytes_intra;
      m.a2a_bytes_inter = traffic.bytes_inter - traffic0.bytes_inter;
      for (int c = 0; c < kDispatchCalls; ++c)
        m.a2a_call_ms.emplace_back(dispatch_call_name(static_cast<DispatchCall>(c)),
                                   1e3 * (traffic.call_seconds[c] - traffic0.call_seconds[c]));
      if (strategy_->name() == "fssdp") {  // every rank takes this branch alike (collective)
        double replica_bytes = 4.0 * static_cast<double>(sharded.replica_floats);
        allreduce(&replica_bytes, 1, ReduceOp::kMax, g_.world);
        m.replicas = sharded.replicas;
        m.sparse_bytes = sharded.bytes_sent;
        m.replica_bytes_max = static_cast<int64_t>(replica_bytes);
        m.experts_moved = moved_since_line_;
        moved_since_line_ = 0;
      }
      m.wire_bytes = m.a2a_bytes_intra + m.a2a_bytes_inter;
      {  // compression and traffic over every rank (collective; every rank logs the same steps)
        int64_t rows[4] = {traffic.slot_rows - traffic0.slot_rows, traffic.exchange_rows - traffic0.exchange_rows,
                           m.a2a_bytes_intra, m.a2a_bytes_inter};
        allreduce_sum(rows, 4, g_.world);
        m.a2a_bytes_intra_all = rows[2];
        m.a2a_bytes_inter_all = rows[3];
        m.compressed = spec_.moe.dispatch.compression.type != "none";
        if (rows[0] > 0) m.compression_ratio = static_cast<double>(rows[1]) / static_cast<double>(rows[0]);
      }
      m.tokens_per_s = summary.tokens_per_step / dt;
      // With compression the experts run on exchange_rows rows instead of slot_rows: count those.
      m.mfu = (summary.flops_per_token - (1.0 - m.compression_ratio) * summary.routed_flops_per_token) * m.tokens_per_s /
              (summary.sgemm_gflops * 1e9 * g_.world.size() * blas::num_threads());
      m.eta_s = elapsed / (step + 1 - start) * (steps - step - 1);
      if (first_after_resume) m.resumed_from = start;
      m.tokens = sequences_done_ * T_;  // the data position: right across resumes at other layouts
      for (int l = 0; l < routing.layers; ++l) m.expert_load.push_back(routing.layer(l));
      for (const auto& l : m.expert_load) {
        m.maxvio_layers.push_back(max_violation(l));
        m.load_cv_layers.push_back(load_cv(l));
      }
      m.maxvio = mean_of(m.maxvio_layers);
      m.load_cv = mean_of(m.load_cv_layers);
      if (spec_.moe.capacity_factor > 0) {
        const double slots = static_cast<double>(summary.tokens_per_step) * spec_.moe.top_k * moe_layers.size();
        m.dropped_frac = slots > 0 ? routing.dropped() / slots : 0.0;
      }
      add_bias_metrics(m);
      if (eval) add_eval_metrics(m, *eval);
      if (g_.world.rank() == 0) {
        if (opt_.log_steps && log_now) spdlog::info("{}", format_step_line(m));
        if (log_now) metrics_.write(m);
      }
      checkpoint_now();
      if (stop_now) {
        if (g_.world.rank() == 0 && opt_.log_steps && !preempt)
          spdlog::info("stopping after step {} (test hook)", step + 1);
        break;
      }
    }
    watchdog::set_step(0);
    for (int p = 0; p < kPhaseCount; ++p) summary.phase_seconds[p] = model_->phase_seconds()[p];
    summary.exchange_seconds = model_->exchange_seconds();
    summary.dispatch_call_seconds = model_->dispatcher().stats().call_seconds;
    return summary;
  }

 private:
  // Collective over the world: what is not finite at `step`, and the first parameter whose
  // gradient holds a NaN or an infinity (in arena order, on the lowest rank that has one).
  std::string describe_nonfinite(int step, double loss, double grad_norm) {
    std::string first;
    try {
      agree_on_errors(g_.world, [&] {
        ParamArena& arena = model_->arena();
        for (size_t id = 0; id < arena.infos().size(); ++id) {
          const float* g = arena.grad(id);
          for (size_t i = 0; i < arena.info(id).numel; ++i)
            if (!std::isfinite(g[i]))
              fail_collective(fmt::format("{} (element {} is {})", arena.info(id).name, i, g[i]));
        }
      });
    } catch (const CollectiveError& e) {
      first = e.what();
    }
    std::string what = fmt::format("step {}: ", step);
    if (!std::isfinite(loss)) what += fmt::format("the loss is {}", loss);
    else what += fmt::format("the gradient norm is {} (loss {:.4f})", grad_norm, loss);
    what += first.empty() ? "; every gradient is finite" : "; first non-finite gradient: " + first;
    return what;
  }

  // train.loss_spike_factor: a warning when the loss exceeds the factor times the mean of the
  // recent steps (an exponential moving average over about 10 steps, from the 5th step on).
  void warn_on_loss_spike(int step, double loss) {
    const double factor = spec_.train.loss_spike_factor;
    if (factor > 0 && loss_steps_ >= 5 && loss > factor * loss_ema_ && g_.world.rank() == 0)
      spdlog::warn("step {}: loss spike: {:.4f} is more than {:g} × the recent mean {:.4f} (train.loss_spike_factor)",
                   step, loss, factor, loss_ema_);
    loss_ema_ = loss_steps_ == 0 ? loss : 0.9 * loss_ema_ + 0.1 * loss;
    ++loss_steps_;
  }

  // Collective: global mean validation loss over eval.batches global batches, split over the
  // ranks like training batches, so that the same global batch gives the same validation
  // sequences (and loss) at any world size.
  // Also counts, per MoE layer, every top-k slot by (domain of its sequence, expert): the loads
  // of maxvio_global and the joint table of the specialisation. Nothing here touches the
  // training RoutingStats or the passes' step state (forwards with training = false).
  EvalResult evaluate() {
    struct Evaluating {  // lsh runs exact in validation unless compress_eval (also on an exception)
      Dispatcher& d;
      explicit Evaluating(Dispatcher& dispatcher) : d(dispatcher) { d.set_evaluating(true); }
      ~Evaluating() { d.set_evaluating(false); }
    } evaluating(model_->dispatcher());
    const int64_t micro_batches = static_cast<int64_t>(spec_.eval.batches) * spec_.train.grad_accum;
    const auto layers = model_->moe_layers();
    const int E = spec_.moe.num_experts, Dm = std::max(1, data_->num_domains());
    std::vector<int64_t> joint(layers.size() * Dm * E, 0);  // (L, domains, E)
    double sum = 0;
    for (int64_t i = 0; i < micro_batches; ++i) {
      const int64_t first = (i * data_ranks_ + g_.world.rank()) * B_;
      data_->get(batch_, Split::kVal, first, B_);
      model_->set_position(spec_.job.seed, -1 - i, first);  // eval draws: their own "steps"
      sum += model_->forward(batch_.tokens_BT.data(), batch_.targets_BT.data(), B_, false);
      for (size_t l = 0; l < layers.size(); ++l) {
        const RoutingPlan& r = layers[l]->routing();
        int64_t* j = joint.data() + l * Dm * E;
        for (int t = 0; t < r.N; ++t) {
          const int d = std::clamp(batch_.domain_B[t / T_], 0, Dm - 1);
          for (int k = 0; k < r.K; ++k) ++j[static_cast<size_t>(d) * E + r.selected_NK[static_cast<size_t>(t) * r.K + k]];
        }
      }
    }
    EvalResult out;
    out.loss = allreduce_scalar(sum, g_.world) / (static_cast<double>(micro_batches) * data_ranks_);
    allreduce_sum(joint.data(), static_cast<int64_t>(joint.size()), g_.data);
    out.domains = Dm;
    for (size_t l = 0; l < layers.size(); ++l)
      out.joint_LDE.emplace_back(joint.begin() + l * Dm * E, joint.begin() + (l + 1) * Dm * E);
    return out;
  }

  // maxvio_global (loads of the whole evaluation pass) and the specialisation, per MoE layer.
  void add_eval_metrics(StepMetrics& m, const EvalResult& e) const {
    const int E = spec_.moe.num_experts;
    std::vector<double> vio, spec_bits, spec_norm;
    for (const auto& j : e.joint_LDE) {
      std::vector<int64_t> loads(E, 0);
      for (int d = 0; d < e.domains; ++d)
        for (int i = 0; i < E; ++i) loads[i] += j[static_cast<size_t>(d) * E + i];
      vio.push_back(max_violation(loads));
      const Specialisation s = specialisation(j.data(), e.domains, E);
      spec_bits.push_back(s.mi_bits);
      spec_norm.push_back(s.normalised);
    }
    m.maxvio_global_layers = vio;
    m.maxvio_global = mean_of(vio);
    m.specialisation_layers = spec_bits;
    m.specialisation_norm_layers = spec_norm;
  }

  // loss_free_bias: every layer's biases, read through the passes' state accessor.
  void add_bias_metrics(StepMetrics& m) const {
    double max_abs = 0;
    bool any = false;
    for (MoeLayer* layer : model_->moe_layers())
      for (const auto& pass : layer->router().passes())
        for (const PassTensor& t : pass->state())
          if (t.name == "bias_E") {
            m.bias.emplace_back(t.f32.begin(), t.f32.end());
            for (float b : t.f32) max_abs = std::max(max_abs, static_cast<double>(std::fabs(b)));
            any = true;
          }
    if (any) m.bias_max_abs = max_abs;
  }

  void announce(const TrainSummary& s) {
    const std::string rank_map = g_.rank_map();  // collective
    if (g_.world.rank() != 0 || !opt_.log_steps) return;
    spdlog::info("moempi: job '{}' | world {} = dp {} × ep {} | strategy {} | dispatch {}",
                 spec_.job.name, g_.world.size(), g_.dp_size, g_.ep_size, spec_.parallel.strategy,
                 dispatch_choice_.name);
    if (spec_.moe.dispatch.type == "auto")
      spdlog::info("moe.dispatch.type auto: chose {} ({})", dispatch_choice_.name, dispatch_choice_.reason);
    spdlog::info("{} | sgemm {:.0f} GFLOP/s per rank", blas::kernel_note(), s.sgemm_gflops);
    spdlog::info("model: {} params on rank 0 ({} dense), {:.1f}M active per token, {:.1f} MFLOP per "
                 "training token | {} tokens per step | data: {}",
                 model_->arena().numel(), model_->arena().dense_numel(),
                 model_->active_params() / 1e6, s.flops_per_token / 1e6, s.tokens_per_step,
                 data_->describe());
    // The model state as allocated (the estimate's figures, now from the arena and the optimizer).
    const MemoryEstimate& m = memory_;
    const double moments = m.params > 0 ? m.optimizer / m.params : 0;
    const double L_moe = static_cast<double>(model_->moe_layers().size());
    const double expert_floats = static_cast<double>(model_->part_numel(0) + model_->part_numel(1));
    const double all_expert_optimizer = 4 * moments * L_moe * spec_.moe.num_experts * expert_floats;
    std::string replicas;
    if (spec_.parallel.strategy == "fssdp")
      replicas = fmt::format(" | fssdp replicas up to {} at the budget ({} per MoE layer)",
                             format_bytes(fssdp_replica_bytes(spec_, g_.ep_size)),
                             spec_.parallel.fssdp.max_materialized_experts);
    spdlog::info("memory allocated on rank 0: {} | expert optimizer state {} of {} in all ({:.3f}){}",
                 m.describe_model_state(), format_bytes(m.expert_optimizer), format_bytes(all_expert_optimizer),
                 all_expert_optimizer > 0 ? m.expert_optimizer / all_expert_optimizer : 0.0, replicas);
    spdlog::info("rank map:\n{}", rank_map);
    spdlog::info("resolved job spec:\n{}", job_spec_to_yaml(spec_));
  }

  int stop_after_step() const {
    if (opt_.stop_after_step > 0) return opt_.stop_after_step;
    const char* env = std::getenv("MOEMPI_TEST_STOP_AFTER");
    return env ? std::atoi(env) : 0;
  }

  std::string ckpt_root() const { return spec_.job.run_dir + "/ckpt"; }

  // Collective: the largest signal number any rank has caught (runtime/preemption.h), 0 if none.
  int agreed_signal() const {
    int64_t signo = preemption::pending_signal();
    allreduce(&signo, 1, ReduceOp::kMax, g_.world);
    return static_cast<int>(signo);
  }

  // Collective: one checkpoint of every registered state; returns its directory.
  std::string save(TrainSummary& summary) {
    const SaveStats st = save_checkpoint(ckpt_root(), steps_done_, state(), job_spec_to_yaml(spec_), spec_.parallel,
                                         g_.world, spec_.checkpoint.keep_last);
    ++summary.checkpoints_saved;
    summary.checkpoint_bytes = st.bytes;
    summary.checkpoint_seconds += st.seconds;
    if (g_.world.rank() == 0 && opt_.log_steps)
      spdlog::info("checkpoint {}: {:.2f} MB in {:.0f} ms", st.dir, st.bytes / 1e6, 1e3 * st.seconds);
    return st.dir;
  }

  // Collective. With checkpoint.resume auto: loads the newest usable checkpoint (the one `latest`
  // names, then older complete ones, saying why one was refused) and returns its step; 0 when
  // there is none. With never: starts fresh and removes <run_dir>/ckpt of an earlier run.
  int resume() {
    const bool rank0 = g_.world.rank() == 0;
    if (spec_.checkpoint.resume == "never") {
      agree_on_errors(g_.world, [&] {
        std::error_code ec;
        if (!rank0 || !std::filesystem::exists(ckpt_root(), ec)) return;
        if (opt_.log_steps)
          spdlog::info("checkpoint.resume never: removing the checkpoints of an earlier run in {}", ckpt_root());
        std::filesystem::remove_all(ckpt_root(), ec);
        if (ec) fail_collective(fmt::format("cannot remove '{}': {}", ckpt_root(), ec.message()));
      });
      return 0;
    }
    // Rank 0 lists the candidates and every rank tries them in the same order.
    std::string list;
    agree_on_errors(g_.world, [&] {  // an unreadable directory fails on rank 0: every rank stops
      if (rank0)
        for (const auto& c : checkpoint_candidates(ckpt_root())) list += c + "\n";
    });
    int64_t n = static_cast<int64_t>(list.size());
    bcast(&n, 1, 0, g_.world);
    list.resize(static_cast<size_t>(n));
    bcast_bytes(list.data(), n, 0, g_.world);
    std::vector<std::string> candidates;
    for (size_t a = 0, b; a < list.size(); a = b + 1) {
      b = list.find('\n', a);
      candidates.push_back(list.substr(a, b - a));
    }
    std::vector<std::string> refused;
    for (const std::string& dir : candidates) {
      try {
        const CheckpointInfo info = load_checkpoint(dir, state(), g_.world);
        if (rank0 && opt_.log_steps) {
          if (!refused.empty())
            spdlog::warn("fell back to {}, the newest usable checkpoint ({} newer one{} refused)", dir,
                         refused.size(), refused.size() > 1 ? "s" : "");
          spdlog::info("resuming from {} (step {}; saved at world {}, strategy {}, ep {}; now world {}, strategy {}, "
                       "ep {})", dir, info.step, info.world_size, info.strategy, info.ep, g_.world.size(),
                       spec_.parallel.strategy, g_.ep_size);
          const auto changed = spec_differences(info.spec_yaml, job_spec_to_yaml(spec_));
          if (!changed.empty())
            spdlog::info("spec changed since the checkpoint (saved -> now): {}", fmt::join(changed, "; "));
        }
        MOEMPI_CHECK_ALL(steps_done_ == info.step, "{}: train/step is {} but the manifest says step {}", dir,
                         steps_done_, info.step);
        if (sequences_done_ == 0 && steps_done_ > 0) {  // a checkpoint from before train/sequences
          sequences_done_ = steps_done_ * sequences_per_step();
          if (rank0 && opt_.log_steps)
            spdlog::warn("{} has no train/sequences (an older checkpoint): the data continues at step × this run's "
                         "{} sequences per step, right only if world size, micro_batch and grad_accum are unchanged",
                         dir, sequences_per_step());
        }
        if (steps_done_ >= spec_.train.steps && rank0 && opt_.log_steps)
          spdlog::info("the checkpoint is at step {} >= train.steps ({}): nothing left to train", steps_done_,
                       spec_.train.steps);
        return static_cast<int>(std::min<int64_t>(steps_done_, spec_.train.steps));
      } catch (const CollectiveError& e) {
        if (rank0 && opt_.log_steps) spdlog::warn("checkpoint refused: {}", e.what());
        refused.push_back(e.what());
      }
    }
    if (!refused.empty())
      fail_collective(fmt::format("no usable checkpoint in {} ({} refused; the newest: {}); remove them or set "
                                  "checkpoint.resume: never to start over", ckpt_root(), refused.size(),
                                  refused.front()));
    return 0;
  }

  // Training sequences one optimizer step consumes, over all ranks.
  int64_t sequences_per_step() const { return static_cast<int64_t>(spec_.train.grad_accum) * data_ranks_ * B_; }

  void prepare_run_dir() {
    std::string stale;
    run_dir_lock_ = RunDirLock(spec_.job.run_dir, &stale);  // creates the directory
    if (!stale.empty()) spdlog::warn("{}", stale);
    const std::string spec_path = spec_.job.run_dir + "/job.yaml";
    std::ofstream out(spec_path, std::ios::trunc);
    out << job_spec_to_yaml(spec_);
    MOEMPI_CHECK_ONE(out.good(), "cannot write '{}'", spec_path);
  }

  // Rank 0, after resume(): metrics.jsonl new, or kept up to the resumed step and appended to.
  void open_metrics(int resumed_step) {
    const std::string jsonl = spec_.job.run_dir + "/metrics.jsonl";
    if (spec_.metrics.jsonl)
      metrics_ = resumed_step > 0 ? MetricsWriter(jsonl, resumed_step) : MetricsWriter(jsonl);
  }

  const JobSpec& spec_;
  const ProcessGroups& g_;
  TrainOptions opt_;
  DispatcherChoice dispatch_choice_;
  int64_t moved_since_line_ = 0;  // fssdp: experts moved by re-shardings since the last metrics line
  std::unique_ptr<GptMoe> model_;
  std::unique_ptr<DataSource> data_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LrSchedule> schedule_;
  std::unique_ptr<ShardingStrategy> strategy_;
  MemoryEstimate memory_;  // this rank's allocated model state
  RunDirLock run_dir_lock_;  // rank 0, while files are written
  MetricsWriter metrics_;
  StateRegistry state_;
  uint64_t state_names_version_ = 0;  // the arena names state_ was registered with
  int64_t steps_done_ = 0;  // optimizer steps done: "train/step" in checkpoints
  int64_t sequences_done_ = 0;  // training sequences consumed by those steps: "train/sequences"
  Batch batch_;
  int data_ranks_ = 1, B_ = 1, T_ = 1;
  double loss_ema_ = 0;  // recent mean loss (warn_on_loss_spike)
  int64_t loss_steps_ = 0;
};

}  // namespace

namespace {

// moe.routing_nodes 0 under node-limited routing = the nodes the ep group spans (the same on every
// rank: ep_rank_node is world-agreed). Says so when a routing group is not one node's experts
// (the limit then bounds groups, not nodes).
JobSpec resolve_routing_nodes(const JobSpec& spec, const ProcessGroups& groups) {
  JobSpec out = spec;
  MoeSpec& moe = out.moe;
  if (moe.max_nodes_per_token <= 0) return out;
  if (moe.routing_nodes == 0) {
    moe.routing_nodes = groups.ep_num_nodes();
    if (const std::string why = node_limit_problem(moe); !why.empty())
      fail_collective(fmt::format("{} (moe.routing_nodes 0 = the {} node(s) of the ep group)", why,
                                  moe.routing_nodes));
  }
  const int E = moe.num_experts, size = E / moe.routing_nodes;
  const Placement placement = make_placement(E, groups);
  for (int e = 0; e < E; ++e)
    if (groups.ep_rank_node[placement.owner(e)] != groups.ep_rank_node[placement.owner(e - e % size)]) {
      if (groups.world_rank == 0)
        spdlog::warn("moe.routing_nodes {}: expert group {} spans several nodes of this layout, so "
                     "moe.max_nodes_per_token bounds expert groups, not nodes",
                     moe.routing_nodes, e / size);
      break;
    }
  return out;
}

}  // namespace

TrainSummary train(const JobSpec& spec, const ProcessGroups& groups, const TrainOptions& options) {
  const JobSpec resolved = resolve_routing_nodes(spec, groups);
  TrainLoop loop(resolved, groups, options);
  return loop.run();
}

double measure_sgemm_gflops() {
  const int M = 512, N = 512, K = 512;
  FloatBuffer a(static_cast<size_t>(M) * K), b(static_cast<size_t>(K) * N), c(static_cast<size_t>(M) * N);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 1e-3f * static_cast<float>(i % 17);
  for (size_t i = 0; i < b.size(); ++i) b[i] = 1e-3f * static_cast<float>(i % 13);
  blas::matmul(c.data(), a.data(), b.data(), M, N, K, false, false, false);  // warm up
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const double t0 = now_seconds();
    for (int i = 0; i < 4; ++i) blas::matmul(c.data(), a.data(), b.data(), M, N, K, false, false, false);
    best = std::min(best, now_seconds() - t0);
  }
  return 4 * 2.0 * M * N * K / best / 1e9;
}

}  // namespace moempi
