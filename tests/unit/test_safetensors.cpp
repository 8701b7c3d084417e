// safetensors: round trips, sharded directories, and every malformed file refused with the file's name.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/mmap_file.h"
#include "core/model_config.h"
#include "io/safetensors.h"
#include "test_errors.h"

using namespace oar;
namespace fs = std::filesystem;

namespace {

using oar::test::fails_with;

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = (fs::temp_directory_path() /
             ("oar_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++))).string();
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return join_path(path_, name); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Header length (u64 little-endian) + header text + data.
std::string st_file(const std::string& header, const std::string& data, uint64_t length_override = 0) {
  uint64_t n = length_override ? length_override : header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// A tensor whose bytes are a recognisable pattern (the seed makes each one different).
Tensor patterned(const Shape& shape, DType dt, int seed) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); i++) p[i] = uint8_t(i * 37 + size_t(seed) * 11 + 5);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Two F32 tensors "a" [2] at [0, 8) and "b" [2] at [8, 16).
const char* kGoodHeader =
    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
const std::string kGoodData(16, '\x01');

// Writes header + 16 data bytes as bad.safetensors and expects open_file to fail naming it.
::testing::AssertionResult bad_file(const std::string& bytes, const std::vector<std::string>& parts) {
  TempDir d;
  const std::string path = d.file("bad.safetensors");
  write_bytes(path, bytes);
  std::vector<std::string> all = parts;
  all.push_back(path);
  return fails_with([&] { WeightStore::open_file(path); }, all);
}

::testing::AssertionResult bad_header(const std::string& header, const std::vector<std::string>& parts) {
  return bad_file(st_file(header, kGoodData), parts);
}

}  // namespace

TEST(SafetensorsTest, RoundTripEveryDType) {
  TempDir d;
  const std::vector<DType> dtypes = {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I8,  DType::U8,
                                     DType::I16, DType::U16,  DType::I32, DType::U32, DType::I64, DType::U64};
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (size_t i = 0; i < dtypes.size(); i++)
    tensors.emplace_back(std::string("t_") + dtype_name(dtypes[i]), patterned({int64_t(i % 3 + 1), 3, 5}, dtypes[i], int(i)));
  tensors.emplace_back("scalar", patterned({}, DType::F32, 99));
  tensors.emplace_back("empty", patterned({0, 4}, DType::BF16, 98));
  tensors.emplace_back("odd.bytes", patterned({3}, DType::U8, 97));  // 3 bytes: later tensors must stay aligned
  const std::string path = d.file("model.safetensors");
  write_safetensors(path, tensors, {{"format", "pt"}});
  EXPECT_FALSE(file_exists(path + ".tmp." + std::to_string(::getpid())));

  WeightStore s = WeightStore::open_file(path);
  EXPECT_EQ(s.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(s.has(name));
    Tensor r = s.get(name);
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(r.shape(), t.shape());
    EXPECT_TRUE(same_bytes(r, t));
    EXPECT_FALSE(r.storage()->owned());  // a view of the mapped file, not a copy
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.raw()) % dtype_size(r.dtype()), 0u);
    EXPECT_EQ(s.file_of(name), path);
  }

  // The layout the reference reader insists on: header padded to 8, data ranges back to back, metadata kept.
  auto f = MappedFile::open(path);
  SafetensorsHeader h = parse_safetensors(f->data(), f->size(), path);
  EXPECT_EQ(h.data_start % 8, 0u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  uint64_t covered = 0;
  for (const auto& e : h.entries) covered += e.end - e.begin;
  EXPECT_EQ(covered, f->size() - h.data_start);
}

TEST(SafetensorsTest, WriterRefusesBadInput) {
  TempDir d;
  const std::string path = d.file("out.safetensors");
  Tensor t = patterned({2, 3}, DType::F32, 1);
  EXPECT_TRUE(fails_with([&] { write_safetensors(path, {{"x", t}, {"x", t}}); }, {path, "'x'"}));
  EXPECT_TRUE(fails_with([&] { write_safetensors(path, {{"__metadata__", t}}); }, {path}));
  EXPECT_TRUE(fails_with([&] { write_safetensors(path, {{"x", t.transpose(0, 1)}}); }, {path, "contiguous"}));
  EXPECT_TRUE(fails_with([&] { write_safetensors(path, {{"x", Tensor()}}); }, {path, "undefined"}));
  EXPECT_FALSE(file_exists(path));
  EXPECT_TRUE(fails_with([&] { write_safetensors(d.file("no/such/dir/x.safetensors"), {{"x", t}}); },
                         {"no/such/dir/x.safetensors"}));
}

