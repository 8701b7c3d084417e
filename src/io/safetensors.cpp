// safetensors reading (validated, zero-copy) and writing (streamed, atomic).
#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/mmap_file.h"

namespace oar {

// Tensor bytes are used in place (mapped) and written as they are in memory.
static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; oar maps it in place");

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr const char* kIndexName = "model.safetensors.index.json";

struct DTypeCode {
  const char* code;
  DType dtype;
};
// Element types we read; others (BOOL, F8_E4M3, F8_E5M2, ...) are refused by name.
constexpr DTypeCode kDTypes[] = {
    {"F64", DType::F64}, {"F32", DType::F32}, {"BF16", DType::BF16}, {"F16", DType::F16},
    {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16},   {"I8", DType::I8},
    {"U64", DType::U64}, {"U32", DType::U32}, {"U16", DType::U16},   {"U8", DType::U8},
};

const char* code_of(DType t) {
  for (const auto& d : kDTypes)
    if (d.dtype == t) return d.code;
  return nullptr;
}

// A JSON value for a message: short scalars as written, anything else by its type.
std::string brief(const json& v) {
  if (!v.is_primitive()) return v.type_name();
  std::string d = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return d.size() <= 40 ? d : d.substr(0, 40) + "...";
}

// A non-negative JSON integer (nlohmann keeps non-negative literals as unsigned, negative ones as signed).
bool as_u64(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = uint64_t(v.get<int64_t>());
    return true;
  }
  return false;
}

SafetensorsEntry parse_entry(const std::string& name, const json& v, uint64_t data_size, const std::string& where) {
  const std::string t = "tensor " + in_quotes(name);
  if (!v.is_object()) fail(where, t + ": expected an object, got " + v.type_name());
  SafetensorsEntry e;
  e.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) fail(where, t + ": missing or non-string \"dtype\"");
  const std::string& code = dt->get_ref<const std::string&>();
  const DTypeCode* found = nullptr;
  for (const auto& d : kDTypes)
    if (code == d.code) found = &d;
  if (!found)
    fail(where, t + " has unsupported dtype " + in_quotes(code) + " (oar reads F64, F32, BF16, F16, I64, I32, I16, I8, "
                                                               "U64, U32, U16, U8)");
  e.dtype = found->dtype;

  // The element count must fit int64 however the dims are multiplied (Tensor multiplies them in both orders),
  // so bound the product of the non-zero dims; a zero dim makes the tensor empty.
  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) fail(where, t + ": missing or non-list \"shape\"");
  uint64_t nonzero_product = 1;
  bool empty = false;
  for (const json& d : *sh) {
    uint64_t n = 0;
    if (!as_u64(d, n)) fail(where, t + ": shape entries must be non-negative integers, got " + brief(d));
    if (n == 0) empty = true;
    else if (__builtin_mul_overflow(nonzero_product, n, &nonzero_product) ||
             nonzero_product > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(where, t + ": shape has too many elements");
    e.shape.push_back(int64_t(n));
  }
  uint64_t bytes = 0;
  if (!empty && __builtin_mul_overflow(nonzero_product, uint64_t(dtype_size(e.dtype)), &bytes))
    fail(where, t + ": shape has too many bytes");

  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !as_u64((*off)[0], e.begin) ||
      !as_u64((*off)[1], e.end))
    fail(where, t + ": \"data_offsets\" must be two non-negative integers");
  if (e.begin > e.end || e.end > data_size)
    fail(where, t + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                    "] are out of range (the data section has " + std::to_string(data_size) + " bytes)");
  if (e.end - e.begin != bytes)
    fail(where, t + ": shape " + shape_str(e.shape) + " of " + code + " needs " + std::to_string(bytes) +
                    " bytes but data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                    "] span " + std::to_string(e.end - e.begin));
  return e;
}

// Streams a file to PATH.tmp.PID and renames it into place on commit(); dropped unfinished, the temp file goes.
// (core/fs.h's write_file_atomic needs the whole contents in one string; checkpoints can be many GB.)
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(path_, std::string("cannot write: ") + std::strerror(errno));
  }
  ~AtomicFileWriter() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t(1) << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail(path_, std::string("write failed: ") + std::strerror(errno));
      }
      p += w;
      n -= size_t(w);
    }
  }

  void commit() {
    int fd = fd_;
    fd_ = -1;
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      ::unlink(tmp_.c_str());
      fail(path_, "write failed while flushing");
    }
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      int e = errno;
      ::unlink(tmp_.c_str());
      fail(path_, std::string("cannot rename into place: ") + std::strerror(e));
    }
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// A shard name from the index must stay inside the model directory.
bool safe_relative_path(const std::string& p) {
  if (p.empty() || p[0] == '/') return false;
  size_t start = 0;
  while (start <= p.size()) {
    size_t slash = p.find('/', start);
    if (slash == std::string::npos) slash = p.size();
    if (p.compare(start, slash - start, "..") == 0 && slash - start == 2) return false;
    start = slash + 1;
  }
  return true;
}

}  // namespace

