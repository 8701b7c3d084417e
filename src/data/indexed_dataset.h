// Megatron/PaddleNLP indexed datasets (`prefix.bin` + `prefix.idx`, "MMIDIDX" version 1): pretraining token
// streams. The reader memory-maps both files and checks every count, offset and index before it hands out a
// token, so a truncated or inconsistent pair is an oar::Error naming the file, never a crash. The writer produces
// the same format atomically (temporary names, renamed into place by finalize()).
//
// .idx layout (little endian): magic "MMIDIDX\0\0" (9 bytes), u64 version = 1, u8 dtype code, u64 N (sequences),
// u64 D (len(doc_idx) = documents + 1), int32 sizes[N], int64 pointers[N] (byte offsets into .bin),
// int64 doc_idx[D] (first sequence of each document; doc_idx[0] = 0, doc_idx[D-1] = N).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/mmap_file.h"

namespace oar {

// PaddleNLP's dtype codes (6 and 7 are swapped relative to Megatron's table).
enum class IndexedDType : uint8_t {
  U8 = 1, I8 = 2, I16 = 3, I32 = 4, I64 = 5, F64 = 6, F32 = 7, U16 = 8, U32 = 9, U64 = 10
};
bool indexed_dtype_valid(uint8_t code);
size_t indexed_dtype_size(IndexedDType t);
const char* indexed_dtype_name(IndexedDType t);  // "uint16", ...
// What `oar preprocess` (and PaddleNLP's create_pretraining_data.py) stores: uint16 when vocab_size < 65535,
// else int32.
IndexedDType indexed_dtype_for_vocab(int64_t vocab_size);

// The validated layout of an .idx file. Arrays are read through the accessors (the file's arrays are not
// naturally aligned: sizes start at byte 34).
struct IndexedIndex {
  IndexedDType dtype = IndexedDType::U16;
  uint64_t num_sequences = 0;  // N
  uint64_t doc_idx_len = 0;    // D
  const uint8_t* base = nullptr;  // the .idx bytes (owned elsewhere)
  int32_t size(uint64_t i) const;
  int64_t pointer(uint64_t i) const;
  int64_t doc_idx(uint64_t i) const;
};

// Validates .idx bytes against a .bin of `bin_bytes` bytes: magic, version, dtype, lengths, sizes >= 0, pointers
// contiguous from 0 (each = the previous + its size x itemsize), the last sequence ending exactly at bin_bytes,
// doc_idx starting at 0, non-decreasing and ending at N. `where` names the file in errors. The result points
// into `data`.
IndexedIndex parse_indexed_index(const uint8_t* data, size_t size, uint64_t bin_bytes, const std::string& where);

class IndexedDataset {
 public:
  // Opens prefix.idx and prefix.bin. Throws oar::Error naming the offending file.
  static std::shared_ptr<IndexedDataset> open(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  IndexedDType dtype() const { return index_.dtype; }
  int64_t num_sequences() const { return int64_t(index_.num_sequences); }
  int64_t num_documents() const { return int64_t(index_.doc_idx_len) - 1; }
  int64_t total_tokens() const { return total_tokens_; }
  int32_t sequence_length(int64_t seq) const;  // sizes[seq]
  int64_t document_start(int64_t doc) const;   // doc_idx[doc], a sequence index; doc in [0, num_documents()]
  const IndexedIndex& index() const { return index_; }

  // Tokens [offset, offset + length) of sequence `seq` (length -1: to its end) as int32 token ids, appended to
  // `out`. Out-of-range arguments and token values outside [0, 2^31) (or non-integral floats) are an oar::Error
  // naming the .bin file.
  void read(int64_t seq, int64_t offset, int64_t length, std::vector<int32_t>& out) const;
  std::vector<int32_t> get(int64_t seq, int64_t offset = 0, int64_t length = -1) const;

 private:
  IndexedDataset() = default;
  std::string prefix_;
  std::shared_ptr<MappedFile> idx_file_, bin_file_;
  IndexedIndex index_;
  int64_t total_tokens_ = 0;
};

// Streams a dataset to prefix.bin / prefix.idx under temporary names; finalize() writes the index and renames
// both into place (.bin first, so a finished .idx always has its .bin). Destroying an unfinalized writer removes
// the temporary files. Usage as PaddleNLP's builder: add_item() per sequence, end_document() after each document.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, IndexedDType dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // Appends one sequence. Ids that the dtype cannot hold are an oar::Error.
  void add_item(const int32_t* ids, size_t n);
  void add_item(const std::vector<int32_t>& ids) { add_item(ids.data(), ids.size()); }
  void end_document();
  void finalize();

  int64_t num_sequences() const { return int64_t(sizes_.size()); }
  int64_t num_documents() const { return int64_t(doc_idx_.size()) - 1; }
  int64_t num_tokens() const { return tokens_; }

 private:
  void flush_buffer();
  void cleanup() noexcept;
  std::string prefix_, bin_tmp_, idx_tmp_;
  IndexedDType dtype_;
  int fd_ = -1;
  std::vector<uint8_t> buffer_;
  std::vector<int32_t> sizes_;
  std::vector<int64_t> doc_idx_{0};
  int64_t tokens_ = 0;
  bool finalized_ = false;
};

}  // namespace oar
