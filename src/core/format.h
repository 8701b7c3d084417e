// Numbers for messages, compactly.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace oar {

// 1e-05, -1e+308, 0.95, inf: std::to_string would print 309 digits for -1e308, or "0.000000" for 1e-40.
inline std::string number_text(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", v);
  return b;
}

}  // namespace oar
