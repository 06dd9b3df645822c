// Checkpoints (DESIGN.md "Checkpoints"): everything in a StateRegistry, saved as
//   <run_dir>/ckpt/step_<N>/shard_<rank>.bin   raw tensor bytes of the slices this rank writes,
//                                              after a 64-byte header (magic, format version,
//                                              rank, step, checkpoint id); tensors 64-byte aligned
//   <run_dir>/ckpt/step_<N>/manifest.pb        written last (the validity marker): a Manifest
//                                              (checkpoint.proto) holding the body and its CRC32C:
//                                              tensor names, dtypes, global shapes, pieces (shard,
//                                              offset, slice, CRC32C), the spec, step, layout,
//                                              moempi and format versions
//   <run_dir>/ckpt/latest                      "step_<N>", replaced atomically (temp, fsync,
//                                              rename, directory fsync)
// Tensors are keyed by global name and slice, never by rank, so a checkpoint saved at one world
// size and strategy loads at another. Loading reads into staging buffers, checks everything (every
// piece's CRC32C, shapes, coverage, no unknown tensors) and agrees across ranks before it touches
// the live state: a refused checkpoint leaves the job as it was. No allocation is sized by a field
// read from a file before it is checked against the file size or this job's own shapes.
// Tests: tests/checkpoint_test.cpp, tests/checkpoint_mpitest.cpp, tests/e2e/checkpoint.sh.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "runtime/core/config.h"
#include "runtime/core/state_registry.h"

namespace moempi {

constexpr uint32_t kCheckpointFormatVersion = 1;
const char* moempi_version();

struct SaveStats {
  std::string dir;
  int64_t bytes = 0;       // all shards plus the manifest
  double seconds = 0;      // wall time of the save on rank 0 (collective)
};

// Collective over `world`: writes step_<step> under ckpt_root, moves `latest`, then keeps the
// newest `keep_last` complete checkpoints (0 = all). I/O failures on any rank end every rank
// with one collective error naming the file.
SaveStats save_checkpoint(const std::string& ckpt_root, int64_t step, const StateRegistry& registry,
                          const std::string& spec_yaml, const ParallelSpec& parallel, const Communicator& world,
                          int keep_last);

struct CheckpointInfo {
  std::string dir;
  int64_t step = 0;
  std::string spec_yaml;
  int world_size = 0;
  std::string strategy;
  int ep = 0;
  std::string moempi_version;
};

// Collective over `world`: restores every tensor of `registry` from the checkpoint in `step_dir`.
// Any problem on any rank (missing, truncated or foreign shard, bad checksum, another model's
// shapes, state missing from or unknown to this job) is one collective error naming the file or
// tensor, and the registry's state is left unchanged.
CheckpointInfo load_checkpoint(const std::string& step_dir, const StateRegistry& registry,
                               const Communicator& world);

// The keys whose values differ between two resolved specs (job_spec_to_yaml text), as
// "path: saved -> now" (absent values as "-"), in path order: what a resume changed.
std::vector<std::string> spec_differences(const std::string& saved_yaml, const std::string& current_yaml);

// Step directories under ckpt_root that hold a manifest.pb, the one `latest` names first, then
// the others newest first (not collective; no file is validated here). No ckpt_root: none. A
// ckpt_root that cannot be read, or is not a directory: CollectiveError naming it (a run must not
// start over at step 0 because of a file-system error).
std::vector<std::string> checkpoint_candidates(const std::string& ckpt_root);

// `moempi ckpt inspect|verify DIR` (one process). DIR: a step directory, a ckpt directory, its
// `latest` file, or a run directory (then its latest). inspect prints the step, spec, layout and
// every tensor with its shape and pieces, and the checksum status; verify checks every byte and
// prints "ok" or the first bad file or tensor. Both return 0 when the checkpoint is sound, else 2.
int inspect_checkpoint(const std::string& dir, bool verify_only);
// The step directory DIR designates (rules above); a collective error when there is none.
std::string resolve_checkpoint_dir(const std::string& dir);

}  // namespace moempi
