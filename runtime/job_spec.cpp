// The moempi job spec: one schema table (root_schema) naming every field of config.h with its YAML
// key, type and range, and the cross-field rules. Names chosen by `type` (and the keys each type
// owns) come from the registries, never typed here; the generic engine (parse, --set, ownership,
// checks, printing) is runtime/core/schema.{h,cpp}. static_asserts below fail the build when
// config.h gains a field the table lacks. Tests: tests/job_spec_test.cpp.
#include "runtime/job_spec.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "models/moe/balancing_pass.h"
#include "models/moe/router.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "parallel/dispatcher_registry.h"
#include "parallel/sharding_strategy.h"
#include "runtime/core/error.h"
#include "runtime/core/schema.h"
#include "runtime/data/data_source.h"

namespace moempi {
namespace {

using namespace schema;

// ---------------------------------------------------------------------------------------------
// Guard: the number of members of each config struct, counted at compile time (aggregate
// initialisation with "anything" placeholders). When config.h gains a field, add it to the schema
// in root_schema() below, then update the count here.
struct AnyMember {
  template <class T>
  operator T() const;  // never defined: unevaluated only
};
template <class T, class... A>
constexpr size_t member_count() {
  if constexpr (requires { T{A{}..., AnyMember{}}; })
    return member_count<T, A..., AnyMember>();
  else
    return sizeof...(A);
}
#define MOEMPI_SCHEMA_COVERS(T, n) \
  static_assert(member_count<T>() == n, #T " changed in config.h: add the field to root_schema() in job_spec.cpp")
MOEMPI_SCHEMA_COVERS(JobSection, 3);
MOEMPI_SCHEMA_COVERS(ModelSpec, 9);
MOEMPI_SCHEMA_COVERS(BalancingSpec, 3);
MOEMPI_SCHEMA_COVERS(LossFreeBiasSpec, 3);
MOEMPI_SCHEMA_COVERS(ShmDispatchSpec, 1);
MOEMPI_SCHEMA_COVERS(HierarchicalDispatchSpec, 2);
MOEMPI_SCHEMA_COVERS(CompressionSpec, 9);
MOEMPI_SCHEMA_COVERS(DispatchSpec, 5);
MOEMPI_SCHEMA_COVERS(MoeSpec, 13);
MOEMPI_SCHEMA_COVERS(ParallelSpec, 4);
MOEMPI_SCHEMA_COVERS(FssdpSpec, 4);
MOEMPI_SCHEMA_COVERS(ScheduleSpec, 3);
MOEMPI_SCHEMA_COVERS(OptimSpec, 9);
MOEMPI_SCHEMA_COVERS(DataSpec, 3);
MOEMPI_SCHEMA_COVERS(TrainSpec, 7);
MOEMPI_SCHEMA_COVERS(EvalSpec, 2);
MOEMPI_SCHEMA_COVERS(CheckpointSpec, 3);
MOEMPI_SCHEMA_COVERS(MetricsSpec, 1);
MOEMPI_SCHEMA_COVERS(LinkModelSpec, 2);
MOEMPI_SCHEMA_COVERS(CommSpec, 2);
MOEMPI_SCHEMA_COVERS(JobSpec, 11);
#undef MOEMPI_SCHEMA_COVERS

const std::vector<std::string> kNormNames = {"layernorm", "rmsnorm"};
const std::vector<std::string> kActivationNames = {"gelu", "swiglu"};
const std::vector<std::string> kScoreNames = {"softmax", "sigmoid"};
const std::vector<std::string> kWireDtypeNames = {"fp32", "bf16"};

std::string check_job_name(const std::string& v) {
  if (v.empty()) return "missing; the job needs a name (it names runs/<name>)";
  if (v.front() == '.')  // ".", ".." and hidden names would put runs/<name> elsewhere or out of sight
    return fmt::format("'{}' starts with '.'; the name is a directory under runs/, so it must start with a "
                       "letter, digit, '_' or '-'", v);
  for (char c : v)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
      return fmt::format("'{}' has '{}'; allowed are letters, digits, '_', '-' and '.'", v, c);
  return "";
}


// =============================================================================================
// The dispatch family: names and type-owned keys from the dispatcher registry.
std::vector<TypeChoice> dispatch_choices() { return dispatcher_registry().choices(); }
// =============================================================================================

// The whole job spec. Keys appear in this order in job_spec_to_yaml; a typed section's own keys
// (from its registry) come after its common leaves.
const Schema& root_schema() {
  static const Schema job{{
      string_field("name", &JobSection::name, check_job_name),
      string_field("run_dir", &JobSection::run_dir),
      u64_field("seed", &JobSection::seed),
  }};
  static const Schema model{{
      int_field("vocab_size", &ModelSpec::vocab_size, 1, 65536),
      int_field("d_model", &ModelSpec::d_model, 1),
      int_field("n_layers", &ModelSpec::n_layers, 1),
      int_field("n_heads", &ModelSpec::n_heads, 1),
      int_field("seq_len", &ModelSpec::seq_len, 1),
      enum_field("norm", &ModelSpec::norm, kNormNames),
      enum_field("activation", &ModelSpec::activation, kActivationNames),
      int_field("d_ff", &ModelSpec::d_ff, 1),
      real_field("init_std", &ModelSpec::init_std, kPositive),
  }};
  static const auto balancing_types = balancing_pass_registry().choices();
  static const Schema balancing = typed_schema(
      required(choice_field("type", &BalancingSpec::type, names_of(balancing_types))), {}, balancing_types);
  static const auto dispatch_types = dispatch_choices();
  static const auto compression_types = compression_choices();
  static const Schema compression = typed_schema(
      choice_field("type", &CompressionSpec::type, names_of(compression_types)), {}, compression_types);
  static const Schema dispatch =
      typed_schema(choice_field("type", &DispatchSpec::type, names_of(dispatch_types)),
                   {enum_field("wire_dtype", &DispatchSpec::wire_dtype, kWireDtypeNames),
                    section_field("compression", &DispatchSpec::compression, &compression)},
                   dispatch_types);
  static const Schema moe{{
      int_field("num_experts", &MoeSpec::num_experts, 1),
      int_field("top_k", &MoeSpec::top_k, 1),
      int_field("d_ff_expert", &MoeSpec::d_ff_expert, 1),
      enum_field("score", &MoeSpec::score, kScoreNames),
      bool_field("normalize_topk", &MoeSpec::normalize_topk),
      int_field("num_shared_experts", &MoeSpec::num_shared_experts, 0),
      int_field("every_n_layers", &MoeSpec::every_n_layers, 1),
      real_field("capacity_factor", &MoeSpec::capacity_factor, kNonNegative),
      int_field("max_nodes_per_token", &MoeSpec::max_nodes_per_token, 0),
      int_field("routing_nodes", &MoeSpec::routing_nodes, 0),
      string_field("force_routing", &MoeSpec::force_routing,
                   [](const std::string& v) { return parse_force_routing(v, nullptr); }),
      list_field("balancing", &MoeSpec::balancing, &balancing),
      section_field("dispatch", &MoeSpec::dispatch, &dispatch),
  }};
  static const Schema fssdp{{
      int_field("max_materialized_experts", &FssdpSpec::max_materialized_experts, 0),
      int_field("load_window", &FssdpSpec::load_window, 1, 1000),
      bool_field("rematerialize", &FssdpSpec::rematerialize),
      int_field("reshard_interval", &FssdpSpec::reshard_interval, 0),
  }};
  static const Schema parallel{{
      choice_field("strategy", &ParallelSpec::strategy, sharding_strategy_registry().names()),
      int_field("ep", &ParallelSpec::ep, 0),  // 0 = all ranks, resolved by resolve_for_world
      int_field("ranks_per_node", &ParallelSpec::ranks_per_node, 0),
      section_field("fssdp", &ParallelSpec::fssdp, &fssdp),
  }};
  static const auto schedule_types = lr_schedule_registry().choices();
  static const Schema schedule =
      typed_schema(choice_field("type", &ScheduleSpec::type, names_of(schedule_types)), {}, schedule_types);
  static const auto optim_types = optimizer_registry().choices();
  static const Schema optim = typed_schema(choice_field("type", &OptimSpec::type, names_of(optim_types)),
                                           {
                                               real_field("lr", &OptimSpec::lr, kPositive),
                                               real_field("weight_decay", &OptimSpec::weight_decay, kNonNegative),
                                               real_field("grad_clip", &OptimSpec::grad_clip, kNonNegative),
                                               section_field("schedule", &OptimSpec::schedule, &schedule),
                                           },
                                           optim_types);
  static const auto data_types = data_source_registry().choices();
  static const Schema data = typed_schema(choice_field("type", &DataSpec::type, names_of(data_types)),
                                          {real_field("val_fraction", &DataSpec::val_fraction, kUnitOpen)},
                                          data_types);
  static const Schema train{{
      int_field("steps", &TrainSpec::steps, 1),
      int_field("micro_batch", &TrainSpec::micro_batch, 1),
      int_field("grad_accum", &TrainSpec::grad_accum, 1),
      int_field("log_interval", &TrainSpec::log_interval, 1),
      choice_field("nonfinite", &TrainSpec::nonfinite, {"abort", "skip"}),
      real_field("loss_spike_factor", &TrainSpec::loss_spike_factor, kNonNegative),
      int_field("global_batch", &TrainSpec::global_batch, 0),
  }};
  static const Schema eval{{
      int_field("interval", &EvalSpec::interval, 0),
      int_field("batches", &EvalSpec::batches, 1),
  }};
  static const Schema checkpoint{{
      int_field("interval", &CheckpointSpec::interval, 0),
      int_field("keep_last", &CheckpointSpec::keep_last, 0),
      choice_field("resume", &CheckpointSpec::resume, {"auto", "never"}),
  }};
  static const Schema metrics{{
      bool_field("jsonl", &MetricsSpec::jsonl),
  }};
  static const Schema link_model{{
      real_field("inter_node_gbps", &LinkModelSpec::inter_node_gbps, kNonNegative),
      real_field("inter_node_latency_us", &LinkModelSpec::inter_node_latency_us, kNonNegative),
  }};
  static const Schema comm{{
      real_field("timeout_s", &CommSpec::timeout_s, kNonNegative),  // 0 = no watchdog
      section_field("link_model", &CommSpec::link_model, &link_model),
  }};
  static const Schema root{{
      section_field("job", &JobSpec::job, &job),
      section_field("model", &JobSpec::model, &model),
      section_field("moe", &JobSpec::moe, &moe),
      section_field("parallel", &JobSpec::parallel, &parallel),
      section_field("optim", &JobSpec::optim, &optim),
      section_field("data", &JobSpec::data, &data),
      section_field("train", &JobSpec::train, &train),
      section_field("eval", &JobSpec::eval, &eval),
      section_field("checkpoint", &JobSpec::checkpoint, &checkpoint),
      section_field("metrics", &JobSpec::metrics, &metrics),
      section_field("comm", &JobSpec::comm, &comm),
  }};
  return root;
}

// ---------------------------------------------------------------------------------------------
// Validation: ranges from the table, then the rules across fields.

void validate_impl(const JobSpec& s, const Locations* locs) {
  const Fail fail = [locs](std::initializer_list<std::string> paths, const std::string& msg) {
    // Name the origin of the first path set by --set (the latest change), else of the first path
    // given in the file, else of its enclosing section.
    std::string loc, file_loc;
    for (const auto& p : paths) {
      auto it = locs ? locs->find(p) : Locations::const_iterator();
      if (!locs || it == locs->end()) continue;
      if (it->second.rfind("--set ", 0) == 0) {
        loc = it->second;
        break;
      }
      if (file_loc.empty()) file_loc = it->second;
    }
    if (loc.empty()) loc = file_loc;
    if (loc.empty() && paths.size()) loc = locate(locs, *paths.begin());
    fail_collective(loc + msg);
  };
  check_map(root_schema(), &s, "", fail);

  const ModelSpec& m = s.model;
  if (m.d_model % m.n_heads != 0)
    fail({"model.d_model", "model.n_heads"},
         fmt::format("model.d_model ({}) is not divisible by model.n_heads ({})", m.d_model, m.n_heads));

  const MoeSpec& moe = s.moe;
  if (moe.top_k > moe.num_experts)
    fail({"moe.top_k", "moe.num_experts"},
         fmt::format("moe.top_k ({}) is larger than moe.num_experts ({}); use 1..{}", moe.top_k,
                     moe.num_experts, moe.num_experts));
  if (moe.every_n_layers > m.n_layers)
    fail({"moe.every_n_layers", "model.n_layers"},
         fmt::format("moe.every_n_layers ({}) is larger than model.n_layers ({}): the model would have no "
                     "MoE layer; use 1..{}", moe.every_n_layers, m.n_layers, m.n_layers));
  if (moe.top_k == 1 && moe.normalize_topk)
    fail({"moe.normalize_topk", "moe.top_k"},
         "moe.normalize_topk: true with moe.top_k 1 makes every combine weight 1, so the router gets no "
         "gradient from the language-model loss; set moe.normalize_topk: false (Switch-style top-1)");
  if (moe.max_nodes_per_token > 0 && moe.force_routing != "none")
    fail({"moe.force_routing", "moe.max_nodes_per_token"},
         "moe.force_routing replaces the top-k choice, so moe.max_nodes_per_token would limit nothing; set one of "
         "them (moe.force_routing: none or moe.max_nodes_per_token: 0)");
  if (moe.max_nodes_per_token > 0 && moe.routing_nodes > 0)
    if (const std::string why = node_limit_problem(moe); !why.empty())
      fail({"moe.max_nodes_per_token", "moe.routing_nodes"}, why);
  for (size_t i = 0; i < moe.balancing.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (moe.balancing[i].type == moe.balancing[j].type)
        fail({fmt::format("moe.balancing.{}.type", i)},
             fmt::format("moe.balancing.{}.type: '{}' is already moe.balancing.{}; list each pass once", i,
                         moe.balancing[i].type, j));

  const CompressionSpec& cmp = moe.dispatch.compression;
  if (cmp.type == "lsh" && (cmp.buckets_per_hash % 2 != 0 || cmp.buckets_per_hash > 2 * m.d_model))
    fail({"moe.dispatch.compression.buckets_per_hash", "model.d_model"},
         fmt::format("moe.dispatch.compression.buckets_per_hash ({}) must be even and at most 2 x model.d_model "
                     "({}): a cross-polytope hash codes argmax over [Rx; -Rx] with R of b/2 rows; use 2, 4, ..., {}",
                     cmp.buckets_per_hash, 2 * m.d_model, 2 * m.d_model));

  const ParallelSpec& par = s.parallel;
  if (par.strategy == "dp" && par.ep != 1)
    fail({"parallel.ep", "parallel.strategy"},
         fmt::format("parallel.ep ({}) must be 1 with parallel.strategy dp (use strategy ep to split experts)",
                     par.ep));
  if (par.ep > 0 && moe.num_experts % par.ep != 0)
    fail({"moe.num_experts", "parallel.ep"},
         fmt::format("moe.num_experts ({}) is not divisible by parallel.ep ({})", moe.num_experts, par.ep));
  if (par.strategy != "dp" && par.ep > 1 && moe.dispatch.type == "local")
    fail({"moe.dispatch.type", "parallel.ep"},
         fmt::format("moe.dispatch.type local cannot reach experts on other ranks (parallel.ep = {}); "
                     "set moe.dispatch.type: flat or auto",
                     par.ep));

  const DataSpec& d = s.data;
  if ((d.type == "text" || d.type == "tokens") && d.path.empty())
    fail({"data.path", "data.type"},
         fmt::format("data.path: missing; data.type {} reads {}", d.type,
                     d.type == "text" ? "a file" : "a shard file or a directory of *.bin shards"));
  if ((d.type == "synthetic" || d.type == "text") && m.vocab_size < 256)
    fail({"model.vocab_size", "data.type"},
         fmt::format("model.vocab_size ({}) is smaller than 256, but data.type {} produces byte tokens 0..255",
                     m.vocab_size, d.type));
  if (s.eval.interval > 0 && d.val_fraction <= 0)
    fail({"eval.interval", "data.val_fraction"},
         fmt::format("eval.interval ({}) needs validation data, but data.val_fraction is 0; set "
                     "data.val_fraction > 0 or eval.interval: 0",
                     s.eval.interval));

  if (static_cast<int64_t>(s.eval.batches) * s.train.grad_accum > INT_MAX)
    fail({"eval.batches", "train.grad_accum"},
         fmt::format("eval.batches ({}) × train.grad_accum ({}) = {} micro-batches per validation pass is more than "
                     "{}; lower eval.batches",
                     s.eval.batches, s.train.grad_accum, static_cast<int64_t>(s.eval.batches) * s.train.grad_accum,
                     INT_MAX));

  if (s.train.global_batch > 0 && s.train.global_batch % s.train.micro_batch != 0)
    fail({"train.global_batch", "train.micro_batch"},
         fmt::format("train.global_batch ({}) is not divisible by train.micro_batch ({})", s.train.global_batch,
                     s.train.micro_batch));
}

// Where the documents of a YAML stream start. YAML::LoadAll would tell how many there are, but
// yaml-cpp 0.7's LoadAll never ends on some invalid streams (a stray ',' at the top level,
// jbeder/yaml-cpp#1040, fixed upstream after 0.7): it adds empty documents until memory runs out.
struct DocumentStarts final : YAML::EventHandler {
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

JobSpec load_impl(const std::string& text, const std::string& origin_name,
                  const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    std::istringstream stream(text);
    YAML::Parser parser(stream);
    DocumentStarts docs;  // at most two: one is a job spec, two are an error
    while (docs.marks.size() < 2 && parser.HandleNextDocument(docs)) {}
    if (docs.marks.size() > 1) {  // yaml-cpp's Load would read the first and ignore the rest, bad keys included
      const YAML::Mark at = docs.marks[1];
      const std::string where = fmt::format("{}:{}{}", origin_name, at.line >= 0 ? std::to_string(at.line + 1) : std::string("?"),
                                            at.column >= 0 ? ":" + std::to_string(at.column + 1) : std::string());
      if (at.pos == docs.marks[0].pos)  // a document that starts where the last one did: no progress
        fail_collective(fmt::format("{}: YAML syntax error: unexpected '{}' (a job spec is one map of keys)", where,
                                    at.pos >= 0 && at.pos < static_cast<int>(text.size()) ? text[at.pos] : '?'));
      fail_collective(fmt::format("{}: a second YAML document (after '---' or '...'); a job spec is one "
                                  "document: merge it into the first or remove it",
                                  where));
    }
    if (!docs.marks.empty()) root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    fail_collective(
        fmt::format("{}:{}:{}: YAML syntax error: {}", origin_name, e.mark.line + 1, e.mark.column + 1, e.msg));
  } catch (const YAML::Exception& e) {
    fail_collective(fmt::format("{}: cannot read YAML: {}", origin_name, e.what()));
  }
  JobSpec spec;
  Locations locs;
  locs[""] = origin_name + ": ";
  const Origin origin{.file = origin_name, .override_text = ""};
  parse_map(root_schema(), &spec, root, "", origin, locs, YAML::Mark::null_mark());
  for (const auto& o : overrides) apply_override(root_schema(), &spec, o, locs);
  check_owners(root_schema(), &spec, "", locs);  // after every --set: the type may come last
  if (spec.job.run_dir.empty()) spec.job.run_dir = "runs/" + spec.job.name;
  validate_impl(spec, &locs);
  return spec;
}

}  // namespace

JobSpec load_job_spec(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    fail_collective(fmt::format("{}: job spec file not found", path));
  if (!std::filesystem::is_regular_file(path, ec))
    fail_collective(fmt::format("{}: job spec is not a regular file", path));
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_collective(fmt::format("{}: cannot open job spec: {}", path, std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail_collective(fmt::format("{}: cannot read job spec: {}", path, std::strerror(errno)));
  return load_impl(text.str(), path, overrides);
}

JobSpec load_job_spec_from_string(const std::string& yaml, const std::vector<std::string>& overrides,
                                  const std::string& origin) {
  return load_impl(yaml, origin, overrides);
}

void validate_job_spec(const JobSpec& spec) { validate_impl(spec, nullptr); }

void resolve_for_world(JobSpec& spec, int world_size) {
  if (spec.parallel.ep != 0) {
    validate_for_world(spec, world_size);
  } else {
    spec.parallel.ep = world_size;
    try {
      validate_for_world(spec, world_size);
    } catch (const CollectiveError& e) {  // say where the resolved value came from
      fail_collective(fmt::format("{} (parallel.ep 0 = all {} ranks)", e.what(), world_size));
    }
  }
  // validate_for_world checked that micro_batch × world divides global_batch.
  if (spec.train.global_batch > 0)
    spec.train.grad_accum = spec.train.global_batch / (spec.train.micro_batch * world_size);
}

void validate_for_world(const JobSpec& spec, int world_size) {
  if (spec.parallel.ep == 0 && world_size >= 1) {  // check what resolve_for_world will run
    JobSpec resolved = spec;
    resolve_for_world(resolved, world_size);
    return;
  }
  validate_job_spec(spec);
  MOEMPI_CHECK_ALL(world_size >= 1, "world size {} must be >= 1", world_size);
  const ParallelSpec& p = spec.parallel;
  auto divisors = [world_size] {
    std::vector<std::string> out;
    for (int d = 1; d <= world_size; ++d)
      if (world_size % d == 0) out.push_back(std::to_string(d));
    return join(out);
  };
  MOEMPI_CHECK_ALL(world_size % p.ep == 0,
                   "parallel.ep ({}) does not divide the world size ({}); use one of {}", p.ep, world_size,
                   divisors());
  const TrainSpec& t = spec.train;
  if (t.global_batch > 0) {
    const int64_t per_micro_step = static_cast<int64_t>(t.micro_batch) * world_size;
    MOEMPI_CHECK_ALL(t.global_batch % per_micro_step == 0,
                     "train.global_batch ({}) is not a multiple of train.micro_batch ({}) × world size ({}) = {}, so "
                     "train.grad_accum cannot be derived; set train.global_batch to a multiple of {} or change "
                     "train.micro_batch",
                     t.global_batch, t.micro_batch, world_size, per_micro_step, per_micro_step);
  }
  MOEMPI_CHECK_ALL(p.strategy != "fssdp" || p.ep == world_size,
                   "parallel.ep ({}) must be the world size ({}) with parallel.strategy fssdp (every rank owns a "
                   "shard of the experts); use 0 = all ranks",
                   p.ep, world_size);
  MOEMPI_CHECK_ALL(p.ranks_per_node == 0 || world_size % p.ranks_per_node == 0,
                   "parallel.ranks_per_node ({}) does not divide the world size ({}); use one of {}, or 0 "
                   "for the real nodes",
                   p.ranks_per_node, world_size, divisors());
}

std::string job_spec_to_yaml(const JobSpec& spec) {
  YAML::Emitter e;
  e.SetIndent(2);
  emit_map(root_schema(), &spec, e);
  MOEMPI_CHECK_ONE(e.good(), "job_spec_to_yaml: YAML emitter failed: {}", e.GetLastError());
  return std::string("# moempi job spec, fully resolved\n") + e.c_str() + "\n";
}

namespace {
// Every leaf of a YAML tree as (path, value text), in document order.
void flatten(const YAML::Node& n, const std::string& path, std::vector<std::pair<std::string, std::string>>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n) flatten(kv.second, join_path(path, kv.first.Scalar()), out);
  } else if (n.IsSequence()) {
    if (n.size() == 0) out.emplace_back(path, "[]");
    for (size_t i = 0; i < n.size(); ++i) flatten(n[i], join_path(path, std::to_string(i)), out);
  } else {
    out.emplace_back(path, n.IsNull() ? std::string("null") : n.Scalar());
  }
}
}  // namespace

std::string describe_spec_difference(const std::string& a_yaml, const std::string& b_yaml,
                                     const std::string& a_name, const std::string& b_name) {
  std::vector<std::pair<std::string, std::string>> a, b;
  try {
    flatten(YAML::Load(a_yaml), "", a);
    flatten(YAML::Load(b_yaml), "", b);
  } catch (const YAML::Exception& e) {
    return fmt::format("the printed specs do not parse ({})", e.what());
  }
  std::map<std::string, std::string> bmap(b.begin(), b.end()), amap(a.begin(), a.end());
  std::vector<std::string> keys;
  std::string first;
  auto note = [&](const std::string& key, const std::string& va, const std::string& vb) {
    if (keys.empty()) first = fmt::format("{}: {} on {}, {} on {}", key, va, a_name, vb, b_name);
    keys.push_back(key);
  };
  for (const auto& [key, va] : a) {
    auto it = bmap.find(key);
    if (it == bmap.end()) note(key, va, "(absent)");
    else if (it->second != va) note(key, va, it->second);
  }
  for (const auto& [key, vb] : b)
    if (!amap.count(key)) note(key, "(absent)", vb);
  if (keys.empty()) return "the specs differ in formatting only";
  if (keys.size() == 1) return first;
  std::vector<std::string> rest(keys.begin() + 1, keys.begin() + std::min<size_t>(keys.size(), 8));
  return fmt::format("{} (also differ: {}{})", first, join(rest), keys.size() > 8 ? ", ..." : "");
}

const char* name_of(NormType v) { return kNormNames.at(static_cast<size_t>(v)).c_str(); }
const char* name_of(Activation v) { return kActivationNames.at(static_cast<size_t>(v)).c_str(); }
const char* name_of(ScoreFn v) { return kScoreNames.at(static_cast<size_t>(v)).c_str(); }

}  // namespace moempi
