// The schema engine's walkers and leaf parsers (see schema.h). Moved out of runtime/job_spec.cpp
// unchanged in behaviour, plus typed sections (check_owners, inactive keys skipped by check_map
// and emit_map). Tests: tests/job_spec_test.cpp.
#include "runtime/core/schema.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <set>

#include "runtime/core/error.h"

namespace moempi::schema {

// --- text helpers ------------------------------------------------------------------------------

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

namespace {
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
}  // namespace

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

std::string not_one_of(const std::string& v, const std::vector<std::string>& choices) {
  if (v.empty()) return fmt::format("missing; expected one of {}", join(choices));
  return fmt::format("'{}' is not one of {}{}", v, join(choices), did_you_mean(v, choices));
}

std::string got(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "nothing";
  if (n.IsScalar()) return fmt::format("'{}'", n.Scalar());
  if (n.IsSequence()) return "a list";
  return "a map";
}

std::string format_real(float v) { return fmt::format("{}", v); }
std::string format_real(double v) { return fmt::format("{}", v); }

// --- origins -----------------------------------------------------------------------------------

std::string Origin::prefix() const {
  return override_text.empty() ? file + ": " : fmt::format("--set {}: ", override_text);
}

std::string Origin::at(const YAML::Node& node, const YAML::Mark& fallback) const {
  if (!override_text.empty()) return prefix();
  YAML::Mark m = node.IsDefined() && !node.IsNull() ? node.Mark() : YAML::Mark::null_mark();
  if (m.is_null()) m = fallback;
  if (m.is_null()) return prefix();
  return fmt::format("{}:{}:{}: ", file, m.line + 1, m.column + 1);
}

std::string locate(const Locations* locs, std::string path) {
  if (!locs) return "";
  while (true) {
    if (auto it = locs->find(path); it != locs->end()) return it->second;
    if (path.empty()) return "";
    const size_t dot = path.rfind('.');
    path = dot == std::string::npos ? "" : path.substr(0, dot);
  }
}

// --- schema ------------------------------------------------------------------------------------

const Field* Schema::find(const std::string& key) const {
  for (const auto& f : fields)
    if (f.key == key) return &f;
  return nullptr;
}

std::vector<std::string> Schema::keys() const {
  std::vector<std::string> out;
  for (const auto& f : fields) out.push_back(f.key);
  return out;
}

std::string Schema::type_of(const void* obj) const {
  if (type_key.empty()) return "";
  const Field* f = find(type_key);
  return f && f->text ? f->text(obj) : "";
}

bool Schema::active(const Field& f, const void* obj) const {
  if (f.owners.empty()) return true;
  const std::string type = type_of(obj);
  return std::find(f.owners.begin(), f.owners.end(), type) != f.owners.end();
}

std::vector<std::string> names_of(const std::vector<TypeChoice>& types) {
  std::vector<std::string> out;
  for (const auto& t : types) out.push_back(t.name);
  return out;
}

Schema typed_schema(Field type_field, std::vector<Field> common, const std::vector<TypeChoice>& types) {
  std::vector<Field> owned;
  for (const auto& t : types)
    for (const auto& k : t.keys) {
      auto it = std::find_if(owned.begin(), owned.end(), [&](const Field& f) { return f.key == k.key; });
      if (it == owned.end()) {
        owned.push_back(k);
        owned.back().owners = {t.name};
      } else {
        it->owners.push_back(t.name);
      }
    }
  Schema s;
  s.type_key = type_field.key;
  s.fields.push_back(std::move(type_field));
  auto first_nested = std::find_if(common.begin(), common.end(), [](const Field& f) { return f.kind != Kind::kLeaf; });
  s.fields.insert(s.fields.end(), common.begin(), first_nested);
  s.fields.insert(s.fields.end(), owned.begin(), owned.end());
  s.fields.insert(s.fields.end(), first_nested, common.end());
  return s;
}

// --- leaf parsers ------------------------------------------------------------------------------

std::string scalar_or_throw(const YAML::Node& n, const char* expected) {
  if (!n.IsDefined() || !n.IsScalar()) throw BadValue{fmt::format("expected {}, got {}", expected, got(n))};
  return n.Scalar();
}

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

int64_t parse_int(const YAML::Node& n, int64_t lo, int64_t hi) {
  std::string s = scalar_or_throw(n, "an integer");
  if (!is_integer_text(s)) throw BadValue{fmt::format("expected an integer, got '{}'", s)};
  if (s[0] == '+') s.erase(0, 1);
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || v < INT_MIN || v > INT_MAX)
    throw BadValue{fmt::format("expected {}, got '{}'", int_range_text(lo, hi), s)};
  return v;
}

