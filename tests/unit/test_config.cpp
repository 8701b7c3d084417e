// config.json parsing: real Llama/Qwen2/Mistral configs, every refusal, and the to_hf_config_json round trip.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "test_errors.h"

using namespace oar;

namespace {

using oar::test::fails_with;

const char* kWhere = "models/x/config.json";

::testing::AssertionResult config_fails(const std::string& json, const std::vector<std::string>& parts) {
  auto r = fails_with([&] { parse_hf_config(json, kWhere); }, parts);
  if (!r) r << "\n  for config " << json;
  return r;
}

// A small valid Llama config with one field replaced/added (raw JSON text for the value).
std::string tiny_with(const std::string& key = "", const std::string& value = "") {
  std::string base = R"("architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "hidden_act": "silu")";
  if (key.empty()) return "{" + base + "}";
  // Later duplicate keys win in nlohmann::json, so appending overrides the base value.
  return "{" + base + ", \"" + key + "\": " + value + "}";
}

const char* kLlama2_7b = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})";

const char* kLlama31_8b = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
  "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "vocab_size": 128256})";

const char* kLlama32_1b = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000, "eos_token_id": 128001,
  "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
  "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 128256})";

const char* kLlama2_70b = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 8192, "intermediate_size": 28672, "max_position_embeddings": 4096, "model_type": "llama",
  "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false, "vocab_size": 32000})";

const char* kQwen25_05b = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
  "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
  "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
  "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

const char* kMistral7b_v02 = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "vocab_size": 32000})";

void expect_same(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);  // exact: the JSON writer prints round-trip digits
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  if (!a.rope_scaling.type.empty()) {
    EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
    if (a.rope_scaling.type == "llama3") {
      EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
      EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
      EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
    }
  }
  EXPECT_EQ(a.rope_layout, b.rope_layout);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.o_proj_bias, b.o_proj_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.initializer_range, b.initializer_range);
}

}  // namespace

TEST(ConfigTest, Llama2_7b) {
  LlamaConfig c = parse_hf_config(kLlama2_7b, kWhere);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // default
  EXPECT_TRUE(c.rope_scaling.type.empty());
  EXPECT_EQ(c.rope_layout, RopeLayout::RotateHalf);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.pad_token_id, -1);
  EXPECT_EQ(c.num_parameters(), 6738415616);  // Llama-2-7b's published count
}

TEST(ConfigTest, Llama31WithLlama3RopeScaling) {
  LlamaConfig c = parse_hf_config(kLlama31_8b, kWhere);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.num_parameters(), 8030261248);  // Llama-3.1-8B
}

TEST(ConfigTest, TiedWithExplicitHeadDim) {
  LlamaConfig c = parse_hf_config(kLlama32_1b, kWhere);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.num_parameters(), 1235814400);  // Llama-3.2-1B: no separate lm_head
}

TEST(ConfigTest, GroupedQueryAttention) {
  LlamaConfig c = parse_hf_config(kLlama2_70b, kWhere);
  EXPECT_EQ(c.num_attention_heads / c.num_key_value_heads, 8);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.q_dim(), 8192);
  EXPECT_EQ(c.num_parameters(), 68976648192);  // Llama-2-70b
}

TEST(ConfigTest, HeadDimNotHiddenOverHeads) {
  LlamaConfig c = parse_hf_config(tiny_with("head_dim", "32"), kWhere);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 128);  // 4 heads x 32, wider than hidden 64: allowed for Llama
}

TEST(ConfigTest, DefaultsFollowTransformers) {
  // Only the sizes given: kv heads = heads, head_dim = hidden/heads, theta 1e4, eps 1e-6, untied, bos 1, eos 2.
  LlamaConfig c = parse_hf_config(R"({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                      "intermediate_size": 100, "num_hidden_layers": 1, "vocab_size": 10})",
                                  kWhere);
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  // null means "default" for the optional fields
  LlamaConfig d = parse_hf_config(tiny_with("num_key_value_heads", "null"), kWhere);
  EXPECT_EQ(d.num_key_value_heads, 4);
  LlamaConfig e = parse_hf_config(tiny_with("eos_token_id", "null"), kWhere);
  EXPECT_TRUE(e.eos_token_ids.empty());
  LlamaConfig f = parse_hf_config(tiny_with("pad_token_id", "0"), kWhere);
  EXPECT_EQ(f.pad_token_id, 0);
}

