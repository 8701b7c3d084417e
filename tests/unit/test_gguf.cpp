// GGUF in: the header parser, ggml's dequantizations, and whole models, against files written by PyPI's gguf
// package (tests/fixtures/gguf, made by tests/reference/make_gguf_fixtures.py): the dequantized values equal
// gguf-py's own, and the logits equal tests/reference/numpy_llama.py's forward over gguf-py's dequantization.
// Hostile headers (lying counts, truncations, bad types and ranges) are each one clear error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/mmap_file.h"
#include "io/gguf.h"
#include "io/model_source.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "test_errors.h"
#include "test_model_util.h"
#include "tokenizer/tokenizer.h"

using namespace oar;

namespace {

std::string fixture(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/gguf/" + name; }

// A GGUF image built field by field, for the hostile-input tests.
struct Bytes {
  std::string b;
  template <typename T>
  Bytes& put(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
    return *this;
  }
  // Magic, version 3, the counts.
  static Bytes header(uint64_t tensors, uint64_t kvs) {
    Bytes x;
    x.b = "GGUF";
    return x.put<uint32_t>(3).put<uint64_t>(tensors).put<uint64_t>(kvs);
  }
  // One tensor info: name, dims (innermost first), type, offset.
  Bytes& tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(uint32_t(dims.size()));
    for (uint64_t d : dims) put<uint64_t>(d);
    return put<uint32_t>(type).put<uint64_t>(offset);
  }
  Bytes& pad_to(size_t align) {
    b.resize((b.size() + align - 1) / align * align, '\0');
    return *this;
  }
  GgufHeader parse() const { return parse_gguf(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "bad.gguf"); }
};

// A minimal llama GGUF file at `path`: the config keys of a 1-layer model (hidden 64, 4 heads, ffn 128), the
// `extra` key-value pairs written by the caller, a [8, 64] F32 token_embd, and `more` tensors ([64] F32 each).
std::string llama_gguf(const std::string& path, int extra_count, const std::function<void(Bytes&)>& extra,
                       const std::vector<std::string>& more = {}) {
  auto kv_u32 = [](Bytes& x, const std::string& k, uint32_t v) { x.str(k).put<uint32_t>(4).put<uint32_t>(v); };
  Bytes x = Bytes::header(1 + more.size(), 7 + uint64_t(extra_count));
  x.str("general.architecture").put<uint32_t>(8).str("llama");
  kv_u32(x, "llama.embedding_length", 64);
  kv_u32(x, "llama.block_count", 1);
  kv_u32(x, "llama.feed_forward_length", 128);
  kv_u32(x, "llama.attention.head_count", 4);
  kv_u32(x, "llama.context_length", 128);
  x.str("llama.attention.layer_norm_rms_epsilon").put<uint32_t>(6).put<float>(1e-5f);
  extra(x);
  x.tensor("token_embd.weight", {64, 8}, 0, 0);
  for (size_t k = 0; k < more.size(); k++) x.tensor(more[k], {64}, 0, 2048 + 256 * k);
  x.pad_to(32);
  x.b.append(2048 + 256 * more.size(), '\0');
  write_file_atomic(path, x.b);
  return path;
}

}  // namespace

