// Errors that reach the user: one line naming the file (or flag) and the problem.
#pragma once
#include <stdexcept>
#include <string>

namespace oar {

// Thrown for bad input (files, configs, flags). The CLI prints what() on one line and exits 2.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// fail("model.safetensors", "header length 999 is past the end of the file")
//   -> throws Error("model.safetensors: header length 999 is past the end of the file")
[[noreturn]] inline void fail(const std::string& where, const std::string& what) {
  throw Error(where.empty() ? what : where + ": " + what);
}

}  // namespace oar