TEST(ConfigTest, LinearRopeScalingAndLegacyTypeKey) {
  LlamaConfig c = parse_hf_config(tiny_with("rope_scaling", R"({"type": "linear", "factor": 2})"), kWhere);
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
  LlamaConfig d = parse_hf_config(tiny_with("rope_scaling", R"({"rope_type": "default"})"), kWhere);
  EXPECT_TRUE(d.rope_scaling.type.empty());
}

TEST(ConfigTest, LlamaAttentionBiasCoversOProj) {
  LlamaConfig c = parse_hf_config(tiny_with("attention_bias", "true"), kWhere);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.o_proj_bias);  // transformers' LlamaAttention: q, k, v and o_proj all take attention_bias
  LlamaConfig plain = parse_hf_config(tiny_with(), kWhere);
  EXPECT_EQ(c.num_parameters() - plain.num_parameters(), 2 * (64 + 2 * 32 + 64));
}

TEST(ConfigTest, Qwen2HasQkvBiasOnly) {
  LlamaConfig c = parse_hf_config(kQwen25_05b, kWhere);
  EXPECT_EQ(c.architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.num_parameters(), 494032768);  // Qwen2.5-0.5B
}

TEST(ConfigTest, MistralNeedsNullSlidingWindow) {
  LlamaConfig c = parse_hf_config(kMistral7b_v02, kWhere);
  EXPECT_EQ(c.architecture, "MistralForCausalLM");
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.num_parameters(), 7241732096);  // Mistral-7B
  std::string v01 = kMistral7b_v02;
  v01.replace(v01.find("\"sliding_window\": null"), 22, "\"sliding_window\": 4096");
  EXPECT_TRUE(config_fails(v01, {kWhere, "sliding_window"}));
  std::string absent = kMistral7b_v02;
  absent.replace(absent.find("\"sliding_window\": null,"), 23, "");
  EXPECT_TRUE(config_fails(absent, {kWhere, "sliding_window"}));
  std::string scaled = kMistral7b_v02;
  scaled.replace(scaled.find("\"sliding_window\": null"), 22,
                 "\"sliding_window\": null, \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}");
  EXPECT_TRUE(config_fails(scaled, {kWhere, "rope_scaling"}));
}

TEST(ConfigTest, RefusesUnknownArchitecture) {
  EXPECT_TRUE(config_fails(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})",
                           {kWhere, "unknown architecture 'GPT2LMHeadModel'", "oar supports LlamaForCausalLM"}));
  EXPECT_TRUE(config_fails(R"({"model_type": "gemma"})", {kWhere, "unknown model_type 'gemma'"}));
  EXPECT_TRUE(config_fails(R"({"hidden_size": 64})", {kWhere, "oar supports LlamaForCausalLM"}));
  EXPECT_TRUE(config_fails(R"({"architectures": ["LlamaForCausalLM"], "model_type": "qwen2"})",
                           {kWhere, "does not match model_type"}));
  EXPECT_TRUE(config_fails(tiny_with("architectures", R"(["LlamaForSequenceClassification"])"),
                           {kWhere, "unknown architecture"}));
}

