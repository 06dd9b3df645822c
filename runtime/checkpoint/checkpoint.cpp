// Checkpoint save, load, inspect and verify (layout in checkpoint.h). Every rank writes the
// slices it is the writer of into its own shard file; rank 0 gathers the shard indices and
// writes the manifest last. Loading validates the manifest's structure first (sizes, ranges,
// coverage, file names), then each rank reads only the pieces its own slices overlap.
#include "runtime/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include <yaml-cpp/yaml.h>

#include "comm/agreement.h"
#include "comm/collectives.h"
#include "runtime/checkpoint/checkpoint.pb.h"
#include "runtime/checkpoint/crc32c.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/test_hooks.h"

#ifndef MOEMPI_VERSION
#define MOEMPI_VERSION "unknown"
#endif

namespace moempi {
namespace fs = std::filesystem;
namespace {

constexpr char kShardMagic[8] = {'M', 'O', 'E', 'M', 'P', 'I', 'S', 'H'};
constexpr size_t kHeaderBytes = 64;
constexpr size_t kAlign = 64;
constexpr int64_t kMaxManifestBytes = int64_t{1} << 30;  // far above any real manifest
constexpr int64_t kMaxNumel = int64_t{1} << 40;

struct ShardHeader {
  char magic[8];
  uint32_t format_version;
  uint32_t rank;
  int64_t step;
  uint64_t checkpoint_id;
  char pad[kHeaderBytes - 32];
};
static_assert(sizeof(ShardHeader) == kHeaderBytes);

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string step_dir_name(int64_t step) { return "step_" + std::to_string(step); }
std::string shard_name(int rank) { return "shard_" + std::to_string(rank) + ".bin"; }

// The step of a "step_<N>" name, or -1.
int64_t step_of_name(const std::string& name) {
  if (name.rfind("step_", 0) != 0 || name.size() <= 5 || name.size() > 5 + 18) return -1;
  for (size_t i = 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return -1;
  return std::stoll(name.substr(5));
}

[[noreturn]] void io_fail(const std::string& what, const std::string& path) {
  fail_collective(fmt::format("{} '{}': {}", what, path, std::strerror(errno)));
}

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) io_fail("cannot write checkpoint file", path);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void fsync_path(const std::string& path, bool dir) {
  const int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) io_fail("cannot open for fsync", path);
  if (::fsync(fd) != 0) {
    ::close(fd);
    io_fail("cannot fsync", path);
  }
  ::close(fd);
}

// Writes `bytes` to path atomically: temp file, fsync, rename, directory fsync.
void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) io_fail("cannot create", tmp);
  write_all(fd, bytes.data(), bytes.size(), tmp);
  if (::fsync(fd) != 0) io_fail("cannot fsync", tmp);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) io_fail("cannot rename into place", path);
  fsync_path(fs::path(path).parent_path().string(), true);
}

bool pread_all(int fd, void* data, size_t n, uint64_t offset) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return true;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

ckpt::DType dtype_to_proto(StateDType t) { return t == StateDType::kF32 ? ckpt::F32 : ckpt::I64; }
size_t proto_dtype_size(int t) { return t == ckpt::F32 ? 4 : 8; }
const char* proto_dtype_name(int t) { return t == ckpt::F32 ? "f32" : t == ckpt::I64 ? "i64" : "?"; }

std::string shape_str(const google::protobuf::RepeatedField<int64_t>& s) {
  std::vector<int64_t> v(s.begin(), s.end());
  return fmt::format("[{}]", fmt::join(v, ", "));
}
std::string shape_str(const std::vector<int64_t>& v) { return fmt::format("[{}]", fmt::join(v, ", ")); }

// ---------------------------------------------------------------------------------------------
// Reading and structural validation of a manifest (every rank; no collective here).

struct ReadManifest {
  std::string dir;
  ckpt::ManifestBody body;
  std::map<std::string, int> tensor_index;  // name -> index in body.tensors
};

