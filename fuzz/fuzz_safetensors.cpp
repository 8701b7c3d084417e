// libFuzzer target: parse_safetensors must either accept the bytes or throw oar::Error (one line, naming the
// file); whatever it accepts must satisfy the promises that make zero-copy views safe.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string where = "fuzz.safetensors";
  oar::SafetensorsHeader h;
  try {
    h = oar::parse_safetensors(data, size, where);
  } catch (const oar::Error& e) {
    const char* msg = e.what();
    if (std::strncmp(msg, "fuzz.safetensors: ", 18) != 0 || std::strchr(msg, '\n') != nullptr) __builtin_trap();
    return 0;
  }
  // Accepted: every range lies in the data section and matches its shape; no two non-empty ranges overlap.
  if (h.data_start < 8 || h.data_start > size) __builtin_trap();
  const uint64_t data_size = size - h.data_start;
  for (const auto& e : h.entries) {
    if (e.begin > e.end || e.end > data_size) __builtin_trap();
    uint64_t n = 1;
    for (int64_t d : e.shape) {
      if (d < 0) __builtin_trap();
      n *= uint64_t(d);  // cannot wrap: the parser bounded the product
    }
    if (n * oar::dtype_size(e.dtype) != e.end - e.begin) __builtin_trap();
    for (const auto& f : h.entries)
      if (&e != &f && e.begin < e.end && f.begin < f.end && e.begin < f.end && f.begin < e.end) __builtin_trap();
  }
  return 0;
}
