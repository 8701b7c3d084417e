// A llama GGUF file as oar's config and Hugging Face-named weights: llama.cpp's tensor names mapped back, its
// llama.* metadata read into LlamaConfig.
#include <cstring>
#include <map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/mmap_file.h"
#include "io/gguf.h"

namespace oar {
namespace {

// llama.cpp's per-layer tensor names and Hugging Face's.
const std::map<std::string, std::string>& layer_names() {
  static const std::map<std::string, std::string> m = {
      {"attn_norm", "input_layernorm"},      {"attn_q", "self_attn.q_proj"},     {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},        {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},         {"ffn_up", "mlp.up_proj"},          {"ffn_down", "mlp.down_proj"}};
  return m;
}

// The Hugging Face name of a GGUF tensor, or "" for one oar does not know.
std::string hf_name(const std::string& g) {
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  if (g.rfind("blk.", 0) != 0) return "";
  const size_t dot1 = g.find('.', 4), dot2 = g.rfind('.');
  if (dot1 == std::string::npos || dot2 <= dot1) return "";
  const std::string layer = g.substr(4, dot1 - 4), part = g.substr(dot1 + 1, dot2 - dot1 - 1), kind = g.substr(dot2 + 1);
  if (layer.empty() || layer.size() > 6 || layer.find_first_not_of("0123456789") != std::string::npos) return "";
  auto it = layer_names().find(part);
  if (it == layer_names().end() || (kind != "weight" && kind != "bias")) return "";
  return "model.layers." + layer + "." + it->second + "." + kind;
}

class GgufWeightSource : public WeightSource {
  // Q4_0's blocks (f16 d, 16 bytes of nibbles q, w = d * (q - 8)) are weight_only_int4 in groups of 32 with the
  // nibbles as they are: the quants are copied, the scales widened to float32 (exact).
  StoredWeight q4_0_as_int4(const GgufTensorInfo& t) const {
    const int64_t in = t.shape.back(), blocks = in / 32;
    int64_t out = 1;
    for (size_t k = 0; k + 1 < t.shape.size(); k++) out *= t.shape[k];
    StoredWeight q{"weight_only_int4", Tensor::empty({out, in / 2}, DType::U8), Tensor::empty({out, blocks}, DType::F32),
                   Tensor(), 32};
    const uint8_t* src = file_.map->data() + file_.header.data_start + t.offset;
    uint8_t* quants = q.data.data<uint8_t>();
    float* scales = q.scales.data<float>();
    for (int64_t b = 0; b < out * blocks; b++) {
      uint16_t d;
      std::memcpy(&d, src + 18 * b, 2);
      scales[b] = f16_to_f32(d);
      std::memcpy(quants + 16 * b, src + 18 * b + 2, 16);
    }
    return q;
  }

