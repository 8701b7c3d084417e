// Helpers shared by the data-pipeline tests.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_errors.h"
#include "tokenizer/tokenizer.h"

namespace oar::test {

inline std::string data_fixture(const std::string& rel) { return std::string(OAR_FIXTURES_DIR) + "/data/" + rel; }

inline nlohmann::json load_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return nlohmann::json::parse(s.str());
}

// The sum over i of (i + 1) * v[i] modulo 2^64, as the fixture script computes it.
template <class V>
std::string checksum(const V& values) {
  uint64_t h = 0;
  uint64_t i = 0;
  for (auto v : values) h += (++i) * uint64_t(int64_t(v));
  return std::to_string(h);
}

// A fresh directory under the system temp dir, removed with everything in it.
class DataTempDir {
 public:
  DataTempDir() {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("oar_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++))).string();
    std::filesystem::create_directories(path_);
  }
  ~DataTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f.write(text.data(), std::streamsize(text.size()));
}

// The committed SentencePiece test tokenizer (tests/fixtures/tokenizers/spm), loaded once.
inline const Tokenizer& spm() {
  static std::unique_ptr<Tokenizer> t =
      load_sentencepiece(std::string(OAR_FIXTURES_DIR) + "/tokenizers/spm/tokenizer.model");
  return *t;
}

// The call throws oar::Error whose one-line message contains every part.
template <class F>
::testing::AssertionResult throws_error(F&& f, const std::vector<std::string>& parts) {
  return fails_with(std::forward<F>(f), parts);
}

}  // namespace oar::test
