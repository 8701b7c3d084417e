#include "data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.h"

namespace oar {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;  // 34: magic, version, dtype, N, D

template <class T>
T load(const uint8_t* p) {  // unaligned little-endian load (x86-64 is little endian, like the format)
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string num(uint64_t v) { return std::to_string(v); }

}  // namespace

bool indexed_dtype_valid(uint8_t code) { return code >= 1 && code <= 10; }

size_t indexed_dtype_size(IndexedDType t) {
  switch (t) {
    case IndexedDType::U8: case IndexedDType::I8: return 1;
    case IndexedDType::I16: case IndexedDType::U16: return 2;
    case IndexedDType::I32: case IndexedDType::U32: case IndexedDType::F32: return 4;
    case IndexedDType::I64: case IndexedDType::U64: case IndexedDType::F64: return 8;
  }
  return 0;
}

const char* indexed_dtype_name(IndexedDType t) {
  switch (t) {
    case IndexedDType::U8: return "uint8";
    case IndexedDType::I8: return "int8";
    case IndexedDType::I16: return "int16";
    case IndexedDType::I32: return "int32";
    case IndexedDType::I64: return "int64";
    case IndexedDType::F64: return "float64";
    case IndexedDType::F32: return "float32";
    case IndexedDType::U16: return "uint16";
    case IndexedDType::U32: return "uint32";
    case IndexedDType::U64: return "uint64";
  }
  return "?";
}

IndexedDType indexed_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size < 65535 ? IndexedDType::U16 : IndexedDType::I32;
}

int32_t IndexedIndex::size(uint64_t i) const { return load<int32_t>(base + kHeaderBytes + 4 * i); }
int64_t IndexedIndex::pointer(uint64_t i) const {
  return load<int64_t>(base + kHeaderBytes + 4 * num_sequences + 8 * i);
}
int64_t IndexedIndex::doc_idx(uint64_t i) const {
  return load<int64_t>(base + kHeaderBytes + 12 * num_sequences + 8 * i);
}

IndexedIndex parse_indexed_index(const uint8_t* data, size_t size, uint64_t bin_bytes, const std::string& where) {
  if (size < kHeaderBytes) fail(where, "truncated index: " + num(size) + " bytes, the header alone needs 34");
  if (std::memcmp(data, kMagic, 9) != 0) fail(where, "not an MMIDIDX index (bad magic)");
  const uint64_t version = load<uint64_t>(data + 9);
  if (version != 1) fail(where, "unsupported MMIDIDX version " + num(version) + " (only 1)");
  const uint8_t code = data[17];
  if (!indexed_dtype_valid(code)) fail(where, "unknown dtype code " + num(code) + " (PaddleNLP's codes are 1..10)");
  IndexedIndex ix;
  ix.dtype = IndexedDType(code);
  ix.num_sequences = load<uint64_t>(data + 18);
  ix.doc_idx_len = load<uint64_t>(data + 26);
  ix.base = data;
  const uint64_t N = ix.num_sequences, D = ix.doc_idx_len;
  // Bound the counts by the file size before multiplying, so the arithmetic below cannot wrap.
  const uint64_t body = size - kHeaderBytes;
  const bool fits = N <= body / 12 && D <= body / 8;  // then 12N + 8D <= 2 x body: no wrap
  if (!fits || 12 * N + 8 * D > body)
    fail(where, "truncated index: " + num(N) + " sequences and " + num(D) + " doc_idx entries need more than the " +
                    num(size) + " bytes present");
  if (12 * N + 8 * D < body)
    fail(where, num(body - 12 * N - 8 * D) + " unexpected bytes after " + num(N) + " sequences and " + num(D) +
                    " doc_idx entries");
  if (D == 0) fail(where, "doc_idx is empty (it holds at least the final entry N)");

  const uint64_t item = indexed_dtype_size(ix.dtype);
  uint64_t expect = 0;  // byte offset where the next sequence must start
  for (uint64_t i = 0; i < N; i++) {
    const int32_t s = ix.size(i);
    if (s < 0) fail(where, "sequence " + num(i) + " has negative size " + std::to_string(s));
    const int64_t p = ix.pointer(i);
    if (p < 0 || uint64_t(p) != expect)
      fail(where, "pointer of sequence " + num(i) + " is " + std::to_string(p) + ", expected " + num(expect) +
                      " (sizes and pointers disagree)");
    expect += uint64_t(s) * item;  // N < 2^60 and s < 2^31: no overflow
    if (expect > bin_bytes)
      fail(where, "sequence " + num(i) + " ends at byte " + num(expect) + ", past the end of the .bin file (" +
                      num(bin_bytes) + " bytes)");
  }
  if (expect != bin_bytes)
    fail(where, "the sequences cover " + num(expect) + " bytes but the .bin file has " + num(bin_bytes));
  int64_t prev = 0;
  for (uint64_t d = 0; d < D; d++) {
    const int64_t v = ix.doc_idx(d);
    if (d == 0 && v != 0) fail(where, "doc_idx[0] is " + std::to_string(v) + ", expected 0");
    if (v < prev) fail(where, "doc_idx is not monotone at entry " + num(d));
    if (uint64_t(v) > N) fail(where, "doc_idx[" + num(d) + "] = " + std::to_string(v) + " is past " + num(N) +
                                         " sequences");
    prev = v;
  }
  if (uint64_t(ix.doc_idx(D - 1)) != N)
    fail(where, "the last doc_idx entry is " + std::to_string(ix.doc_idx(D - 1)) + ", expected " + num(N));
  return ix;
}

