// The data source registry: data.type -> source. Tests: tests/data_test.cpp.
#include "runtime/data/data_source.h"

#include "runtime/core/error.h"
#include "runtime/data/synthetic_source.h"
#include "runtime/data/windowed_source.h"

namespace moempi {

DataSource::~DataSource() = default;

const char* name_of(Split split) { return split == Split::kTrain ? "train" : "val"; }

namespace {
std::unique_ptr<DataSource> open_synthetic_source(const DataSpec&, const ModelSpec& model, uint64_t seed) {
  MOEMPI_CHECK_ALL(model.vocab_size >= 256,
                   "model.vocab_size ({}) is smaller than 256, but data.type synthetic produces byte tokens",
                   model.vocab_size);
  return std::make_unique<SyntheticSource>(model.seq_len, seed);
}

std::vector<schema::Field> path_key() { return {schema::string_field("path", &DataSpec::path)}; }
}  // namespace

const DataSourceRegistry& data_source_registry() {
  static const DataSourceRegistry registry("a data source", {
      // name, factory, keys only this source accepts (val_fraction: every one), one-line doc
      {"synthetic", &open_synthetic_source, {}, "built-in multi-domain byte corpus, never repeats"},
      {"text", &open_text_source, path_key(), "a byte-level text file (path: the file)"},
      {"tokens", &open_token_source, path_key(), "uint16 token shards, read with pread (path: a shard or a directory of *.bin)"},
  });
  return registry;
}

std::unique_ptr<DataSource> make_data_source(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  const DataSourceRegistry& r = data_source_registry();
  const auto* entry = r.find(data.type);
  if (!entry) fail_collective(r.not_one_of("data.type", data.type));
  return entry->factory(data, model, seed);
}

}  // namespace moempi