namespace {
// This process's resident memory (/proc/self/statm), in bytes.
size_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * size_t(sysconf(_SC_PAGESIZE));
}
}  // namespace

// A converted tensor's file pages leave the process (the loader's peak is then the converted weights, not them
// plus the file), and the tensor still reads the same afterwards.
TEST(SafetensorsTest, ReleaseLetsATensorsPagesGo) {
  TempDir d;
  const std::string path = d.file("big.safetensors");
  const int64_t n = int64_t(48) << 20;  // 48 MiB of bytes
  Tensor t = Tensor::empty({n}, DType::U8);
  uint8_t* bytes = t.data<uint8_t>();
  for (int64_t i = 0; i < n; i++) bytes[i] = uint8_t(i * 7 + 1);
  write_safetensors(path, {{"w", t}});
  t = Tensor();
  const WeightStore s = WeightStore::open_file(path);
  auto sum = [&] {
    const Tensor v = s.get("w");
    const uint8_t* p = v.data<uint8_t>();
    uint64_t total = 0;
    for (int64_t i = 0; i < n; i++) total += p[i];
    return total;
  };
  const uint64_t before = sum();  // every page touched: resident
  const size_t touched = resident_bytes();
  s.release("w");
  const size_t released = resident_bytes();
  std::printf("  resident %.1f MiB with the tensor's pages, %.1f MiB after release\n", double(touched) / (1 << 20),
              double(released) / (1 << 20));
  EXPECT_LT(released + size_t(40 << 20), touched);
  EXPECT_EQ(sum(), before);
  s.release("no such tensor");  // ignored
}

TEST(SafetensorsTest, OpenDirSingleFile) {
  TempDir d;
  Tensor t = patterned({4, 2}, DType::BF16, 3);
  write_safetensors(d.file("model.safetensors"), {{"w", t}});
  WeightStore s = WeightStore::open_dir(d.path());
  EXPECT_TRUE(same_bytes(s.get("w"), t));
  EXPECT_TRUE(fails_with([&] { s.get("model.norm.weight"); },
                         {d.file("model.safetensors"), "missing tensor 'model.norm.weight'"}));
  EXPECT_TRUE(fails_with([&] { s.file_of("nope"); }, {"missing tensor 'nope'"}));
}

TEST(SafetensorsTest, OpenDirSharded) {
  TempDir d;
  Tensor a = patterned({3, 4}, DType::F32, 1), b = patterned({5}, DType::F16, 2), c = patterned({2, 2}, DType::F32, 3);
  write_safetensors(d.file("model-00001-of-00002.safetensors"), {{"a", a}, {"b", b}});
  write_safetensors(d.file("model-00002-of-00002.safetensors"), {{"c", c}, {"unlisted", c}});
  write_bytes(d.file("model.safetensors.index.json"), R"({"metadata": {"total_size": 72}, "weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
      "c": "model-00002-of-00002.safetensors"}})");
  WeightStore s = WeightStore::open_dir(d.path());
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(same_bytes(s.get("a"), a));
  EXPECT_TRUE(same_bytes(s.get("b"), b));
  EXPECT_TRUE(same_bytes(s.get("c"), c));
  EXPECT_EQ(s.file_of("c"), d.file("model-00002-of-00002.safetensors"));
  EXPECT_FALSE(s.has("unlisted"));  // the index is the list of the model's tensors
  EXPECT_TRUE(fails_with([&] { s.get("zzz"); }, {d.path(), "missing tensor 'zzz'"}));
}

TEST(SafetensorsTest, IndexProblemsNameTheFile) {
  TempDir d;
  write_safetensors(d.file("model-00001-of-00002.safetensors"), {{"a", patterned({2}, DType::F32, 1)}});
  const std::string index = d.file("model.safetensors.index.json");

  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                         "b": "model-00002-of-00002.safetensors"}})");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); },
                         {d.file("model-00002-of-00002.safetensors"), "model.safetensors.index.json", "does not exist"}));

  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                         "ghost": "model-00001-of-00002.safetensors"}})");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); },
                         {d.file("model-00001-of-00002.safetensors"), "'ghost'", "not in this shard"}));

  write_bytes(index, R"({"weight_map": {"a": )");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); }, {index, "invalid JSON"}));

  write_bytes(index, R"({"weight_map": ["a"]})");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); }, {index, "weight_map"}));

  write_bytes(index, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); }, {index, "outside the directory"}));

  write_bytes(index, R"({"weight_map": {"a": 3}})");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); }, {index, "'a'"}));

  // a broken shard is reported under the shard's own name
  write_bytes(d.file("model-00001-of-00002.safetensors"), "short");
  write_bytes(index, R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})");
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); }, {d.file("model-00001-of-00002.safetensors")}));
}

