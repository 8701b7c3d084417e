// oar export's packed file (io/packed_model.h, model/packed_weights.h): a model written in its load format loads
// back as the same model, every projection a view of the file's own pages; a file that lies is a clear error.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>

#include "core/fs.h"
#include "io/model_source.h"
#include "io/packed_model.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "model/packed_weights.h"
#include "test_errors.h"
#include "test_model_util.h"
#include "test_tokenizer_util.h"

using namespace oar;

namespace {

std::string model_dir(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/models/" + name; }

struct Case {
  const char* name;
  DType dtype;
  std::optional<QuantSpec> quant;
};

// a8w8 with static steps, one per projection, as act_scales.json gives them.
QuantSpec static_a8w8(const LlamaConfig& cfg) {
  auto steps = std::make_shared<std::map<std::string, float>>();
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++)
    for (const char* p : kLayerProjections)
      (*steps)["model.layers." + std::to_string(l) + "." + p + ".weight"] = 0.0131234f + 0.00071f * float(l);
  QuantSpec q(WeightFormat::A8W8);
  q.act_steps = steps;
  return q;
}

std::vector<int32_t> prompt(int64_t vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 19; i++) ids.push_back(int32_t((i * 37 + 5) % vocab));
  return ids;
}

// Each projection's parts must be views of the file (not owned copies) on pages of their own.
void expect_mapped(const Weight& w, const std::string& what) {
  for (const Tensor* t : {&w.data, &w.scales, &w.row_sums}) {
    if (!t->defined()) continue;
    EXPECT_FALSE(t->storage()->owned()) << what << ": a copy, not the file's pages";
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->raw()) % 4096, 0u) << what << ": not page-aligned";
  }
}

}  // namespace

TEST(Export, PackedModelsLoadBackBitForBitAsViewsOfTheFile) {
  for (const char* fixture : {"mha", "tied", "attn_bias"}) {
    const ModelSource ms = open_model_source(model_dir(fixture));
    const std::vector<Case> cases = {
        {"float32", DType::F32, std::nullopt},
        {"bfloat16", DType::BF16, std::nullopt},
        {"float16", DType::F16, std::nullopt},
        {"weight_only_int8", DType::F32, QuantSpec(WeightFormat::Int8)},
        {"weight_only_int4 g64", DType::BF16, QuantSpec(WeightFormat::Int4, 64)},
        {"weight_only_int4 per channel", DType::F32, QuantSpec(WeightFormat::Int4, -1)},
        {"a8w8 dynamic", DType::F32, QuantSpec(WeightFormat::A8W8)},
        {"a8w8 static", DType::BF16, static_a8w8(ms.config)},
    };
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(fixture) + " " + c.name);
      auto loaded = LlamaModel::from_weights(ms.config, *ms.weights, c.dtype, cpu_backend(), c.quant);
      oar::test::TempDir dir;
      const std::string file = dir.file(kPackedWeightsFile);
      write_packed_weights(file, packed_weights(*loaded));
      const std::unique_ptr<WeightSource> packed = open_packed_weights(file);
      // As the export's flags would load it (quant given), and with no --quant_type: the same model both ways.
      for (const std::optional<QuantSpec>& quant : {c.quant, std::optional<QuantSpec>()}) {
        auto back = LlamaModel::from_weights(ms.config, *packed, c.dtype, cpu_backend(), quant);
        EXPECT_EQ(back->projection_format(), loaded->projection_format());
        EXPECT_EQ(back->decode_weight_bytes(), loaded->decode_weight_bytes());
        const auto ids = prompt(ms.config.vocab_size);
        const Tensor a = oar::test::prompt_logits(*loaded, ids), b = oar::test::prompt_logits(*back, ids);
        ASSERT_EQ(a.nbytes(), b.nbytes());
        EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0) << "logits differ";
        const LlamaLayerWeights& L = back->weights().layers.back();
        for (const Weight* w : {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj})
          expect_mapped(*w, c.name);
        EXPECT_EQ(L.q_proj.act_step, loaded->weights().layers.back().q_proj.act_step);
        EXPECT_FALSE(back->weights().embed_tokens.storage()->owned());
      }
    }
  }
}

