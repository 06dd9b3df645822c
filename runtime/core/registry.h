// Registry<Factory>: the one table behind every "chosen by name" family (balancing passes,
// sharding strategies, optimizers, LR schedules, data sources, dispatchers). Each entry is
// {name, factory, the keys only that type accepts, a one-line doc}, kept in registration order;
// the job spec's schema reads names and keys from here, and unknown-name errors list names().
// A new entry is its own file plus one line in its family's table. Tests: tests/job_spec_test.cpp
// (Registry*), tests/moe_test.cpp (BalancingRegistry.*).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/schema.h"

namespace moempi {

template <class Factory>
class Registry {
 public:
  struct Entry {
    std::string name;
    Factory factory;
    std::vector<schema::Field> keys;  // fields over the family's spec struct, owned by this type
    std::string doc;                  // one line, for listings
  };

  // `family` is the noun with its article, as in "is not <family>": "a balancing pass".
  Registry(std::string family, std::vector<Entry> entries) : family_(std::move(family)), entries_(std::move(entries)) {
    for (size_t i = 0; i < entries_.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        MOEMPI_CHECK_ONE(entries_[i].name != entries_[j].name, "{}: '{}' is registered twice", family_,
                         entries_[i].name);
  }

  const std::string& family() const { return family_; }
  const std::vector<Entry>& entries() const { return entries_; }

  // Registered names, in registration order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : entries_) out.push_back(e.name);
    return out;
  }

  // The entry called `name`, or nullptr.
  const Entry* find(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }

  // "<path> ('<value>') is not <family>; allowed: a, b, c".
  std::string not_a(const std::string& path, const std::string& value) const {
    return fmt::format("{} ('{}') is not {}; allowed: {}", path, value, family_, schema::join(names()));
  }
  // "<path>: '<value>' is not one of a, b, c; did you mean 'a'?" (the schema's wording).
  std::string not_one_of(const std::string& path, const std::string& value) const {
    return fmt::format("{}: {}", path, schema::not_one_of(value, names()));
  }

  // The entry called `value`; a collective error `not_a(path, value)` if there is none.
  const Entry& at(const std::string& path, const std::string& value) const {
    if (const Entry* e = find(value)) return *e;
    fail_collective(not_a(path, value));
  }

  // Names, owned keys and docs, as the schema engine reads them (schema::typed_schema).
  std::vector<schema::TypeChoice> choices() const {
    std::vector<schema::TypeChoice> out;
    for (const auto& e : entries_) out.push_back({e.name, e.keys, e.doc});
    return out;
  }

 private:
  std::string family_;
  std::vector<Entry> entries_;
};

}  // namespace moempi
