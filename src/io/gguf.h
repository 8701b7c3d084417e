// GGUF, llama.cpp's single-file model format (versions 2 and 3, little-endian):
//   "GGUF", u32 version, u64 tensor count, u64 metadata count;
//   metadata: string key, u32 value type, value (strings are u64 length + bytes; arrays are u32 item type,
//   u64 count, items);
//   tensor infos: string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 type, u64 offset;
//   padding to general.alignment (default 32), then the data; offsets are relative to its start.
// Everything is checked at the boundary: a truncated or lying file is an oar::Error naming it (fuzzed), and no
// count in the file sizes an allocation beyond what the file's own bytes could hold.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/spm_vocab.h"
#include "core/tensor.h"
#include "io/weight_source.h"

namespace oar {

class MappedFile;

// The tensor types oar reads (ggml's numbering). Others are named in the error that refuses them.
enum class GgufType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q6_K = 14, BF16 = 30 };
// ggml's name of any type number ("Q5_K", "IQ2_XS", ...), or "type N".
std::string gguf_type_name(uint32_t type);
// The layout of a type oar reads, the one table the parser, the dequantizer and the loader share: values and
// bytes per block, and the bits a quantized type stores per value (0 for F32, F16, BF16). False for the others.
struct GgufTypeLayout {
  int64_t block, bytes;
  int bits;
};
bool gguf_type_layout(uint32_t type, GgufTypeLayout& out);

// One metadata value. Integers (and bools, as 0/1) are in `i`, floats in `f`, strings in `s`; arrays of numbers
// or bools in `numbers`, of strings in `strings` (arrays of arrays are checked and skipped: llama's keys use none).
struct GgufValue {
  enum Kind : uint8_t { Int, Float, String, Array } kind = Int;
  uint32_t type = 0;       // GGUF's value type (0-12)
  uint32_t item_type = 0;  // arrays: the items' type
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<double> numbers;
  std::vector<std::string> strings;
};

struct GgufTensorInfo {
  std::string name;
  Shape shape;  // row-major, outermost first (GGUF's dims reversed): a [out, in] weight is GGUF's {in, out}
  GgufType type = GgufType::F32;
  uint64_t offset = 0, bytes = 0;  // within the data section
};

struct GgufHeader {
  uint32_t version = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensors;  // in file order
  uint64_t data_start = 0;              // absolute offset of the data section

  const GgufValue* find(const std::string& key) const;
  // A metadata value that must be there, of the given kind; an oar::Error naming `where` and the key otherwise.
  const GgufValue& require(const std::string& key, GgufValue::Kind kind, const std::string& where) const;
  // An integer (number) value, or `fallback` when the key is absent; another kind is an error as for require.
  int64_t int_or(const std::string& key, int64_t fallback, const std::string& where) const;
  double number_or(const std::string& key, double fallback, const std::string& where) const;
};

// Parses and validates a whole file image: magic, version 2 or 3, every count and length within the bytes left,
// metadata arrays at most 4M items in all, no duplicate keys or tensor names, a power-of-two alignment up to 1 MiB,
// 1-4 dims each >= 1, a known type (unsupported ones refused by name) whose block divides the innermost dim,
// aligned offsets, data ranges inside the file and not overlapping. Throws oar::Error. Safe on any input (fuzzed).
GgufHeader parse_gguf(const uint8_t* data, size_t size, const std::string& where);

// A name or value from a GGUF file, quoted for a one-line message: control characters escaped, cut at 200 bytes.
std::string gguf_quoted(const std::string& s);

// True when the file starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// Dequantizes `n` values (a whole number of the type's blocks) of a GGUF tensor's bytes to float32, exactly as
// ggml's reference dequantization does: Q8_0 and Q4_0 are d * q per block of 32, Q5_0 the same with a fifth bit
// from a 32-bit mask, Q4_1 and Q5_1 d * q + m; Q4_K is d * scale * q - dmin * min per sub-block of 32 within
// blocks of 256 (6-bit scales and mins); Q6_K is d * scale * q per 16 in blocks of 256. F32, F16 and BF16 are
// converted.
void gguf_dequantize(GgufType type, const uint8_t* src, int64_t n, float* dst);

// A GGUF file opened: its header and the mapped bytes.
struct GgufFile {
  std::string path;
  GgufHeader header;
  std::shared_ptr<MappedFile> map;

  static GgufFile open(const std::string& path);  // throws oar::Error naming the file
  // The tensor's data: F32, F16 and BF16 as zero-copy views of the file; quantized types dequantized to float32.
  Tensor tensor(const GgufTensorInfo& info) const;
};

// A llama-architecture GGUF model as oar's config and weights under Hugging Face names. The config comes from
// llama.* metadata (rope_layout Interleaved: llama.cpp's converter stores q and k in Meta's pair order, so no
// row is moved; linear rope scaling as llama.cpp reads it); torch_dtype is float32 for an all-F32 file,
// bfloat16 for F32 and BF16 only, float16 otherwise (oar computes the last two in bfloat16 by default). Refused
// with an error naming the key or tensor: another architecture, mixture of experts, other rope scalings, rope
// dimensions other than the head size, Llama-3.1's rope_freqs factors, MLP biases, unknown tensors and tensors
// of layers past block_count.
struct GgufModel {
  LlamaConfig config;
  std::unique_ptr<WeightSource> weights;
};
GgufModel open_gguf_model(const std::string& path);

// The tokenizer a GGUF file embeds (tokenizer.ggml.*), for model "llama" (SentencePiece); another model is an
// oar::Error naming the file. Ids default as llama.cpp's: bos 1, eos 2, unk 0.
SpmVocab gguf_spm_vocab(const GgufHeader& h, const std::string& where);

}  // namespace oar
