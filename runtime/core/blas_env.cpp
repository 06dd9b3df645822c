#include "runtime/core/blas_env.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>

#include <fmt/format.h>

#include "runtime/core/blas.h"

namespace moempi::blas {
namespace {
std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}
constexpr std::array kAvx512Cores = {"skylakex", "cooperlake", "sapphirerapids"};
constexpr std::array kAvx2Cores = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"};
// OPENBLAS_CORETYPE values OpenBLAS's x86-64 DYNAMIC_ARCH build accepts (driver/others/dynamic.c).
constexpr std::array kKnownCores = {"katmai",     "coppermine", "northwood", "prescott", "banias",   "atom",
                                    "core2",      "penryn",     "dunnington", "nehalem", "sandybridge",
                                    "haswell",    "skylakex",   "cooperlake", "sapphirerapids", "opteron",
                                    "opteron_sse3", "barcelona", "bobcat",   "bulldozer", "piledriver",
                                    "steamroller", "excavator", "zen"};
}  // namespace

bool is_known_coretype(const std::string& name) {
  return std::find(kKnownCores.begin(), kKnownCores.end(), lower(name)) != kKnownCores.end();
}

const char* preferred_coretype() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

bool is_fast_enough(const std::string& core) {
  const std::string want = preferred_coretype();
  const std::string have = lower(core);
  if (want == "SkylakeX")
    return std::find(kAvx512Cores.begin(), kAvx512Cores.end(), have) != kAvx512Cores.end();
  if (want == "Haswell")
    return std::find(kAvx2Cores.begin(), kAvx2Cores.end(), have) != kAvx2Cores.end();
  return true;
}

void ensure_fast_kernel(int argc, char** argv) {
  if (!std::getenv("OPENBLAS_NUM_THREADS")) {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);  // for child processes
    set_num_threads(1);                      // for the library already loaded
  }
  if (std::getenv("MOEMPI_BLAS_REEXEC")) return;  // already re-executed once
  const char* mode_env = std::getenv("MOEMPI_BLAS_CORETYPE");
  const std::string mode = mode_env && *mode_env ? mode_env : "auto";
  if (mode == "keep") return;
  std::string want;
  if (mode == "auto") {
    if (is_fast_enough(corename())) return;
    want = preferred_coretype();
  } else {
    if (lower(corename()) == lower(mode)) return;
    if (!is_known_coretype(mode)) return;  // no re-exec for a name OpenBLAS would ignore; kernel_note says so
    want = mode;
  }
  const char* before = std::getenv("OPENBLAS_CORETYPE");
  setenv("MOEMPI_BLAS_REEXEC", fmt::format("{} (OPENBLAS_CORETYPE was {})", corename(),
                                           before ? before : "unset").c_str(), 1);
  setenv("OPENBLAS_CORETYPE", want.c_str(), 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the kernel we have; kernel_note() shows it.
}

std::string kernel_note() {
  std::string note = fmt::format("OpenBLAS core {} ({} thread{})", corename(), num_threads(),
                                 num_threads() == 1 ? "" : "s");
  const char* mode = std::getenv("MOEMPI_BLAS_CORETYPE");
  if (mode && *mode && lower(mode) != "auto" && lower(mode) != "keep" && !is_known_coretype(mode))
    note += fmt::format(", MOEMPI_BLAS_CORETYPE={} is not an OpenBLAS core type (one of auto, keep, Haswell, "
                        "SkylakeX, Zen, ...): kernel left as loaded",
                        mode);
  else if (const char* from = std::getenv("MOEMPI_BLAS_REEXEC"))
    note += fmt::format(", switched from {} by moempi (MOEMPI_BLAS_CORETYPE=keep to leave it)", from);
  else if (!is_fast_enough(corename()))
    note += fmt::format(", SLOW: this CPU supports {}; unset OPENBLAS_CORETYPE or set "
                        "MOEMPI_BLAS_CORETYPE=auto", preferred_coretype());
  return note;
}

}  // namespace moempi::blas