// Reads DIR/manifest.pb and checks everything that does not need the shard files' contents:
// the body's CRC, format version, the step against the directory name, shard names, and every
// tensor's dtype, shape and pieces (in bounds of their shard and of the tensor, covering it
// exactly once). Collective error (message naming the file) on the first problem.
ReadManifest read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.pb";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    fail_collective(fmt::format("{}: no manifest.pb (an incomplete checkpoint: the save did not finish)", dir));
  const auto size = fs::file_size(path, ec);
  if (ec || size == 0 || static_cast<int64_t>(size) > kMaxManifestBytes)
    fail_collective(fmt::format("{}: manifest size {} bytes is not plausible", path, ec ? 0 : size));
  std::string bytes(size, '\0');
  {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) io_fail("cannot open", path);
    const bool ok = pread_all(fd, bytes.data(), size, 0);
    ::close(fd);
    if (!ok) fail_collective(fmt::format("{}: cannot read {} bytes", path, size));
  }
  ckpt::Manifest outer;
  if (!outer.ParseFromString(bytes)) fail_collective(fmt::format("{}: not a moempi manifest (cannot parse)", path));
  if (crc32c(outer.body().data(), outer.body().size()) != outer.body_crc32c())
    fail_collective(fmt::format("{}: manifest checksum mismatch (damaged file)", path));
  ReadManifest m;
  m.dir = dir;
  if (!m.body.ParseFromString(outer.body())) fail_collective(fmt::format("{}: cannot parse the manifest body", path));
  const ckpt::ManifestBody& b = m.body;
  if (b.format_version() != kCheckpointFormatVersion)
    fail_collective(fmt::format("{}: checkpoint format version {} (this moempi {} reads version {})", path,
                                b.format_version(), moempi_version(), kCheckpointFormatVersion));
  const std::string base = fs::path(dir).lexically_normal().filename().string();
  const int64_t dir_step = step_of_name(base == "" ? fs::path(dir).lexically_normal().parent_path().filename().string() : base);
  if (dir_step >= 0 && dir_step != b.step())
    fail_collective(fmt::format("{}: manifest is for step {}, but the directory is step {} (a stale or foreign "
                                "manifest)", path, b.step(), dir_step));
  if (b.world_size() < 1 || b.shards_size() != b.world_size())
    fail_collective(fmt::format("{}: {} shards listed for world size {}", path, b.shards_size(), b.world_size()));
  for (int r = 0; r < b.shards_size(); ++r) {
    const auto& s = b.shards(r);
    if (s.rank() != static_cast<uint32_t>(r) || s.file() != shard_name(r) || s.size_bytes() < kHeaderBytes)
      fail_collective(fmt::format("{}: shard entry {} is malformed ('{}', rank {})", path, r, s.file(), s.rank()));
  }
  for (int i = 0; i < b.tensors_size(); ++i) {
    const auto& t = b.tensors(i);
    if (!m.tensor_index.emplace(t.name(), i).second)
      fail_collective(fmt::format("{}: tensor '{}' listed twice", path, t.name()));
    if (t.dtype() != ckpt::F32 && t.dtype() != ckpt::I64)
      fail_collective(fmt::format("{}: tensor '{}' has an unknown dtype {}", path, t.name(), static_cast<int>(t.dtype())));
    int64_t numel = 1;
    for (int64_t d : t.global_shape()) {
      if (d < 0 || (d > 0 && numel > kMaxNumel / d))
        fail_collective(fmt::format("{}: tensor '{}' has an implausible shape {}", path, t.name(), shape_str(t.global_shape())));
      numel *= d;
    }
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const auto& p : t.pieces()) {
      if (p.shard() >= static_cast<uint32_t>(b.shards_size()) || p.begin() < 0 || p.count() < 0 ||
          p.begin() > numel || p.count() > numel - p.begin())
        fail_collective(fmt::format("{}: tensor '{}' has a piece outside the tensor or the shards", path, t.name()));
      const uint64_t nbytes = static_cast<uint64_t>(p.count()) * proto_dtype_size(t.dtype());
      const uint64_t fsize = b.shards(p.shard()).size_bytes();
      if (p.file_offset() < kHeaderBytes || p.file_offset() > fsize || nbytes > fsize - p.file_offset())
        fail_collective(fmt::format("{}: tensor '{}' has a piece beyond the end of {}", path, t.name(),
                                    b.shards(p.shard()).file()));
      ranges.emplace_back(p.begin(), p.count());
    }
    std::sort(ranges.begin(), ranges.end());
    int64_t covered = 0;
    for (const auto& [begin, count] : ranges) {
      if (begin != covered)
        fail_collective(fmt::format("{}: tensor '{}' pieces do not cover it exactly once (gap or overlap at "
                                    "element {})", path, t.name(), covered));
      covered += count;
    }
    if (covered != numel)
      fail_collective(fmt::format("{}: tensor '{}' pieces cover {} of its {} elements", path, t.name(), covered, numel));
  }
  return m;
}

