// Llama-family model configuration, as read from a Hugging Face config.json (or a llama2.c header).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace oar {

// The seven projections of a decoder layer, in Hugging Face's parameter order: "model.layers.<i>." + path +
// ".weight" names each.
inline constexpr const char* kLayerProjections[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                     "mlp.down_proj"};

enum class RopeLayout : uint8_t {
  RotateHalf,   // Hugging Face: pairs (i, i + head_dim/2)
  Interleaved,  // Meta / llama2.c: pairs (2i, 2i+1)
};

struct RopeScaling {
  std::string type;  // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string architecture = "LlamaForCausalLM";
  std::string model_type = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;  // hidden_size / num_attention_heads unless the config says otherwise
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  RopeLayout rope_layout = RopeLayout::RotateHalf;
  bool tie_word_embeddings = false;
  // Attention biases. LlamaForCausalLM's attention_bias puts a bias on q, k, v AND o_proj (both flags true);
  // Qwen2ForCausalLM always has q/k/v biases and never an o_proj bias (attention_bias true, o_proj_bias false).
  bool attention_bias = false;  // q_proj, k_proj, v_proj carry a bias
  bool o_proj_bias = false;     // o_proj carries a bias (only together with attention_bias)
  bool mlp_bias = false;        // refused when true: not supported
  std::string torch_dtype = "float32";  // informational
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  int64_t pad_token_id = -1;
  double initializer_range = 0.02;

  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t num_parameters() const;  // total weights (embedding + layers + norm + head unless tied)
  // Throws oar::Error(where: ...) for impossible values (heads not dividing, zero sizes, ...).
  void validate(const std::string& where) const;
};

// Parses DIR/config.json. Every field that would change the math and that oar does not implement is an error
// naming the file and the field (never a silent wrong answer). Throws oar::Error. Accepts LlamaForCausalLM, and
// Qwen2ForCausalLM / MistralForCausalLM where their math is Llama's (see model_config.cpp); absent fields take the
// defaults of that architecture's transformers config class.
LlamaConfig load_hf_config(const std::string& config_json_path);
LlamaConfig parse_hf_config(const std::string& json_text, const std::string& where);
// Serialises to a Hugging Face config.json text that load_hf_config and transformers both read.
std::string to_hf_config_json(const LlamaConfig& c);

// The shapes oar's tests and benchmarks build random models of: "tinyllama-1.1b" (TinyLlama-1.1B), "llama2-13b"
// (Llama-2-13B), "llama-110m" (the training benchmark's), "tiny". Untied, rms_norm_eps 1e-5. An unknown name is an oar::Error.
LlamaConfig llama_preset(const std::string& name);

}  // namespace oar
