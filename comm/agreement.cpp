#include "comm/agreement.h"

#include <climits>
#include <string>

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

}  // namespace moempi
