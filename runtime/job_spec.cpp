// Job spec parsing, validation and printing, driven by one schema table (root_schema) that names
// every field of config.h with its YAML key, type, range and allowed values (dispatcher and
// balancing-pass names come from their registries): the parser, the override walker, the validator
// and the printer all read the same table, and static_asserts below fail the build when config.h
// gains a field the table lacks. Tests: tests/job_spec_test.cpp.
#include "runtime/job_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "models/moe/balancing_pass.h"
#include "parallel/dispatcher_registry.h"
#include "runtime/core/error.h"

namespace moempi {
namespace {

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
MOEMPI_SCHEMA_COVERS(BalancingSpec, 4);
MOEMPI_SCHEMA_COVERS(DispatchSpec, 1);
MOEMPI_SCHEMA_COVERS(MoeSpec, 10);
MOEMPI_SCHEMA_COVERS(ParallelSpec, 3);
MOEMPI_SCHEMA_COVERS(ScheduleSpec, 3);
MOEMPI_SCHEMA_COVERS(OptimSpec, 9);
MOEMPI_SCHEMA_COVERS(DataSpec, 3);
MOEMPI_SCHEMA_COVERS(TrainSpec, 4);
MOEMPI_SCHEMA_COVERS(EvalSpec, 2);
MOEMPI_SCHEMA_COVERS(CheckpointSpec, 1);
MOEMPI_SCHEMA_COVERS(MetricsSpec, 1);
MOEMPI_SCHEMA_COVERS(CommSpec, 1);
MOEMPI_SCHEMA_COVERS(JobSpec, 11);
#undef MOEMPI_SCHEMA_COVERS

// ---------------------------------------------------------------------------------------------
// Small text helpers.

std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

// Edits (insert, delete, substitute, swap two neighbours) from a to b.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// "; did you mean 'top_k'?" when one candidate is close, else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::numeric_limits<size_t>::max();
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  const size_t limit = std::max<size_t>(1, std::min<size_t>(3, (word.size() + 1) / 3));
  return best_d <= limit ? fmt::format("; did you mean '{}'?", best) : "";
}

// What a node holds, for "got ..." in messages.
std::string got(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "nothing";
  if (n.IsScalar()) return fmt::format("'{}'", n.Scalar());
  if (n.IsSequence()) return "a list";
  return "a map";
}

// Shortest text that reads back to the same value.
std::string format_real(float v) { return fmt::format("{}", v); }
std::string format_real(double v) { return fmt::format("{}", v); }

// ---------------------------------------------------------------------------------------------
// Where a value came from: a position in a file or a --set; "" for a default.

struct Origin {
  std::string file;           // values are at node marks in this file (or "<string>")
  std::string override_text;  // or: the value came from `--set <override_text>`

  std::string prefix() const {
    return override_text.empty() ? file + ": " : fmt::format("--set {}: ", override_text);
  }
  std::string at(const YAML::Node& node, const YAML::Mark& fallback) const {
    if (!override_text.empty()) return prefix();
    YAML::Mark m = node.IsDefined() && !node.IsNull() ? node.Mark() : YAML::Mark::null_mark();
    if (m.is_null()) m = fallback;
    if (m.is_null()) return prefix();
    return fmt::format("{}:{}:{}: ", file, m.line + 1, m.column + 1);
  }
};

// YAML path -> message prefix of its origin ("file:line:col: " or "--set ...: "); "" holds the
// prefix for values that were left at their defaults.
using Locations = std::map<std::string, std::string>;

std::string locate(const Locations* locs, std::string path) {
  if (!locs) return "";
  while (true) {
    if (auto it = locs->find(path); it != locs->end()) return it->second;
    if (path.empty()) return "";
    const size_t dot = path.rfind('.');
    path = dot == std::string::npos ? "" : path.substr(0, dot);
  }
}

// Thrown by a leaf parser; the caller adds origin and path.
struct BadValue {
  std::string what;
};

// ---------------------------------------------------------------------------------------------
// The schema: one Field per YAML key, over untyped pointers made by the typed factories below.

struct Schema;
enum class Kind { kLeaf, kSection, kList };

struct Field {
  std::string key;
  Kind kind = Kind::kLeaf;
  bool required = false;  // must appear in its map when the map is given in YAML
  std::string allowed;    // leaf: what is allowed, for the "missing" message
  // kLeaf: on the parent struct
  std::function<void(void*, const YAML::Node&)> parse;     // throws BadValue on a wrong type
  std::function<std::string(const void*)> check;           // "" or what is wrong with the value
  std::function<void(const void*, YAML::Emitter&)> emit;
  // kSection / kList
  const Schema* sub = nullptr;
  std::function<void*(void*)> member;  // the sub-struct, or the std::vector for a list
  std::function<size_t(const void*)> list_size;
  std::function<void*(void*, size_t)> list_at;
  std::function<void(void*, size_t)> list_resize;
};

struct Schema {
  std::vector<Field> fields;

