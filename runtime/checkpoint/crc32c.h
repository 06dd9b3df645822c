// CRC32C (Castagnoli, polynomial 0x1EDC6F41 reflected 0x82F63B78), the checksum of every tensor
// piece and of the manifest body in moempi checkpoints. Uses the SSE4.2 crc32 instruction when
// the build targets it, else a table; both give the same value. Test: tests/checkpoint_test.cpp
// (the standard check value crc32c("123456789") = 0xE3069283).
#pragma once
#include <cstddef>
#include <cstdint>

namespace moempi {

// CRC of `n` bytes continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace moempi
