// Hugging Face config.json <-> LlamaConfig. The rule: every field that changes the math is either implemented or
// refused with an error naming the file and the field; missing fields take the defaults of transformers' config
// class for that architecture (4.46), so that oar and transformers read the same file the same way.
#include "core/model_config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/format.h"
#include "core/fs.h"
#include "core/json_io.h"

namespace oar {
namespace {

using json = nlohmann::json;

// Architectures whose forward pass is exactly Llama's with our fields:
//  - Qwen2ForCausalLM: Llama + q/k/v biases (no o_proj bias), head_dim = hidden/heads, no sliding window.
//  - MistralForCausalLM: Llama without biases, as long as sliding_window is null (transformers 4.46 also ignores
//    rope_scaling for Mistral, so a scaled Mistral config is refused rather than guessed).
enum class Family { Llama, Qwen2, Mistral };

struct FamilyNames {
  Family family;
  const char* architecture;
  const char* model_type;
};
constexpr FamilyNames kFamilies[] = {
    {Family::Llama, "LlamaForCausalLM", "llama"},
    {Family::Qwen2, "Qwen2ForCausalLM", "qwen2"},
    {Family::Mistral, "MistralForCausalLM", "mistral"},
};
constexpr const char* kSupported = "oar supports LlamaForCausalLM; also Qwen2ForCausalLM and MistralForCausalLM";

// Caps that keep every size product (parameter counts, byte sizes) far from int64 overflow.
constexpr int64_t kMaxDim = int64_t(1) << 20;
constexpr int64_t kMaxVocab = int64_t(1) << 24;
constexpr int64_t kMaxLayers = int64_t(1) << 12;
constexpr int64_t kMaxHeads = int64_t(1) << 16;
constexpr int64_t kMaxPositions = int64_t(1) << 31;

// nlohmann's what() starts with "[json.exception.parse_error.101] "; the rest is the useful part.
const FamilyNames* family_by_architecture(const std::string& a) {
  for (const auto& f : kFamilies)
    if (a == f.architecture) return &f;
  return nullptr;
}
const FamilyNames* family_by_model_type(const std::string& t) {
  for (const auto& f : kFamilies)
    if (t == f.model_type) return &f;
  return nullptr;
}
const FamilyNames& names_of(Family fam) {
  for (const auto& f : kFamilies)
    if (f.family == fam) return f;
  return kFamilies[0];
}

// Typed access to the top-level fields of config.json; every type error names the field.
class Fields {
 public:
  Fields(const json& j, const std::string& where) : j_(j), where_(where) {}

  // Present and not null (null means "use the default" for the optional fields of transformers' configs).
  bool present(const char* key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }
  const json& at(const char* key) const { return *j_.find(key); }

  [[noreturn]] void type_error(const char* key, const char* expected, const json& v) const {
    fail(where_, std::string("field '") + key + "' must be " + expected + ", got " + v.type_name() +
                     (v.is_primitive() ? " " + v.dump(-1, ' ', false, json::error_handler_t::replace) : ""));
  }

  int64_t integer(const json& v, const char* key) const {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      type_error(key, "an integer that fits in 64 bits", v);
    if (!v.is_number_integer()) type_error(key, "an integer", v);
    return v.get<int64_t>();
  }
  int64_t integer(const char* key, int64_t def) const { return present(key) ? integer(at(key), key) : def; }
  // A required-if-written field: null is refused, absence gives the default.
  int64_t strict_integer(const char* key, int64_t def) const {
    auto it = j_.find(key);
    if (it == j_.end()) return def;
    return integer(*it, key);
  }
  double number(const json& v, const char* key) const {
    if (!v.is_number()) type_error(key, "a number", v);
    return v.get<double>();
  }
  double strict_number(const char* key, double def) const {
    auto it = j_.find(key);
    if (it == j_.end()) return def;
    return number(*it, key);
  }
  bool boolean(const char* key, bool def) const {
    auto it = j_.find(key);
    if (it == j_.end()) return def;
    if (!it->is_boolean()) type_error(key, "true or false", *it);
    return it->get<bool>();
  }
  std::string string(const char* key, const std::string& def) const {
    if (!present(key)) return def;
    const json& v = at(key);
    if (!v.is_string()) type_error(key, "a string", v);
    return v.get<std::string>();
  }

