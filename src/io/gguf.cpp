// The GGUF header parser: a bounds-checked reader over the file image (see gguf.h for the layout).
#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/json_io.h"
#include "core/mmap_file.h"

namespace oar {
namespace {

constexpr uint32_t kArray = 9, kString = 8;
constexpr uint64_t kMaxArrayItems = uint64_t(1) << 22;  // in all: Llama-3's vocabulary and merges take ~0.7M
constexpr int kMaxNesting = 8;
constexpr uint64_t kMaxEntries = uint64_t(1) << 16;

// Reads little-endian values from [data, data + size); any read past the end is an oar::Error naming the file.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, std::string where) : d_(data), size_(size), where_(std::move(where)) {}

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, d_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(d_ + pos_), size_t(n));
    pos_ += size_t(n);
    return s;
  }
  void skip(uint64_t n, const char* what) {
    need(n, what);
    pos_ += size_t(n);
  }
  size_t left() const { return size_ - pos_; }
  size_t pos() const { return pos_; }
  [[noreturn]] void bad(const std::string& what) const { fail(where_, what); }

 private:
  void need(uint64_t n, const char* what) const {
    if (n > size_ - pos_)
      bad(std::string("truncated GGUF: ") + what + " at byte " + std::to_string(pos_) + " needs " + std::to_string(n) +
          " bytes, " + std::to_string(size_ - pos_) + " are left");
  }
  const uint8_t* d_;
  size_t size_, pos_ = 0;
  std::string where_;
};

// Bytes of one scalar of GGUF value type t (0 for strings and arrays; -1 for an unknown type).
int scalar_size(uint32_t t) {
  static const int sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};  // u8 i8 u16 i16 u32 i32 f32 bool str arr u64 i64 f64
  return t < 13 ? sizes[t] : -1;
}

// One scalar of type t as a double (floats) or an int64 (integers and bools).
void read_scalar(Reader& r, uint32_t t, GgufValue& v) {
  switch (t) {
    case 0: v.i = r.read<uint8_t>("a u8"); break;
    case 1: v.i = r.read<int8_t>("an i8"); break;
    case 2: v.i = r.read<uint16_t>("a u16"); break;
    case 3: v.i = r.read<int16_t>("an i16"); break;
    case 4: v.i = r.read<uint32_t>("a u32"); break;
    case 5: v.i = r.read<int32_t>("an i32"); break;
    case 6: v.f = r.read<float>("an f32"); v.kind = GgufValue::Float; return;
    case 7: {
      const uint8_t b = r.read<uint8_t>("a bool");
      if (b > 1) r.bad("bool value " + std::to_string(b) + " is neither 0 nor 1");
      v.i = b;
      break;
    }
    case 10: {
      const uint64_t u = r.read<uint64_t>("a u64");
      if (u > uint64_t(INT64_MAX)) r.bad("u64 value " + std::to_string(u) + " is too large");
      v.i = int64_t(u);
      break;
    }
    case 11: v.i = r.read<int64_t>("an i64"); break;
    case 12: v.f = r.read<double>("an f64"); v.kind = GgufValue::Float; return;
    default: r.bad("unknown metadata value type " + std::to_string(t));
  }
  v.kind = GgufValue::Int;
  v.f = double(v.i);
}

struct MetadataReader {
  Reader& r;
  uint64_t items = 0;  // array items read so far, across the file

  void count(uint64_t n, size_t min_item_bytes) {
    // Each item takes at least min_item_bytes of the file, so a count the bytes left cannot hold is a lie.
    if (min_item_bytes > 0 && n > r.left() / min_item_bytes)
      r.bad("array of " + std::to_string(n) + " items is longer than the rest of the file");
    items += n;
    if (items > kMaxArrayItems)
      r.bad("metadata arrays hold more than " + std::to_string(kMaxArrayItems) + " items in all");
  }

