#include "core/line_reader.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace oar {

size_t max_line_bytes() {
  const char* v = std::getenv("OAR_MAX_LINE_BYTES");
  if (!v || !*v) return kDefaultMaxLineBytes;
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v, &end, 10);
  if (errno != 0 || *end != 0 || n == 0 || v[0] == '-')
    fail("OAR_MAX_LINE_BYTES", std::string("expected a positive number of bytes, got '") + v + "'");
  return size_t(n);
}

std::string describe_bytes(uint64_t n) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  uint64_t whole = n;
  while (u < 4 && whole >= 1024 && whole % 1024 == 0) {
    whole /= 1024;
    u++;
  }
  if (u > 0 || n < 1024) return std::to_string(whole) + " " + units[u];
  char b[32];
  double d = double(n);
  for (u = 0; u < 4 && d >= 1024; u++) d /= 1024;
  std::snprintf(b, sizeof b, "%.1f %s", d, units[u]);
  return b;
}

LineReader::LineReader(const std::string& path) : owned_(true), name_(path), limit_(max_line_bytes()), buf_(size_t(1) << 16) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) fail(path, "is a directory, not a file");
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) fail(path, std::string("cannot open: ") + std::strerror(errno));
}

LineReader::LineReader(std::FILE* f, std::string name)
    : f_(f), name_(std::move(name)), limit_(max_line_bytes()), buf_(size_t(1) << 16) {}

LineReader::~LineReader() {
  if (owned_ && f_) std::fclose(f_);
}

bool LineReader::next(std::string& line) {
  line.clear();
  bool any = false;
  // The line grows one buffered piece at a time and is checked against the limit before each append.
  while (true) {
    if (pos_ == len_) {
      len_ = std::fread(buf_.data(), 1, buf_.size(), f_);
      pos_ = 0;
      if (len_ == 0) break;
    }
    any = true;
    const char* start = buf_.data() + pos_;
    const char* nl = static_cast<const char*>(std::memchr(start, '\n', len_ - pos_));
    const size_t n = nl ? size_t(nl - start) : len_ - pos_;
    if (line.size() + n > limit_) {
      line_number_++;
      line.clear();
      line.shrink_to_fit();
      fail(where(), "line is longer than " + describe_bytes(limit_) +
                        " (the limit for one line; OAR_MAX_LINE_BYTES sets another)");
    }
    line.append(start, n);
    pos_ += n + (nl ? 1 : 0);
    if (nl) break;
  }
  if (std::ferror(f_)) fail(name_, std::string("read error: ") + std::strerror(errno));
  if (!any) return false;
  line_number_++;
  return true;
}

}  // namespace oar
