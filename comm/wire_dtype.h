// bf16 as a wire format (moe.dispatch.wire_dtype: bf16): rows are converted to bfloat16 (the top
// 16 bits of an IEEE fp32, rounded to nearest, ties to even) just before they leave a rank and
// widened back to fp32 on arrival; all arithmetic stays fp32 (Debian's OpenBLAS has no bf16 GEMM).
// Guarantee: |bf16(x) - x| <= 2^-8 |x| for every finite x in the normal bf16 range (half an ulp of
// an 8-bit significand), exact for values already representable; NaN stays NaN, ±inf stays ±inf.
// Test: tests/lsh_mpitest.cpp (WireDtype.*).
#pragma once
#include <cstdint>
#include <cstring>

namespace moempi {

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))  // NaN: keep it a (quiet) NaN
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even (may carry into the exponent: inf)
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void floats_to_bf16(uint16_t* out, const float* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(in[i]);
}

inline void bf16_to_floats(float* out, const uint16_t* in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

}  // namespace moempi