TEST(Export, PackedFileKeepsLayerOrderOnWholePages) {
  const ModelSource ms = open_model_source(model_dir("mha"));
  auto m = LlamaModel::from_weights(ms.config, *ms.weights, DType::F32, cpu_backend(), QuantSpec(WeightFormat::A8W8));
  oar::test::TempDir dir;
  const std::string file = dir.file(kPackedWeightsFile);
  const auto entries = packed_weights(*m);
  write_packed_weights(file, entries);
  const std::string bytes = read_file(file);
  const SafetensorsHeader h =
      parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), file);
  EXPECT_EQ(h.data_start % 4096, 0u);
  std::map<std::string, uint64_t> begin;
  for (const auto& e : h.entries) {
    EXPECT_EQ(e.begin % 4096, 0u) << e.name;
    begin[e.name] = e.begin;
  }
  // data, scales and row sums of each a8w8 projection; the file in the model's order (layer 0 first).
  EXPECT_TRUE(begin.count("model.layers.0.self_attn.q_proj.weight.scales"));
  EXPECT_TRUE(begin.count("model.layers.0.self_attn.q_proj.weight.row_sums"));
  EXPECT_LT(begin["model.embed_tokens.weight"], begin["model.layers.0.self_attn.q_proj.weight"]);
  EXPECT_LT(begin["model.layers.0.mlp.down_proj.weight"], begin["model.layers.1.input_layernorm.weight"]);
  EXPECT_EQ(h.metadata.at("oar_packed_version"), "1");
  EXPECT_NE(h.metadata.at("model.layers.0.self_attn.q_proj.weight").find("\"a8w8\""), std::string::npos);
}

TEST(Export, APackedFileThatLiesIsAClearErrorNamingIt) {
  const ModelSource ms = open_model_source(model_dir("mha"));
  auto m = LlamaModel::from_weights(ms.config, *ms.weights, DType::F32, cpu_backend(), QuantSpec(WeightFormat::A8W8));
  auto entries = packed_weights(*m);
  oar::test::TempDir dir;
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  // Writes `entries` after `edit`, then loads them; the error must name the file and contain `parts`.
  auto loads_with_error = [&](auto edit, std::vector<std::string> parts, bool raw_meta = false,
                              std::map<std::string, std::string> meta = {}) {
    auto e = entries;
    edit(e);
    const std::string file = dir.file("bad.safetensors");
    if (!raw_meta) {
      write_packed_weights(file, e);
    } else {
      std::vector<std::pair<std::string, Tensor>> plain;
      for (const auto& [n, st] : e) plain.emplace_back(n, st.data);
      write_safetensors(file, plain, meta, true);
    }
    parts.insert(parts.begin(), file);
    return oar::test::fails_with(
        [&] {
          auto src = open_packed_weights(file);
          LlamaModel::from_weights(ms.config, *src, DType::F32, cpu_backend());
        },
        parts);
  };
  auto find = [&](auto& e, const std::string& n) -> StoredWeight& {
    for (auto& [name, st] : e)
      if (name == n) return st;
    throw std::runtime_error("no " + n);
  };
  EXPECT_TRUE(loads_with_error([&](auto& e) { find(e, q).format = "int3"; }, {q, "'int3'", "not a weight format"}));
  EXPECT_TRUE(loads_with_error([&](auto& e) { find(e, q).scales = find(e, q).scales.view({4, find(e, q).scales.dim(0) / 4}); },
                               {q, "scales", "expected float32"}));
  EXPECT_TRUE(loads_with_error([&](auto& e) { find(e, q).row_sums = Tensor(); }, {q, "row sums is missing"}));
  EXPECT_TRUE(loads_with_error([&](auto& e) { find(e, q).format = "weight_only_int4"; }, {q, "weight_only_int4"}));
  // No version: not an export's file. A metadata value that is not what the format says.
  EXPECT_TRUE(loads_with_error([](auto&) {}, {"not an oar export's packed file"}, true, {}));
  EXPECT_TRUE(loads_with_error([](auto&) {}, {"newer oar"}, true, {{"oar_packed_version", "2"}}));
  EXPECT_TRUE(loads_with_error([](auto&) {}, {q, "invalid JSON"}, true, {{"oar_packed_version", "1"}, {q, "{"}}));
  EXPECT_TRUE(loads_with_error([](auto&) {}, {q, "act_step"}, true,
                               {{"oar_packed_version", "1"}, {q, "{\"format\": \"a8w8\", \"group_size\": 0}"}}));
  EXPECT_TRUE(loads_with_error([](auto&) {}, {q, "group_size"}, true,
                               {{"oar_packed_version", "1"}, {q, "{\"format\": \"a8w8\", \"group_size\": -3, \"act_step\": 0}"}}));
  // A quantized projection asked for as float names the --quant_type that loads it.
  oar::test::TempDir ok;
  write_packed_weights(ok.file("p.safetensors"), entries);
  EXPECT_TRUE(oar::test::fails_with([&] { open_packed_weights(ok.file("p.safetensors"))->get(q); },
                                    {"stored as 'a8w8'", "--quant_type a8w8"}));
}
