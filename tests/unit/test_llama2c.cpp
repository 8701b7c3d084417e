// llama2.c checkpoints: a synthetic file whose every float is its own index (so each view's offset is checked),
// header and size checks, and the real stories260K checked against its Hugging Face conversion.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "io/llama2c.h"
#include "io/safetensors.h"
#include "test_errors.h"

using namespace oar;
namespace fs = std::filesystem;

namespace {

using oar::test::fails_with;

class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = (fs::temp_directory_path() /
             ("oar_l2c_" + std::to_string(::getpid()) + "_" + std::to_string(counter++))).string();
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return join_path(path_, name); }

 private:
  std::string path_;
};

struct Dims {
  int32_t dim = 8, hidden = 12, layers = 2, heads = 2, kv_heads = 1, vocab = 10, seq_len = 4;
};

// Number of floats the weights take, written out independently of the loader (llama2.c's run.c order).
int64_t float_count(const Dims& d) {
  const int64_t vocab = d.vocab < 0 ? -int64_t(d.vocab) : d.vocab;
  const int64_t head = d.dim / d.heads, kv = d.dim / d.heads * d.kv_heads, L = d.layers;
  int64_t n = vocab * d.dim + L * d.dim + L * d.dim * d.dim + 2 * L * kv * d.dim + L * d.dim * d.dim + L * d.dim +
              3 * L * d.hidden * d.dim + d.dim + d.seq_len * head;
  return d.vocab < 0 ? n + vocab * d.dim : n;
}

// Header + float i at float position i (exact in f32 for these small files).
std::string checkpoint_bytes(const Dims& d) {
  const int32_t header[7] = {d.dim, d.hidden, d.layers, d.heads, d.kv_heads, d.vocab, d.seq_len};
  std::string out(reinterpret_cast<const char*>(header), sizeof header);
  const int64_t n = float_count(d);
  for (int64_t i = 0; i < n; i++) {
    float f = float(i);
    out.append(reinterpret_cast<const char*>(&f), 4);
  }
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// Checks that `name` has `shape`, starts at float `first` of the weights and is contiguous from there.
void expect_tensor(const WeightSource& w, const std::string& name, const Shape& shape, int64_t first) {
  SCOPED_TRACE(name);
  ASSERT_TRUE(w.has(name));
  Tensor t = w.get(name);
  EXPECT_EQ(t.dtype(), DType::F32);
  EXPECT_EQ(t.shape(), shape);
  EXPECT_FALSE(t.storage()->owned());
  EXPECT_EQ(t.item_f32(0), float(first));
  EXPECT_EQ(t.item_f32(t.numel() - 1), float(first + t.numel() - 1));
}

}  // namespace

TEST(Llama2cTest, SyntheticSharedClassifier) {
  TempDir dir;
  const std::string path = dir.file("tiny.bin");
  Dims d;
  write_bytes(path, checkpoint_bytes(d));
  ASSERT_TRUE(looks_like_llama2c_checkpoint(path));
  Llama2cCheckpoint ck = load_llama2c_checkpoint(path);
  const LlamaConfig& c = ck.config;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 8);
  EXPECT_EQ(c.intermediate_size, 12);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 2);
  EXPECT_EQ(c.num_key_value_heads, 1);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.vocab_size, 10);
  EXPECT_EQ(c.max_position_embeddings, 4);
  EXPECT_EQ(c.rope_layout, RopeLayout::Interleaved);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(ck.weights->where(), path);

  // Offsets (in floats) in the file's order: emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final.
  const int64_t D = 8, H = 12, KV = 4, L = 2;
  int64_t at = 0;
  expect_tensor(*ck.weights, "model.embed_tokens.weight", {10, D}, at);
  at += 10 * D;
  auto layers = [&](const std::string& suffix, const Shape& shape, int64_t per) {
    for (int64_t i = 0; i < L; i++) expect_tensor(*ck.weights, "model.layers." + std::to_string(i) + "." + suffix, shape, at + i * per);
    at += L * per;
  };
  layers("input_layernorm.weight", {D}, D);
  layers("self_attn.q_proj.weight", {D, D}, D * D);
  layers("self_attn.k_proj.weight", {KV, D}, KV * D);
  layers("self_attn.v_proj.weight", {KV, D}, KV * D);
  layers("self_attn.o_proj.weight", {D, D}, D * D);
  layers("post_attention_layernorm.weight", {D}, D);
  layers("mlp.gate_proj.weight", {H, D}, H * D);
  layers("mlp.down_proj.weight", {D, H}, D * H);
  layers("mlp.up_proj.weight", {H, D}, H * D);
  expect_tensor(*ck.weights, "model.norm.weight", {D}, at);
  EXPECT_FALSE(ck.weights->has("lm_head.weight"));
  EXPECT_TRUE(fails_with([&] { ck.weights->get("lm_head.weight"); }, {path, "missing tensor 'lm_head.weight'"}));
}

