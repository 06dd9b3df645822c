// CrossPolytopeHash: see lsh_hash.h.
#include "parallel/lsh_hash.h"

#include <cmath>

#include "parallel/dispatcher.h"  // dot_row: one fixed summation order
#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi {

CrossPolytopeHash::CrossPolytopeHash(int D, int num_hashes, int buckets_per_hash, uint64_t seed)
    : D_(D), H_(num_hashes), b_(buckets_per_hash), seed_(seed) {
  MOEMPI_CHECK_ONE(D >= 1 && num_hashes >= 1 && buckets_per_hash >= 2 && buckets_per_hash % 2 == 0 &&
                       buckets_per_hash <= 2 * D && buckets_per_hash <= 65536,
                   "lsh hash: bad shape D={} num_hashes={} buckets_per_hash={}", D, num_hashes, buckets_per_hash);
  set_epoch(0);
}

void CrossPolytopeHash::set_epoch(int64_t epoch) {
  if (epoch == epoch_) return;
  epoch_ = epoch;
  const int half = b_ / 2;
  R_.resize(static_cast<size_t>(H_) * half * D_);
  for (int h = 0; h < H_; ++h) {
    // One stream per hash; rank 0 for every rank: the projections are shared.
    Rng rng(seed_, 0, static_cast<uint64_t>(epoch), Rng::stream_of("lsh_projection") + static_cast<uint64_t>(h));
    float* r = R_.data() + static_cast<size_t>(h) * half * D_;
    for (int i = 0; i < half * D_; ++i) r[i] = rng.normal();
  }
}

void CrossPolytopeHash::hash(const float* x_TD, int T, uint16_t* codes_TH) const {
  const int half = b_ / 2;
  for (int t = 0; t < T; ++t) {
    const float* x = x_TD + static_cast<size_t>(t) * D_;
    for (int h = 0; h < H_; ++h) {
      const float* r = R_.data() + static_cast<size_t>(h) * half * D_;
      int best = 0;
      float best_abs = -1.0f, best_val = 0.0f;
      for (int j = 0; j < half; ++j) {
        const float v = dot_row(r + static_cast<size_t>(j) * D_, x, D_);
        const float a = std::fabs(v);
        if (a > best_abs) {
          best_abs = a;
          best_val = v;
          best = j;
        }
      }
      codes_TH[static_cast<size_t>(t) * H_ + h] = static_cast<uint16_t>(best + (best_val < 0.0f ? half : 0));
    }
  }
}

}  // namespace moempi
