// LoRA adapter files (src/train/lora_io): an adapter made by Hugging Face PEFT (tests/fixtures/lora, from
// tests/reference/make_lora_fixtures.py) merged by oar reproduces PEFT's logits; merge-lora writes a checkpoint
// equal to base + adapter; our files round-trip; bad adapters fail with one line naming the file.
// LoraInterop.WritesAdapterAndLogits also serves tests/cli/lora_peft.sh, which loads our adapter with PEFT.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "train/lora_io.h"
#include "train/trainable_llama.h"
#include "test_model_util.h"

using namespace oar;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using oar::test::prompt_logits;
using oar::test::rel_err;

std::string model_dir(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/models/" + name; }
std::string lora_dir(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/lora/" + name; }

// A fresh directory, removed with everything in it at the end of the test.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& tag) {
    path = (fs::temp_directory_path() / ("oar_lora_" + tag + "_" + std::to_string(::getpid()))).string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& f) const { return join_path(path, f); }
};

bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); i++)
    if (a.item_f32(i) != b.item_f32(i)) return false;
  return true;
}

struct Prompt {
  std::vector<int32_t> ids;
  Tensor logits;
};

std::vector<Prompt> peft_fixture_prompts() {
  WeightStore exp = WeightStore::open_file(lora_dir("gqa_peft") + "/expected.safetensors");
  std::vector<Prompt> out;
  for (int i = 0; exp.has("ids_" + std::to_string(i)); i++) {
    Tensor ids = exp.get("ids_" + std::to_string(i));
    Prompt p;
    p.ids.assign(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
    p.logits = exp.get("logits_" + std::to_string(i));
    out.push_back(std::move(p));
  }
  return out;
}

Tensor random_normal(const Shape& shape, float sd, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::normal_distribution<float> d(0.0f, sd);
  for (int64_t i = 0; i < t.numel(); i++) t.data<float>()[i] = d(rng);
  return t;
}

// An adapter with random A and B (B non-zero, so that it changes the model) for a base of config `cfg`.
LoraAdapter random_adapter(const LlamaConfig& cfg, int64_t rank, double alpha, std::vector<std::string> targets,
                           uint64_t seed) {
  std::mt19937_64 rng(seed);
  LoraAdapter a;
  a.rank = rank;
  a.alpha = alpha;
  a.targets = targets;
  a.base_model_name_or_path = "tests/fixtures/models/gqa";
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, Q = cfg.q_dim(), KV = cfg.kv_dim();
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++)
    for (const auto& t : targets) {
      int64_t in = C, out = C;
      if (t == "q_proj") out = Q;
      if (t == "k_proj" || t == "v_proj") out = KV;
      if (t == "o_proj") in = Q;
      if (t == "gate_proj" || t == "up_proj") out = F;
      if (t == "down_proj") in = F;
      const std::string grp = (t == "gate_proj" || t == "up_proj" || t == "down_proj") ? "mlp" : "self_attn";
      LoraPair& p = a.modules["model.layers." + std::to_string(l) + "." + grp + "." + t + ".weight"];
      p.A = random_normal({rank, in}, 1.0f / std::sqrt(float(in)), rng);
      p.B = random_normal({out, rank}, 0.05f, rng);
    }
  return a;
}

void expect_same_adapter(const LoraAdapter& a, const LoraAdapter& b) {
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.alpha, b.alpha);
  EXPECT_EQ(a.targets, b.targets);
  ASSERT_EQ(a.modules.size(), b.modules.size());
  for (const auto& [name, p] : a.modules) {
    ASSERT_TRUE(b.modules.count(name)) << name;
    EXPECT_TRUE(same_values(p.A, b.modules.at(name).A)) << name;
    EXPECT_TRUE(same_values(p.B, b.modules.at(name).B)) << name;
  }
}

// Runs f, which must throw oar::Error with a one-line message containing every fragment.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    for (const auto& s : fragments) EXPECT_NE(m.find(s), std::string::npos) << "'" << m << "' lacks '" << s << "'";
    return;
  }
  ADD_FAILURE() << "no oar::Error thrown (expected one mentioning '" << fragments.front() << "')";
}

void copy_dir(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) fs::copy_file(e.path(), fs::path(to) / e.path().filename());
}

