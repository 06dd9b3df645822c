// Helpers shared by the test suites.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "runtime/core/error.h"

namespace moempi::test_util {

// The message of the CollectiveError `f` throws ("" and a test failure when it throws none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const CollectiveError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a CollectiveError";
  return "";
}

// Every one of `parts` occurs in `msg`.
inline void expect_contains(const std::string& msg, const std::vector<std::string>& parts) {
  for (const auto& p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}

}  // namespace moempi::test_util
