// A read-only memory-mapped file. Weights stay in the page cache and are shared, not copied.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace oar {

class MappedFile {
 public:
  // Throws oar::Error naming the path when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // The whole pages of [offset, offset + bytes) leave memory (madvise MADV_DONTNEED) once what they held has been
  // converted: a conversion's peak memory is then the converted weights, not them plus the file. A hint only:
  // reading the range again reads the file again.
  void release(size_t offset, size_t bytes) const;

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace oar
