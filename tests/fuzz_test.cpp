// Mutation fuzzing (issue 12, "what else" 5), fixed seeds and a fixed number of cases, so the run
// is bounded and repeatable: mutated job specs through the YAML loader (and --set overrides), and
// mutated token shards through the shard reader. Every input must either load or be refused with
// a CollectiveError (exit 2 in the binary, with a message); any other exception, a crash or a hang
// (ctest's timeout) fails the test. An accepted spec must print and load back to the same spec,
// and pass or fail the memory check cleanly; an accepted shard must serve sequences.
// tests/e2e/fuzz_cli.sh runs a smaller sample through the moempi binary.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"
#include "runtime/data/data_source.h"
#include "runtime/data/token_shard.h"
#include "runtime/job_spec.h"
#include "runtime/memory_estimate.h"

namespace moempi {
namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string source_dir() {
#ifdef MOEMPI_SOURCE_DIR
  return MOEMPI_SOURCE_DIR;
#else
  return ".";
#endif
}

// Pieces that stress YAML and the schema: structure, anchors, tags, extreme and odd values.
const std::vector<std::string> kTokens = {
    ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "---\n", "...\n", "&a ", "*a", "!!str ", "!!int ", "!!binary ",
    "\t", "\n", "  ", "'", "\"", "#", "|\n", ">\n", "~", "null", "true", "no", "0", "-1", "2147483647",
    "2147483648", "-2147483649", "9223372036854775807", "18446744073709551616", "1e309", "-1e309", ".nan", ".inf",
    "-.inf", "0x10", "1.5", "1e-320", "<<: *a\n", "? ", "%YAML 1.2\n", "\\x00", std::string(1, '\0'), "\xff\xfe",
    "type: ", "num_experts: ", "micro_batch: ", "balancing:\n  - {type: aux_loss}\n", "ep: 0", "path: /dev/null"};

std::string mutate_text(std::string s, Rng& rng) {
  const int edits = 1 + static_cast<int>(rng.next_u64() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t pos = s.empty() ? 0 : rng.next_u64() % (s.size() + 1);
    switch (rng.next_u64() % 6) {
      case 0:  // delete a range
        if (!s.empty()) s.erase(pos, 1 + rng.next_u64() % 16);
        break;
      case 1:  // insert a token
        s.insert(pos, kTokens[rng.next_u64() % kTokens.size()]);
        break;
      case 2:  // overwrite a byte
        if (pos < s.size()) s[pos] = static_cast<char>(rng.next_u64() & 0xff);
        break;
      case 3: {  // duplicate a line
        const size_t a = s.rfind('\n', pos), b = s.find('\n', pos);
        const size_t from = a == std::string::npos ? 0 : a + 1, to = b == std::string::npos ? s.size() : b;
        s.insert(from, s.substr(from, to - from) + "\n");
        break;
      }
      case 4: {  // replace a number with an extreme value
        size_t d = s.find_first_of("0123456789", pos);
        if (d == std::string::npos) break;
        size_t end = s.find_first_not_of("0123456789.e-", d);
        s.replace(d, (end == std::string::npos ? s.size() : end) - d, kTokens[24 + rng.next_u64() % 19]);
        break;
      }
      default:  // truncate
        s.resize(pos);
    }
  }
  return s;
}

// One input through the loader: loads (and then round-trips and passes or fails the memory check
// cleanly) or is refused with a CollectiveError with a message. Returns true if it loaded.
bool load_one(const std::string& text, const std::vector<std::string>& sets, const std::string& what) {
  try {
    const JobSpec spec = load_job_spec_from_string(text, sets, "fuzz.yaml");
    const std::string printed = job_spec_to_yaml(spec);
    const JobSpec back = load_job_spec_from_string(printed, {}, "printed");
    EXPECT_EQ(job_spec_to_yaml(back), printed) << what;
    try {
      check_memory_fits(spec, estimate_memory(spec, std::max(1, spec.parallel.ep)), 1, machine_memory_bytes());
    } catch (const CollectiveError& e) {
      EXPECT_GT(std::strlen(e.what()), 10u) << what;
    }
    return true;
  } catch (const CollectiveError& e) {
    EXPECT_GT(std::strlen(e.what()), 10u) << what;  // a message, not an empty error
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": escaped as " << typeid(e).name() << ": " << e.what();
  }
  return false;
}

TEST(Fuzz, MutatedJobSpecsLoadOrFailWithOneCollectiveError) {
  const std::vector<std::string> seeds = {read_text(source_dir() + "/configs/tiny.yaml"),
                                          read_text(source_dir() + "/configs/small_ep.yaml"),
                                          "model: {d_model: 32}\nmoe:\n  balancing:\n    - &p {type: aux_loss}\n"};
  ASSERT_FALSE(seeds[0].empty()) << "configs/tiny.yaml not found under " << source_dir();
  Rng rng(20261130, 0, 0, Rng::stream_of("fuzz.yaml"));
  int loaded = 0, cases = 3000;
  for (int i = 0; i < cases; ++i) {
    const std::string text = mutate_text(seeds[i % seeds.size()], rng);
    if (load_one(text, {}, fmt::format("case {}", i))) ++loaded;
  }
  // The mutations must be mild enough that some still load, and strong enough that most do not.
  EXPECT_GT(loaded, cases / 50);
  EXPECT_LT(loaded, cases * 9 / 10);
  std::printf("%d of %d mutated specs loaded, the rest were refused with a message\n", loaded, cases);
}

TEST(Fuzz, MutatedOverridesLoadOrFailWithOneCollectiveError) {
  const std::string tiny = read_text(source_dir() + "/configs/tiny.yaml");
  const std::vector<std::string> sets = {"train.micro_batch=4", "moe.balancing.0={type: z_loss, coeff: 0.1}",
                                         "optim.lr=3e-4", "moe.dispatch.type=flat", "parallel.ep=0",
                                         "job.name=x", "data.path=a.bin", "moe.balancing.1.rate=0.1"};
  Rng rng(7, 0, 0, Rng::stream_of("fuzz.--set"));
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::string> s = {mutate_text(sets[i % sets.size()], rng)};
    if (i % 3 == 0) s.push_back(mutate_text(sets[(i + 1) % sets.size()], rng));
    for (auto& o : s) std::replace(o.begin(), o.end(), '\0', '?');  // a command-line argument holds no NUL
    load_one(tiny, s, fmt::format("--set case {}: {}", i, s[0]));
  }
}