  // Checks and skips an array's items (arrays of arrays, which no llama key uses).
  void skip_array(int depth) {
    if (depth > kMaxNesting) r.bad("metadata arrays nested deeper than " + std::to_string(kMaxNesting));
    const uint32_t t = r.read<uint32_t>("an array's item type");
    const uint64_t n = r.read<uint64_t>("an array's length");
    const int sz = scalar_size(t);
    if (sz < 0) r.bad("unknown array item type " + std::to_string(t));
    count(n, sz > 0 ? size_t(sz) : 8);
    for (uint64_t k = 0; k < n; k++) {
      if (t == kArray) skip_array(depth + 1);
      else if (t == kString) r.read_string("a string in an array");
      else r.skip(uint64_t(sz), "an array item");
    }
  }

  GgufValue value(uint32_t t) {
    GgufValue v;
    v.type = t;
    if (t == kString) {
      v.kind = GgufValue::String;
      v.s = r.read_string("a string value");
    } else if (t == kArray) {
      v.kind = GgufValue::Array;
      array(v);
    } else {
      read_scalar(r, t, v);
    }
    return v;
  }

  void array(GgufValue& v) {
    v.item_type = r.read<uint32_t>("an array's item type");
    const uint64_t n = r.read<uint64_t>("an array's length");
    if (v.item_type == kArray) {  // nested: checked, not kept
      count(n, 12);
      for (uint64_t k = 0; k < n; k++) skip_array(2);
      return;
    }
    const int sz = scalar_size(v.item_type);
    if (sz < 0) r.bad("unknown array item type " + std::to_string(v.item_type));
    count(n, sz > 0 ? size_t(sz) : 8);
    for (uint64_t k = 0; k < n; k++) {
      if (v.item_type == kString) {
        v.strings.push_back(r.read_string("a string in an array"));
      } else {
        GgufValue item;
        read_scalar(r, v.item_type, item);
        v.numbers.push_back(item.kind == GgufValue::Float ? item.f : double(item.i));
      }
    }
  }
};


GgufTensorInfo read_tensor_info(Reader& r, uint64_t alignment) {
  GgufTensorInfo ti;
  ti.name = r.read_string("a tensor name");
  const std::string who = "tensor " + gguf_quoted(ti.name);
  const uint32_t n_dims = r.read<uint32_t>("a tensor's dimension count");
  if (n_dims < 1 || n_dims > 4) r.bad(who + " has " + std::to_string(n_dims) + " dimensions (1 to 4 expected)");
  uint64_t numel = 1;
  std::vector<int64_t> dims;
  for (uint32_t k = 0; k < n_dims; k++) {
    const uint64_t d = r.read<uint64_t>("a tensor dimension");
    if (d < 1 || d > (uint64_t(1) << 40) || numel > (uint64_t(1) << 50) / d)
      r.bad(who + " has an impossible dimension " + std::to_string(d));
    numel *= d;
    dims.push_back(int64_t(d));
  }
  const uint32_t type = r.read<uint32_t>("a tensor's type");
  GgufTypeLayout info;
  if (!gguf_type_layout(type, info))
    r.bad(who + " has type " + gguf_type_name(type) +
          ", which oar does not read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q6_K)");
  ti.type = GgufType(type);
  if (dims[0] % info.block != 0)
    r.bad(who + " of type " + gguf_type_name(type) + " has rows of " + std::to_string(dims[0]) +
          " values, not a whole number of its " + std::to_string(info.block) + "-value blocks");
  ti.bytes = numel / uint64_t(info.block) * uint64_t(info.bytes);
  ti.offset = r.read<uint64_t>("a tensor's offset");
  if (ti.offset % alignment != 0)
    r.bad(who + " starts at offset " + std::to_string(ti.offset) + ", not a multiple of the alignment " +
          std::to_string(alignment));
  ti.shape.assign(dims.rbegin(), dims.rend());
  return ti;
}

