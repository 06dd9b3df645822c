// Corpus-backed sources (data.type text and tokens): files read with pread (never memory-mapped, so a
// file that shrinks during the run is a clear error naming it, not SIGBUS) seen as one token stream,
// cut into a train prefix and a val suffix, read as windows of T + 1 tokens (stride T) in a seeded
// order per epoch. Guarantee: sequence i of a split is window permute_index(i % n, n, key(epoch =
// i / n)) for every rank and world size; a split shorter than T + 1 tokens is a collective error
// naming the file and the sizes. Tests: tests/data_test.cpp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/data/data_source.h"

namespace moempi {

// A regular file open for reading (RAII). The file is checked to be a regular file before
// anything blocks on it (a FIFO or a device is refused, never waited on). Open failures are
// collective errors naming it; a read that finds the file shorter than it was at open (truncated
// during the run) is a local error naming the file, the offset and both sizes.
class DataFile {
 public:
  explicit DataFile(const std::string& path);
  ~DataFile();
  DataFile(DataFile&& other) noexcept;
  DataFile(const DataFile&) = delete;
  DataFile& operator=(const DataFile&) = delete;
  DataFile& operator=(DataFile&&) = delete;

  // Exactly `bytes` bytes at `offset` into `out`.
  void read_at(int64_t offset, void* out, size_t bytes) const;
  size_t size() const { return size_; }  // at open
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  size_t size_ = 0;
};

// A bijection of [0, n) keyed by `key` (a 4-round Feistel network with cycle walking): a
// shuffled order of n items in O(1) memory. n >= 1, i < n.
uint64_t permute_index(uint64_t i, uint64_t n, uint64_t key);

class WindowedSource : public DataSource {
 public:
  // Tokens [0, count) of files[file]: count tokens of `token_bytes` (1 or 2) bytes from byte `offset`.
  struct Segment {
    int file = 0;
    int64_t offset = 0;
    int64_t count = 0;
    int token_bytes = 1;
  };

  // `kind` is "text" or "tokens" (the domain name); segments read from `files`.
  WindowedSource(std::string kind, std::vector<DataFile> files, std::vector<Segment> segments,
                 const DataSpec& data, int seq_len, uint64_t seed);

  void get(Batch& out, Split split, int64_t first_seq, int B) override;
  int num_domains() const override { return 1; }
  std::string domain_name(int d) const override { return kind_; }
  std::string describe() const override;
  int64_t sequences_per_epoch(Split split) const override;

  int64_t split_begin(Split split) const { return split == Split::kTrain ? 0 : train_tokens_; }
  int64_t split_tokens(Split split) const { return split == Split::kTrain ? train_tokens_ : total_ - train_tokens_; }
  // First token (in the whole stream) of sequence `index` of `split`.
  int64_t window_start(Split split, int64_t index) const;

 private:
  void read(int64_t pos, int n, int32_t* out) const;  // tokens [pos, pos + n) of the stream

  std::string kind_, path_;
  std::vector<DataFile> files_;
  std::vector<Segment> segments_;
  std::vector<int64_t> segment_start_;  // first stream position of each segment
  int T_;
  uint64_t seed_;
  int64_t total_ = 0, train_tokens_ = 0;
  std::vector<int32_t> window_;
  mutable std::vector<uint8_t> bytes_;  // read() scratch
};

// data.type text: data.path is any file, one byte = one token.
std::unique_ptr<DataSource> open_text_source(const DataSpec& data, const ModelSpec& model, uint64_t seed);
// data.type tokens: data.path is a shard or a directory of *.bin shards, all checked at open.
std::unique_ptr<DataSource> open_token_source(const DataSpec& data, const ModelSpec& model, uint64_t seed);

}  // namespace moempi