// An open shard file whose size and header match the manifest.
class ShardReader {
 public:
  ShardReader(const ReadManifest& m, uint32_t shard) {
    const auto& s = m.body.shards(shard);
    path_ = m.dir + "/" + s.file();
    fd_ = ::open(path_.c_str(), O_RDONLY);
    if (fd_ < 0) fail_collective(fmt::format("{}: missing shard ({})", path_, std::strerror(errno)));
    struct stat st {};
    ::fstat(fd_, &st);
    if (static_cast<uint64_t>(st.st_size) != s.size_bytes())
      fail_collective(fmt::format("{}: {} bytes, the manifest says {} ({})", path_, st.st_size, s.size_bytes(),
                                  static_cast<uint64_t>(st.st_size) < s.size_bytes() ? "truncated" : "not this checkpoint's shard"));
    ShardHeader h{};
    if (!pread_all(fd_, &h, sizeof h, 0)) fail_collective(fmt::format("{}: cannot read the header", path_));
    if (std::memcmp(h.magic, kShardMagic, 8) != 0) fail_collective(fmt::format("{}: not a moempi shard (bad magic)", path_));
    for (char c : h.pad)
      if (c != 0) fail_collective(fmt::format("{}: damaged header", path_));
    if (h.format_version != kCheckpointFormatVersion || h.rank != s.rank() || h.step != m.body.step() ||
        h.checkpoint_id != m.body.checkpoint_id())
      fail_collective(fmt::format("{}: shard of another checkpoint (step {}, id {:016x}; the manifest is step {}, id "
                                  "{:016x}): a stale or foreign manifest or shard", path_, h.step, h.checkpoint_id,
                                  m.body.step(), m.body.checkpoint_id()));
  }
  ~ShardReader() {
    if (fd_ >= 0) ::close(fd_);
  }
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  // Reads one piece (already bounds-checked by read_manifest) and checks its CRC32C.
  void read_piece(const ckpt::Tensor& t, const ckpt::Piece& p, std::vector<char>& out) const {
    out.resize(static_cast<size_t>(p.count()) * proto_dtype_size(t.dtype()));
    if (!pread_all(fd_, out.data(), out.size(), p.file_offset()))
      fail_collective(fmt::format("{}: cannot read tensor '{}'", path_, t.name()));
    if (crc32c(out.data(), out.size()) != p.crc32c())
      fail_collective(fmt::format("{}: checksum mismatch in tensor '{}' (elements [{}, {})): damaged bytes", path_,
                                  t.name(), p.begin(), p.begin() + p.count()));
  }
  const std::string& path() const { return path_; }
  // CRC32C of the whole file against the manifest (header and padding too), in 4 MiB reads.
  void check_whole_file(const ckpt::ShardFile& s) const {
    std::vector<char> buf(size_t{4} << 20);
    uint32_t crc = 0;
    for (uint64_t off = 0; off < s.size_bytes();) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), s.size_bytes() - off));
      if (!pread_all(fd_, buf.data(), n, off)) fail_collective(fmt::format("{}: cannot read", path_));
      crc = crc32c(buf.data(), n, crc);
      off += n;
    }
    if (crc != s.crc32c())
      fail_collective(fmt::format("{}: checksum mismatch outside every tensor (header or padding): damaged bytes", path_));
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// A sharding strategy's own scheduling state (fssdp's load history): it does not change the model,
// so a job of another strategy ignores it, and a job whose strategy has some starts it afresh.
bool is_strategy_state(const std::string& name) { return name.rfind("strategy/", 0) == 0; }

}  // namespace

const char* moempi_version() { return MOEMPI_VERSION; }

// ---------------------------------------------------------------------------------------------
// Save.