uint64_t alignment_of(const GgufHeader& h, Reader& r) {
  const GgufValue* a = h.find("general.alignment");
  if (!a) return 32;
  if (a->kind != GgufValue::Int || a->i < 1 || a->i > (1 << 20) || (a->i & (a->i - 1)) != 0)
    r.bad("general.alignment must be a power of two up to 1 MiB");
  return uint64_t(a->i);
}

// Every tensor's bytes lie inside the data section, and no two overlap.
void check_ranges(const GgufHeader& h, size_t file_size, Reader& r) {
  const uint64_t data_size = file_size - h.data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const GgufTensorInfo& t : h.tensors) {
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      r.bad("tensor " + gguf_quoted(t.name) + " (" + std::to_string(t.bytes) + " bytes at data offset " +
            std::to_string(t.offset) + ") runs past the end of the file");
    ranges.emplace_back(t.offset, t.offset + t.bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t k = 1; k < ranges.size(); k++)
    if (ranges[k].first < ranges[k - 1].second) r.bad("two tensors' data overlap at data offset " +
                                                      std::to_string(ranges[k].first));
}

}  // namespace

bool gguf_type_layout(uint32_t type, GgufTypeLayout& out) {
  switch (type) {
    case uint32_t(GgufType::F32): out = {1, 4, 0}; return true;
    case uint32_t(GgufType::F16): out = {1, 2, 0}; return true;
    case uint32_t(GgufType::BF16): out = {1, 2, 0}; return true;
    case uint32_t(GgufType::Q8_0): out = {32, 34, 8}; return true;
    case uint32_t(GgufType::Q4_0): out = {32, 18, 4}; return true;
    case uint32_t(GgufType::Q4_1): out = {32, 20, 4}; return true;
    case uint32_t(GgufType::Q5_0): out = {32, 22, 5}; return true;
    case uint32_t(GgufType::Q5_1): out = {32, 24, 5}; return true;
    case uint32_t(GgufType::Q4_K): out = {256, 144, 4}; return true;
    case uint32_t(GgufType::Q6_K): out = {256, 210, 6}; return true;
    default: return false;
  }
}

std::string gguf_type_name(uint32_t type) {
  static const std::map<uint32_t, const char*> names = {
      {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},   {6, "Q5_0"},   {7, "Q5_1"},   {8, "Q8_0"},
      {9, "Q8_1"},    {10, "Q2_K"},   {11, "Q3_K"},   {12, "Q4_K"},  {13, "Q5_K"},  {14, "Q6_K"},  {15, "Q8_K"},
      {16, "IQ2_XXS"}, {17, "IQ2_XS"}, {18, "IQ3_XXS"}, {19, "IQ1_S"}, {20, "IQ4_NL"}, {21, "IQ3_S"}, {22, "IQ2_S"},
      {23, "IQ4_XS"}, {24, "I8"},     {25, "I16"},    {26, "I32"},   {27, "I64"},   {28, "F64"},   {29, "IQ1_M"},
      {30, "BF16"},   {34, "TQ1_0"},  {35, "TQ2_0"}};
  auto it = names.find(type);
  return it != names.end() ? it->second : "type " + std::to_string(type);
}

std::string gguf_quoted(const std::string& s) {
  return s.size() <= 200 ? in_quotes(s) : in_quotes(s.substr(0, 200)) + "...";
}

const GgufValue* GgufHeader::find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

const GgufValue& GgufHeader::require(const std::string& key, GgufValue::Kind kind, const std::string& where) const {
  static const char* kinds[] = {"an integer", "a number", "a string", "an array"};
  const GgufValue* v = find(key);
  if (!v) fail(where, "GGUF metadata has no " + key);
  const bool ok = v->kind == kind || (kind == GgufValue::Float && v->kind == GgufValue::Int);
  if (!ok) fail(where, "GGUF metadata " + key + " is not " + kinds[kind]);
  return *v;
}

int64_t GgufHeader::int_or(const std::string& key, int64_t fallback, const std::string& where) const {
  return find(key) ? require(key, GgufValue::Int, where).i : fallback;
}