TEST(SafetensorsTest, DirectoryWithoutWeights) {
  TempDir d;
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.path()); }, {d.path(), "model.safetensors"}));
  EXPECT_TRUE(fails_with([&] { WeightStore::open_dir(d.file("absent")); }, {d.file("absent"), "no such directory"}));
}

TEST(SafetensorsTest, GoodHandMadeFileParses) {
  TempDir d;
  const std::string path = d.file("ok.safetensors");
  write_bytes(path, st_file(std::string(kGoodHeader) + "   ", kGoodData));
  WeightStore s = WeightStore::open_file(path);
  EXPECT_EQ(s.get("b").shape(), (Shape{2}));
}

TEST(SafetensorsTest, RefusesTruncatedFiles) {
  std::string good = st_file(kGoodHeader, kGoodData);
  EXPECT_TRUE(bad_file(good.substr(0, good.size() - 4), {"'b'", "out of range"}));
  EXPECT_TRUE(bad_file(good.substr(0, 40), {"past the end"}));
  EXPECT_TRUE(bad_file(good.substr(0, 5), {"too short"}));
  EXPECT_TRUE(bad_file("", {"too short"}));
}

TEST(SafetensorsTest, RefusesHeaderLengthPastEnd) {
  EXPECT_TRUE(bad_file(st_file(kGoodHeader, kGoodData, 1u << 20), {"header length 1048576", "past the end"}));
  EXPECT_TRUE(bad_file(st_file(kGoodHeader, kGoodData, ~uint64_t(0)), {"past the end"}));
}

TEST(SafetensorsTest, RefusesHugeHeaderLength) {
  // A sparse file bigger than the header length it claims: the 100 MB limit applies.
  TempDir d;
  const std::string path = d.file("huge.safetensors");
  write_bytes(path, st_file("{}", "", 100'000'001));
  fs::resize_file(path, 100'000'100);
  EXPECT_TRUE(fails_with([&] { WeightStore::open_file(path); }, {path, "100 MB"}));
}

TEST(SafetensorsTest, RefusesBadJson) {
  EXPECT_TRUE(bad_header("{not json}", {"header: invalid JSON"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", {"header: invalid JSON"}));
  EXPECT_TRUE(bad_header(R"([1,2])", {"must be a JSON object"}));
  EXPECT_TRUE(bad_header(R"({"a":[1]})", {"'a'", "expected an object"}));
  EXPECT_TRUE(bad_header(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", {"'a'", "dtype"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", {"'a'", "shape"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2]}})", {"'a'", "data_offsets"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", {"'a'", "data_offsets"}));
  EXPECT_TRUE(bad_header(R"({"__metadata__":{"format":1}})", {"__metadata__", "'format'"}));
  EXPECT_TRUE(bad_header(R"({"__metadata__":[]})", {"__metadata__"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                         {"'a'", "twice"}));
  // control characters in names are escaped: messages stay on one line
  EXPECT_TRUE(bad_header(R"({"x\ny":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", {"'x\\ny'"}));
}

TEST(SafetensorsTest, RefusesOffsetsOutOfRange) {
  EXPECT_TRUE(bad_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
      {"'b'", "out of range", "16 bytes"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", {"'a'", "out of range"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", {"'a'", "data_offsets"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})",
                         {"'a'", "data_offsets"}));
}

TEST(SafetensorsTest, RefusesOverlappingRanges) {
  EXPECT_TRUE(bad_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      {"'a'", "'b'", "overlap"}));
  EXPECT_TRUE(bad_header(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
      {"overlap"}));
  // empty tensors occupy no bytes, and gaps between tensors are allowed
  TempDir d;
  write_bytes(d.file("ok.safetensors"),
              st_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
                      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                      kGoodData));
  EXPECT_EQ(WeightStore::open_file(d.file("ok.safetensors")).names().size(), 3u);
}

