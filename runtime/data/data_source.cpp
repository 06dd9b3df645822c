// The data source factory: data.type -> source. Tests: tests/data_test.cpp.
#include "runtime/data/data_source.h"

#include "runtime/core/error.h"
#include "runtime/data/synthetic_source.h"
#include "runtime/data/windowed_source.h"

namespace moempi {

DataSource::~DataSource() = default;

const char* name_of(Split split) { return split == Split::kTrain ? "train" : "val"; }

std::unique_ptr<DataSource> make_data_source(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  if (data.type == "synthetic") {
    MOEMPI_CHECK_ALL(model.vocab_size >= 256,
                     "model.vocab_size ({}) is smaller than 256, but data.type synthetic produces byte tokens",
                     model.vocab_size);
    return std::make_unique<SyntheticSource>(model.seq_len, seed);
  }
  if (data.type == "text") return open_text_source(data, model, seed);
  if (data.type == "tokens") return open_token_source(data, model, seed);
  fail_collective(fmt::format("data.type: '{}' is not one of synthetic, text, tokens", data.type));
}

}  // namespace moempi
