// Validators for numeric flags. CLI11's own PositiveNumber/NonNegativeNumber check a double (so
// 99999999999999999999 passes for an int64 flag, which strtoll then saturates silently) and print their bounds
// with std::to_string (a 309-digit DBL_MAX). These parse the text exactly and print bounds compactly.
#pragma once
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "core/error.h"

namespace oar::cli {

// An integer flag within [lo, hi]: decimal digits with an optional sign, nothing else, no overflow.
inline CLI::Validator ints(int64_t lo, int64_t hi = std::numeric_limits<int64_t>::max()) {
  auto bound = [](int64_t v) {
    if (v == std::numeric_limits<int64_t>::max()) return std::string("2^63-1");
    if (v == std::numeric_limits<int32_t>::max()) return std::string("2^31-1");
    if (v == std::numeric_limits<int64_t>::min()) return std::string("-2^63");
    return std::to_string(v);
  };
  const std::string range = "[" + bound(lo) + ", " + bound(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long long v = s.empty() ? 0 : std::strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != 0) return "'" + s + "' is not an integer";
        if (errno == ERANGE || v < lo || v > hi) return s + " is out of range " + range;
        return std::string();
      },
      "INT in " + range);
}
inline CLI::Validator positive_int(int64_t hi = std::numeric_limits<int64_t>::max()) { return ints(1, hi); }
inline CLI::Validator non_negative_int(int64_t hi = std::numeric_limits<int64_t>::max()) { return ints(0, hi); }

// A finite real number > 0.
inline CLI::Validator positive_real() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = s.empty() ? 0 : std::strtod(s.c_str(), &end);
        if (s.empty() || *end != 0) return "'" + s + "' is not a number";
        if (!std::isfinite(v) || v <= 0) return s + " must be a finite number > 0";
        return std::string();
      },
      "POSITIVE");
}

}  // namespace oar::cli
