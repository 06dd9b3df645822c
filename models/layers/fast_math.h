// Vectorisable float math for the kernels: exp_approx (Cody-Waite range reduction + degree-7
// polynomial, ~2 ulp on [-87.3, 88.0], 0 below, inf above 88.72, NaN for NaN) is branch-free so
// GCC vectorises the loops that call it (std::exp does not without -ffast-math).
// Test: tests/layers_test.cpp.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace moempi {

// exp(x) to ~2 ulp on [-87.33, 88.0]; 0 below (std::exp would give subnormals down to -103.9),
// exp(88) on (88.0, 88.72] (the exponent trick needs k <= 127), +inf above, NaN for NaN (whatever its
// payload); branch-free (Cephes polynomial, 2^n through the exponent bits) so the loops vectorise.
inline float exp_approx(float x) {
  const float xc = x < -87.33f ? -87.33f : (x > 88.0f ? 88.0f : x);
  const float t = xc * 1.44269504f + 12582912.0f;  // 1.5·2^23: round(x/ln2) lands in low bits
  const float k = t - 12582912.0f;
  float r = xc - k * 0.693145751953125f;  // ln2 split hi + lo: r exact to ~1 ulp
  r = r - k * 1.428606765330187e-6f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t pow2 = (std::bit_cast<int32_t>(t) - 0x4B400000) << 23;
  const float e = std::bit_cast<float>(std::bit_cast<int32_t>(p) + pow2);
  return x < -87.33f ? 0.0f : (x > 88.72f ? HUGE_VALF : (x == x ? e : x));
}

}  // namespace moempi
