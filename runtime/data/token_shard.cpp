// Token shard writing, listing and validation (format in token_shard.h). Tests: tests/data_test.cpp.
#include "runtime/data/token_shard.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "runtime/core/error.h"

namespace moempi {

static_assert(std::endian::native == std::endian::little, "token shards are read in host byte order");

namespace {

template <class T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::string printable(const uint8_t* p, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i)
    out += (p[i] >= 0x20 && p[i] < 0x7f) ? std::string(1, static_cast<char>(p[i])) : fmt::format("\\x{:02x}", p[i]);
  return out;
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  uint8_t header[kTokenShardHeaderBytes] = {};
  std::memcpy(header, kTokenShardMagic, 8);
  const uint32_t version = kTokenShardVersion, reserved = 0;
  const uint64_t count = tokens.size();
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 12, &reserved, 4);
  std::memcpy(header + 16, &count, 8);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  MOEMPI_CHECK_ALL(f, "{}: cannot create token shard: {}", path, std::strerror(errno));
  bool ok = std::fwrite(header, 1, sizeof header, f) == sizeof header;
  if (ok && count) ok = std::fwrite(tokens.data(), 2, count, f) == count;
  ok = (std::fclose(f) == 0) && ok;
  MOEMPI_CHECK_ALL(ok, "{}: cannot write token shard: {}", path, std::strerror(errno));
}

uint64_t encode_file_as_shard(const std::string& in_path, const std::string& out_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto in_status = fs::status(in_path, ec);
  MOEMPI_CHECK_ALL(fs::exists(in_status), "{}: no such file", in_path);
  MOEMPI_CHECK_ALL(fs::is_regular_file(in_status),
                   "{}: not a regular file; data encode reads regular files only (not a FIFO or a device)", in_path);
  MOEMPI_CHECK_ALL(!fs::exists(out_path, ec) || !fs::equivalent(in_path, out_path, ec),
                   "{}: the output is the input file ({}); write the shard to another file", out_path, in_path);
  std::FILE* in = std::fopen(in_path.c_str(), "rb");
  MOEMPI_CHECK_ALL(in, "{}: cannot open: {}", in_path, std::strerror(errno));
  const std::string tmp = fmt::format("{}.tmp.{}", out_path, static_cast<long>(::getpid()));
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) {
    const int err = errno;
    std::fclose(in);
    fail_collective(fmt::format("{}: cannot create: {}", tmp, std::strerror(err)));
  }
  auto fail = [&](const std::string& what, int err) {
    std::fclose(in);
    std::fclose(out);
    std::remove(tmp.c_str());
    fail_collective(fmt::format("{}: {}", what, std::strerror(err)));
  };
  uint8_t header[kTokenShardHeaderBytes] = {};
  if (std::fwrite(header, 1, sizeof header, out) != sizeof header) fail(fmt::format("{}: cannot write", tmp), errno);
  std::vector<uint8_t> bytes(1 << 20);
  std::vector<uint16_t> tokens(bytes.size());
  uint64_t count = 0;
  for (;;) {
    const size_t n = std::fread(bytes.data(), 1, bytes.size(), in);
    if (n == 0) {
      if (std::ferror(in)) fail(fmt::format("{}: cannot read", in_path), errno);
      break;
    }
    for (size_t i = 0; i < n; ++i) tokens[i] = bytes[i];
    if (std::fwrite(tokens.data(), 2, n, out) != n) fail(fmt::format("{}: cannot write", tmp), errno);
    count += n;
  }
  std::memcpy(header, kTokenShardMagic, 8);
  const uint32_t version = kTokenShardVersion;
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 16, &count, 8);
  if (std::fseek(out, 0, SEEK_SET) != 0 || std::fwrite(header, 1, sizeof header, out) != sizeof header ||
      std::fflush(out) != 0)
    fail(fmt::format("{}: cannot write", tmp), errno);
  std::fclose(in);
  if (std::fclose(out) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    fail_collective(fmt::format("{}: cannot write: {}", tmp, std::strerror(err)));
  }
  fs::rename(tmp, out_path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail_collective(fmt::format("{}: cannot rename the finished shard into place: {}", out_path, ec.message()));
  }
  return count;
}