void edit_json(const std::string& path, const std::function<void(json&)>& f) {
  json j = json::parse(read_file(path));
  f(j);
  write_file_atomic(path, j.dump(2));
}

std::vector<std::pair<std::string, Tensor>> all_tensors(const std::string& file) {
  WeightStore s = WeightStore::open_file(file);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& n : s.names()) out.emplace_back(n, s.get(n).contiguous());
  return out;
}

}  // namespace

TEST(LoraDefaults, PaddleNlpDefaults) {
  // PaddleNLP's run_finetune.py: lora_rank 8, lora_alpha = 2 * rank (scaling 2), all seven Llama projections.
  LoraOptions o;
  EXPECT_EQ(o.rank, 8);
  EXPECT_EQ(o.alpha / double(o.rank), 2.0);
  EXPECT_EQ(o.targets, lora_projection_names());
  EXPECT_EQ(lora_projection_names().size(), 7u);
}

TEST(LoraPeftFixture, LoadsPeftLayout) {
  LoraAdapter a = load_lora_adapter(lora_dir("gqa_peft"));
  EXPECT_EQ(a.rank, 8);
  EXPECT_EQ(a.alpha, 16);
  EXPECT_EQ(a.scaling(), 2.0);
  EXPECT_EQ(a.targets, lora_projection_names());  // canonical order, whatever order the file lists them in
  EXPECT_EQ(a.modules.size(), 14u);               // 2 layers x 7
  EXPECT_EQ(a.base_model_name_or_path, "tests/fixtures/models/gqa");
  const LoraPair& q = a.modules.at("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(q.A.shape(), (Shape{8, 64}));
  EXPECT_EQ(q.B.shape(), (Shape{64, 8}));
  const LoraPair& d = a.modules.at("model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(d.A.shape(), (Shape{8, 144}));
  EXPECT_EQ(d.B.shape(), (Shape{64, 8}));
  check_lora_against_config(a, load_hf_config(model_dir("gqa") + "/config.json"), "gqa");
}

TEST(LoraPeftFixture, MergedModelReproducesPeftLogits) {
  auto merged = load_llama_with_lora(model_dir("gqa"), lora_dir("gqa_peft"), DType::F32);
  auto base = LlamaModel::load(model_dir("gqa"), DType::F32);
  auto prompts = peft_fixture_prompts();
  ASSERT_EQ(prompts.size(), 2u);
  for (const Prompt& p : prompts) {
    Tensor got = prompt_logits(*merged, p.ids);
    ASSERT_EQ(got.shape(), p.logits.shape());
    EXPECT_LE(rel_err(got, p.logits), 1e-4) << "prompt of " << p.ids.size() << " tokens";
    // The adapter matters: without it the logits are far off.
    EXPECT_GE(rel_err(prompt_logits(*base, p.ids), p.logits), 0.3);
  }
}

TEST(LoraPeftFixture, Bfloat16ComputeClose) {
  // Merged in float32, rounded once to bfloat16 (same 5% bound as the base model's bf16 reference test).
  auto merged = load_llama_with_lora(model_dir("gqa"), lora_dir("gqa_peft"), DType::BF16);
  for (const Prompt& p : peft_fixture_prompts()) EXPECT_LE(rel_err(prompt_logits(*merged, p.ids), p.logits), 5e-2);
}

TEST(LoraPeftFixture, PaddleNlpLayoutLoadsTheSameAdapter) {
  // lora_config.json + peft_model.safetensors with Paddle's names and [in, out] orientation.
  LoraAdapter paddle = load_lora_adapter(lora_dir("gqa_paddle"));
  LoraAdapter peft = load_lora_adapter(lora_dir("gqa_peft"));
  expect_same_adapter(paddle, peft);
  EXPECT_EQ(paddle.scaling(), 2.0);
  auto m = load_llama_with_lora(model_dir("gqa"), lora_dir("gqa_paddle"), DType::F32);
  for (const Prompt& p : peft_fixture_prompts()) EXPECT_LE(rel_err(prompt_logits(*m, p.ids), p.logits), 1e-4);
}

TEST(LoraMerge, WeightMatchesDirectSum) {
  std::mt19937_64 rng(7);
  const int64_t O = 5, I = 7, R = 3;
  Tensor W = random_normal({O, I}, 1.0f, rng);
  LoraPair p{random_normal({R, I}, 1.0f, rng), random_normal({O, R}, 1.0f, rng)};
  Tensor m = merge_lora_weight(W, p, 1.5, DType::F32);
  for (int64_t o = 0; o < O; o++)
    for (int64_t i = 0; i < I; i++) {
      double d = W.data<float>()[o * I + i];
      for (int64_t k = 0; k < R; k++) d += 1.5 * double(p.B.data<float>()[o * R + k]) * double(p.A.data<float>()[k * I + i]);
      EXPECT_NEAR(m.data<float>()[o * I + i], d, 1e-5);
    }
  EXPECT_EQ(merge_lora_weight(W, p, 1.5, DType::BF16).dtype(), DType::BF16);
}

TEST(LoraMerge, MergedCheckpointEqualsBasePlusAdapter) {
  TempDir tmp("merge");
  const std::string out = tmp / "merged";
  merge_lora_checkpoint(model_dir("gqa"), lora_dir("gqa_peft"), out, false);
  // A Hugging Face directory: the base's config, generation config and files; no temporary left beside it.
  EXPECT_EQ(read_file(out + "/config.json"), read_file(model_dir("gqa") + "/config.json"));
  EXPECT_TRUE(file_exists(out + "/generation_config.json"));
  EXPECT_FALSE(file_exists(out + "/expected.safetensors"));
  int entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path)) entries += e.path().filename() != "merged";
  EXPECT_EQ(entries, 0) << "a temporary directory was left behind";

  auto from_disk = LlamaModel::load(out, DType::F32);
  auto in_memory = load_llama_with_lora(model_dir("gqa"), lora_dir("gqa_peft"), DType::F32);
  for (const Prompt& p : peft_fixture_prompts()) {
    Tensor a = prompt_logits(*from_disk, p.ids);
    EXPECT_EQ(rel_err(a, prompt_logits(*in_memory, p.ids)), 0.0);  // the same float32 weights
    EXPECT_LE(rel_err(a, p.logits), 1e-4);
  }

  // An existing output is refused unless forced; then replaced.
  expect_error([&] { merge_lora_checkpoint(model_dir("gqa"), lora_dir("gqa_peft"), out, false); },
               {out, "already exists", "--force"});
  merge_lora_checkpoint(model_dir("gqa"), lora_dir("gqa_paddle"), out, true);
  EXPECT_TRUE(file_exists(out + "/model.safetensors"));
  // Never onto an input.
  TempDir tmp2("merge_in");
  copy_dir(lora_dir("gqa_peft"), tmp2 / "adapter");
  expect_error([&] { merge_lora_checkpoint(model_dir("gqa"), tmp2 / "adapter", tmp2 / "adapter", true); },
               {"holds an input"});
  expect_error([&] { merge_lora_checkpoint(model_dir("gqa"), tmp2 / "adapter", tmp2.path, true); }, {"holds an input"});
  EXPECT_TRUE(file_exists(tmp2 / "adapter/adapter_config.json"));
  // "dir/" is the directory itself: the temporary goes beside it.
  merge_lora_checkpoint(model_dir("gqa"), lora_dir("gqa_peft"), tmp2 / "slash/", false);
  EXPECT_TRUE(file_exists(tmp2 / "slash/model.safetensors"));
  EXPECT_FALSE(fs::exists(tmp2 / "slash/slash"));
}