SaveStats save_checkpoint(const std::string& ckpt_root, int64_t step, const StateRegistry& registry,
                          const std::string& spec_yaml, const ParallelSpec& parallel, const Communicator& world,
                          int keep_last) {
  const double t0 = now_s();
  const int rank = world.rank(), W = world.size();
  const std::string dir = ckpt_root + "/" + step_dir_name(step);
  int64_t id = 0;
  agree_on_errors(world, [&] {
    if (rank != 0) return;
    std::error_code ec;
    fs::create_directories(ckpt_root, ec);
    if (ec) fail_collective(fmt::format("cannot create '{}': {}", ckpt_root, ec.message()));
    fs::remove_all(dir, ec);  // a stale or incomplete one of the same step
    fs::create_directories(dir, ec);
    if (ec) fail_collective(fmt::format("cannot create '{}': {}", dir, ec.message()));
    std::random_device rd;
    id = static_cast<int64_t>((static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                              static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()));
  });
  bcast(&id, 1, 0, world);

  // This rank's shard: header, then every slice it writes, 64-byte aligned.
  ckpt::ShardIndex index;
  agree_on_errors(world, [&] {
    const std::string path = dir + "/" + shard_name(rank);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) io_fail("cannot create", path);
    ShardHeader h{};
    std::memcpy(h.magic, kShardMagic, 8);
    h.format_version = kCheckpointFormatVersion;
    h.rank = static_cast<uint32_t>(rank);
    h.step = step;
    h.checkpoint_id = static_cast<uint64_t>(id);
    write_all(fd, &h, sizeof h, path);
    uint64_t offset = sizeof h;
    uint32_t file_crc = crc32c(&h, sizeof h);
    static const char zeros[kAlign] = {};
    for (const StateTensor& t : registry.tensors()) {
      if (!t.writer) continue;
      if (offset % kAlign) {
        const size_t pad = kAlign - offset % kAlign;
        write_all(fd, zeros, pad, path);
        file_crc = crc32c(zeros, pad, file_crc);
        offset += pad;
      }
      ckpt::Tensor* pt = index.add_tensors();
      pt->set_name(t.name);
      pt->set_dtype(dtype_to_proto(t.dtype));
      for (int64_t d : t.global_shape) pt->add_global_shape(d);
      ckpt::Piece* p = pt->add_pieces();
      p->set_shard(static_cast<uint32_t>(rank));
      p->set_file_offset(offset);
      p->set_begin(t.begin);
      p->set_count(t.count);
      p->set_crc32c(crc32c(t.data, t.bytes()));
      write_all(fd, t.data, t.bytes(), path);
      file_crc = crc32c(t.data, t.bytes(), file_crc);
      offset += t.bytes();
    }
    if (::fsync(fd) != 0) io_fail("cannot fsync", path);
    ::close(fd);
    index.mutable_file()->set_rank(static_cast<uint32_t>(rank));
    index.mutable_file()->set_file(shard_name(rank));
    index.mutable_file()->set_size_bytes(offset);
    index.mutable_file()->set_crc32c(file_crc);
  });

  // Gather every shard's index on rank 0 (sizes, then one broadcast per rank: small messages).
  const std::string mine = index.SerializeAsString();
  std::vector<int64_t> sizes(W);
  const int64_t my_size = static_cast<int64_t>(mine.size());
  allgather_i64(&my_size, sizes.data(), 1, world);
  std::vector<ckpt::ShardIndex> indices(W);
  for (int r = 0; r < W; ++r) {
    std::string buf = r == rank ? mine : std::string(static_cast<size_t>(sizes[r]), '\0');
    bcast_bytes(buf.data(), sizes[r], r, world);
    if (rank == 0) indices[r].ParseFromString(buf);
  }
  test_hooks::in_checkpoint_save(rank, step);  // every shard written, no manifest yet (test binary only)

  int64_t total_bytes = 0;
  agree_on_errors(world, [&] {
    if (rank != 0) return;
    ckpt::ManifestBody body;
    body.set_format_version(kCheckpointFormatVersion);
    body.set_moempi_version(moempi_version());
    body.set_step(step);
    body.set_checkpoint_id(static_cast<uint64_t>(id));
    body.set_spec_yaml(spec_yaml);
    body.set_world_size(W);
    body.set_strategy(parallel.strategy);
    body.set_ep(parallel.ep);
    body.set_created_utc(utc_now());
    std::map<std::string, int> by_name;
    for (int r = 0; r < W; ++r) {
      *body.add_shards() = indices[r].file();
      total_bytes += static_cast<int64_t>(indices[r].file().size_bytes());
      for (const auto& t : indices[r].tensors()) {
        auto [it, fresh] = by_name.emplace(t.name(), body.tensors_size());
        if (fresh) {
          ckpt::Tensor* nt = body.add_tensors();
          nt->set_name(t.name());
          nt->set_dtype(t.dtype());
          *nt->mutable_global_shape() = t.global_shape();
        }
        ckpt::Tensor* dst = body.mutable_tensors(it->second);
        for (const auto& p : t.pieces()) *dst->add_pieces() = p;
      }
    }
    ckpt::Manifest outer;
    outer.set_body(body.SerializeAsString());
    outer.set_body_crc32c(crc32c(outer.body().data(), outer.body().size()));
    const std::string bytes = outer.SerializeAsString();
    total_bytes += static_cast<int64_t>(bytes.size());
    write_file_atomic(dir + "/manifest.pb", bytes);
    // Validate what was written before pointing `latest` at it (coverage: every tensor written once).
    read_manifest(dir);
    write_file_atomic(ckpt_root + "/latest", step_dir_name(step) + "\n");
    // Keep the newest keep_last complete checkpoints up to this step; remove older incomplete ones.
    // Newer ones (left by an earlier run whose checkpoint resume refused) are kept, and not
    // counted: they are not on this run's path.
    // The checkpoint is complete by now: a file-system error here is a warning (never an
    // exception on rank 0 alone while the others wait), and the next save tries again.
    if (keep_last > 0) {
      std::vector<std::pair<int64_t, fs::path>> complete;
      std::vector<fs::path> doomed;  // listed first, removed after the scan
      std::error_code ec;
      for (fs::directory_iterator it(ckpt_root, ec), end; !ec && it != end; it.increment(ec)) {
        const int64_t s = step_of_name(it->path().filename().string());
        std::error_code entry_ec;  // an entry that cannot be examined is left alone
        if (s < 0 || !it->is_directory(entry_ec)) continue;
        if (fs::exists(it->path() / "manifest.pb", entry_ec)) {
          if (s <= step) complete.emplace_back(s, it->path());
        } else if (!entry_ec && s < step) {
          doomed.push_back(it->path());
        }
      }
      if (ec) {  // a partial listing could miss newer ones: remove nothing this time
        spdlog::warn("checkpoint.keep_last: cannot list {}: {}; {} is saved", ckpt_root, ec.message(), dir);
        doomed.clear();
        complete.clear();
      }
      std::sort(complete.rbegin(), complete.rend());
      for (size_t i = static_cast<size_t>(keep_last); i < complete.size(); ++i)
        if (complete[i].first != step) doomed.push_back(complete[i].second);
      for (const fs::path& p : doomed)
        if (fs::remove_all(p, ec); ec)
          spdlog::warn("checkpoint.keep_last: cannot remove {}: {}; {} is saved", p.string(), ec.message(), dir);
    }
  });
  SaveStats stats;
  stats.dir = dir;
  stats.bytes = total_bytes;
  stats.seconds = now_s() - t0;
  return stats;
}