TEST(Gguf, RopeScalingAndTensorsAsLlamaCppReadsThem) {
  using test::fails_with;
  const std::string dir = ::testing::TempDir();
  auto f32 = [](const std::string& k, float v) { return [=](Bytes& x) { x.str(k).put<uint32_t>(6).put<float>(v); }; };
  // No type: linear, with the factor from either key; a factor of 1 is no scaling.
  LlamaConfig c = open_gguf_model(llama_gguf(dir + "/a.gguf", 1, f32("llama.rope.scaling.factor", 4))).config;
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(open_gguf_model(llama_gguf(dir + "/b.gguf", 1, f32("llama.rope.scale_linear", 2))).config.rope_scaling.factor, 2.0);
  EXPECT_EQ(open_gguf_model(llama_gguf(dir + "/c.gguf", 1, f32("llama.rope.scaling.factor", 1))).config.rope_scaling.type, "");
  EXPECT_EQ(open_gguf_model(llama_gguf(dir + "/d.gguf", 0, [](Bytes&) {})).config.rope_scaling.type, "");
  auto yarn = [](Bytes& x) {
    x.str("llama.rope.scaling.type").put<uint32_t>(8).str("yarn");
    x.str("llama.rope.scaling.factor").put<uint32_t>(6).put<float>(4);
  };
  EXPECT_TRUE(fails_with([&] { open_gguf_model(llama_gguf(dir + "/e.gguf", 2, yarn)); }, {"e.gguf: ", "'yarn' is not supported"}));
  // Tensors that would go unused are refused by name.
  auto none = [](Bytes&) {};
  EXPECT_TRUE(fails_with([&] { open_gguf_model(llama_gguf(dir + "/f.gguf", 0, none, {"blk.1.attn_norm.weight"})); },
                         {"f.gguf: ", "layer 1", "block_count is 1"}));
  EXPECT_TRUE(fails_with([&] { open_gguf_model(llama_gguf(dir + "/g.gguf", 0, none, {"blk.0.ffn_up.bias"})); },
                         {"g.gguf: ", "mlp_bias"}));
  EXPECT_TRUE(fails_with([&] { open_gguf_model(llama_gguf(dir + "/h.gguf", 0, none, {"blk.0.attn_rot.weight"})); },
                         {"h.gguf: ", "'blk.0.attn_rot.weight' is not part of a Llama model"}));
  EXPECT_TRUE(fails_with([&] { open_gguf_model(llama_gguf(dir + "/i.gguf", 0, none, {"rope_freqs.weight"})); },
                         {"i.gguf: ", "rope_freqs"}));
  // Biases are read from any layer's tensors: q/k/v biases without an o_proj bias are not Llama's.
  EXPECT_TRUE(open_gguf_model(llama_gguf(dir + "/j.gguf", 0, none, {"blk.0.attn_q.bias", "blk.0.attn_output.bias"}))
                  .config.o_proj_bias);
  EXPECT_TRUE(fails_with([&] { open_gguf_model(llama_gguf(dir + "/k.gguf", 0, none, {"blk.0.attn_q.bias"})); }, {"k.gguf: "}));
}

TEST(Gguf, DequantizationEqualsGgufPy) {
  GgufFile f = GgufFile::open(fixture("quants.gguf"));
  int checked = 0;
  for (const GgufTensorInfo& t : f.header.tensors) {
    if (t.name.find(".expected") != std::string::npos) continue;
    const auto want_it = std::find_if(f.header.tensors.begin(), f.header.tensors.end(),
                                      [&](const GgufTensorInfo& e) { return e.name == t.name + ".expected"; });
    ASSERT_NE(want_it, f.header.tensors.end()) << t.name;
    ASSERT_EQ(t.shape, (Shape{4, 512})) << t.name;
    Tensor want = f.tensor(*want_it);
    ASSERT_EQ(want.shape(), t.shape) << t.name;
    std::vector<float> got(2048);
    gguf_dequantize(t.type, f.map->data() + f.header.data_start + t.offset, 2048, got.data());
    int64_t differ = 0;
    for (int64_t j = 0; j < 2048; j++) differ += got[size_t(j)] != want.data<float>()[j];
    EXPECT_EQ(differ, 0) << t.name << ": values that differ from gguf-py's dequantization";
    ++checked;
  }
  EXPECT_EQ(checked, 9);  // F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, Q4_1, Q5_0, Q5_1
}

