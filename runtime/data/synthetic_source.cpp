// The synthetic multi-domain byte corpus. Each domain is a generator of "units" (an equation, a
// record, a sentence, a function) drawn from small vocabularies with a counter RNG; a sequence is
// a run of units of one domain starting at a random offset inside the first unit.
// Tests: tests/data_test.cpp (determinism, domains distinguishable, n-gram learnability, speed).
#include "runtime/data/synthetic_source.h"

#include <array>
#include <span>
#include <string_view>

#include "runtime/core/error.h"
#include "runtime/core/rng.h"

namespace moempi {
namespace {

using Words = std::span<const std::string_view>;

// Appends units to a string, drawing from one RNG.
class Writer {
 public:
  Writer(Rng& rng, std::string& out) : rng_(rng), out_(out) {}

  uint32_t below(uint32_t n) { return static_cast<uint32_t>(rng_.below(n)); }
  bool chance(uint32_t one_in) { return below(one_in) == 0; }
  void put(char c) { out_.push_back(c); }
  void put(std::string_view s) { out_.append(s); }
  void num(int64_t v) {
    if (v < 0) put('-'), v = -v;
    char buf[24];
    int n = 0;
    do buf[n++] = static_cast<char>('0' + v % 10), v /= 10;
    while (v);
    while (n) put(buf[--n]);
  }
  std::string_view pick(Words words) { return *(words.begin() + below(static_cast<uint32_t>(words.size()))); }
  void put_pick(Words words) { put(pick(words)); }