TEST(LoraMerge, KeepsShardLayoutAndDtype) {
  // sharded_bf16 has gqa's shapes stored as bfloat16 in three shards: the merge keeps both.
  TempDir tmp("merge_bf16");
  const std::string out = tmp / "merged";
  merge_lora_checkpoint(model_dir("sharded_bf16"), lora_dir("gqa_peft"), out, false);
  EXPECT_EQ(read_file(out + "/model.safetensors.index.json"), read_file(model_dir("sharded_bf16") + "/model.safetensors.index.json"));
  WeightStore base = WeightStore::open_dir(model_dir("sharded_bf16"));
  WeightStore merged = WeightStore::open_dir(out);
  LoraAdapter a = load_lora_adapter(lora_dir("gqa_peft"));
  ASSERT_EQ(merged.names(), base.names());
  for (const auto& n : base.names()) {
    EXPECT_EQ(fs::path(merged.file_of(n)).filename(), fs::path(base.file_of(n)).filename()) << n;
    Tensor b = base.get(n), m = merged.get(n);
    ASSERT_EQ(m.dtype(), DType::BF16) << n;
    auto it = a.modules.find(n);
    if (it == a.modules.end()) {
      EXPECT_EQ(std::memcmp(b.raw(), m.raw(), b.nbytes()), 0) << n << " must be copied unchanged";
      continue;
    }
    // bf16(W + 2 B A) from a double-precision sum: at most one bfloat16 step apart (float32 vs double rounding).
    const LoraPair& p = it->second;
    const int64_t O = b.dim(0), I = b.dim(1), R = a.rank;
    double worst = 0;
    for (int64_t o = 0; o < O; o++)
      for (int64_t i = 0; i < I; i++) {
        double d = b.item_f32(o * I + i);
        for (int64_t k = 0; k < R; k++) d += 2.0 * double(p.B.data<float>()[o * R + k]) * double(p.A.data<float>()[k * I + i]);
        worst = std::max(worst, std::fabs(m.item_f32(o * I + i) - d) / std::max(std::fabs(d), 1e-3));
      }
    EXPECT_LE(worst, 1.0 / 128) << n;
  }
}

