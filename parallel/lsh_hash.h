// Cross-polytope LSH (ALGORITHMS.md 3.3; Andoni et al. 2015, as used by LSH-MoE arXiv:2411.08446):
// `num_hashes` independent Gaussian projections R_h of D -> b/2 dimensions, shared by every rank
// (a pure function of (seed, epoch, h)); a token's code under hash h is argmax over [R_h x; -R_h x],
// i.e. the index j of the largest |(R_h x)_j| (lowest j on ties), plus b/2 when (R_h x)_j < 0.
// Why Gaussian and not random signs + Hadamard: b/2 is small (1-8) next to D, so a dense D x b/2
// projection costs D*b/2 multiply-adds per hash, less than the D log D of a fast pseudo-rotation,
// works for any D (no power of two), and a Gaussian matrix is exactly rotation-invariant, so the
// collision probability depends only on the angle between tokens, as the cross-polytope analysis
// assumes. Guarantee: codes are a deterministic function of (x, seed, epoch): identical on every
// rank and across reruns. Test: tests/lsh_mpitest.cpp (LshHash.*).
#pragma once
#include <cstdint>
#include <vector>

namespace moempi {

class CrossPolytopeHash {
 public:
  // Local error unless num_hashes >= 1, buckets_per_hash even and in [2, 2*D].
  CrossPolytopeHash(int D, int num_hashes, int buckets_per_hash, uint64_t seed);
  // Draws the projections of rotation epoch `epoch` (a no-op when already drawn). Not communicating.
  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  int num_hashes() const { return H_; }
  int buckets_per_hash() const { return b_; }
  int width() const { return D_; }
  // codes_TH[t*H+h] in [0, b) for each of the T rows of x_TD (T, D).
  void hash(const float* x_TD, int T, uint16_t* codes_TH) const;
  // The projections (H, b/2, D), row-major, for tests.
  const std::vector<float>& projections() const { return R_; }

 private:
  int D_, H_, b_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<float> R_;  // (H, b/2, D)
};

}  // namespace moempi