TEST(Llama2cTest, SyntheticUnsharedClassifier) {
  TempDir dir;
  const std::string path = dir.file("untied.bin");
  Dims d;
  d.vocab = -10;  // negative: a separate classifier follows freq_cis
  write_bytes(path, checkpoint_bytes(d));
  Llama2cCheckpoint ck = load_llama2c_checkpoint(path);
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.config.vocab_size, 10);
  expect_tensor(*ck.weights, "lm_head.weight", {10, 8}, float_count(d) - 10 * 8);
}

TEST(Llama2cTest, SizeMustMatchHeader) {
  TempDir dir;
  const std::string path = dir.file("bad.bin");
  const std::string good = checkpoint_bytes(Dims{});
  write_bytes(path, good.substr(0, good.size() - 4));
  EXPECT_FALSE(looks_like_llama2c_checkpoint(path));
  EXPECT_TRUE(fails_with([&] { load_llama2c_checkpoint(path); }, {path, "does not match", "dim 8"}));
  write_bytes(path, good + "xxxx");
  EXPECT_FALSE(looks_like_llama2c_checkpoint(path));
  EXPECT_TRUE(fails_with([&] { load_llama2c_checkpoint(path); }, {path, "does not match"}));
  // a shared-classifier file whose header claims an unshared one is short by a classifier
  Dims flipped;
  flipped.vocab = -10;
  std::string lie = checkpoint_bytes(Dims{});
  std::memcpy(lie.data() + 5 * 4, &flipped.vocab, 4);
  write_bytes(path, lie);
  EXPECT_TRUE(fails_with([&] { load_llama2c_checkpoint(path); }, {path, "does not match"}));
  write_bytes(path, good.substr(0, 20));
  EXPECT_TRUE(fails_with([&] { load_llama2c_checkpoint(path); }, {path, "too short"}));
  EXPECT_TRUE(fails_with([&] { load_llama2c_checkpoint(dir.file("absent.bin")); }, {dir.file("absent.bin")}));
}

TEST(Llama2cTest, ImpossibleHeaders) {
  TempDir dir;
  const std::string path = dir.file("bad.bin");
  auto expect_bad = [&](Dims d, const std::string& why) {
    // the header alone, padded so that the file is not simply "too short"
    const int32_t header[7] = {d.dim, d.hidden, d.layers, d.heads, d.kv_heads, d.vocab, d.seq_len};
    write_bytes(path, std::string(reinterpret_cast<const char*>(header), sizeof header) + std::string(4096, '\0'));
    EXPECT_FALSE(looks_like_llama2c_checkpoint(path)) << why;
    EXPECT_TRUE(fails_with([&] { load_llama2c_checkpoint(path); }, {path, why}));
  };
  Dims d;
  d.heads = 3;
  expect_bad(d, "n_heads does not divide dim");
  d = Dims{};
  d.kv_heads = 3;  // 2 heads
  expect_bad(d, "n_kv_heads does not divide n_heads");
  d = Dims{};
  d.layers = 0;
  expect_bad(d, "must be positive");
  d = Dims{};
  d.dim = -8;
  expect_bad(d, "must be positive");
  d = Dims{};
  d.vocab = 0;
  expect_bad(d, "vocab_size");
  d = Dims{};
  d.heads = 8;  // head size 1: RoPE needs pairs
  d.kv_heads = 8;
  expect_bad(d, "even");
  d = Dims{};
  d.dim = 1 << 30;  // products past 64 bits are caught, not wrapped
  d.hidden = 1 << 30;
  d.layers = 1 << 30;
  d.heads = 1 << 10;
  d.kv_heads = 1 << 10;
  expect_bad(d, "overflow");
}