// ---------------------------------------------------------------------------------------------
// Load.

CheckpointInfo load_checkpoint(const std::string& step_dir, const StateRegistry& registry, const Communicator& world) {
  ReadManifest m;
  agree_on_errors(world, [&] { m = read_manifest(step_dir); });
  // Every rank must have read the same manifest (a shared file system seen alike by all).
  {
    const int64_t mine[2] = {static_cast<int64_t>(m.body.checkpoint_id()), m.body.tensors_size()};
    std::vector<int64_t> all(2 * static_cast<size_t>(world.size()));
    allgather_i64(mine, all.data(), 2, world);
    for (int r = 0; r < world.size(); ++r)
      MOEMPI_CHECK_ALL(all[2 * r] == mine[0] && all[2 * r + 1] == mine[1],
                       "{}: ranks 0 and {} read different manifests (is the run directory on a file system "
                       "every rank sees alike?)", step_dir, r);
  }
  // Stage every local slice; nothing live is touched until every rank has succeeded.
  std::vector<std::vector<char>> staging(registry.size());
  std::vector<int64_t> used(static_cast<size_t>(m.body.tensors_size()), 0);
  agree_on_errors(world, [&] {
    std::map<uint32_t, std::unique_ptr<ShardReader>> readers;
    std::vector<char> piece;
    for (size_t i = 0; i < registry.size(); ++i) {
      const StateTensor& t = registry.tensors()[i];
      const auto it = m.tensor_index.find(t.name);
      // Strategy state (scheduling, not the model) saved under another strategy or another shape
      // (e.g. parallel.fssdp.load_window changed) starts afresh: zeros, never what is live in memory.
      // So does state newer than the checkpoint (zero_if_absent), whose owner reads zeros as unknown.
      if (is_strategy_state(t.name) || t.zero_if_absent) {
        bool fits = it != m.tensor_index.end();
        if (fits) {
          const ckpt::Tensor& ct = m.body.tensors(it->second);
          used[it->second] = 1;
          fits = ct.dtype() == dtype_to_proto(t.dtype) &&
                 std::vector<int64_t>(ct.global_shape().begin(), ct.global_shape().end()) == t.global_shape;
        }
        if (!fits) {
          staging[i].assign(t.bytes(), 0);
          continue;
        }
      }
      if (it == m.tensor_index.end())
        fail_collective(fmt::format("{}: the checkpoint has no tensor '{}', which this job has (saved with another "
                                    "model, optimizer or balancing passes?)", step_dir, t.name));
      used[it->second] = 1;
      const ckpt::Tensor& ct = m.body.tensors(it->second);
      const std::vector<int64_t> shape(ct.global_shape().begin(), ct.global_shape().end());
      if (ct.dtype() != dtype_to_proto(t.dtype) || shape != t.global_shape)
        fail_collective(fmt::format("{}: tensor '{}' is {} {} in the checkpoint but {} {} in this job: a checkpoint of "
                                    "another model shape", step_dir, t.name, proto_dtype_name(ct.dtype()),
                                    shape_str(ct.global_shape()), name_of(t.dtype), shape_str(t.global_shape)));
      const size_t esize = size_of(t.dtype);
      staging[i].resize(t.bytes());
      int64_t filled = 0;
      for (const auto& p : ct.pieces()) {
        const int64_t lo = std::max(p.begin(), t.begin), hi = std::min(p.begin() + p.count(), t.begin + t.count);
        if (lo >= hi) continue;
        auto& reader = readers[p.shard()];
        if (!reader) reader = std::make_unique<ShardReader>(m, p.shard());
        reader->read_piece(ct, p, piece);
        std::memcpy(staging[i].data() + (lo - t.begin) * esize, piece.data() + (lo - p.begin()) * esize,
                    static_cast<size_t>(hi - lo) * esize);
        filled += hi - lo;
      }
      if (filled != t.count)  // read_manifest checked coverage; this guards the arithmetic
        fail_collective(fmt::format("{}: tensor '{}': only {} of this rank's {} elements found", step_dir, t.name,
                                    filled, t.count));
    }
  });
  // Tensors of the checkpoint that no rank of this job holds: state this job would silently drop.
  allreduce_sum(used.data(), static_cast<int64_t>(used.size()), world);
  for (size_t i = 0; i < used.size(); ++i)
    MOEMPI_CHECK_ALL(used[i] > 0 || is_strategy_state(m.body.tensors(static_cast<int>(i)).name()), "{}: the checkpoint holds '{}', which is not state of this job (saved with another "
                     "model, optimizer or balancing passes?)", step_dir, m.body.tensors(static_cast<int>(i)).name());
  for (size_t i = 0; i < registry.size(); ++i) {
    const StateTensor& t = registry.tensors()[i];
    std::memcpy(t.data, staging[i].data(), t.bytes());
  }
  CheckpointInfo info;
  info.dir = step_dir;
  info.step = m.body.step();
  info.spec_yaml = m.body.spec_yaml();
  info.world_size = m.body.world_size();
  info.strategy = m.body.strategy();
  info.ep = m.body.ep();
  info.moempi_version = m.body.moempi_version();
  return info;
}

