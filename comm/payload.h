// Verifiable payloads for collective tests and benchmarks (nccl-tests habit): element `index` of
// the message from `src` to `dst` is a pure function of (seed, src, dst, index), an integer in
// [-2^19, 2^19) scaled by 2^-10, so it is exact in float and sums of up to 16 such values are
// exact too. Test: tests/comm_mpitest.cpp (Payload.*).
#pragma once
#include <cstdint>

namespace moempi {

float payload_value(uint64_t seed, int src, int dst, int64_t index);
// out[i] = payload_value(seed, src, dst, first_index + i) for i in [0, n).
void payload_fill(float* out, int64_t n, uint64_t seed, int src, int dst, int64_t first_index = 0);
// Number of i in [0, n) with data[i] != payload_value(seed, src, dst, first_index + i) (#wrong).
int64_t payload_check(const float* data, int64_t n, uint64_t seed, int src, int dst,
                      int64_t first_index = 0);

}  // namespace moempi