  const Field* find(const std::string& key) const {
    for (const auto& f : fields)
      if (f.key == key) return &f;
    return nullptr;
  }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const auto& f : fields) out.push_back(f.key);
    return out;
  }
};

template <class P, class M>
M& member_of(void* parent, M P::*m) {
  return static_cast<P*>(parent)->*m;
}
template <class P, class M>
const M& member_of(const void* parent, M P::*m) {
  return static_cast<const P*>(parent)->*m;
}

std::string scalar_or_throw(const YAML::Node& n, const char* expected) {
  if (!n.IsDefined() || !n.IsScalar()) throw BadValue{fmt::format("expected {}, got {}", expected, got(n))};
  return n.Scalar();
}

// Integer text: optional sign and digits only ("1.5", "1e3", "0x10" are not integers).
bool is_integer_text(const std::string& s) {
  size_t i = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

std::string int_range_text(int64_t lo, int64_t hi) {
  if (hi == INT_MAX) return fmt::format("an integer >= {}", lo);
  if (lo == hi) return fmt::format("{}", lo);
  return fmt::format("an integer in [{}, {}]", lo, hi);
}

template <class P>
Field int_field(const char* key, int P::*m, int64_t lo, int64_t hi = INT_MAX) {
  Field f;
  f.key = key;
  f.allowed = int_range_text(lo, hi);
  f.parse = [m, lo, hi](void* p, const YAML::Node& n) {
    std::string s = scalar_or_throw(n, "an integer");
    if (!is_integer_text(s)) throw BadValue{fmt::format("expected an integer, got '{}'", s)};
    if (s[0] == '+') s.erase(0, 1);
    int64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || v < INT_MIN || v > INT_MAX)
      throw BadValue{fmt::format("expected {}, got '{}'", int_range_text(lo, hi), s)};
    member_of(p, m) = static_cast<int>(v);
  };
  f.check = [m, lo, hi](const void* p) -> std::string {
    const int v = member_of(p, m);
    if (v < lo || v > hi) return fmt::format("expected {}, got {}", int_range_text(lo, hi), v);
    return "";
  };
  f.emit = [m](const void* p, YAML::Emitter& e) { e << fmt::format("{}", member_of(p, m)); };
  return f;
}

template <class P>
Field u64_field(const char* key, uint64_t P::*m) {
  Field f;
  f.key = key;
  f.allowed = "an integer >= 0";
  f.parse = [m](void* p, const YAML::Node& n) {
    std::string s = scalar_or_throw(n, "an integer >= 0");
    if (!is_integer_text(s) || s[0] == '-') throw BadValue{fmt::format("expected an integer >= 0, got '{}'", s)};
    if (s[0] == '+') s.erase(0, 1);
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc())
      throw BadValue{fmt::format("expected an integer in [0, {}], got '{}'", UINT64_MAX, s)};
    member_of(p, m) = v;
  };
  f.check = [](const void*) { return std::string(); };
  f.emit = [m](const void* p, YAML::Emitter& e) { e << fmt::format("{}", member_of(p, m)); };
  return f;
}

// A real interval; open ends exclude the bound.
struct Interval {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;

