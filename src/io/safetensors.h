// safetensors: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data. Offsets are relative to the end of the header. Everything is checked at the boundary.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "io/weight_source.h"

namespace oar {

class MappedFile;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // relative to the data section
};

struct SafetensorsHeader {
  uint64_t data_start = 0;  // 8 + header length
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

// Parses and validates a whole file image (header + data): header length within the file (and under 100 MB), valid
// JSON, no duplicate names, known dtypes (F64 F32 BF16 F16 I64 I32 I16 I8 U64 U32 U16 U8), shape x dtype size ==
// byte range (overflow-checked), ranges inside the data section, no two non-empty ranges overlapping (gaps are
// allowed), __metadata__ strings only. `where` names the file in errors. Throws oar::Error. Safe on any input (fuzzed).
SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& where);

// A sharded checkpoint's index ({"weight_map": {tensor: shard file}}; model.safetensors.index.json and its
// PaddleNLP relatives): the tensor names grouped by shard. Shard names must stay inside the directory.
std::map<std::string, std::vector<std::string>> read_weight_map(const std::string& index_path);
// Every tensor the index in DIR lists, each read from its shard by `read_shard` (a file's tensors by name). A
// missing shard, or a listed tensor absent from its shard, is an error naming both files.
std::map<std::string, Tensor> read_indexed_tensors(
    const std::string& dir, const std::string& index_path,
    const std::function<std::map<std::string, Tensor>(const std::string& shard_path)>& read_shard);
// All tensors of one safetensors file (zero-copy views).
std::map<std::string, Tensor> read_safetensors_file(const std::string& path);

// Named tensors of one checkpoint directory, memory-mapped: model.safetensors, or the shards listed by
// model.safetensors.index.json ("weight_map"). Tensors are zero-copy views of the mapped files.
class WeightStore {
 public:
  // Opens DIR/model.safetensors.index.json if present (exactly the tensors its weight_map lists, each checked to be
  // in its shard; each shard mapped once), else DIR/model.safetensors. Throws oar::Error naming the file.
  static WeightStore open_dir(const std::string& dir);
  static WeightStore open_file(const std::string& path);

  bool has(const std::string& name) const;
  // The tensor as stored (any dtype). Throws oar::Error "<file>: missing tensor 'name'" when absent.
  Tensor get(const std::string& name) const;
  // Which file holds it (for error messages).
  std::string file_of(const std::string& name) const;
  std::vector<std::string> names() const;
  // Lets the tensor's file pages go (MappedFile::release); absent names are ignored.
  void release(const std::string& name) const;
  // Error text prefix when a name is absent: the index file of a sharded model, else the .safetensors file.
  const std::string& where() const { return where_; }
  // The __metadata__ of a single file (open_file); empty for a directory.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Item {
    std::shared_ptr<MappedFile> file;
    SafetensorsEntry entry;
    uint64_t data_start;
  };
  std::map<std::string, Item> items_;
  std::string where_;
  std::map<std::string, std::string> metadata_;
};

// A WeightStore as a model's WeightSource; file_of names the shard that holds a tensor (for error messages).
class WeightStoreSource : public WeightSource {
 public:
  explicit WeightStoreSource(WeightStore s) : s_(std::move(s)) {}
  bool has(const std::string& n) const override { return s_.has(n); }
  Tensor get(const std::string& n) const override { return s_.get(n); }
  std::string where() const override { return s_.where(); }
  std::string file_of(const std::string& n) const { return s_.file_of(n); }
  void release(const std::string& n) const override { s_.release(n); }

 private:
  WeightStore s_;
};

// Writes tensors to a safetensors file atomically (streamed to a temp file, fsync, rename). Tensors must be contiguous
// CPU tensors. Layout as the reference writer: header padded to 8 bytes, wider dtypes first, no gaps. page_aligned:
// instead, the tensors in the given order, each starting at a multiple of 4096 bytes of the file (zeros between),
// so that each maps as whole pages of its own (oar export's packed file; the reference reader refuses the gaps).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, bool page_aligned = false);
// A tensor to write, produced only when its bytes are due: a whole model need not be in memory at once. get()
// must give a contiguous CPU tensor of that dtype and shape.
struct TensorToWrite {
  std::string name;
  DType dtype;
  Shape shape;
  std::function<Tensor()> get;
  size_t nbytes() const;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, bool page_aligned = false);

}  // namespace oar
