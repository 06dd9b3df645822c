// Payload formula: SplitMix64 of (seed, src, dst) once per message, then of the index per element.
#include "comm/payload.h"

namespace moempi {
namespace {

inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t message_key(uint64_t seed, int src, int dst) {
  return mix(mix(mix(seed) ^ static_cast<uint64_t>(static_cast<uint32_t>(src))) ^
             (static_cast<uint64_t>(static_cast<uint32_t>(dst)) << 32));
}

inline float element(uint64_t key, int64_t index) {
  const int32_t v = static_cast<int32_t>(mix(key ^ static_cast<uint64_t>(index)) & 0xFFFFF) - (1 << 19);
  return static_cast<float>(v) * (1.0f / 1024.0f);
}

}  // namespace

float payload_value(uint64_t seed, int src, int dst, int64_t index) {
  return element(message_key(seed, src, dst), index);
}

void payload_fill(float* out, int64_t n, uint64_t seed, int src, int dst, int64_t first_index) {
  const uint64_t key = message_key(seed, src, dst);
  for (int64_t i = 0; i < n; ++i) out[i] = element(key, first_index + i);
}

int64_t payload_check(const float* data, int64_t n, uint64_t seed, int src, int dst,
                      int64_t first_index) {
  const uint64_t key = message_key(seed, src, dst);
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += data[i] != element(key, first_index + i);
  return wrong;
}

}  // namespace moempi
