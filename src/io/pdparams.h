// Paddle's .pdparams files (paddle.save of a state dict): a Python pickle of {name: numpy array}.
//
// A pickle is a program for Python's unpickler, and loading one with Python can run any code. oar never executes
// it: a small interpreter accepts only the opcodes that build dicts, lists, tuples, strings, numbers and bytes,
// and only these globals, each replaced by a data-only constructor:
//   numpy.core.multiarray._reconstruct (also numpy._core.*), numpy.ndarray, numpy.dtype  -> an array
//   collections.OrderedDict                                                              -> a dict
//   _codecs.encode(text, 'latin1'), builtins.bytes()                                     -> bytes (protocol 2)
// Anything else (another global, an object-building opcode, a big-endian or Fortran-ordered array, an unknown
// dtype) is refused with one line naming the file. Sizes are checked against the file, and objects are counted,
// so hostile input cannot exhaust memory (fuzzed: fuzz/fuzz_pdparams.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "core/tensor.h"

namespace oar {

class MappedFile;

// The arrays of a pickled dict, by key. Values that are arrays, or (name, array) tuples as older paddle.save
// writes them, become tensors; other values (e.g. Paddle's "StructuredToParameterName@@" table) are skipped.
// numpy's uint16 is read as bfloat16: Paddle stores bfloat16 tensors as uint16 arrays.
// With `file` (the mapping that holds `data`), arrays aligned to their element size are zero-copy views of it.
// Throws oar::Error naming `where`.
std::map<std::string, Tensor> parse_pickled_arrays(const uint8_t* data, size_t size, const std::string& where,
                                                   std::shared_ptr<const MappedFile> file = nullptr);

// The arrays of one .pdparams file, mapped.
std::map<std::string, Tensor> load_pdparams(const std::string& path);

// A pickle (protocol 2) of a dict of numbers, as paddle.save writes small state dicts such as an LR scheduler's
// {"last_epoch": 3, "last_lr": 0.0023}, which paddle.load reads.
using PickleNumber = std::variant<int64_t, double>;
std::string pickle_number_dict(const std::vector<std::pair<std::string, PickleNumber>>& items);

}  // namespace oar