std::string shard_of(size_t n, Rng& rng) {
  std::vector<uint16_t> tokens(n);
  for (auto& t : tokens) t = static_cast<uint16_t>(rng.next_u64() % 256);
  std::string out(kTokenShardHeaderBytes + 2 * n, '\0');
  std::memcpy(out.data(), kTokenShardMagic, 8);
  const uint32_t version = kTokenShardVersion;
  const uint64_t count = n;
  std::memcpy(out.data() + 8, &version, 4);
  std::memcpy(out.data() + 16, &count, 8);
  std::memcpy(out.data() + kTokenShardHeaderBytes, tokens.data(), 2 * n);
  return out;
}

TEST(Fuzz, MutatedTokenShardsOpenOrFailWithOneCollectiveError) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("moempi_fuzz_{}", ::getpid());
  fs::create_directories(dir);
  Rng rng(99, 0, 0, Rng::stream_of("fuzz.shard"));
  int opened = 0;
  const int cases = 1500;
  for (int i = 0; i < cases; ++i) {
    std::string bytes = shard_of(200 + rng.next_u64() % 400, rng);
    const int edits = 1 + static_cast<int>(rng.next_u64() % 3);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      const size_t pos = rng.next_u64() % bytes.size();
      switch (rng.next_u64() % 6) {
        case 0: bytes[pos] = static_cast<char>(rng.next_u64() & 0xff); break;               // any byte
        case 1: bytes[rng.next_u64() % kTokenShardHeaderBytes] ^= static_cast<char>(1 << (rng.next_u64() % 8)); break;
        case 2: bytes.resize(pos); break;                                                    // truncate
        case 3: bytes.append(rng.next_u64() % 7, '\x01'); break;                             // trailing bytes
        case 4: {                                                                            // count field
          const uint64_t counts[] = {0, 1, UINT64_MAX, UINT64_MAX / 2, (UINT64_MAX - 24) / 2 + 1, 1ull << 62,
                                     rng.next_u64()};
          if (bytes.size() >= 24) std::memcpy(bytes.data() + 16, &counts[rng.next_u64() % 7], 8);
          break;
        }
        default: {  // a token at or above the vocabulary
          const uint16_t t = static_cast<uint16_t>(256 + rng.next_u64() % 65280);
          if (bytes.size() >= 26) std::memcpy(bytes.data() + 24 + 2 * (rng.next_u64() % ((bytes.size() - 24) / 2)), &t, 2);
        }
      }
    }
    const std::string path = (dir / fmt::format("case_{}.bin", i)).string();
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    const std::string what = fmt::format("shard case {} ({} bytes)", i, bytes.size());
    // The byte checker and the file reader must agree.
    bool checked = false;
    try {
      check_token_shard(path, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 256);
      checked = true;
    } catch (const CollectiveError&) {
    }
    DataSpec data;
    data.type = "tokens";
    data.path = path;
    data.val_fraction = 0.1f;
    ModelSpec model;
    model.seq_len = 8;
    try {
      auto source = make_data_source(data, model, 1);
      EXPECT_TRUE(checked) << what << ": the reader accepted what check_token_shard refuses";
      Batch b;
      for (int64_t first : {int64_t{0}, int64_t{5}, int64_t{1000}}) {
        source->get(b, Split::kTrain, first, 2);
        source->get(b, Split::kVal, first, 2);
        for (int32_t t : b.tokens_BT) ASSERT_LT(t, 256) << what;
      }
      ++opened;
    } catch (const CollectiveError& e) {
      EXPECT_GT(std::strlen(e.what()), 10u) << what;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": escaped as " << e.what();
    }
    fs::remove(path);
  }
  fs::remove_all(dir);
  EXPECT_GT(opened, cases / 50);
  EXPECT_LT(opened, cases * 9 / 10);
  std::printf("%d of %d mutated shards opened, the rest were refused with a message\n", opened, cases);
}

}  // namespace
}  // namespace moempi
