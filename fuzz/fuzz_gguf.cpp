// libFuzzer target: parse_gguf must either accept the bytes or throw oar::Error (one line, naming the file);
// whatever it accepts must satisfy the promises that make zero-copy views and dequantization safe. Accepted
// tensors are dequantized, so a range the parser let through that lies outside the bytes faults under ASan.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string where = "fuzz.gguf";
  oar::GgufHeader h;
  try {
    h = oar::parse_gguf(data, size, where);
  } catch (const oar::Error& e) {
    const char* msg = e.what();
    if (std::strncmp(msg, "fuzz.gguf: ", 11) != 0 || std::strchr(msg, '\n') != nullptr) __builtin_trap();
    return 0;
  }
  if (h.data_start > size) __builtin_trap();
  for (const auto& t : h.tensors) {
    if (t.offset + t.bytes > size - h.data_start || t.offset + t.bytes < t.offset) __builtin_trap();
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (n > (int64_t(1) << 20)) continue;  // keep each input fast
    std::vector<float> out(static_cast<size_t>(n));
    oar::gguf_dequantize(t.type, data + h.data_start + t.offset, n, out.data());
  }
  return 0;
}