uint64_t check_token_shard(const std::string& path, const uint8_t* data, size_t size, int vocab_size) {
  const uint64_t count = check_token_shard_header(path, data, size);
  check_shard_tokens(path, data + kTokenShardHeaderBytes, 0, count, vocab_size);
  return count;
}

uint64_t check_token_shard_header(const std::string& path, const uint8_t* data, size_t size) {
  MOEMPI_CHECK_ALL(size >= kTokenShardHeaderBytes,
                   "{}: offset 0: the file has {} bytes, fewer than the {}-byte token shard header", path, size,
                   kTokenShardHeaderBytes);
  MOEMPI_CHECK_ALL(std::memcmp(data, kTokenShardMagic, 8) == 0,
                   "{}: offset 0: bad magic '{}' (expected 'MOEMPITK'); not a moempi token shard", path,
                   printable(data, 8));
  const uint32_t version = load_le<uint32_t>(data + 8);
  MOEMPI_CHECK_ALL(version == kTokenShardVersion, "{}: offset 8: version {} is not supported (expected {})", path,
                   version, kTokenShardVersion);
  const uint32_t reserved = load_le<uint32_t>(data + 12);
  MOEMPI_CHECK_ALL(reserved == 0, "{}: offset 12: reserved field is {} (expected 0)", path, reserved);
  const uint64_t count = load_le<uint64_t>(data + 16);
  const uint64_t room = (size - kTokenShardHeaderBytes) / 2;  // whole tokens the file can hold
  if (count > room) {
    const std::string need = count <= (UINT64_MAX - kTokenShardHeaderBytes) / 2
                                 ? fmt::format("{}", kTokenShardHeaderBytes + 2 * count)
                                 : std::string("more than 2^64");
    fail_collective(fmt::format("{}: offset {}: truncated shard: the header says {} tokens, which need {} bytes, "
                                "but the file ends at {} bytes",
                                path, size, count, need, size));
  }
  const uint64_t end = kTokenShardHeaderBytes + 2 * count;
  MOEMPI_CHECK_ALL(size == end, "{}: offset {}: {} bytes of trailing data after the {} tokens the header declares",
                   path, end, size - end, count);
  return count;
}

void check_shard_tokens(const std::string& path, const uint8_t* tokens, uint64_t first, uint64_t n, int vocab_size) {
  if (vocab_size >= 65536) return;
  uint16_t max_token = 0;
  for (uint64_t i = 0; i < n; ++i) max_token = std::max(max_token, load_le<uint16_t>(tokens + 2 * i));
  if (max_token < vocab_size) return;
  for (uint64_t i = 0; i < n; ++i) {
    const uint16_t t = load_le<uint16_t>(tokens + 2 * i);
    MOEMPI_CHECK_ALL(t < vocab_size, "{}: offset {}: token {} >= model.vocab_size ({})", path,
                     kTokenShardHeaderBytes + 2 * (first + i), t, vocab_size);
  }
}

std::vector<std::string> list_token_shards(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  MOEMPI_CHECK_ALL(fs::exists(status), "{}: no such file or directory (data.path)", path);
  if (!fs::is_directory(status)) return {path};
  std::vector<std::string> shards;
  for (const auto& entry : fs::directory_iterator(path, ec))
    if (entry.path().extension() == ".bin" && entry.is_regular_file()) shards.push_back(entry.path().string());
  MOEMPI_CHECK_ALL(!ec, "{}: cannot list the directory: {} (data.path)", path, ec.message());
  MOEMPI_CHECK_ALL(!shards.empty(), "{}: no *.bin token shards in the directory (data.path)", path);
  std::sort(shards.begin(), shards.end());
  return shards;
}

}  // namespace moempi
