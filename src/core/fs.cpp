#include "core/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <algorithm>

#include "core/error.h"

namespace oar {

std::string read_file(const std::string& path) {
  // (an ifstream opens a directory and then reads nothing: say what it is instead)
  if (dir_exists(path)) fail(path, "is a directory, not a file");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, std::string("cannot open: ") + std::strerror(errno));
  std::ostringstream s;
  s << f.rdbuf();
  if (f.bad()) fail(path, "read error");
  return s.str();
}

void write_file_atomic(const std::string& path, std::string_view contents) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, std::string("cannot write: ") + std::strerror(errno));
  const char* p = contents.data();
  size_t left = contents.size();
  while (left > 0) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path, std::string("write failed: ") + std::strerror(e));
    }
    p += w;
    left -= size_t(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(path, "write failed while flushing");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail(path, std::string("cannot rename into place: ") + std::strerror(e));
  }
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

void write_directory_atomically(const std::string& out_path, bool force, const std::vector<std::string>& inputs,
                                const std::function<void(const std::string& tmp_dir)>& fill) {
  namespace fs = std::filesystem;
  if (out_path.empty()) throw Error("--output_path is required");
  // "out/" and "out" alike: the temporary directory goes beside it, not inside.
  std::string out_dir = fs::path(out_path).lexically_normal().string();
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  std::error_code ec;
  if (fs::exists(out_dir)) {
    if (!force) fail(out_dir, "already exists (pass --force to replace it)");
    // Replacing a directory that holds an input would destroy it before it is read.
    const fs::path out_abs = fs::weakly_canonical(out_dir, ec);
    for (const std::string& in : inputs) {
      const fs::path in_abs = fs::weakly_canonical(in, ec);
      auto [o, i] = std::mismatch(out_abs.begin(), out_abs.end(), in_abs.begin(), in_abs.end());
      if (o == out_abs.end()) fail(out_dir, "holds an input (" + in + "); choose another --output_path");
    }
  }
  const std::string tmp = out_dir + ".tmp-" + std::to_string(::getpid());
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code e;
      if (!path.empty()) fs::remove_all(path, e);
    }
  } cleanup{tmp};
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec)) fail(tmp, "cannot create directory: " + ec.message());
  fill(tmp);
  if (fs::exists(out_dir)) fs::remove_all(out_dir, ec);
  fs::rename(tmp, out_dir, ec);
  if (ec) fail(out_dir, "cannot move the finished directory into place: " + ec.message());
  cleanup.path.clear();
}

}  // namespace oar