namespace {
void flatten_yaml(const YAML::Node& n, const std::string& path, std::map<std::string, std::string>& out) {
  if (n.IsMap()) {
    for (const auto& kv : n) flatten_yaml(kv.second, path.empty() ? kv.first.as<std::string>() : path + "." + kv.first.as<std::string>(), out);
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i) flatten_yaml(n[i], path + "." + std::to_string(i), out);
    if (n.size() == 0) out[path] = "[]";
  } else if (n.IsScalar()) {
    out[path] = n.Scalar();
  }
}
}  // namespace

std::vector<std::string> spec_differences(const std::string& saved_yaml, const std::string& current_yaml) {
  std::map<std::string, std::string> a, b;
  try {
    flatten_yaml(YAML::Load(saved_yaml), "", a);
    flatten_yaml(YAML::Load(current_yaml), "", b);
  } catch (const YAML::Exception& e) {
    return {fmt::format("(the saved spec cannot be read: {})", e.what())};
  }
  std::set<std::string> keys;
  for (const auto& [k, v] : a) keys.insert(k);
  for (const auto& [k, v] : b) keys.insert(k);
  std::vector<std::string> out;
  for (const auto& k : keys) {
    const auto ia = a.find(k), ib = b.find(k);
    const std::string va = ia == a.end() ? "-" : ia->second, vb = ib == b.end() ? "-" : ib->second;
    if (va != vb) out.push_back(fmt::format("{}: {} -> {}", k, va, vb));
  }
  return out;
}

