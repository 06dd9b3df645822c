// The generic YAML schema engine: one Field per key (int/real/bool/string/choice/enum/section/list),
// typed sections whose keys may belong to some types only, and the walkers that parse a map, apply
// "a.b.c=value" overrides, check ownership and ranges, and emit YAML. Guarantees: every error is
// ONE CollectiveError naming the path, the value, what is allowed and where it came from; emit_map
// prints what parse_map reads back. Tests: tests/job_spec_test.cpp (through the moempi table).
#pragma once
#include <yaml-cpp/yaml.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace moempi::schema {

// --- small text helpers -----------------------------------------------------------------------

std::string join(const std::vector<std::string>& items, const char* sep = ", ");
std::string join_path(const std::string& parent, const std::string& key);
// "; did you mean 'top_k'?" when one candidate is close, else "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);
// "'v' is not one of a, b, c; did you mean 'a'?" (or "missing; expected one of ..." when v is "").
std::string not_one_of(const std::string& v, const std::vector<std::string>& choices);
// What a node holds, for "got ..." in messages.
std::string got(const YAML::Node& n);
// Shortest text that reads back to the same value.
std::string format_real(float v);
std::string format_real(double v);

// --- where a value came from ------------------------------------------------------------------

// A position in a file, or a --set.
struct Origin {
  std::string file;           // values are at node marks in this file (or "<string>")
  std::string override_text;  // or: the value came from `--set <override_text>`

  std::string prefix() const;
  std::string at(const YAML::Node& node, const YAML::Mark& fallback) const;
};

// YAML path -> message prefix of its origin ("file:line:col: " or "--set ...: "). A path is in
// the map exactly when it was given (in the file or by --set); "" holds the document's prefix.
using Locations = std::map<std::string, std::string>;

// The prefix of `path`, else of its nearest enclosing path that was given.
std::string locate(const Locations* locs, std::string path);

// Thrown by a leaf parser; the caller adds origin and path.
struct BadValue {
  std::string what;
};

// --- the schema -------------------------------------------------------------------------------

struct Schema;
enum class Kind { kLeaf, kSection, kList };

// One YAML key, over an untyped pointer to its parent struct (made by the typed factories below).
struct Field {
  std::string key;
  Kind kind = Kind::kLeaf;
  bool required = false;  // must appear in its map when the map is given in YAML
  std::string allowed;    // leaf: what is allowed, for the "missing" message
  // Typed sections: the types that own this key ("" = every type accepts it).
  std::vector<std::string> owners;
  // kLeaf: on the parent struct
  std::function<void(void*, const YAML::Node&)> parse;  // throws BadValue on a wrong type
  std::function<std::string(const void*)> check;        // "" or what is wrong with the value
  std::function<void(const void*, YAML::Emitter&)> emit;
  std::function<std::string(const void*)> text;         // string fields: the value (reads `type`)
  // kSection / kList
  const Schema* sub = nullptr;
  std::function<void*(void*)> member;  // the sub-struct, or the std::vector for a list
  std::function<size_t(const void*)> list_size;
  std::function<void*(void*, size_t)> list_at;
  std::function<void(void*, size_t)> list_resize;
};

struct Schema {
  Schema() = default;
  Schema(std::vector<Field> f, std::string type = "") : fields(std::move(f)), type_key(std::move(type)) {}

  std::vector<Field> fields;
  // A typed section: the string field named type_key chooses the type, and fields with owners
  // are accepted only under those types. "" = an ordinary section.
  std::string type_key;

  const Field* find(const std::string& key) const;
  std::vector<std::string> keys() const;
  // The value of the type key in obj ("" for an ordinary section).
  std::string type_of(const void* obj) const;
  // Whether the field is in effect for obj: common, or owned by obj's type.
  bool active(const Field& f, const void* obj) const;
};

// One type of a "chosen by name" family as the schema sees it: its name, the keys only it
// accepts (fields over the family's spec struct) and a one-line doc. Registries produce these.
struct TypeChoice {
  std::string name;
  std::vector<Field> keys;
  std::string doc;
};
std::vector<std::string> names_of(const std::vector<TypeChoice>& types);

// A typed section: `type_field` (a choice over the type names), then `common` fields; the keys
// owned by types are inserted before the first section or list of `common` (a key registered by
// several types is one field owned by all of them; the first registration parses it).
Schema typed_schema(Field type_field, std::vector<Field> common, const std::vector<TypeChoice>& types);

// --- typed field factories ---------------------------------------------------------------------

template <class P, class M>
M& member_of(void* parent, M P::*m) {
  return static_cast<P*>(parent)->*m;
}
template <class P, class M>
const M& member_of(const void* parent, M P::*m) {
  return static_cast<const P*>(parent)->*m;
}

std::string scalar_or_throw(const YAML::Node& n, const char* expected);
// Integer text: optional sign and digits only ("1.5", "1e3", "0x10" are not integers).
bool is_integer_text(const std::string& s);
std::string int_range_text(int64_t lo, int64_t hi);
int64_t parse_int(const YAML::Node& n, int64_t lo, int64_t hi);    // throws BadValue
uint64_t parse_u64(const YAML::Node& n);                           // throws BadValue
double parse_real(const YAML::Node& n, bool as_float, const std::string& range_text);
bool parse_bool(const YAML::Node& n);

