// Text and token corpora as windowed, seeded-order sequence sources (see windowed_source.h).
// Tests: tests/data_test.cpp (window split, permutation bijectivity, shard round trip, corrupt shards).
#include "runtime/data/windowed_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "runtime/data/token_shard.h"

namespace moempi {

// ---------------------------------------------------------------------------------------------
DataFile::DataFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  MOEMPI_CHECK_ALL(fd_ >= 0, "{}: cannot open: {} (data.path)", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    const char* kind = S_ISDIR(st.st_mode)    ? " but a directory"
                       : S_ISFIFO(st.st_mode) ? " but a FIFO (named pipe)"
                       : S_ISCHR(st.st_mode)  ? " but a character device"
                       : S_ISSOCK(st.st_mode) ? " but a socket"
                                              : "";
    fail_collective(fmt::format("{}: not a regular file{} (data.path)", path,
                                *kind ? std::string(kind) : err ? std::string(": ") + std::strerror(err) : ""));
  }
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  size_ = static_cast<size_t>(st.st_size);
}

DataFile::DataFile(DataFile&& other) noexcept : path_(std::move(other.path_)), fd_(other.fd_), size_(other.size_) {
  other.fd_ = -1;
  other.size_ = 0;
}

DataFile::~DataFile() {
  if (fd_ >= 0) ::close(fd_);
}

void DataFile::read_at(int64_t offset, void* out, size_t bytes) const {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, static_cast<char*>(out) + done, bytes - done, offset + static_cast<int64_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : 0;
      struct stat st {};
      const long long now = ::fstat(fd_, &st) == 0 ? static_cast<long long>(st.st_size) : -1;
      fail_local(__FILE__, __LINE__,
                 err ? fmt::format("{}: cannot read {} bytes at offset {}: {} (data.path)", path_, bytes, offset,
                                   std::strerror(err))
                     : fmt::format("{}: the file changed during the run: it had {} bytes at start and has {} now, "
                                   "so {} bytes at offset {} cannot be read (data.path); do not modify data files "
                                   "while a job reads them",
                                   path_, size_, now, bytes, offset));
    }
    done += static_cast<size_t>(n);
  }
}

// ---------------------------------------------------------------------------------------------

uint64_t permute_index(uint64_t i, uint64_t n, uint64_t key) {
  MOEMPI_CHECK_ALL(n >= 1 && i < n, "permute_index: index {} outside [0, {})", i, n);
  if (n == 1) return 0;
  // A balanced Feistel network on `bits` >= log2(n) bits is a bijection of [0, 2^bits); walking
  // the cycle until the value lands in [0, n) restricts it to a bijection of [0, n). 2^bits < 4n,
  // so fewer than 4 rounds of walking are expected.
  int bits = std::bit_width(n - 1);
  bits += bits & 1;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t x = i;
  do {
    uint64_t left = x >> half, right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = Rng::mix(right ^ Rng::mix(key + round)) & mask;
      const uint64_t next_right = left ^ f;
      left = right;
      right = next_right;
    }
    x = (left << half) | right;
  } while (x >= n);
  return x;
}

// ---------------------------------------------------------------------------------------------
WindowedSource::WindowedSource(std::string kind, std::vector<DataFile> files, std::vector<Segment> segments,
                               const DataSpec& data, int seq_len, uint64_t seed)
    : kind_(std::move(kind)),
      path_(data.path),
      files_(std::move(files)),
      segments_(std::move(segments)),
      T_(seq_len),
      seed_(seed) {
  MOEMPI_CHECK_ALL(seq_len >= 1, "model.seq_len: expected an integer >= 1, got {}", seq_len);
  for (const auto& s : segments_) {
    segment_start_.push_back(total_);
    total_ += s.count;
  }
  // Rounded, so that e.g. val_fraction 0.2 (0.2000000030f) of 800 tokens leaves 640 for training.
  train_tokens_ = std::llround((1.0 - static_cast<double>(data.val_fraction)) * static_cast<double>(total_));
  train_tokens_ = std::clamp<int64_t>(train_tokens_, 0, total_);
  const char* unit = kind_ == "text" ? "bytes" : "tokens";
  const int64_t need = static_cast<int64_t>(T_) + 1;
  MOEMPI_CHECK_ALL(train_tokens_ >= need,
                   "{}: the train split has {} {} ({:.4g}% of {} {}), fewer than model.seq_len + 1 = {}; use more data, "
                   "a smaller model.seq_len or a smaller data.val_fraction",
                   path_, train_tokens_, unit, 100.0 * (1.0 - data.val_fraction), total_, unit, need);
  if (data.val_fraction > 0)
    MOEMPI_CHECK_ALL(total_ - train_tokens_ >= need,
                     "{}: the val split has {} {} ({:.4g}% of {} {}), fewer than model.seq_len + 1 = {}; use more "
                     "data, a smaller model.seq_len or a larger data.val_fraction",
                     path_, total_ - train_tokens_, unit, 100.0 * data.val_fraction, total_, unit, need);
  window_.resize(static_cast<size_t>(need));
}

int64_t WindowedSource::sequences_per_epoch(Split split) const {
  const int64_t len = split_tokens(split);
  return len >= T_ + 1 ? (len - 1) / T_ : 0;
}