std::shared_ptr<IndexedDataset> IndexedDataset::open(const std::string& prefix) {
  std::shared_ptr<IndexedDataset> ds(new IndexedDataset());
  ds->prefix_ = prefix;
  ds->idx_file_ = MappedFile::open(prefix + ".idx");
  ds->bin_file_ = MappedFile::open(prefix + ".bin");
  ds->index_ = parse_indexed_index(ds->idx_file_->data(), ds->idx_file_->size(), ds->bin_file_->size(),
                                   ds->idx_file_->path());
  ds->total_tokens_ = int64_t(ds->bin_file_->size() / indexed_dtype_size(ds->index_.dtype));
  return ds;
}

int32_t IndexedDataset::sequence_length(int64_t seq) const {
  if (seq < 0 || seq >= num_sequences())
    fail(prefix_ + ".idx", "sequence " + std::to_string(seq) + " out of range (" + num(index_.num_sequences) + ")");
  return index_.size(uint64_t(seq));
}

int64_t IndexedDataset::document_start(int64_t doc) const {
  if (doc < 0 || doc > num_documents())
    fail(prefix_ + ".idx", "document " + std::to_string(doc) + " out of range (" +
                               std::to_string(num_documents()) + ")");
  return index_.doc_idx(uint64_t(doc));
}

namespace {

// Converts `n` stored values to token ids; false when one is not a token id (negative, >= 2^31, non-integral).
template <class T>
bool convert(const uint8_t* p, size_t n, int32_t* out) {
  for (size_t i = 0; i < n; i++) {
    const T v = load<T>(p + i * sizeof(T));
    if constexpr (std::is_floating_point_v<T>) {
      if (!(v >= 0 && v < 2147483648.0) || std::floor(v) != v) return false;
    } else if constexpr (std::is_signed_v<T>) {
      if (v < 0 || int64_t(v) > std::numeric_limits<int32_t>::max()) return false;
    } else {
      if (uint64_t(v) > uint64_t(std::numeric_limits<int32_t>::max())) return false;
    }
    out[i] = int32_t(v);
  }
  return true;
}

}  // namespace

