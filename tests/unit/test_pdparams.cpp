// Paddle's .pdparams (a pickle, read without executing it) and PaddleNLP's checkpoint layout. The pickles in
// tests/fixtures/pdparams were written by Python's pickle (tests/reference/make_pdparams_fixtures.py), with the same
// arrays in a safetensors file; hostile pickles are built here byte by byte.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/fs.h"
#include "io/paddle_layout.h"
#include "io/pdparams.h"
#include "io/safetensors.h"
#include "test_errors.h"

namespace oar {
namespace {

using namespace std::string_literals;  // embedded NUL bytes in the hand-built pickles

const std::string kDir = std::string(OAR_FIXTURES_DIR) + "/pdparams";

std::map<std::string, Tensor> parse(const std::string& bytes) {
  return parse_pickled_arrays(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "x.pdparams");
}

void expect_same_as_safetensors(const std::map<std::string, Tensor>& got) {
  WeightStore want = WeightStore::open_file(kDir + "/state.safetensors");
  ASSERT_EQ(got.size(), want.names().size());
  for (const std::string& name : want.names()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const Tensor& g = got.at(name);
    const Tensor w = want.get(name);
    EXPECT_EQ(g.dtype(), w.dtype());
    EXPECT_EQ(g.shape(), w.shape());
    ASSERT_EQ(g.nbytes(), w.nbytes());
    EXPECT_EQ(0, std::memcmp(g.raw(), w.raw(), g.nbytes()));
  }
}

TEST(Pdparams, Protocol4DictMatchesTheSameArraysInSafetensors) {
  expect_same_as_safetensors(load_pdparams(kDir + "/state_p4.pdparams"));  // also skips the non-array entry
}

TEST(Pdparams, Protocol2OrderedDictMatches) { expect_same_as_safetensors(load_pdparams(kDir + "/state_p2.pdparams")); }

TEST(Pdparams, NameArrayTuplesMatch) { expect_same_as_safetensors(load_pdparams(kDir + "/tuple_form.pdparams")); }

TEST(Pdparams, AForeignGlobalIsRefusedByNameAndNeverRun) {
  EXPECT_TRUE(test::fails_with([] { load_pdparams(kDir + "/evil_global.pdparams"); },
                               {"evil_global.pdparams: ", "'posix.system' is not allowed", "nothing is executed"}));
}

// A pickle header and an array of `n` float32 zeros built from the given data bytes: the shape of numpy's pickles.
std::string array_pickle(const std::string& shape_ops, const std::string& dtype, const std::string& order,
                         const std::string& data, bool fortran = false) {
  std::string s = "\x80\x04}(\x8c\x01w";
  s += "\x8c\x15numpy.core.multiarray\x8c\x0c_reconstruct\x93\x8c\x05numpy\x8c\x07ndarray\x93K\x00\x85\x43\x01"s "b\x87R";
  s += "(K\x01" + shape_ops + "\x8c\x05numpy\x8c\x05" "dtype\x93\x8c" + std::string(1, char(dtype.size())) + dtype +
       "\x89\x88\x87R(K\x03\x8c\x01" + order + "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"s;
  s += fortran ? "\x88" : "\x89";
  s += "B" + std::string(reinterpret_cast<const char*>(std::vector<uint32_t>{uint32_t(data.size())}.data()), 4) + data;
  s += "tbu.";
  return s;
}

TEST(Pdparams, AHandBuiltArrayPickleIsRead) {
  const float v[3] = {1.5f, -2.0f, 0.25f};
  auto got = parse(array_pickle("K\x03\x85", "f4", "<", std::string(reinterpret_cast<const char*>(v), 12)));
  ASSERT_EQ(got.count("w"), 1u);
  EXPECT_EQ(got["w"].shape(), Shape({3}));
  EXPECT_EQ(0, std::memcmp(got["w"].raw(), v, 12));
}

TEST(Pdparams, LyingOrForeignArraysAreRefused) {
  const std::string twelve(12, '\0');
  EXPECT_TRUE(test::fails_with([&] { parse(array_pickle("K\x04\x85", "f4", "<", twelve)); }, {"x.pdparams: ", "12 data bytes"}));
  EXPECT_TRUE(test::fails_with([&] { parse(array_pickle("K\x03\x85", "f4", ">", twelve)); }, {"big-endian"}));
  EXPECT_TRUE(test::fails_with([&] { parse(array_pickle("K\x03\x85", "O8", "|", twelve)); }, {"numpy dtype 'O8'"}));
  EXPECT_TRUE(test::fails_with([&] { parse(array_pickle("K\x01K\x03\x86", "f4", "<", twelve, true)); }, {"Fortran"}));
  EXPECT_TRUE(test::fails_with([&] { parse(array_pickle("J\xff\xff\xff\xff\x85", "f4", "<", twelve)); }, {"dimension"}));
  // An empty array whose other dimensions overflow (numpy refuses it too; the fuzzer found it).
  const std::string huge = "\x8a\x08"s + std::string(7, '\0') + "\x40";  // LONG1 2^62
  EXPECT_TRUE(test::fails_with([&] { parse(array_pickle("K\x00"s + huge + huge + "\x87", "f4", "<", "")); }, {"dimension"}));
}

TEST(Pdparams, TruncatedAndNonPickleInputsAreRefused) {
  const std::string good = array_pickle("K\x01\x85", "f4", "<", std::string(4, '\0'));
  ASSERT_EQ(parse(good).size(), 1u);
  for (size_t cut : {size_t(0), size_t(5), good.size() / 2, good.size() - 1})
    EXPECT_TRUE(test::fails_with([&] { parse(good.substr(0, cut)); }, {"x.pdparams: "})) << cut;
  EXPECT_TRUE(test::fails_with([] { parse("PK\x03\x04zip"); }, {"x.pdparams: ", "opcode"}));
  EXPECT_TRUE(test::fails_with([] { parse("\x80\x04K\x01."); }, {"not a dict of arrays"}));
  EXPECT_TRUE(test::fails_with([] { parse("\x80\x04}."); }, {"no arrays"}));
  EXPECT_TRUE(test::fails_with([] { parse(std::string("\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f", 11)); }, {"past the end"}));
}

TEST(Pdparams, HostileStructuresFailFastInBoundedMemory) {
  // Two million small ints: over the object limit, long before memory matters.
  std::string many = "\x80\x04(";
  for (int k = 0; k < 2'000'000; ++k) many += "K\x01";
  EXPECT_TRUE(test::fails_with([&] { parse(many); }, {"objects, not a state dict"}));
  // Memo, stack and mark tables are bounded too (a 2 MB MEMOIZE flood took 850 MB before they were).
  std::string memo = "\x80\x04N";
  for (int k = 0; k < 1'100'000; ++k) memo += "\x94";
  EXPECT_TRUE(test::fails_with([&] { parse(memo); }, {"memo entries, not a state dict"}));
  std::string marks = "\x80\x04";
  for (int k = 0; k < 1'100'000; ++k) marks += "(";
  EXPECT_TRUE(test::fails_with([&] { parse(marks); }, {"marks, not a state dict"}));
  std::string dups = "\x80\x04N";
  for (int k = 0; k < 1'100'000; ++k) dups += "2";
  EXPECT_TRUE(test::fails_with([&] { parse(dups); }, {"stack deeper than"}));
  // 300,000 nested lists: an arena, so nothing recurses.
  std::string deep = "\x80\x04";
  for (int k = 0; k < 300'000; ++k) deep += "]";
  for (int k = 0; k < 299'999; ++k) deep += "a";
  EXPECT_TRUE(test::fails_with([&] { parse(deep + "."); }, {"not a dict of arrays"}));
  // A list appended to itself (a cycle), and a memo index of 4 billion.
  EXPECT_TRUE(test::fails_with([] { parse("\x80\x04]\x94h\x00"s "a."); }, {"not a dict of arrays"}));
  EXPECT_TRUE(test::fails_with([] { parse("\x80\x04]r\xff\xff\xff\xffj\xff\xff\xff\xff."); }, {"not a dict of arrays"}));
  // One 4 KiB array referenced by 1000 keys through the memo: more array bytes than the file.
  std::string shared = array_pickle("M\x00\x04\x85"s, "f4", "<", std::string(4096, '\0'));
  shared.resize(shared.size() - 3);  // drop "bu." and keep the frame open: BUILD, then memoize the array
  shared += "b\x94";
  for (int k = 0; k < 1000; ++k) shared += "\x8c\x04k" + std::to_string(1000 + k).substr(1) + "h\x00"s;
  shared += "u.";
  EXPECT_TRUE(test::fails_with([&] { parse(shared); }, {"more array bytes than the file holds"}));
}

// PaddleNLP's fused projections, built here from HF-layout q/k/v and gate/up by the documented layout, come back
// out of paddle_layout_as_hf exactly; an unfused [in, out] weight comes back transposed.
TEST(PaddleLayout, FusedAndTransposedWeightsReadAsHuggingFaceOnes) {
  LlamaConfig c;
  c.hidden_size = 8, c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 2, c.intermediate_size = 3;
  const int64_t C = 8, D = 2, H = 4, KV = 2, I = 3;
  auto hf = [](int64_t rows, int64_t cols, float base) {
    Tensor t = Tensor::empty({rows, cols}, DType::F32);
    for (int64_t k = 0; k < rows * cols; ++k) t.data<float>()[k] = base + float(k);
    return t;
  };
  const Tensor q = hf(H * D, C, 1000), k = hf(KV * D, C, 2000), v = hf(KV * D, C, 3000), gate = hf(I, C, 4000),
               up = hf(I, C, 5000), o = hf(C, H * D, 6000);
  Tensor qkv = Tensor::empty({C, (H + 2 * KV) * D}, DType::F32), gu = Tensor::empty({C, 2 * I}, DType::F32),
         o_in_out = Tensor::empty({H * D, C}, DType::F32);
  int64_t col = 0;
  auto put = [&](Tensor& dst, const Tensor& src, int64_t row0, int64_t rows) {  // src rows -> dst columns
    for (int64_t r = 0; r < rows; ++r, ++col)
      for (int64_t x = 0; x < C; ++x) dst.data<float>()[x * dst.shape()[1] + col] = src.data<float>()[(row0 + r) * C + x];
  };
  for (int64_t i = 0; i < KV; ++i) {
    put(qkv, q, i * (H / KV) * D, (H / KV) * D);
    put(qkv, k, i * D, D);
    put(qkv, v, i * D, D);
  }
  col = 0;
  put(gu, gate, 0, I);
  put(gu, up, 0, I);
  for (int64_t r = 0; r < C; ++r)
    for (int64_t x = 0; x < H * D; ++x) o_in_out.data<float>()[x * C + r] = o.data<float>()[r * H * D + x];
  std::map<std::string, Tensor> paddle = {{"llama.embed_tokens.weight", hf(4, C, 0)},
                                          {"llama.layers.0.self_attn.qkv_proj.weight", qkv},
                                          {"llama.layers.0.mlp.gate_up_fused_proj.weight", gu},
                                          {"llama.layers.0.self_attn.o_proj.weight", o_in_out}};
  auto src = std::make_unique<TensorMapSource>("ckpt", paddle);
  ASSERT_TRUE(is_paddle_layout(*src));
  auto as_hf = paddle_layout_as_hf(std::move(src), c);
  const std::map<std::string, Tensor> want = {{"q_proj", q}, {"k_proj", k}, {"v_proj", v}, {"o_proj", o}};
  for (const auto& [name, w] : want) {
    const std::string full = "model.layers.0.self_attn." + name + ".weight";
    ASSERT_TRUE(as_hf->has(full)) << full;
    const Tensor g = as_hf->get(full);
    EXPECT_EQ(g.shape(), w.shape()) << full;
    EXPECT_EQ(0, std::memcmp(g.raw(), w.raw(), w.nbytes())) << full;
  }
  for (const auto& [name, w] : std::map<std::string, Tensor>{{"gate_proj", gate}, {"up_proj", up}}) {
    const Tensor g = as_hf->get("model.layers.0.mlp." + name + ".weight");
    EXPECT_EQ(0, std::memcmp(g.raw(), w.raw(), w.nbytes())) << name;
  }
  EXPECT_TRUE(as_hf->has("model.embed_tokens.weight"));
  EXPECT_FALSE(as_hf->has("model.layers.0.mlp.down_proj.weight"));
  EXPECT_FALSE(as_hf->has("lm_head.weight"));
}


TEST(PaddleLayout, NamesAndOrientationOfTrainingTensors) {
  const std::vector<std::tuple<std::string, std::string, bool>> cases = {
      {"model.embed_tokens.weight", "llama.embed_tokens.weight", false},
      {"model.layers.3.self_attn.q_proj.weight", "llama.layers.3.self_attn.q_proj.weight", true},
      {"model.layers.0.mlp.down_proj.weight", "llama.layers.0.mlp.down_proj.weight", true},
      {"model.layers.0.input_layernorm.weight", "llama.layers.0.input_layernorm.weight", false},
      {"model.norm.weight", "llama.norm.weight", false},
      {"lm_head.weight", "lm_head.weight", true},
      {"model.layers.1.self_attn.v_proj.lora_A.weight", "llama.layers.1.self_attn.v_proj.lora_A", true},
      {"model.layers.1.mlp.up_proj.lora_B.weight", "llama.layers.1.mlp.up_proj.lora_B", true},
      {"w", "w", false},
  };
  for (const auto& [hf, paddle, transposed] : cases) {
    const PaddleTensorName pn = paddle_name_of(hf);
    EXPECT_EQ(pn.name, paddle) << hf;
    EXPECT_EQ(pn.transposed, transposed) << hf;
  }
}

// Python's unpickler reads it in cli_train_save_paddle; here oar's own grammar runs it to STOP (and finds a dict
// with no arrays, which is not a state dict).
TEST(Pdparams, ANumberDictPickleParsesToTheEnd) {
  const std::string p = pickle_number_dict({{"last_epoch", int64_t(-3)}, {"last_lr", 0.0023333}});
  EXPECT_EQ(p.substr(0, 2), std::string("\x80\x02"));
  try {
    parse_pickled_arrays(reinterpret_cast<const uint8_t*>(p.data()), p.size(), "sched");
    FAIL() << "a dict without arrays was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no arrays"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace oar
