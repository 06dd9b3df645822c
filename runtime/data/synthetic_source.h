// The built-in corpus (data.type synthetic): byte text in four clearly different domains
// (arithmetic, records, prose, code), generated on the fly. Guarantees: sequence i of a split is
// a pure function of (seed, split, i), of domain i % 4; repetitive enough that a small
// transformer gets well below 2.5 nats/byte; tens of MB/s. Tests: tests/data_test.cpp.
#pragma once
#include <string>

#include "runtime/data/data_source.h"

namespace moempi {

class SyntheticSource : public DataSource {
 public:
  static constexpr int kNumDomains = 4;

  SyntheticSource(int seq_len, uint64_t seed);

  void get(Batch& out, Split split, int64_t first_seq, int B) override;
  int num_domains() const override { return kNumDomains; }
  std::string domain_name(int d) const override;
  std::string describe() const override;

  static int domain_of(int64_t index) { return static_cast<int>(index % kNumDomains); }
  // Writes `length` bytes of sequence `index` of `split` into `out` (replacing its contents).
  void generate(Split split, int64_t index, int length, std::string& out) const;

 private:
  int T_;
  uint64_t seed_;
  std::string scratch_;
};

}  // namespace moempi
