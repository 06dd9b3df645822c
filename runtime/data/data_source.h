// Where training sequences come from: one interface, three sources chosen by data.type through
// one Registry (data_source.cpp: synthetic | text | tokens; text and tokens own data.path). Guarantee: get() is a pure function of (spec, seed, split, global
// sequence index), so any rank at any world size reads the same sequence for the same index.
// Tests: tests/data_test.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/core/config.h"
#include "runtime/core/registry.h"

namespace moempi {

enum class Split { kTrain, kVal };
const char* name_of(Split split);  // "train" | "val"

struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> tokens_BT;   // (B, T) inputs
  std::vector<int32_t> targets_BT;  // (B, T) next tokens: targets[b][t] = input[b][t + 1] of the window
  std::vector<int32_t> domain_B;    // (B) domain id of each sequence (0 for text and tokens)

  // Sizes the buffers for B sequences of T tokens (domains zeroed); sources then fill them.
  void reset(int b, int t) {
    B = b;
    T = t;
    tokens_BT.resize(static_cast<size_t>(b) * t);
    targets_BT.resize(static_cast<size_t>(b) * t);
    domain_B.assign(b, 0);
  }
};

class DataSource {
 public:
  virtual ~DataSource();
  // Fills `out` with the B sequences of GLOBAL indices [first_seq, first_seq + B) of `split`, each
  // of length T = model.seq_len (T + 1 tokens read: inputs and shifted targets). Pure function of
  // (spec, seed, split, index); first_seq >= 0. Indices past the end of an epoch wrap into the
  // next epoch (a new seeded order of the same windows); synthetic data never repeats.
  virtual void get(Batch& out, Split split, int64_t first_seq, int B) = 0;
  virtual int num_domains() const = 0;
  virtual std::string domain_name(int d) const = 0;
  virtual std::string describe() const = 0;  // one line for the start-up log
  // Distinct sequences per epoch of `split`; 0 = unbounded (synthetic).
  virtual int64_t sequences_per_epoch(Split split) const { return 0; }
};

using DataSourceFactory = std::unique_ptr<DataSource> (*)(const DataSpec& data, const ModelSpec& model,
                                                         uint64_t seed);
using DataSourceRegistry = Registry<DataSourceFactory>;

// data.type -> source, in registration order, with each source's own keys.
const DataSourceRegistry& data_source_registry();

// The source named by data.type, opened and validated (collective errors name the file, the byte
// offset and the YAML path at fault). `seed` is job.seed.
std::unique_ptr<DataSource> make_data_source(const DataSpec& data, const ModelSpec& model, uint64_t seed);

}  // namespace moempi
