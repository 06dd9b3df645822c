// The resolved job spec: plain structs with defaults, one per YAML section. Parsing, validation
// and printing live in runtime/job_spec.{h,cpp}; everything else reads these structs only.
// Every field here is documented in README.md "Config reference" with its YAML path.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moempi {

struct JobSection {
  std::string name = "job";
  std::string run_dir;  // default runs/<name>
  uint64_t seed = 1234;
};

enum class NormType { kLayerNorm, kRmsNorm };
enum class Activation { kGelu, kSwiglu };

struct ModelSpec {
  int vocab_size = 256;
  int d_model = 64;
  int n_layers = 2;
  int n_heads = 4;
  int seq_len = 64;
  NormType norm = NormType::kLayerNorm;
  Activation activation = Activation::kGelu;  // for experts and dense FFNs
  int d_ff = 256;          // dense FFN hidden width (layers that are not MoE)
  float init_std = 0.02f;
};

// Keys of one type only (a typed section) are registered with that type's registry entry; the
// structs below hold the union, and the schema accepts, checks and prints only the chosen type's.
enum class BiasUpdate { kSign, kProportional };

struct LossFreeBiasSpec {
  float rate = 1e-3f;                    // moe.balancing.<i>.rate (u, >= 0)
  BiasUpdate update = BiasUpdate::kSign;  // moe.balancing.<i>.update: sign | proportional
  int freeze_after = 0;                  // moe.balancing.<i>.freeze_after: no update after this many steps; 0 = never
};

struct BalancingSpec {
  std::string type;       // a name from balancing_pass_registry() (models/moe/balancing_pass.cpp)
  float coeff = 0.01f;    // loss coefficient (alpha); the loss passes
  LossFreeBiasSpec bias{};  // keys owned by type loss_free_bias
};

enum class ScoreFn { kSoftmax, kSigmoid };

struct ShmDispatchSpec {
  float headroom = 1.25f;  // moe.dispatch.headroom (in [1, 16]): shared-window slack over the expected rows
};

struct HierarchicalDispatchSpec {
  std::string algorithm = "2dh";  // moe.dispatch.algorithm: 2dh | leader
  bool dedup = false;             // moe.dispatch.dedup: send a token once per destination node (k > 1)
};

// moe.dispatch.compression: a wrapper over any dispatcher (parallel/lsh_dispatcher.h).
struct CompressionSpec {
  std::string type = "none";  // none | lsh
  // lsh only (ALGORITHMS.md 3.3):
  int num_hashes = 6;         // cross-polytope hashes per token; the bucket is the tuple of their codes
  int buckets_per_hash = 2;   // b: codes per hash (even, 2..2*d_model; 2 = hyperplane LSH)
  uint64_t rotation_seed = 1; // the shared random projections derive from it (same on every rank)
  int rotation_interval = 100;  // projections redrawn every this many optimizer steps; 0 = never
  int min_tokens = 16;        // a destination expert with fewer slots from this rank goes uncompressed
  bool residual = true;       // each token gets E(centroid) + (x - centroid); false: E(centroid)
  // A slot whose token lies farther than max_residual x |centroid| from its bucket's centroid
  // leaves the bucket and goes alone (one pass; the rest keep sharing). 0 = off.
  double max_residual = 0.0;
  bool compress_eval = false;  // evaluation passes compress too; false: they run exact (uncompressed)
};

// moe.dispatch.wire_dtype: what rows travel as between ranks (compute is always fp32).
enum class WireDtype { kFp32, kBf16 };

struct DispatchSpec {
  std::string type = "auto";  // a dispatcher name; auto picks by layout
  ShmDispatchSpec shm{};      // keys owned by type shm
  HierarchicalDispatchSpec hierarchical{};  // keys owned by type hierarchical
  CompressionSpec compression{};
  WireDtype wire_dtype = WireDtype::kFp32;
};

struct MoeSpec {
  int num_experts = 4;
  int top_k = 2;
  int d_ff_expert = 128;
  ScoreFn score = ScoreFn::kSoftmax;
  bool normalize_topk = true;
  int num_shared_experts = 0;  // each of width d_ff_expert
  int every_n_layers = 1;      // layer l is MoE when (l + 1) % every_n_layers == 0
  float capacity_factor = 0.0f;  // 0 = dropless
  // Node-limited routing (DeepSeek-V3): a token's k experts lie in at most max_nodes_per_token of
  // routing_nodes contiguous expert groups (group g = the experts of node g under expert
  // parallelism). 0 = off. routing_nodes 0 = the nodes the ep group spans, resolved at start-up
  // and written to job.yaml, so the routing rule is part of the model, not of a launch.
  int max_nodes_per_token = 0;
  int routing_nodes = 0;
  // Benchmarks only: replace the top-k choice by seeded draws (none | balanced | zipf:S | hot:F |
  // rotating); see Router and README "Forced routing".
  std::string force_routing = "none";
  std::vector<BalancingSpec> balancing;
  DispatchSpec dispatch;
};