double GgufHeader::number_or(const std::string& key, double fallback, const std::string& where) const {
  return find(key) ? require(key, GgufValue::Float, where).f : fallback;
}

GgufHeader parse_gguf(const uint8_t* data, size_t size, const std::string& where) {
  Reader r(data, size, where);
  char magic[4];
  for (char& c : magic) c = char(r.read<uint8_t>("the magic"));
  if (std::memcmp(magic, "GGUF", 4) != 0) r.bad("not a GGUF file (it does not start with \"GGUF\")");
  GgufHeader h;
  h.version = r.read<uint32_t>("the version");
  if (h.version != 2 && h.version != 3)
    r.bad("GGUF version " + std::to_string(h.version) + " is not supported (2 or 3, little-endian)");
  const uint64_t n_tensors = r.read<uint64_t>("the tensor count");
  const uint64_t n_kv = r.read<uint64_t>("the metadata count");
  // A key-value pair takes at least 13 bytes and a tensor info 32: counts beyond that are lies. Each costs ~200
  // bytes in memory, so the counts are also capped (a 70B Llama has ~30 keys and ~720 tensors).
  if (n_kv > r.left() / 13) r.bad(std::to_string(n_kv) + " metadata entries cannot fit in the file");
  if (n_tensors > r.left() / 32) r.bad(std::to_string(n_tensors) + " tensors cannot fit in the file");
  if (n_kv > kMaxEntries || n_tensors > kMaxEntries)
    r.bad("more than " + std::to_string(kMaxEntries) + " metadata entries or tensors");
  MetadataReader meta{r};
  for (uint64_t k = 0; k < n_kv; k++) {
    std::string key = r.read_string("a metadata key");
    const uint32_t type = r.read<uint32_t>("a metadata value type");
    GgufValue v = meta.value(type);
    if (!h.metadata.emplace(key, std::move(v)).second) r.bad("metadata key " + gguf_quoted(key) + " appears twice");
  }
  const uint64_t alignment = alignment_of(h, r);
  std::set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; k++) {
    h.tensors.push_back(read_tensor_info(r, alignment));
    if (!names.insert(h.tensors.back().name).second) r.bad("tensor " + gguf_quoted(h.tensors.back().name) + " appears twice");
  }
  const uint64_t pad = (alignment - r.pos() % alignment) % alignment;
  if (n_tensors > 0) r.skip(pad, "the padding before the tensor data");
  h.data_start = r.pos();
  check_ranges(h, size, r);
  return h;
}

bool is_gguf_file(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char magic[4] = {};
  const bool yes = std::fread(magic, 1, 4, f) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
  std::fclose(f);
  return yes;
}

GgufFile GgufFile::open(const std::string& path) {
  GgufFile g;
  g.path = path;
  g.map = MappedFile::open(path);
  g.header = parse_gguf(g.map->data(), g.map->size(), path);
  return g;
}

Tensor GgufFile::tensor(const GgufTensorInfo& info) const {
  const size_t at = size_t(header.data_start + info.offset);
  const bool is_float = info.type == GgufType::F32 || info.type == GgufType::F16 || info.type == GgufType::BF16;
  if (!is_float) {
    Tensor t = Tensor::empty(info.shape, DType::F32);
    gguf_dequantize(info.type, map->data() + at, t.numel(), t.data<float>());
    return t;
  }
  const DType dt = info.type == GgufType::F32 ? DType::F32 : info.type == GgufType::F16 ? DType::F16 : DType::BF16;
  if (at % 8 == 0) return Tensor::from_storage(Storage::view(map, at, size_t(info.bytes)), info.shape, dt);
  // general.alignment may be as small as 1: float data that is not 8-byte aligned is copied, not viewed.
  Tensor t = Tensor::empty(info.shape, dt);
  std::memcpy(t.raw(), map->data() + at, size_t(info.bytes));
  return t;
}

}  // namespace oar