TEST(LoraFiles, SaveLoadRoundTripInPeftLayout) {
  LlamaConfig cfg = load_hf_config(model_dir("gqa") + "/config.json");
  LoraAdapter a = random_adapter(cfg, 4, 12, {"q_proj", "v_proj", "down_proj"}, 11);
  TempDir tmp("save");
  save_lora_adapter(tmp / "adapter", a);
  json c = json::parse(read_file(tmp / "adapter/adapter_config.json"));
  EXPECT_EQ(c["peft_type"], "LORA");
  EXPECT_EQ(c["task_type"], "CAUSAL_LM");
  EXPECT_EQ(c["r"], 4);
  EXPECT_EQ(c["lora_alpha"], 12);
  EXPECT_EQ(c["target_modules"], json({"q_proj", "v_proj", "down_proj"}));
  EXPECT_EQ(c["bias"], "none");
  EXPECT_EQ(c["fan_in_fan_out"], false);
  EXPECT_EQ(c["lora_dropout"], 0.0);
  EXPECT_EQ(c["base_model_name_or_path"], "tests/fixtures/models/gqa");
  WeightStore w = WeightStore::open_file(tmp / "adapter/adapter_model.safetensors");
  EXPECT_EQ(w.names().size(), 2u * 3u * 2u);
  EXPECT_EQ(w.get("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").shape(), (Shape{4, 144}));
  EXPECT_EQ(w.get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight").shape(), (Shape{16, 4}));
  EXPECT_FALSE(c.contains("use_rslora"));  // written only when set: peft 0.x before rsLoRA then refuses the file
  LoraAdapter b = load_lora_adapter(tmp / "adapter");
  expect_same_adapter(a, b);
  EXPECT_EQ(b.scaling(), 3.0);
  check_lora_against_config(b, cfg, "gqa");

  // rsLoRA: scaling alpha / sqrt(r).
  a.rslora = true;
  save_lora_adapter(tmp / "rs", a);
  EXPECT_EQ(json::parse(read_file(tmp / "rs/adapter_config.json"))["use_rslora"], true);
  EXPECT_EQ(load_lora_adapter(tmp / "rs").scaling(), 6.0);
  expect_error([&] { lora_options_of(load_lora_adapter(tmp / "rs")); }, {"use_rslora"});
}

TEST(LoraFiles, TrainingNamesRoundTrip) {
  LlamaConfig cfg = load_hf_config(model_dir("gqa") + "/config.json");
  LoraAdapter a = random_adapter(cfg, 8, 16, lora_projection_names(), 12);
  auto named = lora_named_tensors(a);
  ASSERT_EQ(named.size(), 28u);
  EXPECT_EQ(named[0].first.find("model.layers."), 0u);
  for (const auto& [n, t] : named) EXPECT_TRUE(n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")) << n;
  // Other parameters (the frozen base) are passed over.
  named.emplace_back("model.layers.0.self_attn.q_proj.weight", Tensor::empty({64, 64}, DType::F32));
  named.emplace_back("model.embed_tokens.weight", Tensor::empty({256, 64}, DType::F32));
  LoraOptions opt = lora_options_of(a);
  EXPECT_EQ(opt.rank, 8);
  EXPECT_EQ(opt.alpha, 16);
  EXPECT_EQ(opt.targets, lora_projection_names());
  LoraAdapter b = lora_adapter_from_named(named, opt, "base");
  expect_same_adapter(a, b);
  EXPECT_EQ(b.base_model_name_or_path, "base");
}

TEST(LoraFiles, ErrorsNameTheFile) {
  TempDir tmp("errors");
  const std::string peft = lora_dir("gqa_peft");
  const LlamaConfig gqa = load_hf_config(model_dir("gqa") + "/config.json");
  int n = 0;
  // A copy of the PEFT fixture with one change.
  auto variant = [&](const std::function<void(const std::string&)>& change) {
    std::string d = tmp / ("v" + std::to_string(n++));
    copy_dir(peft, d);
    change(d);
    return d;
  };
  auto cfg_edit = [&](const std::function<void(json&)>& f) {
    return variant([&](const std::string& d) { edit_json(d + "/adapter_config.json", f); });
  };
  auto load = [](const std::string& d) { return [d] { load_lora_adapter(d); }; };

  expect_error(load(tmp / "nope"), {tmp / "nope", "no such LoRA adapter directory"});
  fs::create_directories(tmp / "empty");
  expect_error(load(tmp / "empty"), {tmp / "empty", "adapter_config.json", "lora_config.json"});
  std::string d = variant([](const std::string& d) { fs::remove(d + "/adapter_model.safetensors"); });
  expect_error(load(d), {d + "/adapter_model.safetensors", "missing"});
  d = cfg_edit([](json& j) { j["r"] = 4; });
  expect_error(load(d), {d + "/adapter_model.safetensors", "rank 8", "r 4"});
  d = cfg_edit([](json& j) { j["target_modules"] = {"q_proj", "embed_tokens"}; });
  expect_error(load(d), {d + "/adapter_config.json", "'embed_tokens' is not supported"});
  d = cfg_edit([](json& j) { j["target_modules"] = ".*(embed_tokens|q_proj)"; });
  expect_error(load(d), {d + "/adapter_config.json", "embed_tokens"});
  d = cfg_edit([](json& j) { j["target_modules"] = {"q_proj", "k_proj"}; });
  expect_error(load(d), {d + "/adapter_model.safetensors", "target_modules does not select"});
  d = cfg_edit([](json& j) { j["peft_type"] = "PREFIX_TUNING"; });
  expect_error(load(d), {d + "/adapter_config.json", "PREFIX_TUNING"});
  d = cfg_edit([](json& j) { j["fan_in_fan_out"] = true; });
  expect_error(load(d), {d + "/adapter_config.json", "fan_in_fan_out"});
  d = cfg_edit([](json& j) { j["use_dora"] = true; });
  expect_error(load(d), {d + "/adapter_config.json", "DoRA"});
  d = cfg_edit([](json& j) { j["modules_to_save"] = {"lm_head"}; });
  expect_error(load(d), {d + "/adapter_config.json", "modules_to_save"});
  d = cfg_edit([](json& j) { j["rank_pattern"] = {{"q_proj", 4}}; });
  expect_error(load(d), {d + "/adapter_config.json", "rank_pattern"});
  d = cfg_edit([](json& j) { j["r"] = "eight"; });
  expect_error(load(d), {d + "/adapter_config.json"});
  d = variant([](const std::string& d) { write_file_atomic(d + "/adapter_config.json", "{\"r\": 8,"); });
  expect_error(load(d), {d + "/adapter_config.json", "invalid JSON"});

  // Tensors: a foreign one, an A without its B, a missing module.
  auto rewrite = [&](const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& f) {
    return variant([&](const std::string& d) {
      auto ts = all_tensors(d + "/adapter_model.safetensors");
      f(ts);
      write_safetensors(d + "/adapter_model.safetensors", ts);
    });
  };
  auto drop = [](std::vector<std::pair<std::string, Tensor>>& ts, const std::string& frag) {
    std::erase_if(ts, [&](const auto& kv) { return kv.first.find(frag) != std::string::npos; });
  };
  d = rewrite([](auto& ts) { ts.emplace_back("base_model.model.lm_head.weight", Tensor::empty({256, 64}, DType::F32)); });
  expect_error(load(d), {d + "/adapter_model.safetensors", "lm_head"});
  d = rewrite([&](auto& ts) { drop(ts, "layers.1.self_attn.k_proj.lora_B"); });
  expect_error(load(d), {d + "/adapter_model.safetensors", "layers.1.self_attn.k_proj", "no lora_B"});
  d = rewrite([&](auto& ts) { drop(ts, "layers.0.mlp.up_proj"); });
  expect_error(load(d), {d + "/adapter_model.safetensors", "layer 0 up_proj"});
  d = rewrite([](auto& ts) { ts[0].second = Tensor::empty({8, 8, 8}, DType::F32); });
  expect_error(load(d), {d + "/adapter_model.safetensors", "2 dimensions"});

  // Against the base: another model's shapes, more layers than the adapter covers.
  const LoraAdapter ok = load_lora_adapter(peft);
  const LlamaConfig mha = load_hf_config(model_dir("mha") + "/config.json");
  expect_error([&] { check_lora_against_config(ok, mha, "mha"); }, {peft + "/adapter_model.safetensors", "mha needs"});
  expect_error([&] { load_llama_with_lora(model_dir("mha"), peft, DType::F32); },
               {peft + "/adapter_model.safetensors", "another model"});
  LlamaConfig deeper = gqa;
  deeper.num_hidden_layers = 3;
  expect_error([&] { check_lora_against_config(ok, deeper, "deep"); }, {"layer 2", "deep has 3 layers"});
  LlamaConfig shallower = gqa;
  shallower.num_hidden_layers = 1;
  expect_error([&] { check_lora_against_config(ok, shallower, "shallow"); }, {"adapts layer 1", "shallow has 1 layers"});

  // PaddleNLP's files: a damaged pickle (read, never executed), tensor-parallel splits.
  d = tmp / "paddle_pickle";
  fs::create_directories(d);
  fs::copy_file(lora_dir("gqa_paddle") + "/lora_config.json", d + "/lora_config.json");
  write_file_atomic(d + "/lora_model_state.pdparams", "not a pickle");
  expect_error(load(d), {d + "/lora_model_state.pdparams", "not a readable state-dict pickle"});
  d = tmp / "paddle_tp";
  copy_dir(lora_dir("gqa_paddle"), d);
  edit_json(d + "/lora_config.json", [](json& j) { j["tensor_parallel_degree"] = 2; });
  expect_error(load(d), {d + "/lora_config.json", "tensor_parallel_degree"});

  // merge-lora needs a Hugging Face base directory.
  expect_error([&] { merge_lora_checkpoint(tmp / "none", peft, tmp / "out", false); }, {tmp / "none"});
  expect_error([&] { merge_lora_checkpoint(peft + "/adapter_config.json", peft, tmp / "out", false); },
               {"Hugging Face model directory"});
}

// The training model's LoRA (PaddleNLP's defaults) saved through lora_io and merged by the inference model gives
// the training model's own logits: both sides agree on names, orientation and scaling.
TEST(LoraTrainingModel, SavedAdapterMergesToTheTrainingModelsLogits) {
  auto tm = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{});
  tm->add_lora(LoraOptions{});
  // PaddleNLP/PEFT initialisation: A Kaiming-uniform(a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B zero;
  // only the adapters train.
  int adapters = 0;
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (Parameter* p : tm->parameters()) {
    const bool lora = p->name.find(".lora_") != std::string::npos;
    EXPECT_EQ(p->trainable, lora) << p->name;
    if (!lora) continue;
    adapters++;
    float* v = p->value.data<float>();
    if (p->name.find(".lora_B.") != std::string::npos) {
      for (int64_t i = 0; i < p->value.numel(); i++) ASSERT_EQ(v[i], 0.0f) << p->name;
      for (int64_t i = 0; i < p->value.numel(); i++) v[i] = nd(rng);  // so that the adapter matters
    } else {
      const float bound = 1.0f / std::sqrt(float(p->value.dim(1)));
      float mx = 0;
      for (int64_t i = 0; i < p->value.numel(); i++) mx = std::max(mx, std::fabs(v[i]));
      EXPECT_LE(mx, bound) << p->name;
      EXPECT_GE(mx, 0.8f * bound) << p->name;
    }
  }
  EXPECT_EQ(adapters, 2 * 7 * 2);

  LoraAdapter a = lora_adapter_from_named(tm->export_weights(true), tm->lora(), "tests/fixtures/models/gqa");
  EXPECT_EQ(a.scaling(), 2.0);
  EXPECT_EQ(a.modules.size(), 14u);
  TempDir tmp("train");
  save_lora_adapter(tmp / "adapter", a);
  auto merged = load_llama_with_lora(model_dir("gqa"), tmp / "adapter", DType::F32);
  const std::vector<int32_t> ids = peft_fixture_prompts()[1].ids;
  const int64_t L = int64_t(ids.size());
  Tensor train_logits = tm->forward_logits(TrainBatch::causal(1, L, ids, std::vector<int32_t>(size_t(L), -100)));
  Tensor infer_logits = prompt_logits(*merged, ids);
  ASSERT_EQ(train_logits.numel(), infer_logits.numel());
  EXPECT_LE(rel_err(train_logits, infer_logits), 1e-4);
  auto base = LlamaModel::load(model_dir("gqa"), DType::F32);
  EXPECT_GE(rel_err(prompt_logits(*base, ids), infer_logits), 0.1);
}

// Writes an adapter made with random A and B (rank 4, alpha 8: not PaddleNLP's defaults, so that PEFT must read
// r and lora_alpha from the file) and oar's logits of base + adapter for two prompts:
//   $OAR_LORA_INTEROP_DIR/adapter/              (save_lora_adapter)
//   $OAR_LORA_INTEROP_DIR/oar_logits.safetensors  ids_<i> int32, logits_<i> float32 [len, vocab]
// for the base $OAR_LORA_INTEROP_BASE (default: the gqa fixture). tests/cli/lora_peft.sh then loads the adapter
// with PEFT and compares; without the variables this runs as a self-check in a temporary directory.
TEST(LoraInterop, WritesAdapterAndLogits) {
  const char* env_dir = std::getenv("OAR_LORA_INTEROP_DIR");
  const char* env_base = std::getenv("OAR_LORA_INTEROP_BASE");
  std::unique_ptr<TempDir> tmp;
  std::string dir;
  if (env_dir && *env_dir) {
    dir = env_dir;
    fs::create_directories(dir);
  } else {
    tmp = std::make_unique<TempDir>("interop");
    dir = tmp->path;
  }
  const std::string base = env_base && *env_base ? env_base : model_dir("gqa");
  const LlamaConfig cfg = load_hf_config(base + "/config.json");
  LoraAdapter a = random_adapter(cfg, 4, 8, lora_projection_names(), 2024);
  a.base_model_name_or_path = base;
  save_lora_adapter(dir + "/adapter", a);

  auto merged = load_llama_with_lora(base, dir + "/adapter", DType::F32);
  auto plain = LlamaModel::load(base, DType::F32);
  std::mt19937_64 rng(99);
  std::vector<std::pair<std::string, Tensor>> out;
  int i = 0;
  for (int64_t len : {5, 23}) {
    Tensor ids = Tensor::empty({len}, DType::I32);
    std::vector<int32_t> v(static_cast<size_t>(len));
    for (auto& x : v) x = int32_t(3 + rng() % uint64_t(cfg.vocab_size - 3));
    v[0] = int32_t(cfg.bos_token_id);
    std::copy(v.begin(), v.end(), ids.data<int32_t>());
    Tensor logits = prompt_logits(*merged, v);
    EXPECT_GE(rel_err(prompt_logits(*plain, v), logits), 0.05) << "the random adapter should change the logits";
    out.emplace_back("ids_" + std::to_string(i), ids);
    out.emplace_back("logits_" + std::to_string(i), logits);
    i++;
  }
  write_safetensors(dir + "/oar_logits.safetensors", out);
}
