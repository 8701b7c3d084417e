// Shared assertion for the failure-mode tests: bad input must be one oar::Error with a one-line message.
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"

namespace oar::test {

// Passes when f throws oar::Error whose one-line message contains every part.
template <class F>
::testing::AssertionResult fails_with(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "not one line: " << msg;
    for (const auto& p : parts)
      if (msg.find(p) == std::string::npos) return ::testing::AssertionFailure() << "'" << p << "' not in: " << msg;
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "no oar::Error thrown";
}

}  // namespace oar::test
