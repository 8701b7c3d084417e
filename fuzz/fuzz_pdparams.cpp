// libFuzzer target: the restricted unpickler behind .pdparams must accept the bytes or throw oar::Error (one line,
// naming the file), never execute, crash or allocate beyond the input; whatever it accepts must be arrays whose
// bytes match their shapes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "core/error.h"
#include "io/pdparams.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::map<std::string, oar::Tensor> arrays;
  try {
    arrays = oar::parse_pickled_arrays(data, size, "fuzz.pdparams");
  } catch (const oar::Error& e) {
    const char* msg = e.what();
    if (std::strncmp(msg, "fuzz.pdparams: ", 15) != 0 || std::strchr(msg, '\n') != nullptr) __builtin_trap();
    return 0;
  }
  // Accepted: the arrays' bytes fit in the input (copies; no amplification through the memo).
  size_t total = 0;
  for (const auto& [name, t] : arrays) {
    total += t.nbytes();
    volatile uint8_t sink = t.nbytes() ? static_cast<const uint8_t*>(t.raw())[t.nbytes() - 1] : 0;
    (void)sink;
  }
  if (total > size) __builtin_trap();
  return 0;
}
