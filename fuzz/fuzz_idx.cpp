// libFuzzer target: the MMIDIDX .idx parser must either accept the bytes or throw oar::Error (one line, naming the
// file); whatever it accepts must be safe to read: every sequence inside the .bin, doc_idx monotone within [0, N].
// Accepted small indices also go through GPTDataset's index construction.
// Input layout: 4 bytes little-endian .bin length, then the .idx bytes.
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t bin_bytes;
  std::memcpy(&bin_bytes, data, 4);
  const uint8_t* idx = data + 4;
  const size_t idx_size = size - 4;
  const std::string where = "fuzz.idx";
  oar::IndexedIndex ix;
  try {
    ix = oar::parse_indexed_index(idx, idx_size, bin_bytes, where);
  } catch (const oar::Error& e) {
    const char* msg = e.what();
    if (std::strncmp(msg, "fuzz.idx: ", 10) != 0 || std::strchr(msg, '\n') != nullptr) __builtin_trap();
    return 0;
  }
  const uint64_t item = oar::indexed_dtype_size(ix.dtype);
  if (item == 0 || 34 + 12 * ix.num_sequences + 8 * ix.doc_idx_len != idx_size) __builtin_trap();
  std::vector<int32_t> sizes;
  uint64_t total = 0;
  for (uint64_t i = 0; i < ix.num_sequences; i++) {
    const int32_t s = ix.size(i);
    const int64_t p = ix.pointer(i);
    if (s < 0 || p < 0 || uint64_t(p) + uint64_t(s) * item > bin_bytes) __builtin_trap();
    sizes.push_back(s);
    total += uint64_t(s);
  }
  if (ix.doc_idx_len == 0 || ix.doc_idx(0) != 0 || uint64_t(ix.doc_idx(ix.doc_idx_len - 1)) != ix.num_sequences)
    __builtin_trap();
  for (uint64_t d = 1; d < ix.doc_idx_len; d++)
    if (ix.doc_idx(d) < ix.doc_idx(d - 1)) __builtin_trap();
  // GPT indices over the whole file, bounded so that one input stays fast.
  const int64_t seq_len = 1 + int64_t(bin_bytes % 64);
  const int64_t want = int64_t(bin_bytes % 200);
  const uint64_t epochs = total > 0 ? uint64_t(want * seq_len) / total + 2 : 0;
  if (total > 0 && total < 100000 && epochs * sizes.size() < 1000000) {
    oar::GptIndices g = oar::build_gpt_indices(sizes, 0, int64_t(sizes.size()), want, seq_len, bin_bytes);
    if (g.num_samples() < want) __builtin_trap();
    const int64_t rows = int64_t(g.sample_idx.size() / 2);
    for (int64_t r = 0; r < rows; r++) {
      const int64_t di = g.sample_idx[size_t(2 * r)], off = g.sample_idx[size_t(2 * r + 1)];
      if (di < 0 || di >= int64_t(g.doc_idx.size()) || off < 0 || off >= std::max<int64_t>(1, sizes[size_t(g.doc_idx[size_t(di)])]))
        __builtin_trap();
    }
  }
  return 0;
}