uint64_t parse_u64(const YAML::Node& n) {
  std::string s = scalar_or_throw(n, "an integer >= 0");
  if (!is_integer_text(s) || s[0] == '-') throw BadValue{fmt::format("expected an integer >= 0, got '{}'", s)};
  if (s[0] == '+') s.erase(0, 1);
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc()) throw BadValue{fmt::format("expected an integer in [0, {}], got '{}'", UINT64_MAX, s)};
  return v;
}

double parse_real(const YAML::Node& n, bool as_float, const std::string& range_text) {
  const std::string s = scalar_or_throw(n, "a number");
  // strtof / strtod directly, so that the shortest printed form reads back to the same value.
  errno = 0;
  char* end = nullptr;
  const double v = as_float ? static_cast<double>(std::strtof(s.c_str(), &end)) : std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || std::isspace(static_cast<unsigned char>(s[0])))
    throw BadValue{fmt::format("expected a number, got '{}'", s)};
  if (!std::isfinite(v) || errno == ERANGE) throw BadValue{fmt::format("expected {}, got '{}'", range_text, s)};
  return v;
}

bool parse_bool(const YAML::Node& n) {
  const std::string s = scalar_or_throw(n, "true or false");
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  throw BadValue{fmt::format("expected true or false, got '{}'", s)};
}

std::string Interval::text() const {
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (has_lo && has_hi)
    return fmt::format("a number in {}{}, {}{}", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
  if (has_lo) return fmt::format("a number {} {}", lo_open ? ">" : ">=", lo);
  if (has_hi) return fmt::format("a number {} {}", hi_open ? "<" : "<=", hi);
  return "a finite number";
}

// --- parsing -----------------------------------------------------------------------------------

std::string unknown_key(const Schema& s, const std::string& section, const std::string& key) {
  const auto keys = s.keys();
  return fmt::format("{}: unknown key '{}' {} (allowed: {}){}", join_path(section, key), key,
                     section.empty() ? "at the top level" : "in section " + section, join(keys),
                     did_you_mean(key, keys));
}

namespace {
void parse_field(const Field& f, void* parent, const YAML::Node& node, const std::string& path,
                 const Origin& origin, Locations& locs, const YAML::Mark& key_mark);
}  // namespace

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

namespace {
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
        parse_map(*f.sub, f.list_at(list, i), item, fmt::format("{}.{}", path, i), origin, locs, node.Mark());
        ++i;
      }
      return;
    }
  }
}
}  // namespace

void apply_override(const Schema& root, void* root_obj, const std::string& text, Locations& locs) {
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

  const Schema* schema = &root;
  void* obj = root_obj;
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

// --- ownership, ranges, printing -----------------------------------------------------------------

void check_owners(const Schema& s, const void* obj, const std::string& path, const Locations& locs) {
  void* mutable_obj = const_cast<void*>(obj);  // the accessors are shared with the parser
  const Field* type_field = s.type_key.empty() ? nullptr : s.find(s.type_key);
  const std::string type = s.type_of(obj);
  const bool type_known = type_field && type_field->check(obj).empty();
  for (const auto& f : s.fields) {
    const std::string here = join_path(path, f.key);
    if (type_known && !s.active(f, obj))
      if (auto it = locs.find(here); it != locs.end()) {
        const std::string type_path = join_path(path, s.type_key);
        const std::string owners = join(f.owners, " or ");
        fail_collective(fmt::format("{}{}: belongs to {} {}, but {} is {}; remove it or set the type to {}",
                                    it->second, here, type_path, owners, type_path, type, owners));
      }
    if (f.kind == Kind::kSection) check_owners(*f.sub, f.member(mutable_obj), here, locs);
    if (f.kind == Kind::kList) {
      void* list = f.member(mutable_obj);
      for (size_t i = 0; i < f.list_size(list); ++i)
        check_owners(*f.sub, f.list_at(list, i), fmt::format("{}.{}", here, i), locs);
    }
  }
}

void check_map(const Schema& s, const void* obj, const std::string& path, const Fail& fail) {
  void* mutable_obj = const_cast<void*>(obj);  // the accessors are shared with the parser
  for (const auto& f : s.fields) {
    if (!s.active(f, obj)) continue;
    const std::string here = join_path(path, f.key);
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

void emit_map(const Schema& s, const void* obj, YAML::Emitter& e) {
  void* mutable_obj = const_cast<void*>(obj);  // the accessors are shared with the parser
  e << YAML::BeginMap;
  for (const auto& f : s.fields) {
    if (!s.active(f, obj)) continue;
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

}  // namespace moempi::schema