SafetensorsHeader parse_safetensors(const uint8_t* data, size_t size, const std::string& where) {
  if (size < 8)
    fail(where, "file is too short (" + std::to_string(size) + " bytes) to hold a safetensors header");
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n > size - 8)
    fail(where, "header length " + std::to_string(n) + " is past the end of the file (" + std::to_string(size) +
                    " bytes)");
  if (n > kMaxHeaderBytes)
    fail(where, "header length " + std::to_string(n) + " is over the 100 MB limit");

  // Duplicate top-level keys would silently shadow each other in the parsed object: catch them while parsing.
  json header;
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t event, const json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && duplicate.empty() &&
        !seen.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
  };
  header = parse_json(std::string_view(reinterpret_cast<const char*>(data + 8), size_t(n)), where + ": header", on_event);
  if (!header.is_object()) fail(where, std::string("header must be a JSON object, got ") + header.type_name());
  if (!duplicate.empty()) fail(where, "tensor " + in_quotes(duplicate) + " appears twice in the header");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail(where, "__metadata__ must be an object of strings");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) fail(where, "__metadata__ value of " + in_quotes(k) + " must be a string");
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(name, value, data_size, where));
  }

  // No two tensors may share bytes: sort the non-empty ranges by start and compare neighbours.
  std::vector<const SafetensorsEntry*> byte_order;
  for (const auto& e : h.entries)
    if (e.end > e.begin) byte_order.push_back(&e);
  std::sort(byte_order.begin(), byte_order.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < byte_order.size(); i++) {
    const SafetensorsEntry& a = *byte_order[i - 1];
    const SafetensorsEntry& b = *byte_order[i];
    if (b.begin < a.end)
      fail(where, "tensors " + in_quotes(a.name) + " [" + std::to_string(a.begin) + ", " + std::to_string(a.end) +
                      ") and " + in_quotes(b.name) + " [" + std::to_string(b.begin) + ", " + std::to_string(b.end) +
                      ") overlap");
  }
  return h;
}

WeightStore WeightStore::open_file(const std::string& path) {
  std::shared_ptr<MappedFile> file = MappedFile::open(path);
  SafetensorsHeader h = parse_safetensors(file->data(), file->size(), path);
  WeightStore s;
  s.where_ = path;
  s.metadata_ = std::move(h.metadata);
  for (auto& e : h.entries) {
    std::string name = e.name;
    s.items_.emplace(std::move(name), Item{file, std::move(e), h.data_start});
  }
  return s;
}

std::map<std::string, std::vector<std::string>> read_weight_map(const std::string& index_path) {
  json index = parse_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_path, "expected an object with a \"weight_map\" object");
  const json& weight_map = index["weight_map"];
  if (weight_map.empty()) fail(index_path, "weight_map is empty");

  // Group the names by shard so that each shard is mapped and parsed once.
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, shard] : weight_map.items()) {
    if (!shard.is_string()) fail(index_path, "weight_map entry " + in_quotes(name) + " must be a file name");
    const std::string& file = shard.get_ref<const std::string&>();
    if (!safe_relative_path(file))
      fail(index_path, "weight_map entry " + in_quotes(name) + " names " + in_quotes(file) + ", outside the directory");
    by_shard[file].push_back(name);
  }
  return by_shard;
}

std::map<std::string, Tensor> read_indexed_tensors(
    const std::string& dir, const std::string& index_path,
    const std::function<std::map<std::string, Tensor>(const std::string& shard_path)>& read_shard) {
  std::map<std::string, Tensor> all;
  for (const auto& [shard, names] : read_weight_map(index_path)) {
    const std::string path = join_path(dir, shard);
    if (!file_exists(path)) fail(path, "shard listed in " + index_path + " does not exist");
    const std::map<std::string, Tensor> in_shard = read_shard(path);
    for (const std::string& name : names) {
      auto it = in_shard.find(name);
      if (it == in_shard.end()) fail(path, "tensor " + in_quotes(name) + " listed in " + index_path + " is not in this shard");
      all.emplace(name, it->second);
    }
  }
  return all;
}

std::map<std::string, Tensor> read_safetensors_file(const std::string& path) {
  const WeightStore s = WeightStore::open_file(path);
  std::map<std::string, Tensor> out;
  for (const std::string& n : s.names()) out.emplace(n, s.get(n));
  return out;
}

WeightStore WeightStore::open_dir(const std::string& dir) {
  if (!dir_exists(dir)) fail(dir, "no such directory");
  const std::string index_path = join_path(dir, kIndexName);
  if (dir_exists(index_path)) fail(index_path, "is a directory, not a file");
  if (!file_exists(index_path)) {
    const std::string single = join_path(dir, "model.safetensors");
    if (dir_exists(single)) fail(single, "is a directory, not a file");
    if (!file_exists(single)) fail(dir, std::string("neither model.safetensors nor ") + kIndexName + " is here");
    return open_file(single);
  }

  const auto by_shard = read_weight_map(index_path);
  WeightStore s;
  s.where_ = index_path;
  for (const auto& [shard, names] : by_shard) {
    const std::string path = join_path(dir, shard);
    if (dir_exists(path)) fail(path, "is a directory, not a file");
    if (!file_exists(path)) fail(path, std::string("shard listed in ") + kIndexName + " does not exist");
    std::shared_ptr<MappedFile> file = MappedFile::open(path);
    SafetensorsHeader h = parse_safetensors(file->data(), file->size(), path);
    std::map<std::string, const SafetensorsEntry*> in_shard;
    for (const auto& e : h.entries) in_shard[e.name] = &e;
    for (const std::string& name : names) {
      auto it = in_shard.find(name);
      if (it == in_shard.end())
        fail(path, "tensor " + in_quotes(name) + " listed in " + kIndexName + " is not in this shard");
      s.items_.emplace(name, Item{file, *it->second, h.data_start});
    }
  }
  return s;
}