 public:
  explicit GgufWeightSource(GgufFile file) : file_(std::move(file)) {
    for (const GgufTensorInfo& t : file_.header.tensors) {
      if (t.name == "rope_freqs.weight")
        fail(file_.path, "rope_freqs.weight (Llama-3.1's rope frequency factors) is not supported yet");
      const std::string hf = hf_name(t.name);
      if (hf.empty()) fail(file_.path, "tensor " + gguf_quoted(t.name) + " is not part of a Llama model that oar knows");
      by_name_[hf] = &t;
    }
  }
  bool has(const std::string& name) const override { return by_name_.count(name) > 0; }
  Tensor get(const std::string& name) const override {
    auto it = by_name_.find(name);
    if (it == by_name_.end()) fail(file_.path, "missing tensor '" + name + "'");
    return file_.tensor(*it->second);
  }
  std::string where() const override { return file_.path; }
  const Shape& shape_of(const std::string& name) const { return by_name_.at(name)->shape; }
  int quantized_bits(const std::string& name) const override {
    auto it = by_name_.find(name);
    GgufTypeLayout layout;
    return it != by_name_.end() && gguf_type_layout(uint32_t(it->second->type), layout) ? layout.bits : 0;
  }
  std::optional<StoredWeight> stored_weight(const std::string& name) const override {
    auto it = by_name_.find(name);
    if (it == by_name_.end() || it->second->type != GgufType::Q4_0) return std::nullopt;
    return q4_0_as_int4(*it->second);
  }
  void release(const std::string& name) const override {
    auto it = by_name_.find(name);
    if (it != by_name_.end()) file_.map->release(size_t(file_.header.data_start + it->second->offset), size_t(it->second->bytes));
  }
  // The names of every tensor, for the checks of open_gguf_model.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : by_name_) out.push_back(kv.first);
    return out;
  }
 private:
  GgufFile file_;
  std::map<std::string, const GgufTensorInfo*> by_name_;
};

void read_rope(const GgufHeader& h, LlamaConfig& c, const std::string& where) {
  c.rope_layout = RopeLayout::Interleaved;
  c.rope_theta = h.number_or("llama.rope.freq_base", 10000.0, where);
  const int64_t rope_dims = h.int_or("llama.rope.dimension_count", c.head_dim, where);
  if (rope_dims != c.head_dim)
    fail(where, "llama.rope.dimension_count " + std::to_string(rope_dims) + " differs from the head size " +
                    std::to_string(c.head_dim) + " (partial rotary embeddings are not supported)");
  // As llama.cpp reads it: the type defaults to linear, its factor from llama.rope.scaling.factor or the older
  // llama.rope.scale_linear; a factor of 1 (or 0, unset) is no scaling.
  const std::string scaling = h.find("llama.rope.scaling.type")
                                  ? h.require("llama.rope.scaling.type", GgufValue::String, where).s : "linear";
  const double factor = h.number_or("llama.rope.scaling.factor", h.number_or("llama.rope.scale_linear", 0.0, where), where);
  if (scaling == "none" || factor == 0.0 || factor == 1.0) return;
  if (scaling != "linear")
    fail(where, "llama.rope.scaling.type " + gguf_quoted(scaling) + " is not supported (none or linear)");
  if (!(factor > 0.0)) fail(where, "llama.rope.scaling.factor must be positive");
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = factor;
}

// torch_dtype as the dtype rule reads it: float32 only for an all-F32 file.
std::string stored_dtype(const GgufHeader& h) {
  bool bf16 = false;
  for (const GgufTensorInfo& t : h.tensors) {
    if (t.type == GgufType::BF16) bf16 = true;
    else if (t.type != GgufType::F32) return "float16";
  }
  return bf16 ? "bfloat16" : "float32";
}

LlamaConfig read_config(const GgufFile& f) {
  const GgufHeader& h = f.header;
  const std::string& where = f.path;
  const std::string arch = h.require("general.architecture", GgufValue::String, where).s;
  if (arch != "llama") fail(where, "GGUF architecture " + gguf_quoted(arch) + " is not supported (llama)");
  if (h.int_or("llama.expert_count", 0, where) > 0) fail(where, "mixture-of-experts models are not supported");
  LlamaConfig c;
  c.hidden_size = h.require("llama.embedding_length", GgufValue::Int, where).i;
  c.num_hidden_layers = h.require("llama.block_count", GgufValue::Int, where).i;
  c.intermediate_size = h.require("llama.feed_forward_length", GgufValue::Int, where).i;
  c.num_attention_heads = h.require("llama.attention.head_count", GgufValue::Int, where).i;
  c.num_key_value_heads = h.int_or("llama.attention.head_count_kv", c.num_attention_heads, where);
  if (c.num_attention_heads <= 0) fail(where, "llama.attention.head_count must be positive");
  c.head_dim = h.int_or("llama.attention.key_length", c.hidden_size / c.num_attention_heads, where);
  c.max_position_embeddings = h.int_or("llama.context_length", 2048, where);
  c.rms_norm_eps = h.require("llama.attention.layer_norm_rms_epsilon", GgufValue::Float, where).f;
  read_rope(h, c, where);
  c.bos_token_id = h.int_or("tokenizer.ggml.bos_token_id", 1, where);
  c.eos_token_ids = {h.int_or("tokenizer.ggml.eos_token_id", 2, where)};
  c.pad_token_id = h.int_or("tokenizer.ggml.padding_token_id", -1, where);
  c.torch_dtype = stored_dtype(h);
  return c;
}

// Which biases the layers carry (any layer's bias makes the model expect it on every layer, so a missing one is
// named when the weights load), and no tensor of a layer past block_count: nothing in the file goes unused.
void read_biases(const std::vector<std::string>& names, LlamaConfig& c, const std::string& where) {
  for (const std::string& n : names) {
    if (n.rfind("model.layers.", 0) != 0) continue;
    const int64_t layer = std::stoll(n.substr(13, n.find('.', 13) - 13));
    if (layer >= c.num_hidden_layers)
      fail(where, "tensor of layer " + std::to_string(layer) + ", but llama.block_count is " +
                      std::to_string(c.num_hidden_layers));
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    if (!bias) continue;
    if (n.find(".mlp.") != std::string::npos) c.mlp_bias = true;  // refused by validate
    else if (n.find(".o_proj.") != std::string::npos) c.o_proj_bias = true;
    else c.attention_bias = true;
  }
}

}  // namespace