TEST(SafetensorsTest, RefusesShapeSizeDisagreement) {
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                         {"'a'", "[3]", "12 bytes", "span 8"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", {"'a'", "4 bytes"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", {"'a'", "non-negative"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", {"'a'", "non-negative"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", {"'a'", "shape"}));
  // products that overflow 64 bits, or int64, are caught
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                         {"'a'", "too many"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})",
                         {"'a'", "too many bytes"}));
  EXPECT_TRUE(bad_header(R"({"a":{"dtype":"F32","shape":[0,9223372036854775807,4],"data_offsets":[0,0]}})",
                         {"'a'", "too many"}));
}

TEST(SafetensorsTest, RefusesUnknownDType) {
  for (const char* dt : {"F8_E4M3", "F8_E5M2", "BOOL", "f32", "Q4_0"})
    EXPECT_TRUE(bad_header(std::string(R"({"a":{"dtype":")") + dt + R"(","shape":[8],"data_offsets":[0,8]}})",
                           {"'a'", "unsupported dtype '" + std::string(dt) + "'"}));
}

TEST(SafetensorsTest, SharedStories260kHf) {
  const std::string dir = std::string(OAR_SHARED_DATA_DIR) + "/stories260K_hf";
  if (!dir_exists(dir)) GTEST_SKIP() << "shared data not found at " << dir << " (../shared/data is optional)";
  WeightStore s = WeightStore::open_dir(dir);
  EXPECT_EQ(s.names().size(), 1u + 5 * 9 + 1);  // embedding, 9 per layer, final norm; tied: no lm_head
  EXPECT_EQ(s.get("model.embed_tokens.weight").shape(), (Shape{512, 64}));
  EXPECT_EQ(s.get("model.layers.4.self_attn.k_proj.weight").shape(), (Shape{32, 64}));
  EXPECT_EQ(s.get("model.layers.0.mlp.down_proj.weight").shape(), (Shape{64, 172}));
  EXPECT_EQ(s.get("model.norm.weight").dtype(), DType::F32);
  EXPECT_FALSE(s.has("lm_head.weight"));
}

// The transformers-written fixtures (tests/fixtures/models): every config parses, and the weights present are
// exactly the ones the config implies, with the shapes it implies (biases included: attn_bias has all four).
TEST(SafetensorsTest, FixtureModelsMatchTheirConfigs) {
  const std::string root = std::string(OAR_FIXTURES_DIR) + "/models";
  if (!dir_exists(root)) GTEST_SKIP() << "no model fixtures at " << root;
  int models = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory()) continue;
    const std::string dir = entry.path().string();
    SCOPED_TRACE(dir);
    LlamaConfig c = load_hf_config(join_path(dir, "config.json"));
    WeightStore s = WeightStore::open_dir(dir);
    std::map<std::string, Shape> want = {{"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}},
                                         {"model.norm.weight", {c.hidden_size}}};
    if (!c.tie_word_embeddings) want["lm_head.weight"] = {c.vocab_size, c.hidden_size};
    for (int64_t i = 0; i < c.num_hidden_layers; i++) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      want[p + "input_layernorm.weight"] = {c.hidden_size};
      want[p + "post_attention_layernorm.weight"] = {c.hidden_size};
      want[p + "self_attn.q_proj.weight"] = {c.q_dim(), c.hidden_size};
      want[p + "self_attn.k_proj.weight"] = {c.kv_dim(), c.hidden_size};
      want[p + "self_attn.v_proj.weight"] = {c.kv_dim(), c.hidden_size};
      want[p + "self_attn.o_proj.weight"] = {c.hidden_size, c.q_dim()};
      want[p + "mlp.gate_proj.weight"] = {c.intermediate_size, c.hidden_size};
      want[p + "mlp.up_proj.weight"] = {c.intermediate_size, c.hidden_size};
      want[p + "mlp.down_proj.weight"] = {c.hidden_size, c.intermediate_size};
      if (c.attention_bias) {
        want[p + "self_attn.q_proj.bias"] = {c.q_dim()};
        want[p + "self_attn.k_proj.bias"] = {c.kv_dim()};
        want[p + "self_attn.v_proj.bias"] = {c.kv_dim()};
      }
      if (c.o_proj_bias) want[p + "self_attn.o_proj.bias"] = {c.hidden_size};
    }
    std::vector<std::string> want_names;
    for (const auto& [name, shape] : want) {
      want_names.push_back(name);
      if (s.has(name)) {
        EXPECT_EQ(s.get(name).shape(), shape) << name;
      }
    }
    EXPECT_EQ(s.names(), want_names);
    int64_t params = 0;
    for (const auto& name : s.names()) params += s.get(name).numel();
    EXPECT_EQ(params, c.num_parameters());
    models++;
  }
  EXPECT_GT(models, 0);
}