bool WeightStore::has(const std::string& name) const { return items_.count(name) > 0; }

Tensor WeightStore::get(const std::string& name) const {
  auto it = items_.find(name);
  if (it == items_.end()) fail(where_, "missing tensor " + in_quotes(name));
  const Item& item = it->second;
  std::shared_ptr<Storage> storage =
      Storage::view(item.file, item.data_start + item.entry.begin, item.entry.end - item.entry.begin);
  return Tensor::from_storage(std::move(storage), item.entry.shape, item.entry.dtype);
}

std::string WeightStore::file_of(const std::string& name) const {
  auto it = items_.find(name);
  if (it == items_.end()) fail(where_, "missing tensor " + in_quotes(name));
  return it->second.file->path();
}

void WeightStore::release(const std::string& name) const {
  auto it = items_.find(name);
  if (it != items_.end())
    it->second.file->release(size_t(it->second.data_start + it->second.entry.begin),
                             size_t(it->second.entry.end - it->second.entry.begin));
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& kv : items_) out.push_back(kv.first);
  return out;
}

namespace {

// The header of write_safetensors: each tensor's range (page-aligned or packed), padded so the data section starts
// at a multiple of 8 or of a page. begins: each tensor's offset in the data section, in the given order.
std::string header_text(const std::string& path, const std::vector<const TensorToWrite*>& order,
                        const std::map<std::string, std::string>& metadata, bool page_aligned,
                        std::vector<uint64_t>& begins) {
  const uint64_t align = page_aligned ? 4096 : 1;
  json header = json::object();
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    offset = (offset + align - 1) / align * align;
    begins.push_back(offset);
    header[t->name] = {{"dtype", code_of(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception&) {  // a name or metadata string that is not UTF-8
    fail(path, "tensor names and metadata must be valid UTF-8");
  }
  const uint64_t data_align = page_aligned ? 4096 : 8;
  text.append((data_align - (8 + text.size()) % data_align) % data_align, ' ');
  return text;
}

}  // namespace

size_t TensorToWrite::nbytes() const {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata, bool page_aligned) {
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    if (t.name == "__metadata__") fail(path, "'__metadata__' cannot be a tensor name");
    if (!names.insert(t.name).second) fail(path, "tensor " + in_quotes(t.name) + " is given twice");
    if (!code_of(t.dtype)) fail(path, "tensor " + in_quotes(t.name) + ": safetensors has no " + dtype_name(t.dtype));
  }
  // Data in the reference writer's order: wider element types first, then by name. With the header padded to
  // a multiple of 8 every tensor starts aligned to its element size, and the ranges leave no gaps (which the
  // reference reader requires). Page-aligned: the given order.
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  if (!page_aligned)
    std::sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
      size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
      return sa != sb ? sa > sb : a->name < b->name;
    });
  std::vector<uint64_t> begins;
  const std::string text = header_text(path, order, metadata, page_aligned, begins);

  AtomicFileWriter out(path);
  const uint64_t n = text.size();
  out.write(&n, 8);
  out.write(text.data(), text.size());
  const std::string zeros(4096, '\0');
  uint64_t at = 0;
  for (size_t i = 0; i < order.size(); i++) {
    const TensorToWrite& w = *order[i];
    const Tensor t = w.get();  // only now: one tensor at a time in memory
    const std::string what = "tensor " + in_quotes(w.name);
    if (!t.defined()) fail(path, what + " is undefined");
    if (t.device() != Device::CPU) fail(path, what + " is not on the cpu");
    if (!t.is_contiguous()) fail(path, what + " is not contiguous");
    if (t.dtype() != w.dtype || t.shape() != w.shape) fail(path, what + " is not the dtype and shape announced");
    out.write(zeros.data(), begins[i] - at);
    if (t.nbytes() > 0) out.write(t.raw(), t.nbytes());
    at = begins[i] + t.nbytes();
  }
  out.commit();
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata, bool page_aligned) {
  std::vector<TensorToWrite> ts;
  for (const auto& nt : tensors) {
    const Tensor t = nt.second;
    if (!t.defined()) fail(path, "tensor " + in_quotes(nt.first) + " is undefined");
    ts.push_back({nt.first, t.dtype(), t.shape(), [t]() { return t; }});
  }
  write_safetensors(path, ts, metadata, page_aligned);
}

}  // namespace oar