int64_t WindowedSource::window_start(Split split, int64_t index) const {
  const int64_t n = sequences_per_epoch(split);
  MOEMPI_CHECK_ALL(n > 0, "{}: the {} split is empty (data.val_fraction is {}); set data.val_fraction > 0", path_,
                   name_of(split), split == Split::kVal ? "0" : "too small");
  const int64_t epoch = index / n;
  const uint64_t stream = Rng::stream_of(split == Split::kTrain ? "data.windows.train" : "data.windows.val");
  const uint64_t key = Rng(seed_, 0, stream, static_cast<uint64_t>(epoch)).next_u64();
  const int64_t window = static_cast<int64_t>(permute_index(static_cast<uint64_t>(index % n), n, key));
  return split_begin(split) + window * T_;
}

void WindowedSource::read(int64_t pos, int n, int32_t* out) const {
  size_t s = static_cast<size_t>(std::upper_bound(segment_start_.begin(), segment_start_.end(), pos) -
                                 segment_start_.begin()) - 1;
  int64_t offset = pos - segment_start_[s];
  while (n > 0) {
    const Segment& seg = segments_.at(s);
    const int take = static_cast<int>(std::min<int64_t>(n, seg.count - offset));
    bytes_.resize(static_cast<size_t>(take) * seg.token_bytes);
    files_[static_cast<size_t>(seg.file)].read_at(seg.offset + offset * seg.token_bytes, bytes_.data(), bytes_.size());
    if (seg.token_bytes == 1) {
      for (int i = 0; i < take; ++i) out[i] = bytes_[static_cast<size_t>(i)];
    } else {
      for (int i = 0; i < take; ++i) {
        uint16_t t;
        std::memcpy(&t, bytes_.data() + 2 * i, 2);
        out[i] = t;
      }
    }
    out += take;
    n -= take;
    ++s;
    offset = 0;
  }
}

void WindowedSource::get(Batch& out, Split split, int64_t first_seq, int B) {
  MOEMPI_CHECK_ALL(first_seq >= 0 && B >= 0, "data: bad request of {} sequences from index {}", B, first_seq);
  out.reset(B, T_);
  for (int b = 0; b < B; ++b) {
    read(window_start(split, first_seq + b), T_ + 1, window_.data());
    std::copy(window_.begin(), window_.end() - 1, out.tokens_BT.begin() + static_cast<size_t>(b) * T_);
    std::copy(window_.begin() + 1, window_.end(), out.targets_BT.begin() + static_cast<size_t>(b) * T_);
  }
}

std::string WindowedSource::describe() const {
  const char* unit = kind_ == "text" ? "bytes" : "tokens";
  return fmt::format("{}: {} ({} file{}, {} {}): train {} windows of {}, val {} windows; seeded order per epoch",
                     kind_, path_, files_.size(), files_.size() == 1 ? "" : "s", total_, unit,
                     sequences_per_epoch(Split::kTrain), T_ + 1, sequences_per_epoch(Split::kVal));
}

// ---------------------------------------------------------------------------------------------
std::unique_ptr<DataSource> open_text_source(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  MOEMPI_CHECK_ALL(!data.path.empty(), "data.path: missing; data.type text reads a file");
  MOEMPI_CHECK_ALL(model.vocab_size >= 256,
                   "model.vocab_size ({}) is smaller than 256, but data.type text produces byte tokens",
                   model.vocab_size);
  std::vector<DataFile> files;
  files.emplace_back(data.path);
  std::vector<WindowedSource::Segment> segments{{0, 0, static_cast<int64_t>(files[0].size()), 1}};
  return std::make_unique<WindowedSource>("text", std::move(files), std::move(segments), data, model.seq_len, seed);
}

std::unique_ptr<DataSource> open_token_source(const DataSpec& data, const ModelSpec& model, uint64_t seed) {
  MOEMPI_CHECK_ALL(!data.path.empty(), "data.path: missing; data.type tokens reads a shard or a directory of shards");
  std::vector<DataFile> files;
  std::vector<WindowedSource::Segment> segments;
  for (const auto& shard : list_token_shards(data.path)) {
    files.emplace_back(shard);
    const DataFile& f = files.back();
    // The header, then the tokens in chunks: memory stays bounded whatever the shard's size.
    uint8_t header[kTokenShardHeaderBytes] = {};
    f.read_at(0, header, std::min(f.size(), sizeof header));
    const uint64_t count = check_token_shard_header(shard, header, f.size());
    std::vector<uint8_t> chunk;
    for (uint64_t i = 0; i < count;) {
      const uint64_t n = std::min<uint64_t>(count - i, uint64_t{1} << 20);
      chunk.resize(2 * n);
      f.read_at(static_cast<int64_t>(kTokenShardHeaderBytes + 2 * i), chunk.data(), chunk.size());
      check_shard_tokens(shard, chunk.data(), i, n, model.vocab_size);
      i += n;
    }
    segments.push_back({static_cast<int>(files.size() - 1), static_cast<int64_t>(kTokenShardHeaderBytes),
                        static_cast<int64_t>(count), 2});
  }
  return std::make_unique<WindowedSource>("tokens", std::move(files), std::move(segments), data, model.seq_len, seed);
}

}  // namespace moempi
