// Helpers shared by the tokenizer tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace oar::test {

inline std::string tok_fixture(const std::string& rel) { return std::string(OAR_FIXTURES_DIR) + "/tokenizers/" + rel; }
inline std::string shared_data(const std::string& rel) { return std::string(OAR_SHARED_DATA_DIR) + "/" + rel; }

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
inline nlohmann::json load_json(const std::string& path) { return nlohmann::json::parse(slurp(path)); }

// A strict UTF-8 check written independently of the library's own (Unicode Table 3-7).
inline bool valid_utf8(const std::string& s) {
  size_t i = 0, n = s.size();
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  while (i < n) {
    unsigned char c = at(i);
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) { len = 4; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }
    else return false;
    if (i + len > n) return false;
    if (at(i + 1) < lo || at(i + 1) > hi) return false;
    for (size_t k = 2; k < len; ++k)
      if (at(i + k) < 0x80 || at(i + k) > 0xBF) return false;
    i += len;
  }
  return true;
}

// Streams ids through a StreamDecoder, checking every chunk is valid UTF-8; returns the concatenation.
inline std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids, size_t* nonempty = nullptr) {
  StreamDecoder sd(tok);
  std::string all;
  size_t count = 0;
  for (int32_t id : ids) {
    std::string chunk = sd.push(id);
    EXPECT_TRUE(valid_utf8(chunk)) << "invalid UTF-8 chunk after id " << id;
    count += !chunk.empty();
    all += chunk;
  }
  std::string tail = sd.flush();
  EXPECT_TRUE(valid_utf8(tail));
  all += tail;
  if (nonempty) *nonempty = count + !tail.empty();
  return all;
}

inline std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

// A scratch directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    auto base = std::filesystem::temp_directory_path();
    for (int i = 0;; ++i) {
      path_ = base / ("oar_tok_test_" + std::to_string(::getpid()) + "_" + std::to_string(i));
      if (std::filesystem::create_directory(path_)) break;
    }
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string write(const std::string& name, const std::string& data) const {
    std::ofstream f(file(name), std::ios::binary);
    f << data;
    return file(name);
  }

 private:
  std::filesystem::path path_;
};

}  // namespace oar::test