 private:
  Rng& rng_;
  std::string& out_;
};

// --- domain 0: arithmetic, "17+25=42;" with correct results ---------------------------------
void arithmetic_unit(Writer& w) {
  const uint32_t op = w.below(4);
  int64_t a, b, c;
  char sym;
  switch (op) {
    case 0: a = w.below(100), b = w.below(100), c = a + b, sym = '+'; break;
    case 1: a = w.below(100), b = w.below(100), c = a - b, sym = '-'; break;
    case 2: a = w.below(13), b = w.below(13), c = a * b, sym = '*'; break;
    default: a = w.below(1000), b = w.below(10), c = a + b, sym = '+'; break;
  }
  w.num(a);
  w.put(sym);
  w.num(b);
  w.put('=');
  w.num(c);
  w.put(';');
  w.put(w.chance(4) ? '\n' : ' ');
}

// --- domain 1: structured records, JSON-like objects and key=value log lines ------------------
constexpr std::string_view kNames[] = {"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"};
constexpr std::string_view kCities[] = {"oslo", "paris", "lima", "tokyo", "cairo", "quito"};
constexpr std::string_view kRoles[] = {"admin", "user", "guest", "owner"};
constexpr std::string_view kLevels[] = {"INFO", "WARN", "ERROR", "DEBUG"};
constexpr std::string_view kEvents[] = {"login", "logout", "upload", "delete", "search"};

void record_unit(Writer& w) {
  if (w.below(3) != 0) {
    w.put("{\"id\": ");
    w.num(1000 + w.below(9000));
    w.put(", \"name\": \"");
    w.put_pick(kNames);
    w.put("\", \"city\": \"");
    w.put_pick(kCities);
    w.put("\", \"role\": \"");
    w.put_pick(kRoles);
    w.put("\", \"active\": ");
    w.put(w.chance(3) ? "false" : "true");
    w.put(", \"score\": ");
    w.num(w.below(100));
    w.put("}\n");
  } else {
    w.put("level=");
    w.put_pick(kLevels);
    w.put(" user=");
    w.put_pick(kNames);
    w.put(" event=");
    w.put_pick(kEvents);
    w.put(" ms=");
    w.num(w.below(500));
    w.put('\n');
  }
}

// --- domain 2: prose from a small grammar ----------------------------------------------------
constexpr std::string_view kDets[] = {"the", "a", "every", "one", "this", "that"};
constexpr std::string_view kAdjs[] = {"small", "old", "red", "quiet", "bright", "heavy", "green", "happy", "tired", "clever"};
constexpr std::string_view kNouns[] = {"cat",    "dog",  "river", "city", "teacher", "child",
                          "window", "ship", "bird",  "king", "garden",  "farmer"};
constexpr std::string_view kVerbs[] = {"saw", "found", "carried", "followed", "painted", "watched", "liked", "built", "heard"};
constexpr std::string_view kPreps[] = {"near", "in", "behind", "under", "beside"};
constexpr std::string_view kTimes[] = {"yesterday", "at night", "in the morning", "after the storm", "every day"};

void noun_phrase(Writer& w) {
  w.put_pick(kDets);
  w.put(' ');
  if (w.chance(2)) {
    w.put_pick(kAdjs);
    w.put(' ');
  }
  w.put_pick(kNouns);
}

void prose_unit(Writer& w) {
  std::string_view det = w.pick(kDets);
  w.put(static_cast<char>(det[0] - 'a' + 'A'));  // capitalised first word
  w.put(det.substr(1));
  w.put(' ');
  if (w.chance(2)) {
    w.put_pick(kAdjs);
    w.put(' ');
  }
  w.put_pick(kNouns);
  w.put(' ');
  w.put_pick(kVerbs);
  w.put(' ');
  noun_phrase(w);
  switch (w.below(4)) {
    case 0:
      w.put(' ');
      w.put_pick(kPreps);
      w.put(' ');
      noun_phrase(w);
      break;
    case 1:
      w.put(' ');
      w.put_pick(kTimes);
      break;
    case 2:
      w.put(" and ");
      w.put_pick(kVerbs);
      w.put(' ');
      noun_phrase(w);
      break;
    default: break;
  }
  w.put('.');
  w.put(w.chance(5) ? "\n\n" : " ");
}

// --- domain 3: C-like code ---------------------------------------------------------------------
constexpr std::string_view kFuncs[] = {"add", "scale", "clamp", "mix", "count", "step", "merge", "shift"};
constexpr std::string_view kTypes[] = {"int", "long"};
constexpr std::string_view kOps[] = {" + ", " - ", " * "};

void code_unit(Writer& w) {
  const std::string_view type = w.pick(kTypes);
  const char p0 = "abxn"[w.below(4)];
  const char p1 = "cdyk"[w.below(4)];
  w.put(type);
  w.put(' ');
  w.put_pick(kFuncs);
  w.put('_');
  w.num(w.below(10));
  w.put('(');
  w.put(type);
  w.put(' ');
  w.put(p0);
  w.put(", ");
  w.put(type);
  w.put(' ');
  w.put(p1);
  w.put(") {\n    ");
  w.put(type);
  w.put(" r = ");
  w.put(p0);
  w.put_pick(kOps);
  w.put(p1);
  w.put(";\n");
  const uint32_t statements = 1 + w.below(3);
  for (uint32_t s = 0; s < statements; ++s) {
    switch (w.below(3)) {
      case 0:
        w.put("    for (int i = 0; i < ");
        w.put(p1);
        w.put("; i++) {\n        r += i;\n    }\n");
        break;
      case 1:
        w.put("    if (r > ");
        w.num(w.below(100));
        w.put(") {\n        r = r");
        w.put_pick(kOps);
        w.num(1 + w.below(9));
        w.put(";\n    }\n");
        break;
      default:
        w.put("    r = r");
        w.put_pick(kOps);
        w.put(w.chance(2) ? p0 : p1);
        w.put(";\n");
        break;
    }
  }
  w.put("    return r;\n}\n\n");
}

constexpr std::array<const char*, SyntheticSource::kNumDomains> kDomainNames = {"arithmetic", "records",
                                                                                  "prose", "code"};
constexpr uint32_t kMaxStartOffset = 64;  // a sequence starts this far into its first unit, at most

}  // namespace

SyntheticSource::SyntheticSource(int seq_len, uint64_t seed) : T_(seq_len), seed_(seed) {
  MOEMPI_CHECK_ALL(seq_len >= 1, "model.seq_len: expected an integer >= 1, got {}", seq_len);
}

std::string SyntheticSource::domain_name(int d) const {
  MOEMPI_CHECK_ALL(d >= 0 && d < kNumDomains, "synthetic data: domain {} out of range [0, {})", d, kNumDomains);
  return kDomainNames[d];
}

std::string SyntheticSource::describe() const {
  return fmt::format("synthetic: {} domains (arithmetic, records, prose, code), byte tokens, seed {}",
                     kNumDomains, seed_);
}

void SyntheticSource::generate(Split split, int64_t index, int length, std::string& out) const {
  // One RNG per sequence: Rng(seed, 0, <split>, index); the step field names the split.
  static const uint64_t kSplitKey[2] = {Rng::stream_of("data.synthetic.train"),
                                        Rng::stream_of("data.synthetic.val")};
  Rng rng(seed_, 0, kSplitKey[split == Split::kTrain ? 0 : 1], static_cast<uint64_t>(index));
  out.clear();
  Writer w(rng, out);
  const size_t skip = w.below(kMaxStartOffset);
  const size_t need = skip + static_cast<size_t>(length);
  const int domain = domain_of(index);
  while (out.size() < need) {
    switch (domain) {
      case 0: arithmetic_unit(w); break;
      case 1: record_unit(w); break;
      case 2: prose_unit(w); break;
      default: code_unit(w); break;
    }
  }
  out.erase(0, skip);
  out.resize(static_cast<size_t>(length));
}

void SyntheticSource::get(Batch& out, Split split, int64_t first_seq, int B) {
  MOEMPI_CHECK_ALL(first_seq >= 0 && B >= 0, "data: bad request of {} sequences from index {}", B, first_seq);
  out.reset(B, T_);
  for (int b = 0; b < B; ++b) {
    const int64_t index = first_seq + b;
    generate(split, index, T_ + 1, scratch_);
    const auto* bytes = reinterpret_cast<const unsigned char*>(scratch_.data());
    int32_t* tok = out.tokens_BT.data() + static_cast<size_t>(b) * T_;
    int32_t* tgt = out.targets_BT.data() + static_cast<size_t>(b) * T_;
    for (int t = 0; t < T_; ++t) {
      tok[t] = bytes[t];
      tgt[t] = bytes[t + 1];
    }
    out.domain_B[b] = domain_of(index);
  }
}

}  // namespace moempi
