// Counter-based RNG keyed by (seed, rank, step, stream): any draw is a pure function of its key
// and counter, so a resumed or re-sharded run draws the same numbers (Philox-style, built on
// the SplitMix64 finaliser). Streams name what the numbers are for (init of one tensor, data
// order, hashing rotation, ...). Tests: tests/core_test.cpp.
#pragma once
#include <cstdint>
#include <string_view>

namespace moempi {

class Rng {
 public:
  Rng(uint64_t seed, uint64_t rank, uint64_t step, uint64_t stream);
  uint64_t next_u64();
  uint32_t next_u32() { return static_cast<uint32_t>(next_u64() >> 32); }
  float uniform();                  // [0, 1)
  float normal();                   // N(0, 1), Box-Muller
  uint64_t below(uint64_t n);       // [0, n), unbiased enough for n << 2^64
  uint64_t counter() const { return counter_; }
  void set_counter(uint64_t c) { counter_ = c; }

  static uint64_t stream_of(std::string_view name);  // stable 64-bit hash (FNV-1a) of a name
  static uint64_t mix(uint64_t z);                   // the SplitMix64 finaliser (a bijection)

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace moempi
