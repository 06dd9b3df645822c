// The uint16 token shard format read by data.type tokens: 24-byte little-endian header
// ("MOEMPITK", uint32 version = 1, uint32 reserved = 0, uint64 token count) then the tokens.
// Guarantee: a shard that passes check_token_shard has exactly `count` tokens, all < vocab_size;
// every defect is a collective error naming the file and the byte offset. Tests: tests/data_test.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moempi {

inline constexpr char kTokenShardMagic[8] = {'M', 'O', 'E', 'M', 'P', 'I', 'T', 'K'};
inline constexpr uint32_t kTokenShardVersion = 1;
inline constexpr size_t kTokenShardHeaderBytes = 24;

// Writes a shard (for tests and tools); a write failure is a collective error naming the file.
void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens);

// `moempi data encode`: writes the bytes of the regular file `in_path` as a token shard at
// `out_path`, streaming (memory does not grow with the file), through a temporary file renamed
// into place, so a failure leaves no partial shard and the input is never overwritten. Collective
// errors: `in_path` not a regular file (a FIFO, /dev/zero), `out_path` the same file as the input,
// read or write failures (with errno's reason). Returns the token count.
uint64_t encode_file_as_shard(const std::string& in_path, const std::string& out_path);

// Validates the shard bytes [data, data + size) read from `path`: magic, version, size == 24 +
// 2 * count, every token < vocab_size. Returns the token count.
uint64_t check_token_shard(const std::string& path, const uint8_t* data, size_t size, int vocab_size);
// The two halves of check_token_shard, for reading a shard in chunks: the header (the first
// min(24, file_size) bytes) against the file's size, returning the token count; then tokens
// [first, first + n) (2n bytes at `tokens`) against the vocabulary.
uint64_t check_token_shard_header(const std::string& path, const uint8_t* header, size_t file_size);
void check_shard_tokens(const std::string& path, const uint8_t* tokens, uint64_t first, uint64_t n, int vocab_size);

// data.path for tokens: the file itself, or the *.bin regular files of a directory sorted by name.
std::vector<std::string> list_token_shards(const std::string& path);

}  // namespace moempi
