#include "comm/agreement.h"

#include <climits>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "comm/collectives.h"
#include "runtime/core/error.h"

namespace moempi {

void agree_on_errors(const Communicator& group, const std::function<void()>& step) {
  std::string message;
  bool failed = false;
  try {
    step();
  } catch (const CollectiveError& e) {
    failed = true;
    message = e.what();
  }
  // [lowest failing rank, number of failing ranks]
  int64_t first = failed ? group.rank() : INT64_MAX;
  int64_t count = failed ? 1 : 0;
  allreduce(&first, 1, ReduceOp::kMin, group);
  allreduce_sum(&count, 1, group);
  if (count == 0) return;
  int64_t length = static_cast<int64_t>(message.size());
  bcast(&length, 1, static_cast<int>(first), group);
  message.resize(static_cast<size_t>(length));
  bcast_bytes(message.data(), length, static_cast<int>(first), group);
  if (count == group.size()) throw CollectiveError(message);
  throw CollectiveError(count == 1 ? fmt::format("rank {}: {}", first, message)
                                   : fmt::format("rank {} (and {} more): {}", first, count - 1, message));
}

uint64_t fnv1a64(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void agree_on_text(const Communicator& group, const std::string& text, const std::string& what,
                   const DescribeDifference& describe) {
  const int64_t hash = static_cast<int64_t>(fnv1a64(text));
  int64_t lo = hash, hi = hash;
  allreduce(&lo, 1, ReduceOp::kMin, group);
  allreduce(&hi, 1, ReduceOp::kMax, group);
  if (lo == hi) return;
  // Rank 0's text to every rank, then which ranks differ from it.
  std::string root_text = text;
  int64_t length = static_cast<int64_t>(text.size());
  bcast(&length, 1, 0, group);
  root_text.resize(static_cast<size_t>(length));
  bcast_bytes(root_text.data(), length, 0, group);
  const int64_t differs = root_text != text ? 1 : 0;
  std::vector<int64_t> flags(static_cast<size_t>(group.size()));
  allgather_i64(&differs, flags.data(), 1, group);
  std::vector<std::string> ranks;
  int first = -1;
  for (int r = 0; r < group.size(); ++r)
    if (flags[static_cast<size_t>(r)]) {
      if (first < 0) first = r;
      ranks.push_back(std::to_string(r));
    }
  std::string description = group.rank() == first ? describe(root_text, text) : std::string();
  int64_t dlength = static_cast<int64_t>(description.size());
  bcast(&dlength, 1, first, group);
  description.resize(static_cast<size_t>(dlength));
  bcast_bytes(description.data(), dlength, first, group);
  std::string list;
  for (size_t i = 0; i < ranks.size() && i < 16; ++i) list += (i ? ", " : "") + ranks[i];
  if (ranks.size() > 16) list += fmt::format(" and {} more", ranks.size() - 16);
  throw CollectiveError(fmt::format("{} differs between ranks: rank{} {} differ{} from rank 0; first difference: {}",
                                    what, ranks.size() == 1 ? "" : "s", list, ranks.size() == 1 ? "s" : "",
                                    description));
}

}  // namespace moempi