struct FssdpSpec {
  int max_materialized_experts = 2;  // replicas a rank may hold per MoE layer per step
  int load_window = 5;               // steps in the sliding mean that predicts expert loads
  bool rematerialize = false;        // free replicas after each layer's forward, gather again for backward
  int reshard_interval = 100;        // re-shard expert ownership every this many steps (0 = never)
};

struct ParallelSpec {
  std::string strategy = "dp";  // a name from sharding_strategy_registry(): dp | ep | fssdp
  int ep = 1;                   // ranks that split the experts (0 = all ranks); dp = world / ep
  int ranks_per_node = 0;       // 0 = real nodes (MPI_COMM_TYPE_SHARED); >0 = virtual nodes
  FssdpSpec fssdp;              // strategy fssdp only
};

struct ScheduleSpec {
  std::string type = "constant";  // a name from lr_schedule_registry(): constant | warmup_cosine | warmup_linear
  int warmup_steps = 0;           // warmup_cosine, warmup_linear
  float min_lr_ratio = 0.1f;      // warmup_cosine, warmup_linear: final lr = lr * min_lr_ratio
};

struct OptimSpec {
  std::string type = "adamw";  // a name from optimizer_registry(): adamw | sgd
  float lr = 1e-3f;
  float weight_decay = 0.0f;
  float beta1 = 0.9f;          // adamw
  float beta2 = 0.95f;         // adamw
  float eps = 1e-8f;           // adamw
  float momentum = 0.9f;       // sgd
  float grad_clip = 1.0f;      // global-norm clip; 0 = off
  ScheduleSpec schedule;
};

struct DataSpec {
  std::string type = "synthetic";  // a name from data_source_registry(): synthetic | text | tokens
  std::string path;                // text: a file; tokens: a shard file or a directory of *.bin shards
  float val_fraction = 0.05f;      // share of sequences held out for validation
};

struct TrainSpec {
  int steps = 100;
  int micro_batch = 8;   // sequences per micro-batch per rank
  int grad_accum = 1;    // micro-batches per optimizer step
  int log_interval = 10;
  // A step whose loss or gradient norm is not finite: "abort" ends the job naming the step and the
  // first offending tensor; "skip" leaves the parameters unchanged for that step and warns.
  std::string nonfinite = "abort";
  float loss_spike_factor = 2.0f;  // warn when a step's loss exceeds this × the recent mean; 0 = off
  int global_batch = 0;  // sequences per optimizer step; > 0: grad_accum = global_batch / (micro_batch × world)
};

struct EvalSpec {
  int interval = 0;  // 0 = no validation
  int batches = 4;   // global batches per validation pass (split over ranks like training)
};

struct CheckpointSpec {
  int interval = 0;             // save every this many steps and at the last step; 0 = never
  int keep_last = 3;            // complete checkpoints kept (older ones removed); 0 = all
  std::string resume = "auto";  // auto: continue from <run_dir>/ckpt's latest usable checkpoint, if any | never
};

struct MetricsSpec {
  bool jsonl = true;  // write <run_dir>/metrics.jsonl
};

// A software model of the inter-node link (comm/link_model.h): a delay added to inter-node
// messages only, so that virtual nodes on one machine show a cluster's asymmetry. 0 = off.
struct LinkModelSpec {
  double inter_node_gbps = 0.0;        // comm.link_model.inter_node_gbps (0 = unlimited)
  double inter_node_latency_us = 0.0;  // comm.link_model.inter_node_latency_us per message
};

struct CommSpec {
  double timeout_s = 600.0;
  LinkModelSpec link_model{};
};

struct JobSpec {
  JobSection job;
  ModelSpec model;
  MoeSpec moe;
  ParallelSpec parallel;
  OptimSpec optim;
  DataSpec data;
  TrainSpec train;
  EvalSpec eval;
  CheckpointSpec checkpoint;
  MetricsSpec metrics;
  CommSpec comm;
};

}  // namespace moempi