GgufModel open_gguf_model(const std::string& path) {
  GgufFile file = GgufFile::open(path);
  GgufModel m;
  m.config = read_config(file);
  auto weights = std::make_unique<GgufWeightSource>(std::move(file));
  if (!weights->has("model.embed_tokens.weight")) fail(path, "no token_embd.weight tensor");
  m.config.vocab_size = weights->shape_of("model.embed_tokens.weight")[0];
  m.config.tie_word_embeddings = !weights->has("lm_head.weight");
  read_biases(weights->names(), m.config, path);
  m.config.validate(path);
  m.weights = std::move(weights);
  return m;
}

SpmVocab gguf_spm_vocab(const GgufHeader& h, const std::string& where) {
  const std::string model = h.require("tokenizer.ggml.model", GgufValue::String, where).s;
  if (model != "llama")
    fail(where, "the embedded tokenizer " + gguf_quoted(model) + " is not supported yet (llama's SentencePiece is); pass "
                "--tokenizer_name_or_path");
  SpmVocab v;
  v.pieces = h.require("tokenizer.ggml.tokens", GgufValue::Array, where).strings;
  for (double s : h.require("tokenizer.ggml.scores", GgufValue::Array, where).numbers) v.scores.push_back(float(s));
  if (h.find("tokenizer.ggml.token_type"))
    for (double t : h.require("tokenizer.ggml.token_type", GgufValue::Array, where).numbers) {
      if (!(t >= 0 && t <= 255)) fail(where, "tokenizer.ggml.token_type holds " + std::to_string(t) + ", not a token type");
      v.types.push_back(int32_t(t));
    }
  auto id = [&](const char* key, int64_t fallback) {
    const int64_t i = h.int_or(key, fallback, where);
    if (i < -1 || i > INT32_MAX) fail(where, std::string(key) + " " + std::to_string(i) + " is not a token id");
    return int32_t(i);
  };
  v.bos = id("tokenizer.ggml.bos_token_id", 1);
  v.eos = {id("tokenizer.ggml.eos_token_id", 2)};
  v.unk = id("tokenizer.ggml.unknown_token_id", 0);
  v.pad = id("tokenizer.ggml.padding_token_id", -1);
  if (h.find("tokenizer.chat_template"))
    v.chat_template = h.require("tokenizer.chat_template", GgufValue::String, where).s;
  return v;
}

}  // namespace oar