std::vector<std::string> checkpoint_candidates(const std::string& ckpt_root) {
  // No directory: a fresh run. A directory that cannot be read (EACCES, EIO, a stale NFS handle)
  // is an error: taken as empty, the job would start over at step 0 and bury its checkpoints.
  auto unreadable = [&](const std::string& what, const std::error_code& ec) {
    fail_collective(fmt::format("cannot read the checkpoint directory: {}: {} (fix it, or set checkpoint.resume: "
                                "never to start over)", what, ec.message()));
  };
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  const fs::file_status st = fs::status(ckpt_root, ec);
  if (st.type() == fs::file_type::not_found) return {};
  if (ec) unreadable(ckpt_root, ec);
  if (st.type() != fs::file_type::directory)
    fail_collective(fmt::format("{} is not a directory (checkpoints go there)", ckpt_root));
  fs::directory_iterator it(ckpt_root, ec);
  if (ec) unreadable(ckpt_root, ec);
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) unreadable(ckpt_root, ec);
    const int64_t s = step_of_name(it->path().filename().string());
    std::error_code exists_ec;  // an unreadable manifest is listed: loading it says what is wrong
    if (s >= 0 && (fs::exists(it->path() / "manifest.pb", exists_ec) || exists_ec))
      found.emplace_back(s, it->path().string());
  }
  if (ec) unreadable(ckpt_root, ec);
  std::sort(found.rbegin(), found.rend());
  std::vector<std::string> out;
  std::string latest;
  {
    const std::string path = ckpt_root + "/latest";
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f && errno != ENOENT) unreadable(path, std::error_code(errno, std::generic_category()));
    if (f) {
      char buf[64] = {};
      if (std::fgets(buf, sizeof buf, f)) latest = buf;
      std::fclose(f);
      while (!latest.empty() && (latest.back() == '\n' || latest.back() == '\r')) latest.pop_back();
    }
  }
  // `latest` first, with or without a manifest: it moves only after a manifest is written, so
  // naming a checkpoint without one means damage, and loading it fails with a message; resume then
  // falls back to an older one, saying so, or stops (never silently starting over at step 0).
  const int64_t latest_step = step_of_name(latest);
  if (latest_step >= 0) out.push_back((fs::path(ckpt_root) / latest).string());
  // Then the older ones, newest first, and last those newer than `latest`: left by an earlier run
  // whose checkpoint resume refused, they are not on the path of the run that wrote `latest`.
  for (const bool newer : {false, true})
    for (const auto& [s, p] : found)
      if (fs::path(p).filename() != latest && (latest_step >= 0 && s > latest_step) == newer) out.push_back(p);
  return out;
}

// ---------------------------------------------------------------------------------------------
// inspect / verify (one process).