  bool contains(double v) const {
    return std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
  std::string text() const {
    const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
    if (has_lo && has_hi)
      return fmt::format("a number in {}{}, {}{}", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
    if (has_lo) return fmt::format("a number {} {}", lo_open ? ">" : ">=", lo);
    if (has_hi) return fmt::format("a number {} {}", hi_open ? "<" : "<=", hi);
    return "a finite number";
  }
};
const Interval kPositive{0, std::numeric_limits<double>::infinity(), true, false};
const Interval kNonNegative{0, std::numeric_limits<double>::infinity(), false, false};
const Interval kUnitOpen{0, 1, false, true};   // [0, 1)
const Interval kUnitClosed{0, 1, false, false};  // [0, 1]

template <class P, class R>
Field real_field(const char* key, R P::*m, Interval range) {
  static_assert(std::is_same_v<R, float> || std::is_same_v<R, double>);
  Field f;
  f.key = key;
  f.allowed = range.text();
  f.parse = [m, range](void* p, const YAML::Node& n) {
    const std::string s = scalar_or_throw(n, "a number");
    // strtof / strtod directly, so that the shortest printed form reads back to the same value.
    errno = 0;
    char* end = nullptr;
    R v;
    if constexpr (std::is_same_v<R, float>)
      v = std::strtof(s.c_str(), &end);
    else
      v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || std::isspace(static_cast<unsigned char>(s[0])))
      throw BadValue{fmt::format("expected a number, got '{}'", s)};
    if (!std::isfinite(v) || errno == ERANGE)
      throw BadValue{fmt::format("expected {}, got '{}'", range.text(), s)};
    member_of(p, m) = v;
  };
  f.check = [m, range](const void* p) -> std::string {
    const R v = member_of(p, m);
    if (!range.contains(v)) return fmt::format("expected {}, got {}", range.text(), format_real(v));
    return "";
  };
  f.emit = [m](const void* p, YAML::Emitter& e) { e << format_real(member_of(p, m)); };
  return f;
}

template <class P>
Field bool_field(const char* key, bool P::*m) {
  Field f;
  f.key = key;
  f.allowed = "true or false";
  f.parse = [m](void* p, const YAML::Node& n) {
    const std::string s = scalar_or_throw(n, "true or false");
    if (s == "true" || s == "True" || s == "TRUE")
      member_of(p, m) = true;
    else if (s == "false" || s == "False" || s == "FALSE")
      member_of(p, m) = false;
    else
      throw BadValue{fmt::format("expected true or false, got '{}'", s)};
  };
  f.check = [](const void*) { return std::string(); };
  f.emit = [m](const void* p, YAML::Emitter& e) { e << (member_of(p, m) ? "true" : "false"); };
  return f;
}

// A free string; `check` (optional) says what is wrong with a value or returns "".
template <class P>
Field string_field(const char* key, std::string P::*m,
                   std::function<std::string(const std::string&)> check = nullptr) {
  Field f;
  f.key = key;
  f.allowed = "a string";
  f.parse = [m](void* p, const YAML::Node& n) {
    if (n.IsDefined() && n.IsNull()) {
      member_of(p, m).clear();
      return;
    }
    member_of(p, m) = scalar_or_throw(n, "a string");
  };
  f.check = [m, check](const void* p) { return check ? check(member_of(p, m)) : std::string(); };
  f.emit = [m](const void* p, YAML::Emitter& e) { e << YAML::DoubleQuoted << member_of(p, m); };
  return f;
}

std::string not_one_of(const std::string& v, const std::vector<std::string>& choices) {
  if (v.empty()) return fmt::format("missing; expected one of {}", join(choices));
  return fmt::format("'{}' is not one of {}{}", v, join(choices), did_you_mean(v, choices));
}

// A string that must be one of `choices` (a name looked up elsewhere, e.g. a registry).
template <class P>
Field choice_field(const char* key, std::string P::*m, std::vector<std::string> choices) {
  Field f = string_field(key, m, [choices](const std::string& v) {
    return std::find(choices.begin(), choices.end(), v) == choices.end() ? not_one_of(v, choices)
                                                                         : std::string();
  });
  f.allowed = "one of " + join(choices);
  f.emit = [m](const void* p, YAML::Emitter& e) { e << member_of(p, m); };
  return f;
}

// An enum class whose values are 0, 1, ... in the order of `names`.
template <class P, class E>
Field enum_field(const char* key, E P::*m, std::vector<std::string> names) {
  Field f;
  f.key = key;
  f.allowed = "one of " + join(names);
  f.parse = [m, names](void* p, const YAML::Node& n) {
    const std::string s = scalar_or_throw(n, ("one of " + join(names)).c_str());
    auto it = std::find(names.begin(), names.end(), s);
    if (it == names.end()) throw BadValue{not_one_of(s, names)};
    member_of(p, m) = static_cast<E>(it - names.begin());
  };
  f.check = [m, names](const void* p) -> std::string {
    const auto i = static_cast<size_t>(member_of(p, m));
    return i < names.size() ? "" : fmt::format("enum value {} out of range", i);
  };
  f.emit = [m, names](const void* p, YAML::Emitter& e) {
    e << names.at(static_cast<size_t>(member_of(p, m)));
  };
  return f;
}

template <class P, class S>
Field section_field(const char* key, S P::*m, const Schema* sub) {
  Field f;
  f.key = key;
  f.kind = Kind::kSection;
  f.sub = sub;
  f.member = [m](void* p) -> void* { return &member_of(p, m); };
  return f;
}

template <class P, class E>
Field list_field(const char* key, std::vector<E> P::*m, const Schema* sub) {
  Field f;
  f.key = key;
  f.kind = Kind::kList;
  f.sub = sub;
  f.member = [m](void* p) -> void* { return &member_of(p, m); };
  f.list_size = [](const void* l) { return static_cast<const std::vector<E>*>(l)->size(); };
  f.list_at = [](void* l, size_t i) -> void* { return &(*static_cast<std::vector<E>*>(l))[i]; };
  f.list_resize = [](void* l, size_t n) { static_cast<std::vector<E>*>(l)->resize(n); };
  return f;
}

Field required(Field f) {
  f.required = true;
  return f;
}

const std::vector<std::string> kNormNames = {"layernorm", "rmsnorm"};
const std::vector<std::string> kActivationNames = {"gelu", "swiglu"};
const std::vector<std::string> kScoreNames = {"softmax", "sigmoid"};

std::string check_job_name(const std::string& v) {
  if (v.empty()) return "missing; the job needs a name (it names runs/<name>)";
  for (char c : v)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.')
      return fmt::format("'{}' has '{}'; allowed are letters, digits, '_', '-' and '.'", v, c);
  return "";
}

// The whole job spec. Keys appear in this order in job_spec_to_yaml.
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
  static const Schema balancing{{
      required(choice_field("type", &BalancingSpec::type, balancing_pass_types())),  // the registry
      real_field("coeff", &BalancingSpec::coeff, kNonNegative),
      real_field("update_rate", &BalancingSpec::update_rate, kNonNegative),
      choice_field("update", &BalancingSpec::update, {"sign", "proportional"}),
  }};
  static const Schema dispatch{{
      choice_field("type", &DispatchSpec::type, dispatcher_names()),  // the registry
  }};
  static const Schema moe{{
      int_field("num_experts", &MoeSpec::num_experts, 1),
      int_field("top_k", &MoeSpec::top_k, 1),
      int_field("d_ff_expert", &MoeSpec::d_ff_expert, 1),
      enum_field("score", &MoeSpec::score, kScoreNames),
      bool_field("normalize_topk", &MoeSpec::normalize_topk),
      int_field("num_shared_experts", &MoeSpec::num_shared_experts, 0),
      int_field("every_n_layers", &MoeSpec::every_n_layers, 1),
      real_field("capacity_factor", &MoeSpec::capacity_factor, kNonNegative),
      list_field("balancing", &MoeSpec::balancing, &balancing),
      section_field("dispatch", &MoeSpec::dispatch, &dispatch),
  }};
  static const Schema parallel{{
      choice_field("strategy", &ParallelSpec::strategy, {"dp", "ep"}),
      int_field("ep", &ParallelSpec::ep, 0),  // 0 = all ranks, resolved by resolve_for_world
      int_field("ranks_per_node", &ParallelSpec::ranks_per_node, 0),
  }};
  static const Schema schedule{{
      choice_field("type", &ScheduleSpec::type, {"constant", "warmup_cosine", "warmup_linear"}),
      int_field("warmup_steps", &ScheduleSpec::warmup_steps, 0),
      real_field("min_lr_ratio", &ScheduleSpec::min_lr_ratio, kUnitClosed),
  }};
  static const Schema optim{{
      choice_field("type", &OptimSpec::type, {"adamw", "sgd"}),
      real_field("lr", &OptimSpec::lr, kPositive),
      real_field("weight_decay", &OptimSpec::weight_decay, kNonNegative),
      real_field("beta1", &OptimSpec::beta1, kUnitOpen),
      real_field("beta2", &OptimSpec::beta2, kUnitOpen),
      real_field("eps", &OptimSpec::eps, kPositive),
      real_field("momentum", &OptimSpec::momentum, kUnitOpen),
      real_field("grad_clip", &OptimSpec::grad_clip, kNonNegative),
      section_field("schedule", &OptimSpec::schedule, &schedule),
  }};
  static const Schema data{{
      choice_field("type", &DataSpec::type, {"synthetic", "text", "tokens"}),
      string_field("path", &DataSpec::path),
      real_field("val_fraction", &DataSpec::val_fraction, kUnitOpen),
  }};
  static const Schema train{{
      int_field("steps", &TrainSpec::steps, 1),
      int_field("micro_batch", &TrainSpec::micro_batch, 1),
      int_field("grad_accum", &TrainSpec::grad_accum, 1),
      int_field("log_interval", &TrainSpec::log_interval, 1),
  }};
  static const Schema eval{{
      int_field("interval", &EvalSpec::interval, 0),
      int_field("batches", &EvalSpec::batches, 1),
  }};
  static const Schema checkpoint{{
      int_field("interval", &CheckpointSpec::interval, 0),
  }};
  static const Schema metrics{{
      bool_field("jsonl", &MetricsSpec::jsonl),
  }};
  static const Schema comm{{
      real_field("timeout_s", &CommSpec::timeout_s, kPositive),
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
// Parsing.

std::string unknown_key(const Schema& s, const std::string& section, const std::string& key) {
  const auto keys = s.keys();
  return fmt::format("{}: unknown key '{}' {} (allowed: {}){}", join_path(section, key), key,
                     section.empty() ? "at the top level" : "in section " + section, join(keys),
                     did_you_mean(key, keys));
}

void parse_field(const Field& f, void* parent, const YAML::Node& node, const std::string& path,
                 const Origin& origin, Locations& locs, const YAML::Mark& key_mark);

// Reads the map `node` into `obj` (keys not given keep their values).
void parse_map(const Schema& s, void* obj, const YAML::Node& node, const std::string& path,
               const Origin& origin, Locations& locs, const YAML::Mark& key_mark) {
  const std::string loc = origin.at(node, key_mark);
  if (!path.empty()) locs[path] = loc;
  if (!node.IsDefined() || node.IsNull()) {
    for (const auto& f : s.fields)
      if (f.required)
        fail_collective(fmt::format("{}{}: missing; expected {}", loc, join_path(path, f.key), f.allowed));
    return;
  }
  if (!node.IsMap())
    fail_collective(fmt::format("{}{}: expected a map with keys {}, got {}", loc,
                                path.empty() ? "job spec" : path, join(s.keys()), got(node)));
  std::set<std::string> seen;
  for (const auto& kv : node) {
    const YAML::Node& key_node = kv.first;
    const std::string kloc = origin.at(key_node, key_node.Mark());
    if (!key_node.IsScalar())
      fail_collective(fmt::format("{}{}: keys must be names, got {}", kloc, path.empty() ? "job spec" : path,
                                  got(key_node)));
    const std::string key = key_node.Scalar();
    const std::string here = join_path(path, key);
    if (!seen.insert(key).second) fail_collective(fmt::format("{}{}: duplicate key '{}'", kloc, here, key));
    const Field* f = s.find(key);
    if (!f) fail_collective(kloc + unknown_key(s, path, key));
    parse_field(*f, obj, kv.second, here, origin, locs, key_node.Mark());
  }
  for (const auto& f : s.fields)
    if (f.required && !seen.count(f.key))
      fail_collective(fmt::format("{}{}: missing; expected {}", loc, join_path(path, f.key), f.allowed));
}

void parse_field(const Field& f, void* parent, const YAML::Node& node, const std::string& path,
                 const Origin& origin, Locations& locs, const YAML::Mark& key_mark) {
  switch (f.kind) {
    case Kind::kLeaf: {
      const std::string loc = origin.at(node, key_mark);
      locs[path] = loc;
      try {
        f.parse(parent, node);
      } catch (const BadValue& e) {
        fail_collective(fmt::format("{}{}: {}", loc, path, e.what));
      }
      if (std::string what = f.check(parent); !what.empty())
        fail_collective(fmt::format("{}{}: {}", loc, path, what));
      return;
    }
    case Kind::kSection:
      parse_map(*f.sub, f.member(parent), node, path, origin, locs, key_mark);
      return;
    case Kind::kList: {
      const std::string loc = origin.at(node, key_mark);
      locs[path] = loc;
      void* list = f.member(parent);
      f.list_resize(list, 0);
      if (!node.IsDefined() || node.IsNull()) return;
      if (!node.IsSequence())
        fail_collective(fmt::format("{}{}: expected a list of maps with keys {}, got {}", loc, path,
                                    join(f.sub->keys()), got(node)));
      f.list_resize(list, node.size());
      size_t i = 0;
      for (const auto& item : node) {
        parse_map(*f.sub, f.list_at(list, i), item, fmt::format("{}.{}", path, i), origin, locs,
                  node.Mark());
        ++i;
      }
      return;
    }
  }
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) return out;
    start = p + 1;
  }
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// Applies one "a.b.c=value" to `spec`, walking the schema; records the origin of what it sets.
void apply_override(JobSpec& spec, const std::string& text, Locations& locs) {
  const Origin origin{.file = "", .override_text = text};
  const size_t eq = text.find('=');
  const std::string path = eq == std::string::npos ? "" : trim(text.substr(0, eq));
  if (path.empty())
    fail_collective(fmt::format("--set {}: expected path=value, e.g. --set optim.lr=3e-4", text));
  const std::string value_text = text.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    fail_collective(fmt::format("{}{}: cannot read '{}' as a YAML value: {}", origin.prefix(), path,
                                value_text, e.msg));
  }
  const auto parts = split(path, '.');
  for (const auto& part : parts)
    if (part.empty())
      fail_collective(fmt::format("{}'{}' is not a valid path (keys joined by '.')", origin.prefix(), path));
  // Forget the origins of what this override replaces.
  for (auto it = locs.lower_bound(path); it != locs.end() && it->first.rfind(path, 0) == 0;) {
    const bool under = it->first.size() == path.size() || it->first[path.size()] == '.';
    it = under ? locs.erase(it) : std::next(it);
  }

  const Schema* schema = &root_schema();
  void* obj = &spec;
  std::string here;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string parent = here;
    here = join_path(parent, parts[i]);
    const Field* f = schema->find(parts[i]);
    if (!f) fail_collective(origin.prefix() + unknown_key(*schema, parent, parts[i]));
    if (i + 1 == parts.size()) {
      parse_field(*f, obj, value, here, origin, locs, YAML::Mark::null_mark());
      return;
    }
    if (f->kind == Kind::kLeaf)
      fail_collective(fmt::format("{}{}: is a value, not a section; cannot set {}", origin.prefix(), here, path));
    if (f->kind == Kind::kSection) {
      obj = f->member(obj);
      schema = f->sub;
      continue;
    }
    // A list: the next part is an index; index == size appends an entry.
    void* list = f->member(obj);
    const std::string& index_text = parts[++i];
    const size_t n = f->list_size(list);
    size_t index = 0;
    auto [end, ec] = std::from_chars(index_text.data(), index_text.data() + index_text.size(), index);
    if (ec != std::errc() || end != index_text.data() + index_text.size())
      fail_collective(fmt::format("{}{}: expected a list index (0..{}) after {}, got '{}'", origin.prefix(),
                                  here, n, here, index_text));
    if (index > n)
      fail_collective(fmt::format("{}{}.{}: index out of range; {} has {} entries (set index {} to append one)",
                                  origin.prefix(), here, index, here, n, n));
    if (index == n) f->list_resize(list, n + 1);
    obj = f->list_at(list, index);
    schema = f->sub;
    here = fmt::format("{}.{}", here, index);
    locs[here] = origin.prefix();
    if (i + 1 == parts.size()) {
      parse_map(*schema, obj, value, here, origin, locs, YAML::Mark::null_mark());
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Validation.

using Fail = std::function<void(std::initializer_list<std::string> paths, const std::string& msg)>;

// Ranges and enum values of every leaf.
void check_map(const Schema& s, const void* obj, const std::string& path, const Fail& fail) {
  for (const auto& f : s.fields) {
    const std::string here = join_path(path, f.key);
    void* mutable_obj = const_cast<void*>(obj);  // the accessors are shared with the parser
    switch (f.kind) {
      case Kind::kLeaf:
        if (std::string what = f.check(obj); !what.empty()) fail({here}, here + ": " + what);
        break;
      case Kind::kSection:
        check_map(*f.sub, f.member(mutable_obj), here, fail);
        break;
      case Kind::kList: {
        void* list = f.member(mutable_obj);
        for (size_t i = 0; i < f.list_size(list); ++i)
          check_map(*f.sub, f.list_at(list, i), fmt::format("{}.{}", here, i), fail);
        break;
      }
    }
  }
}

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
  for (size_t i = 0; i < moe.balancing.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (moe.balancing[i].type == moe.balancing[j].type)
        fail({fmt::format("moe.balancing.{}.type", i)},
             fmt::format("moe.balancing.{}.type: '{}' is already moe.balancing.{}; list each pass once", i,
                         moe.balancing[i].type, j));

  const ParallelSpec& par = s.parallel;
  if (par.strategy == "dp" && par.ep != 1)
    fail({"parallel.ep", "parallel.strategy"},
         fmt::format("parallel.ep ({}) must be 1 with parallel.strategy dp (use strategy ep to split experts)",
                     par.ep));
  if (par.ep > 0 && moe.num_experts % par.ep != 0)
    fail({"moe.num_experts", "parallel.ep"},
         fmt::format("moe.num_experts ({}) is not divisible by parallel.ep ({})", moe.num_experts, par.ep));
  if (par.strategy == "ep" && par.ep > 1 && moe.dispatch.type == "local")
    fail({"moe.dispatch.type", "parallel.ep"},
         fmt::format("moe.dispatch.type local cannot reach experts on other ranks (parallel.ep = {}); "
                     "set moe.dispatch.type: flat",
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

  if (s.checkpoint.interval != 0)
    fail({"checkpoint.interval"},
         fmt::format("checkpoint.interval: {} is not allowed: checkpoints are not implemented yet; set "
                     "checkpoint.interval: 0",
                     s.checkpoint.interval));
}

JobSpec load_impl(const std::string& text, const std::string& origin_name,
                  const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
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
  for (const auto& o : overrides) apply_override(spec, o, locs);
  if (spec.job.run_dir.empty()) spec.job.run_dir = "runs/" + spec.job.name;
  validate_impl(spec, &locs);
  return spec;
}

void emit_map(const Schema& s, const void* obj, YAML::Emitter& e) {
  void* mutable_obj = const_cast<void*>(obj);  // the accessors are shared with the parser
  e << YAML::BeginMap;
  for (const auto& f : s.fields) {
    e << YAML::Key << f.key << YAML::Value;
    switch (f.kind) {
      case Kind::kLeaf:
        f.emit(obj, e);
        break;
      case Kind::kSection:
        emit_map(*f.sub, f.member(mutable_obj), e);
        break;
      case Kind::kList: {
        void* list = f.member(mutable_obj);
        e << YAML::BeginSeq;
        for (size_t i = 0; i < f.list_size(list); ++i) emit_map(*f.sub, f.list_at(list, i), e);
        e << YAML::EndSeq;
        break;
      }
    }
  }
  e << YAML::EndMap;
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
  if (spec.parallel.ep != 0) return validate_for_world(spec, world_size);
  spec.parallel.ep = world_size;
  try {
    validate_for_world(spec, world_size);
  } catch (const CollectiveError& e) {  // say where the resolved value came from
    fail_collective(fmt::format("{} (parallel.ep 0 = all {} ranks)", e.what(), world_size));
  }
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

const char* name_of(NormType v) { return kNormNames.at(static_cast<size_t>(v)).c_str(); }
const char* name_of(Activation v) { return kActivationNames.at(static_cast<size_t>(v)).c_str(); }
const char* name_of(ScoreFn v) { return kScoreNames.at(static_cast<size_t>(v)).c_str(); }

}  // namespace moempi