TEST(Gguf, LogitsEqualNumpyForwardOverGgufDequantization) {
  auto index = nlohmann::json::parse(read_file(fixture("expected.json")));
  WeightStore expected = WeightStore::open_file(fixture("expected.safetensors"));
  ASSERT_EQ(index["files"].size(), 6u);
  for (auto& [file, prompts] : index["files"].items()) {
    auto m = LlamaModel::load(fixture(file), DType::F32);
    EXPECT_EQ(m->config().rope_layout, RopeLayout::Interleaved);
    // Q4_0 is oar's int4 in groups of 32 as stored (no float in between: the logits still match to 1e-4);
    // other types are dequantized to the compute dtype.
    const bool q4_0 = file.find("q4_0") != std::string::npos;
    EXPECT_EQ(m->projection_format(), q4_0 ? WeightFormat::Int4 : WeightFormat::F32) << file;
    if (q4_0) EXPECT_EQ(m->projection_spec().group_size, 32);
    for (auto& p : prompts) {
      const std::vector<int32_t> ids = p["ids"].get<std::vector<int32_t>>();
      Tensor want = expected.get(p["logits_key"].get<std::string>());
      Tensor got = test::prompt_logits(*m, ids);
      ASSERT_EQ(got.shape(), want.shape()) << file;
      EXPECT_LE(test::rel_err(got, want), 1e-4) << file << ", prompt of " << ids.size() << " tokens";
    }
  }
}

TEST(Gguf, ConfigAndEmbeddedVocabulary) {
  GgufModel g = open_gguf_model(fixture("gqa_f16.gguf"));
  EXPECT_EQ(g.config.num_attention_heads, 8);
  EXPECT_EQ(g.config.num_key_value_heads, 2);
  EXPECT_EQ(g.config.intermediate_size, 144);
  EXPECT_EQ(g.config.vocab_size, 256);
  EXPECT_EQ(g.config.torch_dtype, "float16");
  EXPECT_FALSE(g.config.tie_word_embeddings);
  EXPECT_TRUE(open_gguf_model(fixture("tied_f32.gguf")).config.tie_word_embeddings);
  EXPECT_EQ(open_gguf_model(fixture("tied_f32.gguf")).config.torch_dtype, "float32");

  auto tok = make_spm_vocab_tokenizer(gguf_spm_vocab(GgufFile::open(fixture("mha_q8_0.gguf")).header, "mha"), "mha");
  EXPECT_EQ(tok->vocab_size(), 256);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
  // Only byte pieces: " hi" falls back to bytes 0x20 0x68 0x69 (ids byte + 3), and decodes back.
  EXPECT_EQ(tok->encode("hi", true), (std::vector<int32_t>{1, 0x20 + 3, 0x68 + 3, 0x69 + 3}));
  EXPECT_EQ(tok->decode(tok->encode("hi </s>", false)), "hi ");
  EXPECT_TRUE(tok->is_special(2));
}

TEST(Gguf, EveryTruncationIsOneErrorNamingTheFile) {
  const std::string whole = read_file(fixture("tied_f32.gguf"));
  const GgufHeader h = parse_gguf(reinterpret_cast<const uint8_t*>(whole.data()), whole.size(), "x");
  size_t data_end = h.data_start;
  for (const GgufTensorInfo& t : h.tensors) data_end = std::max<size_t>(data_end, h.data_start + t.offset + t.bytes);
  ASSERT_EQ(data_end, whole.size());
  // Every cut inside the header and metadata, and a sample of cuts inside the data.
  for (size_t cut = 0; cut < whole.size(); cut += cut < h.data_start + 64 ? 1 : 997) {
    EXPECT_TRUE(test::fails_with([&] { parse_gguf(reinterpret_cast<const uint8_t*>(whole.data()), cut, "cut.gguf"); },
                                 {"cut.gguf: "}))
        << "cut at " << cut;
  }
}