std::string resolve_checkpoint_dir(const std::string& dir) {
  std::error_code ec;
  fs::path p(dir);
  if (fs::is_regular_file(p, ec) && p.filename() == "latest") p = p.parent_path();
  if (fs::is_directory(p, ec) && fs::exists(p / "manifest.pb", ec)) return p.string();
  if (fs::is_directory(p / "ckpt", ec)) p /= "ckpt";
  if (fs::is_directory(p, ec)) {
    const auto c = checkpoint_candidates(p.string());
    if (!c.empty()) return c.front();
    if (step_of_name(p.filename().string()) >= 0)
      fail_collective(fmt::format("{}: no manifest.pb (an incomplete checkpoint: the save did not finish)", dir));
  }
  fail_collective(fmt::format("{}: no checkpoint here (give a step directory, a ckpt directory, its latest file or a "
                              "run directory)", dir));
}

int inspect_checkpoint(const std::string& dir_arg, bool verify_only) {
  std::string dir;
  try {
    dir = resolve_checkpoint_dir(dir_arg);
  } catch (const CollectiveError& e) {
    std::fprintf(stderr, "moempi: error: %s\n", e.what());
    return 2;
  }
  ReadManifest m;
  std::string problem;
  try {
    m = read_manifest(dir);
  } catch (const CollectiveError& e) {
    problem = e.what();
  }
  // Every shard's size and header, then every piece's checksum, in manifest order.
  std::vector<std::string> tensor_status;
  if (problem.empty()) {
    std::map<uint32_t, std::unique_ptr<ShardReader>> readers;
    try {
      for (int s = 0; s < m.body.shards_size(); ++s) readers[s] = std::make_unique<ShardReader>(m, s);
    } catch (const CollectiveError& e) {
      problem = e.what();
    }
    std::vector<char> buf;
    for (int i = 0; i < m.body.tensors_size() && problem.empty(); ++i) {
      const auto& t = m.body.tensors(i);
      try {
        for (const auto& p : t.pieces()) readers[p.shard()]->read_piece(t, p, buf);
      } catch (const CollectiveError& e) {
        problem = e.what();
      }
    }
    try {
      for (int s = 0; s < m.body.shards_size() && problem.empty(); ++s) readers[s]->check_whole_file(m.body.shards(s));
    } catch (const CollectiveError& e) {
      problem = e.what();
    }
  }
  if (!verify_only && (problem.empty() || m.body.tensors_size() > 0)) {
    const auto& b = m.body;
    std::printf("checkpoint %s\n", dir.c_str());
    std::printf("step %lld | format %u | moempi %s | saved %s | id %016llx\n", static_cast<long long>(b.step()),
                b.format_version(), b.moempi_version().c_str(), b.created_utc().c_str(),
                static_cast<unsigned long long>(b.checkpoint_id()));
    std::printf("layout: world %d | strategy %s | ep %d\n", b.world_size(), b.strategy().c_str(), b.ep());
    int64_t bytes = 0;
    for (const auto& s : b.shards()) {
      std::printf("shard %s: %llu bytes\n", s.file().c_str(), static_cast<unsigned long long>(s.size_bytes()));
      bytes += static_cast<int64_t>(s.size_bytes());
    }
    std::printf("# %-56s %-5s %-16s %s\n", "tensor", "dtype", "shape", "pieces (shard:begin+count)");
    for (const auto& t : b.tensors()) {
      std::string pieces;
      for (const auto& p : t.pieces())
        pieces += fmt::format("{}{}:{}+{}", pieces.empty() ? "" : " ", p.shard(), p.begin(), p.count());
      std::printf("  %-56s %-5s %-16s %s\n", t.name().c_str(), proto_dtype_name(t.dtype()),
                  shape_str(t.global_shape()).c_str(), pieces.c_str());
    }
    std::printf("%d tensors, %lld bytes in %d shards\n", b.tensors_size(), static_cast<long long>(bytes), b.shards_size());
    std::printf("spec:\n%s", b.spec_yaml().c_str());
  }
  if (!problem.empty()) {
    std::printf("checksums: BAD\n");
    std::fprintf(stderr, "moempi: error: %s\n", problem.c_str());
    return 2;
  }
  std::printf(verify_only ? "%s: ok (%d tensors, every checksum matches)\n" : "checksums: ok (%s, %d tensors)\n",
              dir.c_str(), m.body.tensors_size());
  return 0;
}

}  // namespace moempi