TEST(Llama2cTest, OtherFilesAreNotLlama2c) {
  TempDir dir;
  write_bytes(dir.file("a.json"), R"({"hello": "world", "padding": "..........................."})");
  EXPECT_FALSE(looks_like_llama2c_checkpoint(dir.file("a.json")));
  EXPECT_FALSE(looks_like_llama2c_checkpoint(dir.file("missing.bin")));
  EXPECT_FALSE(looks_like_llama2c_checkpoint(dir.file("")));
  Tensor t = Tensor::empty({4, 4}, DType::F32);
  write_safetensors(dir.file("m.safetensors"), {{"w", t}});
  EXPECT_FALSE(looks_like_llama2c_checkpoint(dir.file("m.safetensors")));
}

TEST(Llama2cTest, Stories260k) {
  const std::string data = OAR_SHARED_DATA_DIR;
  const std::string path = data + "/stories260K/stories260K.bin";
  if (!file_exists(path)) GTEST_SKIP() << "shared data not found at " << path << " (../shared/data is optional)";
  ASSERT_TRUE(looks_like_llama2c_checkpoint(path));
  Llama2cCheckpoint ck = load_llama2c_checkpoint(path);
  const LlamaConfig& c = ck.config;
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_layout, RopeLayout::Interleaved);
  EXPECT_EQ(ck.weights->get("model.layers.4.self_attn.k_proj.weight").shape(), (Shape{32, 64}));
  EXPECT_EQ(ck.weights->get("model.layers.0.mlp.down_proj.weight").shape(), (Shape{64, 172}));
  EXPECT_FALSE(ck.weights->has("lm_head.weight"));

  // The Hugging Face conversion of the same weights (shared/stories260K_hf) agrees tensor by tensor: identical
  // except q/k, whose rows were permuted from interleaved pairs to rotate-half order: HF row h*hd + p*hd/2 + i
  // = llama2.c row h*hd + 2i + p. This pins down both the names and the [out, in] layout.
  const std::string hf_dir = data + "/stories260K_hf";
  if (!dir_exists(hf_dir)) GTEST_SKIP() << "shared data not found at " << hf_dir;
  WeightStore hf = WeightStore::open_dir(hf_dir);
  for (const std::string& name : hf.names()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(ck.weights->has(name));
    Tensor a = ck.weights->get(name), b = hf.get(name);
    ASSERT_EQ(a.shape(), b.shape());
    const bool q = name.find("q_proj") != std::string::npos, k = name.find("k_proj") != std::string::npos;
    if (!q && !k) {
      EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
      continue;
    }
    const int64_t hd = 8, cols = a.dim(1), rows = a.dim(0);
    int64_t mismatches = 0;
    for (int64_t h = 0; h < rows / hd; h++)
      for (int64_t p = 0; p < 2; p++)
        for (int64_t i = 0; i < hd / 2; i++) {
          const float* hf_row = b.data<float>() + (h * hd + p * hd / 2 + i) * cols;
          const float* l2c_row = a.data<float>() + (h * hd + 2 * i + p) * cols;
          mismatches += std::memcmp(hf_row, l2c_row, size_t(cols) * 4) != 0;
        }
    EXPECT_EQ(mismatches, 0);
  }
}