template <class P>
Field int_field(const char* key, int P::*m, int64_t lo, int64_t hi = INT_MAX) {
  Field f;
  f.key = key;
  f.allowed = int_range_text(lo, hi);
  f.parse = [m, lo, hi](void* p, const YAML::Node& n) { member_of(p, m) = static_cast<int>(parse_int(n, lo, hi)); };
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
  f.parse = [m](void* p, const YAML::Node& n) { member_of(p, m) = parse_u64(n); };
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
  std::string text() const;
};
inline const Interval kPositive{0, std::numeric_limits<double>::infinity(), true, false};
inline const Interval kNonNegative{0, std::numeric_limits<double>::infinity(), false, false};
inline const Interval kUnitOpen{0, 1, false, true};     // [0, 1)
inline const Interval kUnitClosed{0, 1, false, false};  // [0, 1]
inline Interval at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }

template <class P, class R>
Field real_field(const char* key, R P::*m, Interval range) {
  static_assert(std::is_same_v<R, float> || std::is_same_v<R, double>);
  Field f;
  f.key = key;
  f.allowed = range.text();
  f.parse = [m, range](void* p, const YAML::Node& n) {
    member_of(p, m) = static_cast<R>(parse_real(n, std::is_same_v<R, float>, range.text()));
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
  f.parse = [m](void* p, const YAML::Node& n) { member_of(p, m) = parse_bool(n); };
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
  f.text = [m](const void* p) { return member_of(p, m); };
  return f;
}

// A string that must be one of `choices` (names looked up elsewhere, e.g. a registry).
template <class P>
Field choice_field(const char* key, std::string P::*m, std::vector<std::string> choices) {
  Field f = string_field(key, m, [choices](const std::string& v) {
    for (const auto& c : choices)
      if (c == v) return std::string();
    return not_one_of(v, choices);
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
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i] == s) {
        member_of(p, m) = static_cast<E>(i);
        return;
      }
    throw BadValue{not_one_of(s, names)};
  };
  f.check = [m, names](const void* p) -> std::string {
    const auto i = static_cast<size_t>(member_of(p, m));
    return i < names.size() ? "" : fmt::format("enum value {} out of range", i);
  };
  f.emit = [m, names](const void* p, YAML::Emitter& e) { e << names.at(static_cast<size_t>(member_of(p, m))); };
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

// A leaf field of the sub-struct P::*m, read and printed as a key of P's own map (a type's
// parameters kept in their own struct, e.g. moe.dispatch.headroom in DispatchSpec::shm).
template <class P, class S>
Field lift(S P::*m, Field f) {
  Field out = f;
  if (f.parse) out.parse = [m, g = f.parse](void* p, const YAML::Node& n) { g(&member_of(p, m), n); };
  if (f.check) out.check = [m, g = f.check](const void* p) { return g(&member_of(p, m)); };
  if (f.emit) out.emit = [m, g = f.emit](const void* p, YAML::Emitter& e) { g(&member_of(p, m), e); };
  if (f.text) out.text = [m, g = f.text](const void* p) { return g(&member_of(p, m)); };
  if (f.member) out.member = [m, g = f.member](void* p) { return g(&member_of(p, m)); };
  return out;
}

inline Field required(Field f) {
  f.required = true;
  return f;
}

// --- the walkers -------------------------------------------------------------------------------

// "<path>: unknown key '<key>' in section <section> (allowed: ...); did you mean ...".
std::string unknown_key(const Schema& s, const std::string& section, const std::string& key);

// Reads the map `node` into `obj` (keys not given keep their values), recording in `locs` where
// every given path came from. Collective errors: not a map, duplicate or unknown key, bad value.
void parse_map(const Schema& s, void* obj, const YAML::Node& node, const std::string& path,
               const Origin& origin, Locations& locs, const YAML::Mark& key_mark);

// Applies one "a.b.c=value" (the value read as YAML; list entries by index, index == size appends)
// to `obj` described by `root`, recording its origin. Collective errors name the --set.
void apply_override(const Schema& root, void* obj, const std::string& text, Locations& locs);

// Every given key of a typed section (see Locations) must belong to the section's type: ONE
// collective error "<path>: belongs to <section>.type <owners>, but <section>.type is <type>; ...".
// Run after all overrides, so the type may be set after the key. Sections whose type is not one
// of their names are skipped (their type field reports itself).
void check_owners(const Schema& s, const void* obj, const std::string& path, const Locations& locs);

// Ranges and choices of every field in effect; `fail(paths, message)` reports (and throws).
using Fail = std::function<void(std::initializer_list<std::string> paths, const std::string& msg)>;
void check_map(const Schema& s, const void* obj, const std::string& path, const Fail& fail);

// The fields in effect of obj as a YAML map (inactive typed keys are left out).
void emit_map(const Schema& s, const void* obj, YAML::Emitter& e);

}  // namespace moempi::schema
