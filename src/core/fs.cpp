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
  std::error_code ec;
  // Absolute and normalised, so that "out/", "." or ".." name the directory itself and the temporary one goes beside it.
  const fs::path out_abs = fs::weakly_canonical(fs::absolute(out_path), ec).lexically_normal();
  std::string out_dir = out_abs.string();
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  auto inside = [](const fs::path& dir, const fs::path& p) {  // p is dir or below it
    return std::mismatch(dir.begin(), dir.end(), p.begin(), p.end()).first == dir.end();
  };
  if (out_abs == out_abs.root_path() || inside(fs::path(out_dir), fs::current_path(ec)))
    fail(out_path, "is or contains the current directory; choose another --output_path");
  if (fs::exists(out_dir)) {
    if (!force) fail(out_path, "already exists (pass --force to replace it)");
    // Replacing a directory that holds an input would destroy it before it is read.
    for (const std::string& in : inputs)
      if (inside(fs::path(out_dir), fs::weakly_canonical(fs::absolute(in), ec)))
        fail(out_path, "holds an input (" + in + "); choose another --output_path");
  }
  const std::string tmp = out_dir + ".tmp-" + std::to_string(::getpid()), old = out_dir + ".old-" + std::to_string(::getpid());
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
  // The old output moves aside before the new one moves in, so one of them exists at every moment.
  const bool replacing = fs::exists(out_dir);
  if (replacing) {
    fs::rename(out_dir, old, ec);
    if (ec) fail(out_path, "cannot move the existing directory aside: " + ec.message());
  }
  fs::rename(tmp, out_dir, ec);
  if (ec) {
    std::error_code e;
    if (replacing) fs::rename(old, out_dir, e);
    fail(out_path, "cannot move the finished directory into place: " + ec.message());
  }
  cleanup.path = replacing ? old : "";
}

}  // namespace oar
