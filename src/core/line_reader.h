// Reading text lines with a bounded length, so that one huge line (a 200 MB JSON record) is an error naming the
// file and line instead of gigabytes of memory. The limit is kDefaultMaxLineBytes, or OAR_MAX_LINE_BYTES.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace oar {

constexpr size_t kDefaultMaxLineBytes = size_t(4) << 20;  // 4 MiB

// OAR_MAX_LINE_BYTES when set (a positive integer, bytes), else kDefaultMaxLineBytes. Throws oar::Error for a
// malformed value.
size_t max_line_bytes();

// "16 MiB", "512 KiB", "100 bytes": sizes for messages.
std::string describe_bytes(uint64_t n);

class LineReader {
 public:
  // Opens `path` (an error naming it when it is missing or a directory).
  explicit LineReader(const std::string& path);
  // Reads an already open stream (stdin); `name` is what errors call it.
  LineReader(std::FILE* f, std::string name);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line without its '\n'; false at the end of the input. Throws oar::Error "NAME:N: line is longer
  // than ..." as soon as a line passes the limit, having held at most the limit in memory.
  bool next(std::string& line);
  int64_t line_number() const { return line_number_; }
  const std::string& name() const { return name_; }
  // "NAME:N" for the line last read.
  std::string where() const { return name_ + ":" + std::to_string(line_number_); }

 private:
  std::FILE* f_ = nullptr;
  bool owned_ = false;
  std::string name_;
  size_t limit_;
  std::vector<char> buf_;  // read-ahead: [pos_, len_) not yet consumed
  size_t pos_ = 0, len_ = 0;
  int64_t line_number_ = 0;
};

}  // namespace oar