void IndexedDataset::read(int64_t seq, int64_t offset, int64_t length, std::vector<int32_t>& out) const {
  const int64_t n = sequence_length(seq);
  if (length < 0) length = n - offset;
  if (offset < 0 || length < 0 || offset > n || length > n - offset)
    fail(prefix_ + ".bin", "read of tokens [" + std::to_string(offset) + ", +" + std::to_string(length) +
                               ") is outside sequence " + std::to_string(seq) + " of " + std::to_string(n) + " tokens");
  const size_t item = indexed_dtype_size(index_.dtype);
  const uint8_t* p = bin_file_->data() + uint64_t(index_.pointer(uint64_t(seq))) + uint64_t(offset) * item;
  const size_t at = out.size();
  out.resize(at + size_t(length));
  int32_t* dst = out.data() + at;
  bool ok = true;
  switch (index_.dtype) {
    case IndexedDType::U8: ok = convert<uint8_t>(p, size_t(length), dst); break;
    case IndexedDType::I8: ok = convert<int8_t>(p, size_t(length), dst); break;
    case IndexedDType::I16: ok = convert<int16_t>(p, size_t(length), dst); break;
    case IndexedDType::I32: ok = convert<int32_t>(p, size_t(length), dst); break;
    case IndexedDType::I64: ok = convert<int64_t>(p, size_t(length), dst); break;
    case IndexedDType::F64: ok = convert<double>(p, size_t(length), dst); break;
    case IndexedDType::F32: ok = convert<float>(p, size_t(length), dst); break;
    case IndexedDType::U16: ok = convert<uint16_t>(p, size_t(length), dst); break;
    case IndexedDType::U32: ok = convert<uint32_t>(p, size_t(length), dst); break;
    case IndexedDType::U64: ok = convert<uint64_t>(p, size_t(length), dst); break;
  }
  if (!ok) {
    out.resize(at);
    fail(prefix_ + ".bin", "sequence " + std::to_string(seq) + " holds a value that is not a token id (" +
                               indexed_dtype_name(index_.dtype) + ")");
  }
}

std::vector<int32_t> IndexedDataset::get(int64_t seq, int64_t offset, int64_t length) const {
  std::vector<int32_t> out;
  read(seq, offset, length, out);
  return out;
}

// ---- writer ----

namespace {

int make_temp(const std::string& final_path, std::string& tmp_path) {
  std::string templ = final_path + ".tmp.XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  int fd = ::mkstemp(buf.data());
  if (fd < 0) fail(final_path, std::string("cannot write: ") + std::strerror(errno));
  ::fchmod(fd, 0644);
  tmp_path.assign(buf.data());
  return fd;
}

void write_all(int fd, const uint8_t* p, size_t n, const std::string& where) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(where, std::string("write failed: ") + std::strerror(errno));
    }
    p += w;
    n -= size_t(w);
  }
}

template <class T>
void put(std::vector<uint8_t>& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));
}

}  // namespace

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, IndexedDType dtype)
    : prefix_(prefix), dtype_(dtype) {
  buffer_.reserve(size_t(1) << 22);  // flushed to the file whenever it reaches this size
  if (!indexed_dtype_valid(uint8_t(dtype))) fail(prefix + ".bin", "invalid dtype");
  if (dtype == IndexedDType::F32 || dtype == IndexedDType::F64)
    fail(prefix + ".bin", "token ids are written as integers (uint16/int32/...), not float");
  fd_ = make_temp(prefix + ".bin", bin_tmp_);
}

IndexedDatasetWriter::~IndexedDatasetWriter() {
  if (!finalized_) cleanup();
}

void IndexedDatasetWriter::cleanup() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!bin_tmp_.empty()) ::unlink(bin_tmp_.c_str());
  if (!idx_tmp_.empty()) ::unlink(idx_tmp_.c_str());
}

