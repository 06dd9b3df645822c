// Corpus-backed sources (data.type text and tokens): memory-mapped files seen as one token stream,
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

// A read-only memory map of a whole file (RAII). Open failures are collective errors naming it.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile& operator=(MappedFile&&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A bijection of [0, n) keyed by `key` (a 4-round Feistel network with cycle walking): a
// shuffled order of n items in O(1) memory. n >= 1, i < n.
uint64_t permute_index(uint64_t i, uint64_t n, uint64_t key);

class WindowedSource : public DataSource {
 public:
  // Tokens [0, count) of one file: `data` holds count tokens of `token_bytes` (1 or 2) bytes.
  struct Segment {
    const uint8_t* data = nullptr;
    int64_t count = 0;
    int token_bytes = 1;
  };

  // `kind` is "text" or "tokens" (the domain name); `files` keeps the maps alive.
  WindowedSource(std::string kind, std::vector<MappedFile> files, std::vector<Segment> segments,
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
  std::vector<MappedFile> files_;
  std::vector<Segment> segments_;
  std::vector<int64_t> segment_start_;  // first stream position of each segment
  int T_;
  uint64_t seed_;
  int64_t total_ = 0, train_tokens_ = 0;
  std::vector<int32_t> window_;
};

// data.type text: data.path is any file, one byte = one token.
std::unique_ptr<DataSource> open_text_source(const DataSpec& data, const ModelSpec& model, uint64_t seed);
// data.type tokens: data.path is a shard or a directory of *.bin shards, all checked at open.
std::unique_ptr<DataSource> open_token_source(const DataSpec& data, const ModelSpec& model, uint64_t seed);

}  // namespace moempi
