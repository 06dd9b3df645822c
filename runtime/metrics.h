// What a logged step reports: the fixed-format progress line (rank 0) and one JSON object per
// logged step in <run_dir>/metrics.jsonl. The JSONL keys step, loss, val_loss, lr, grad_norm,
// step_ms, tokens_per_s, mfu, maxvio, aux_loss are an interface scripts rely on: do not rename.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moempi {

struct StepMetrics {
  int step = 0;          // 1-based: optimizer steps done
  int total_steps = 0;
  double loss = 0;       // global mean LM loss of the step
  double aux_loss = 0;   // global mean of the balancing losses (summed over layers)
  std::optional<double> val_loss;
  double lr = 0;
  double grad_norm = 0;
  bool skipped = false;  // non-finite loss or gradients, step not applied (train.nonfinite: skip)
  double step_ms = 0;
  double tokens_per_s = 0;
  double mfu = 0;        // fraction
  std::optional<double> dropped_frac;  // with moe.capacity_factor > 0: share of routed slots dropped
  double a2a_frac = 0;   // share of the step spent in the dispatcher (rank 0)
  int64_t a2a_bytes_intra = 0, a2a_bytes_inter = 0;  // rank 0's dispatch bytes to other ranks this step
  int64_t a2a_bytes_intra_all = 0, a2a_bytes_inter_all = 0;  // the same summed over every rank
  // Rank 0's dispatcher time this step by call (plan, dispatch, combine, combine_backward,
  // dispatch_backward), in ms: JSON a2a_call_ms.
  std::vector<std::pair<std::string, double>> a2a_call_ms;
  // Rows handed to the exchanges ÷ routed slot rows this step, over every rank (1 without
  // compression); `compressed` puts it in the step line as "lsh 0.21".
  double compression_ratio = 1;
  bool compressed = false;
  int64_t wire_bytes = 0;  // bytes rank 0's exchanges sent to other ranks this step (any wire dtype)
  double maxvio = 0;     // mean over MoE layers of (max_i c_i - mean c) / mean c, global counts
  double eta_s = 0;
  int64_t tokens = 0;    // tokens seen so far (global)
  std::vector<double> maxvio_layers;
  std::vector<std::vector<int64_t>> expert_load;  // [moe layer][expert] global routed counts (before capacity drops)
  double load_cv = 0;                  // mean over MoE layers of std(c) / mean(c), global counts
  std::vector<double> load_cv_layers;
  std::vector<std::vector<float>> bias;  // [moe layer][expert] loss_free_bias biases (empty without the pass)
  std::optional<double> bias_max_abs;    // max |b| over layers and experts (with loss_free_bias)
  // parallel.strategy fssdp: expert replicas materialised this step (all layers), rank 0's sparse
  // gather + reduce-scatter bytes, the most replica memory (params + grads) any rank held, and the
  // experts whose owner changed at re-shardings since the previous line (0 when none ran).
  std::optional<int64_t> replicas, sparse_bytes, replica_bytes_max, experts_moved;
  // At evaluations: over every token of the validation pass, per MoE layer.
  std::optional<double> maxvio_global;             // mean over layers (MaxVio_global, arXiv:2408.15664)
  std::vector<double> maxvio_global_layers;
  std::vector<double> specialisation_layers;       // I(domain; chosen expert) in bits
  std::vector<double> specialisation_norm_layers;  // ÷ H(domain)
  std::optional<int> resumed_from;  // first step after a resume: the checkpoint's step
};

// "step 120/2000 | loss 2.4312 | aux 0.0121 | lr 3.0e-04 | gnorm 0.84 | 212 ms | 19.3k tok/s | mfu 41% | maxvio 0.12 | eta 1m23s"
std::string format_step_line(const StepMetrics& m);
std::string format_duration(double seconds);

// MaxVio of one layer's counts: (max - mean) / mean, 0 when there are no tokens.
double max_violation(const std::vector<int64_t>& counts);
// Coefficient of variation of one layer's counts: population std / mean, 0 when there are no tokens.
double load_cv(const std::vector<int64_t>& counts);
// Mean of the values, 0 for none.
double mean_of(const std::vector<double>& values);

// Mutual information between a token's domain and its chosen experts, from the joint counts of
// every top-k slot n(d, e) (domains × E): I = Σ p(d,e) log2(p(d,e) / (p(d) p(e))) bits, and its
// normalised form I / H(domain) (0 when the domain entropy is 0).
struct Specialisation {
  double mi_bits = 0;
  double normalised = 0;
};
Specialisation specialisation(const int64_t* joint_DE, int domains, int E);

// Appends whole lines only: a line is written with write(2) until complete, and a write that
// fails part-way (full disk, file size limit) is cut back to the last whole line before the
// local error, which names the file and errno's reason. Test: tests/e2e/run_dir.sh.
class MetricsWriter {
 public:
  MetricsWriter() = default;
  explicit MetricsWriter(const std::string& path);  // truncates; local error if it cannot open
  // Resuming after step `resumed_step`: keeps the file's lines up to that step (dropping those of
  // steps the resumed run will redo; rewritten through a temporary file and a rename, so a crash
  // leaves the old file or the new one) and appends after them.
  MetricsWriter(const std::string& path, int resumed_step);
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  ~MetricsWriter();
  void write(const StepMetrics& m);
  bool open() const { return fd_ >= 0; }

 private:
  void write_line(const std::string& line, int step);  // whole line or local error (see above)
  int fd_ = -1;
  int64_t size_ = 0;  // bytes of whole lines written
  std::string path_;
};

}  // namespace moempi