TEST(Gguf, LyingHeadersAreRefused) {
  using test::fails_with;
  EXPECT_TRUE(fails_with([] { Bytes x; x.b = "GGML____"; x.parse(); }, {"bad.gguf: not a GGUF file"}));
  EXPECT_TRUE(fails_with([] { Bytes x; x.b = "GGUF"; x.put<uint32_t>(1).put<uint64_t>(0).put<uint64_t>(0).parse(); },
                         {"GGUF version 1 is not supported"}));
  EXPECT_TRUE(fails_with([] { Bytes::header(0, uint64_t(1) << 60).parse(); }, {"metadata entries cannot fit"}));
  EXPECT_TRUE(fails_with([] { Bytes::header(uint64_t(1) << 60, 0).parse(); }, {"tensors cannot fit"}));
  // An array whose count the rest of the file cannot hold, before anything is allocated for it.
  EXPECT_TRUE(fails_with([] { Bytes::header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1ull << 40).parse(); },
                         {"longer than the rest of the file"}));
  EXPECT_TRUE(fails_with([] { Bytes::header(0, 1).str("k").put<uint32_t>(13).parse(); }, {"unknown metadata value type 13"}));
  EXPECT_TRUE(fails_with([] { Bytes::header(0, 2).str("k").put<uint32_t>(4).put<uint32_t>(1).str("k").put<uint32_t>(4).put<uint32_t>(1).parse(); },
                         {"'k' appears twice"}));
  EXPECT_TRUE(fails_with([] { Bytes::header(0, 1).str("general.alignment").put<uint32_t>(4).put<uint32_t>(24).parse(); },
                         {"general.alignment must be a power of two"}));
  // Arrays nested past the limit.
  EXPECT_TRUE(fails_with([] {
                Bytes x = Bytes::header(0, 1).str("k").put<uint32_t>(9);  // an array value: item type, count, items
                for (int d = 0; d < 12; d++) x.put<uint32_t>(9).put<uint64_t>(1);
                x.parse();
              },
                         {"nested deeper"}));
}

TEST(Gguf, BadTensorsAreRefusedByName) {
  using test::fails_with;
  auto one = [](std::vector<uint64_t> dims, uint32_t type, uint64_t offset, size_t data_bytes) {
    Bytes x = Bytes::header(1, 0).tensor("w", std::move(dims), type, offset).pad_to(32);
    x.b.append(data_bytes, '\0');
    return x;
  };
  EXPECT_NO_THROW(one({32, 2}, 8, 0, 68).parse());  // two Q8_0 blocks
  EXPECT_TRUE(fails_with([&] { one({32, 2}, 13, 0, 1000).parse(); }, {"tensor 'w' has type Q5_K", "does not read"}));
  EXPECT_TRUE(fails_with([&] { one({33, 2}, 8, 0, 1000).parse(); }, {"rows of 33 values", "32-value blocks"}));
  EXPECT_TRUE(fails_with([&] { one({32, 0}, 0, 0, 1000).parse(); }, {"impossible dimension 0"}));
  EXPECT_TRUE(fails_with([&] { one({1ull << 41}, 0, 0, 8).parse(); }, {"impossible dimension"}));
  EXPECT_TRUE(fails_with([&] { one({32, 2}, 0, 0, 100).parse(); }, {"runs past the end of the file"}));
  EXPECT_TRUE(fails_with([&] { one({32, 2}, 0, 16, 1000).parse(); }, {"not a multiple of the alignment 32"}));
  EXPECT_TRUE(fails_with([&] { Bytes::header(1, 0).tensor("w", {8, 8, 8, 8, 8}, 0, 0).parse(); }, {"5 dimensions"}));
  EXPECT_TRUE(fails_with(
      [&] {
        Bytes x = Bytes::header(2, 0).tensor("a", {64}, 0, 0).tensor("b", {64}, 0, 128).pad_to(32);
        x.b.append(512, '\0');
        x.parse();
      },
      {"overlap"}));
}

TEST(Gguf, ModelsOfOtherKindsAreRefused) {
  using test::fails_with;
  // A GGUF file without a model's metadata: the first missing key is named.
  EXPECT_TRUE(fails_with([] { open_model_source(fixture("quants.gguf")); }, {"quants.gguf: ", "no llama.embedding_length"}));
}