 private:
  const json& j_;
  const std::string& where_;
};

Family detect_family(const Fields& f, const std::string& where) {
  const FamilyNames* by_arch = nullptr;
  if (f.present("architectures")) {
    const json& a = f.at("architectures");
    if (!a.is_array() || a.empty()) f.type_error("architectures", "a non-empty list of strings", a);
    for (const json& e : a) {
      if (!e.is_string()) f.type_error("architectures", "a list of strings", a);
      const FamilyNames* fam = family_by_architecture(e.get<std::string>());
      if (!fam) fail(where, "unknown architecture " + in_quotes(e.get<std::string>()) + " (" + kSupported + ")");
      if (by_arch && by_arch != fam)
        fail(where, "architectures lists both " + std::string(by_arch->architecture) + " and " + fam->architecture);
      by_arch = fam;
    }
  }
  const FamilyNames* by_type = nullptr;
  if (f.present("model_type")) {
    std::string t = f.string("model_type", "");
    by_type = family_by_model_type(t);
    if (!by_type) fail(where, "unknown model_type " + in_quotes(t) + " (" + kSupported + ")");
  }
  // transformers picks the class from model_type; a disagreeing architectures list means a broken file.
  if (by_arch && by_type && by_arch != by_type)
    fail(where, "architecture " + std::string(by_arch->architecture) + " does not match model_type '" +
                    by_type->model_type + "'");
  if (by_type) return by_type->family;
  if (by_arch) return by_arch->family;
  fail(where, std::string("neither 'architectures' nor 'model_type' says which model this is (") + kSupported + ")");
}

// transformers' defaults (LlamaConfig, Qwen2Config, MistralConfig in 4.46) for fields the file leaves out.
LlamaConfig defaults_for(Family fam) {
  LlamaConfig c;
  c.architecture = names_of(fam).architecture;
  c.model_type = names_of(fam).model_type;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.hidden_size = 4096;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  switch (fam) {
    case Family::Llama:
      c.vocab_size = 32000;
      c.intermediate_size = 11008;
      c.max_position_embeddings = 2048;
      break;
    case Family::Qwen2:
      c.vocab_size = 151936;
      c.intermediate_size = 22016;
      c.max_position_embeddings = 32768;
      c.bos_token_id = -1;  // Qwen2Config sets none
      c.eos_token_ids = {};
      break;
    case Family::Mistral:
      c.vocab_size = 32000;
      c.intermediate_size = 14336;
      c.max_position_embeddings = 4096 * 32;
      break;
  }
  return c;
}

RopeScaling parse_rope_scaling(const json& r, const Fields& f, const std::string& where) {
  if (!r.is_object()) f.type_error("rope_scaling", "an object or null", r);
  // transformers copies a legacy "type" over "rope_type" when both are present; do the same.
  const json* t = nullptr;
  if (r.contains("type") && !r["type"].is_null()) t = &r["type"];
  else if (r.contains("rope_type") && !r["rope_type"].is_null()) t = &r["rope_type"];
  if (!t) fail(where, "rope_scaling has no 'rope_type'");
  if (!t->is_string()) f.type_error("rope_scaling.rope_type", "a string", *t);
  RopeScaling s;
  std::string type = t->get<std::string>();
  if (type == "default") return s;  // plain RoPE
  auto need = [&](const char* key) -> const json& {
    if (!r.contains(key) || r[key].is_null()) fail(where, "rope_scaling of type '" + type + "' needs '" + key + "'");
    return r[key];
  };
  if (type == "linear") {
    s.type = "linear";
    s.factor = f.number(need("factor"), "rope_scaling.factor");
  } else if (type == "llama3") {
    s.type = "llama3";
    s.factor = f.number(need("factor"), "rope_scaling.factor");
    s.low_freq_factor = f.number(need("low_freq_factor"), "rope_scaling.low_freq_factor");
    s.high_freq_factor = f.number(need("high_freq_factor"), "rope_scaling.high_freq_factor");
    s.original_max_position_embeddings =
        f.integer(need("original_max_position_embeddings"), "rope_scaling.original_max_position_embeddings");
  } else {
    fail(where, "rope_scaling type " + in_quotes(type) + " is not supported (oar implements llama3 and linear)");
  }
  return s;
}

}  // namespace

LlamaConfig parse_hf_config(const std::string& json_text, const std::string& where) {
  json j = parse_json(json_text, where);
  if (!j.is_object()) fail(where, std::string("invalid config: expected a JSON object, got ") + j.type_name());
  Fields f(j, where);
  const Family fam = detect_family(f, where);
  LlamaConfig c = defaults_for(fam);

  c.vocab_size = f.strict_integer("vocab_size", c.vocab_size);
  c.hidden_size = f.strict_integer("hidden_size", c.hidden_size);
  c.intermediate_size = f.strict_integer("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = f.strict_integer("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = f.strict_integer("num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  c.max_position_embeddings = f.strict_integer("max_position_embeddings", c.max_position_embeddings);
  c.rms_norm_eps = f.strict_number("rms_norm_eps", c.rms_norm_eps);
  c.rope_theta = f.strict_number("rope_theta", c.rope_theta);
  c.initializer_range = f.strict_number("initializer_range", c.initializer_range);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.torch_dtype = f.string("torch_dtype", c.torch_dtype);

  // head_dim: explicit for Llama/Mistral; Qwen2's attention always uses hidden/heads (transformers 4.46 reads a
  // head_dim field only in its RoPE), so there a written head_dim must agree.
  if (c.hidden_size <= 0 || c.num_attention_heads <= 0)
    fail(where, "hidden_size and num_attention_heads must be positive, got " + std::to_string(c.hidden_size) +
                    " and " + std::to_string(c.num_attention_heads));
  const bool even_split = c.hidden_size % c.num_attention_heads == 0;
  if (f.present("head_dim")) {
    c.head_dim = f.integer(f.at("head_dim"), "head_dim");
    if (fam == Family::Qwen2 && (!even_split || c.head_dim != c.hidden_size / c.num_attention_heads))
      fail(where, "head_dim " + std::to_string(c.head_dim) +
                      " differs from hidden_size / num_attention_heads, which Qwen2ForCausalLM uses");
  } else {
    if (!even_split)
      fail(where, "hidden_size " + std::to_string(c.hidden_size) + " is not divisible by num_attention_heads " +
                      std::to_string(c.num_attention_heads) + " (and there is no head_dim)");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }

  if (f.present("rope_scaling")) {
    RopeScaling s = parse_rope_scaling(f.at("rope_scaling"), f, where);
    if (fam == Family::Mistral && !s.type.empty())
      fail(where, "rope_scaling is not applied by MistralForCausalLM in transformers; refusing to guess");
    c.rope_scaling = s;
  }
  if (f.present("partial_rotary_factor") &&
      f.number(f.at("partial_rotary_factor"), "partial_rotary_factor") != 1.0)
    fail(where, "partial_rotary_factor other than 1.0 is not supported");
  // PaddleNLP's own keys for math oar does not implement (its config.json carries them at their defaults).
  for (const char* key : {"alibi", "use_long_sequence_strategies"})
    if (f.present(key) && f.boolean(key, false)) fail(where, std::string(key) + "=true (PaddleNLP) is not supported");
  if (f.present("rope_scaling_type") && !f.at("rope_scaling_type").is_null())
    fail(where, "rope_scaling_type " + in_quotes(f.at("rope_scaling_type").dump()) +
                    " (PaddleNLP) is not supported; only unscaled RoPE is read from PaddleNLP configs");

  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu") fail(where, "hidden_act " + in_quotes(act) + " is not supported (oar implements silu)");

  // Biases (see the comment in model_config.h). Qwen2 and Mistral fix them by architecture; transformers ignores the keys.
  const bool attention_bias = f.boolean("attention_bias", false);
  const bool mlp_bias = f.boolean("mlp_bias", false);
  switch (fam) {
    case Family::Llama:
      c.attention_bias = c.o_proj_bias = attention_bias;
      if (mlp_bias) fail(where, "mlp_bias=true is not supported (biases on gate/up/down_proj)");
      if (int64_t tp = f.integer("pretraining_tp", 1); tp != 1)
        fail(where, "pretraining_tp " + std::to_string(tp) +
                        " is not supported (only 1: it splits the projections and changes the rounding)");
      break;
    case Family::Qwen2:
      c.attention_bias = true;
      c.o_proj_bias = false;
      break;
    case Family::Mistral:
      c.attention_bias = c.o_proj_bias = false;
      break;
  }

  // Sliding-window attention is not implemented. Mistral applies a window whenever sliding_window is set
  // (and defaults it to 4096 when the key is absent); the others only with use_sliding_window.
  const bool use_sw = f.boolean("use_sliding_window", false);
  if (fam == Family::Mistral) {
    if (!j.contains("sliding_window"))
      fail(where, "sliding_window is absent, so MistralForCausalLM would use a 4096-token window; oar needs it null");
    if (f.present("sliding_window"))
      fail(where, "sliding_window " + f.at("sliding_window").dump() + " is not supported (sliding-window attention)");
  } else if (use_sw && f.present("sliding_window")) {
    fail(where, "use_sliding_window=true with sliding_window " + f.at("sliding_window").dump() +
                    " is not supported (sliding-window attention)");
  }

  // PaddleNLP's PTQ output (a quant_type, float weights with SmoothQuant folded into the norms and q/k/v, gate/up,
  // scale files beside them) loads as a float model. Its Shift, and smoothing of o_proj/down_proj
  // (shift_smooth_all_linears), live in extra tensors (smooth_weight, shift_bias, norm biases) that oar does not
  // apply: refused, as are other quantization_configs (Hugging Face's quant_method: GPTQ, AWQ, ...), which store
  // quantized tensors. PaddleNLP writes every field, unset ones as null.
  if (f.present("quantization_config")) {
    const nlohmann::json& q = f.at("quantization_config");
    auto set = [&](const char* k) { return q.is_object() && q.contains(k) && !q[k].is_null(); };
    auto on = [&](const char* k) { return set(k) && !(q[k].is_boolean() && !q[k].get<bool>()); };
    if (!q.is_object() || !set("quant_type") || !q["quant_type"].is_string() || set("quant_method") ||
        set("weight_quantize_algo"))
      fail(where, "quantization_config is present: quantized checkpoints are not supported (PaddleNLP's PTQ output, "
                  "with float weights and a quant_type, is)");
    for (const char* k : {"shift", "shift_smooth_all_linears"})
      if (on(k))
        fail(where, std::string("quantization_config: ") + k + " is true: PaddleNLP's Shift and smoothing of "
                    "o_proj/down_proj keep extra tensors oar does not apply (PTQ with shift and smooth_all_linears false loads)");
  }

  // Special tokens: bos int or null, eos int or list or null, pad int or null (negative = none).
  if (j.contains("bos_token_id"))
    c.bos_token_id = f.present("bos_token_id") ? f.integer(f.at("bos_token_id"), "bos_token_id") : -1;
  if (j.contains("eos_token_id")) {
    c.eos_token_ids.clear();
    if (f.present("eos_token_id")) {
      const json& e = f.at("eos_token_id");
      if (e.is_array()) {
        for (const json& id : e) c.eos_token_ids.push_back(f.integer(id, "eos_token_id"));
      } else {
        c.eos_token_ids.push_back(f.integer(e, "eos_token_id"));
      }
    }
  }
  c.pad_token_id = f.integer("pad_token_id", -1);
  if (c.pad_token_id < 0) c.pad_token_id = -1;

  c.validate(where);
  return c;
}

LlamaConfig load_hf_config(const std::string& config_json_path) {
  return parse_hf_config(read_file(config_json_path), config_json_path);
}

void LlamaConfig::validate(const std::string& where) const {
  auto in_range = [&](const char* name, int64_t v, int64_t cap) {
    if (v <= 0) fail(where, std::string(name) + " must be positive, got " + std::to_string(v));
    if (v > cap) fail(where, std::string(name) + " " + std::to_string(v) + " is larger than oar supports (" +
                                 std::to_string(cap) + ")");
  };
  in_range("vocab_size", vocab_size, kMaxVocab);
  in_range("hidden_size", hidden_size, kMaxDim);
  in_range("intermediate_size", intermediate_size, kMaxDim);
  in_range("num_hidden_layers", num_hidden_layers, kMaxLayers);
  in_range("num_attention_heads", num_attention_heads, kMaxHeads);
  in_range("num_key_value_heads", num_key_value_heads, kMaxHeads);
  in_range("head_dim", head_dim, kMaxDim);
  in_range("max_position_embeddings", max_position_embeddings, kMaxPositions);
  in_range("num_attention_heads * head_dim", q_dim(), kMaxDim);
  if (num_attention_heads % num_key_value_heads != 0)
    fail(where, "num_attention_heads " + std::to_string(num_attention_heads) +
                    " is not a multiple of num_key_value_heads " + std::to_string(num_key_value_heads));
  if (head_dim % 2 != 0) fail(where, "head_dim " + std::to_string(head_dim) + " must be even (rotary pairs)");
  if (!(std::isfinite(rms_norm_eps) && rms_norm_eps > 0))
    fail(where, "rms_norm_eps must be a positive number, got " + number_text(rms_norm_eps));
  if (!(std::isfinite(rope_theta) && rope_theta > 0))
    fail(where, "rope_theta must be a positive number, got " + number_text(rope_theta));

  const RopeScaling& s = rope_scaling;
  if (!s.type.empty()) {
    if (s.type != "linear" && s.type != "llama3")
      fail(where, "rope_scaling type '" + s.type + "' is not supported (oar implements llama3 and linear)");
    if (!(std::isfinite(s.factor) && s.factor > 0))
      fail(where, "rope_scaling.factor must be a positive number, got " + number_text(s.factor));
    if (s.type == "llama3") {
      if (!(std::isfinite(s.low_freq_factor) && std::isfinite(s.high_freq_factor) && s.low_freq_factor > 0 &&
            s.high_freq_factor > s.low_freq_factor))
        fail(where, "rope_scaling needs 0 < low_freq_factor < high_freq_factor, got " +
                        number_text(s.low_freq_factor) + " and " + number_text(s.high_freq_factor));
      in_range("rope_scaling.original_max_position_embeddings", s.original_max_position_embeddings, kMaxPositions);
    }
  }
  if (mlp_bias) fail(where, "mlp_bias=true is not supported (biases on gate/up/down_proj)");
  if (o_proj_bias && !attention_bias) fail(where, "an o_proj bias without q/k/v biases is not supported");

  // The bias layout must be one that the architecture can express (to_hf_config_json writes it back).
  const FamilyNames* fam = family_by_architecture(architecture);
  if (!fam) fail(where, "unknown architecture " + in_quotes(architecture) + " (" + kSupported + ")");
  if (fam->family == Family::Llama && attention_bias != o_proj_bias)
    fail(where, "LlamaForCausalLM has biases on all of q/k/v/o_proj or on none");
  if (fam->family == Family::Qwen2 && (!attention_bias || o_proj_bias))
    fail(where, "Qwen2ForCausalLM has q/k/v biases and no o_proj bias");
  if (fam->family == Family::Mistral && attention_bias)
    fail(where, "MistralForCausalLM has no attention biases");
  if (fam->family == Family::Qwen2 && q_dim() != hidden_size)
    fail(where, "Qwen2ForCausalLM needs num_attention_heads * head_dim == hidden_size");
}

int64_t LlamaConfig::num_parameters() const {
  const int64_t h = hidden_size;
  int64_t per_layer = 2 * h                                  // input and post-attention RMSNorm
                      + h * q_dim() + 2 * h * kv_dim()       // q, k, v
                      + q_dim() * h                          // o
                      + 3 * h * intermediate_size;           // gate, up, down
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim();
  if (o_proj_bias) per_layer += h;
  const int64_t embed = vocab_size * h;
  return embed + num_hidden_layers * per_layer + h + (tie_word_embeddings ? 0 : embed);
}

std::string to_hf_config_json(const LlamaConfig& c) {
  // Hugging Face has no field for interleaved RoPE: the writer must permute q/k first, or the file would lie.
  if (c.rope_layout != RopeLayout::RotateHalf)
    fail("config.json", "cannot write an interleaved-RoPE (llama2.c) config: permute q_proj/k_proj to rotate-half "
                        "order and set rope_layout to RotateHalf first");
  c.validate("config.json");
  const Family fam = family_by_architecture(c.architecture)->family;

  nlohmann::ordered_json j;
  j["architectures"] = {c.architecture};
  j["model_type"] = names_of(fam).model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    nlohmann::ordered_json r;
    r["rope_type"] = c.rope_scaling.type;
    r["factor"] = c.rope_scaling.factor;
    if (c.rope_scaling.type == "llama3") {
      r["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      r["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  switch (fam) {
    case Family::Llama:
      j["attention_bias"] = c.attention_bias;
      j["mlp_bias"] = false;
      j["pretraining_tp"] = 1;
      break;
    case Family::Qwen2:
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      break;
    case Family::Mistral:
      j["sliding_window"] = nullptr;
      break;
  }
  j["bos_token_id"] = c.bos_token_id >= 0 ? nlohmann::ordered_json(c.bos_token_id) : nlohmann::ordered_json();
  if (c.eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else j["eos_token_id"] = c.eos_token_ids;
  j["pad_token_id"] = c.pad_token_id >= 0 ? nlohmann::ordered_json(c.pad_token_id) : nlohmann::ordered_json();
  j["initializer_range"] = c.initializer_range;
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

LlamaConfig llama_preset(const std::string& name) {
  LlamaConfig c;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  if (name == "tinyllama-1.1b") {  // TinyLlama-1.1B's shape
    c.hidden_size = 2048; c.intermediate_size = 5632; c.num_hidden_layers = 22;
    c.num_attention_heads = 32; c.num_key_value_heads = 4; c.vocab_size = 32000; c.max_position_embeddings = 2048;
  } else if (name == "llama2-13b") {  // Llama-2-13B's shape, the seed's model
    c.hidden_size = 5120; c.intermediate_size = 13824; c.num_hidden_layers = 40;
    c.num_attention_heads = 40; c.num_key_value_heads = 40; c.vocab_size = 32000; c.max_position_embeddings = 4096;
  } else if (name == "llama-110m") {  // the training benchmark's shape
    c.hidden_size = 768; c.intermediate_size = 2048; c.num_hidden_layers = 12;
    c.num_attention_heads = 12; c.num_key_value_heads = 12; c.vocab_size = 32000; c.max_position_embeddings = 1024;
  } else if (name == "tiny") {
    c.hidden_size = 64; c.intermediate_size = 172; c.num_hidden_layers = 2;
    c.num_attention_heads = 4; c.num_key_value_heads = 2; c.vocab_size = 512; c.max_position_embeddings = 512;
  } else {
    throw Error("--preset: unknown preset '" + name + "' (tinyllama-1.1b, llama2-13b, llama-110m, tiny)");
  }
  c.head_dim = c.hidden_size / c.num_attention_heads;
  return c;
}

}  // namespace oar