TEST(ConfigTest, RefusesUnsupportedMath) {
  for (const char* type : {"dynamic", "yarn", "longrope"})
    EXPECT_TRUE(config_fails(tiny_with("rope_scaling", std::string(R"({"rope_type": ")") + type +
                                                           R"(", "factor": 4.0})"),
                             {kWhere, "rope_scaling type '" + std::string(type) + "' is not supported"}));
  EXPECT_TRUE(config_fails(tiny_with("rope_scaling", R"({"rope_type": "llama3", "factor": 8.0})"),
                           {kWhere, "low_freq_factor"}));
  EXPECT_TRUE(config_fails(tiny_with("rope_scaling", R"({"factor": 8.0})"), {kWhere, "rope_type"}));
  EXPECT_TRUE(config_fails(tiny_with("mlp_bias", "true"), {kWhere, "mlp_bias"}));
  EXPECT_TRUE(config_fails(tiny_with("hidden_act", R"("gelu")"), {kWhere, "hidden_act 'gelu'"}));
  EXPECT_TRUE(config_fails(tiny_with("pretraining_tp", "2"), {kWhere, "pretraining_tp 2"}));
  EXPECT_TRUE(config_fails(tiny_with("partial_rotary_factor", "0.5"), {kWhere, "partial_rotary_factor"}));
  // PaddleNLP's keys: at their defaults (as its config.json writes them) they are fine, otherwise refused.
  EXPECT_TRUE(config_fails(tiny_with("alibi", "true"), {kWhere, "alibi=true"}));
  EXPECT_TRUE(config_fails(tiny_with("use_long_sequence_strategies", "true"), {kWhere, "use_long_sequence_strategies"}));
  EXPECT_TRUE(config_fails(tiny_with("rope_scaling_type", R"("linear")"), {kWhere, "rope_scaling_type"}));
  EXPECT_NO_THROW(parse_hf_config(tiny_with("rope_scaling_type", "null"), kWhere));
  EXPECT_NO_THROW(parse_hf_config(tiny_with("alibi", "false"), kWhere));
  EXPECT_TRUE(config_fails(
      R"({"model_type": "llama", "use_sliding_window": true, "sliding_window": 4096})", {kWhere, "sliding_window"}));
  EXPECT_TRUE(config_fails(tiny_with("quantization_config", R"({"quant_method": "gptq"})"),
                           {kWhere, "quantization_config"}));
  // PaddleNLP's PTQ output keeps float weights: it loads (its unset fields are null), unless Shift or the
  // smoothing of all linears left extra tensors
  EXPECT_NO_THROW(parse_hf_config(tiny_with("quantization_config", R"({"quant_type": "a8w8", "smooth": true,
      "shift": false, "shift_smooth_all_linears": false, "quant_method": null, "weight_quantize_algo": null})"), kWhere));
  EXPECT_TRUE(config_fails(tiny_with("quantization_config", R"({"quant_type": "a8w8", "shift_smooth_all_linears": true})"),
                           {kWhere, "shift_smooth_all_linears is true"}));
  EXPECT_TRUE(config_fails(tiny_with("quantization_config", R"({"quant_type": "a8w8", "shift": true})"),
                           {kWhere, "shift is true"}));
  EXPECT_TRUE(config_fails(tiny_with("quantization_config", R"({"quant_type": null})"), {kWhere, "quantization_config"}));
  std::string qwen_sw = kQwen25_05b;
  qwen_sw.replace(qwen_sw.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
  EXPECT_TRUE(config_fails(qwen_sw, {kWhere, "sliding_window"}));
}

TEST(ConfigTest, RefusesImpossibleHeadCounts) {
  // 64 is not divisible by 3 and there is no head_dim to say otherwise
  EXPECT_TRUE(config_fails(tiny_with("num_attention_heads", "3"), {kWhere, "not divisible", "num_attention_heads"}));
  EXPECT_TRUE(config_fails(tiny_with("num_key_value_heads", "3"), {kWhere, "num_key_value_heads 3"}));
  EXPECT_TRUE(config_fails(tiny_with("num_attention_heads", "0"), {kWhere, "must be positive"}));
  EXPECT_TRUE(config_fails(tiny_with("num_hidden_layers", "0"), {kWhere, "num_hidden_layers must be positive"}));
  EXPECT_TRUE(config_fails(tiny_with("vocab_size", "-5"), {kWhere, "vocab_size must be positive"}));
  EXPECT_TRUE(config_fails(tiny_with("head_dim", "15"), {kWhere, "head_dim 15 must be even"}));
  EXPECT_TRUE(config_fails(tiny_with("rms_norm_eps", "0"), {kWhere, "rms_norm_eps"}));
  EXPECT_TRUE(config_fails(tiny_with("vocab_size", "1000000000000"), {kWhere, "larger than oar supports"}));
}

TEST(ConfigTest, RefusesInvalidJsonAndWrongTypes) {
  EXPECT_TRUE(config_fails(R"({"model_type": "llama", )", {kWhere, "invalid JSON"}));
  EXPECT_TRUE(config_fails("", {kWhere, "invalid JSON"}));
  EXPECT_TRUE(config_fails("[1, 2]", {kWhere, "expected a JSON object"}));
  EXPECT_TRUE(config_fails(tiny_with("hidden_size", R"("big")"), {kWhere, "'hidden_size'", "integer", "string"}));
  EXPECT_TRUE(config_fails(tiny_with("hidden_size", "64.5"), {kWhere, "'hidden_size'"}));
  EXPECT_TRUE(config_fails(tiny_with("hidden_size", "null"), {kWhere, "'hidden_size'"}));
  EXPECT_TRUE(config_fails(tiny_with("tie_word_embeddings", "1"), {kWhere, "'tie_word_embeddings'"}));
  EXPECT_TRUE(config_fails(tiny_with("rope_theta", R"("1e4")"), {kWhere, "'rope_theta'"}));
  EXPECT_TRUE(config_fails(tiny_with("eos_token_id", R"([2, "x"])"), {kWhere, "'eos_token_id'"}));
  EXPECT_TRUE(config_fails(tiny_with("rope_scaling", R"("llama3")"), {kWhere, "'rope_scaling'"}));
  EXPECT_TRUE(config_fails(tiny_with("architectures", R"("LlamaForCausalLM")"), {kWhere, "'architectures'"}));
  // a control character in a value stays escaped: the message is one line
  EXPECT_TRUE(config_fails(tiny_with("hidden_act", R"("ge\nlu")"), {kWhere, "hidden_act 'ge\\nlu'"}));
}

TEST(ConfigTest, LoadNamesTheFile) {
  EXPECT_TRUE(fails_with([] { load_hf_config("/nonexistent/dir/config.json"); }, {"/nonexistent/dir/config.json"}));
}

TEST(ConfigTest, HfJsonRoundTrip) {
  for (const char* text : {kLlama2_7b, kLlama31_8b, kLlama32_1b, kLlama2_70b, kQwen25_05b, kMistral7b_v02}) {
    LlamaConfig a = parse_hf_config(text, kWhere);
    std::string written = to_hf_config_json(a);
    SCOPED_TRACE(written);
    LlamaConfig b = parse_hf_config(written, "written/config.json");
    expect_same(a, b);
  }
  LlamaConfig c = parse_hf_config(tiny_with("rope_scaling", R"({"type": "linear", "factor": 2.5})"), kWhere);
  c.attention_bias = c.o_proj_bias = true;
  c.eos_token_ids = {};
  c.bos_token_id = -1;
  c.pad_token_id = 0;
  c.rms_norm_eps = 1.234567890123e-7;
  expect_same(c, parse_hf_config(to_hf_config_json(c), kWhere));
}

TEST(ConfigTest, WriterRefusesWhatHfCannotSay) {
  LlamaConfig c = parse_hf_config(tiny_with(), kWhere);
  c.rope_layout = RopeLayout::Interleaved;  // llama2.c: q/k must be permuted before they are HF weights
  EXPECT_TRUE(fails_with([&] { to_hf_config_json(c); }, {"config.json", "interleaved"}));
  c.rope_layout = RopeLayout::RotateHalf;
  c.attention_bias = true;  // q/k/v bias without o_proj bias is Qwen2's layout, not Llama's
  EXPECT_TRUE(fails_with([&] { to_hf_config_json(c); }, {"LlamaForCausalLM"}));
  c.attention_bias = false;
  c.num_key_value_heads = 3;
  EXPECT_TRUE(fails_with([&] { to_hf_config_json(c); }, {"num_key_value_heads 3"}));
}

TEST(ConfigTest, SharedStories260kConfig) {
  const std::string path = std::string(OAR_SHARED_DATA_DIR) + "/stories260K_hf/config.json";
  if (!file_exists(path)) GTEST_SKIP() << "shared data not found at " << path << " (../shared/data is optional)";
  LlamaConfig c = load_hf_config(path);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
}