void IndexedDatasetWriter::add_item(const int32_t* ids, size_t n) {
  if (finalized_) fail(prefix_ + ".bin", "add_item after finalize");
  if (n > size_t(std::numeric_limits<int32_t>::max())) fail(prefix_ + ".bin", "sequence too long for int32 sizes");
  int64_t lo = 0, hi = 0;
  switch (dtype_) {
    case IndexedDType::U8: hi = 255; break;
    case IndexedDType::I8: hi = 127; break;
    case IndexedDType::I16: hi = 32767; break;
    case IndexedDType::U16: hi = 65535; break;
    default: hi = std::numeric_limits<int32_t>::max(); break;
  }
  for (size_t i = 0; i < n; i++) {
    const int32_t v = ids[i];
    if (v < lo || v > hi)
      fail(prefix_ + ".bin", "token id " + std::to_string(v) + " does not fit " + indexed_dtype_name(dtype_));
    switch (dtype_) {
      case IndexedDType::U8: put<uint8_t>(buffer_, uint8_t(v)); break;
      case IndexedDType::I8: put<int8_t>(buffer_, int8_t(v)); break;
      case IndexedDType::I16: put<int16_t>(buffer_, int16_t(v)); break;
      case IndexedDType::U16: put<uint16_t>(buffer_, uint16_t(v)); break;
      case IndexedDType::I32: put<int32_t>(buffer_, v); break;
      case IndexedDType::U32: put<uint32_t>(buffer_, uint32_t(v)); break;
      case IndexedDType::I64: put<int64_t>(buffer_, v); break;
      case IndexedDType::U64: put<uint64_t>(buffer_, uint64_t(v)); break;
      default: break;
    }
  }
  sizes_.push_back(int32_t(n));
  tokens_ += int64_t(n);
  if (buffer_.size() >= (size_t(1) << 22)) flush_buffer();
}

void IndexedDatasetWriter::end_document() { doc_idx_.push_back(int64_t(sizes_.size())); }

void IndexedDatasetWriter::flush_buffer() {
  write_all(fd_, buffer_.data(), buffer_.size(), prefix_ + ".bin");
  buffer_.clear();
}

void IndexedDatasetWriter::finalize() {
  if (finalized_) return;
  flush_buffer();
  if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
    fd_ = -1;
    fail(prefix_ + ".bin", "write failed while flushing");
  }
  fd_ = -1;
  // The index, in PaddleNLP's layout.
  const uint64_t N = sizes_.size();
  std::vector<uint8_t> idx;
  idx.reserve(34 + 12 * N + 8 * doc_idx_.size());
  idx.insert(idx.end(), kMagic, kMagic + 9);
  put<uint64_t>(idx, 1);
  put<uint8_t>(idx, uint8_t(dtype_));
  put<uint64_t>(idx, N);
  put<uint64_t>(idx, doc_idx_.size());
  for (int32_t s : sizes_) put<int32_t>(idx, s);
  int64_t ptr = 0;
  const int64_t item = int64_t(indexed_dtype_size(dtype_));
  for (int32_t s : sizes_) {
    put<int64_t>(idx, ptr);
    ptr += int64_t(s) * item;
  }
  for (int64_t d : doc_idx_) put<int64_t>(idx, d);
  int ifd = make_temp(prefix_ + ".idx", idx_tmp_);
  try {
    write_all(ifd, idx.data(), idx.size(), prefix_ + ".idx");
  } catch (...) {
    ::close(ifd);
    throw;
  }
  if (::fsync(ifd) != 0 || ::close(ifd) != 0) fail(prefix_ + ".idx", "write failed while flushing");
  const std::string bin = prefix_ + ".bin", idxp = prefix_ + ".idx";
  if (std::rename(bin_tmp_.c_str(), bin.c_str()) != 0)
    fail(bin, std::string("cannot rename into place: ") + std::strerror(errno));
  bin_tmp_.clear();
  if (std::rename(idx_tmp_.c_str(), idxp.c_str()) != 0)
    fail(idxp, std::string("cannot rename into place: ") + std::strerror(errno));
  idx_tmp_.clear();
  finalized_ = true;
}

}  // namespace oar
