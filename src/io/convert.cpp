#include "io/convert.h"

#include <iterator>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "io/model_source.h"
#include "io/paddle_layout.h"
#include "io/safetensors.h"

namespace oar {
namespace {

struct Expected {
  std::string name;
  Shape shape;
  bool linear;  // stored transposed by PaddleNLP
};

// Every tensor of a Llama checkpoint under its Hugging Face name, in the order transformers saves them, with the
// shape the config implies.
std::vector<Expected> expected_tensors(const LlamaConfig& c, const WeightSource& src) {
  const int64_t C = c.hidden_size, V = c.vocab_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim();
  const Shape proj_shapes[] = {{Q, C}, {KV, C}, {KV, C}, {C, Q}, {I, C}, {I, C}, {C, I}};
  std::vector<Expected> out = {{"model.embed_tokens.weight", {V, C}, false}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (size_t k = 0; k < std::size(kLayerProjections); ++k) {
      out.push_back({p + kLayerProjections[k] + ".weight", proj_shapes[k], true});
      if (src.has(p + kLayerProjections[k] + ".bias")) out.push_back({p + kLayerProjections[k] + ".bias", {proj_shapes[k][0]}, false});
    }
    out.push_back({p + "input_layernorm.weight", {C}, false});
    out.push_back({p + "post_attention_layernorm.weight", {C}, false});
  }
  out.push_back({"model.norm.weight", {C}, false});
  if (src.has("lm_head.weight")) out.push_back({"lm_head.weight", {V, C}, true});
  return out;
}

// The tensor, checked against the config before anything is written.
Tensor checked(const WeightSource& src, const Expected& e, const std::string& in) {
  Tensor t = src.get(e.name);
  if (t.shape() != e.shape)
    fail(in, "tensor " + e.name + " is " + shape_str(t.shape()) + " but config.json implies " + shape_str(e.shape));
  return t;
}


}  // namespace

void check_paddle_can_express(const LlamaConfig& c, const std::string& in) {
  if (c.architecture != "LlamaForCausalLM") fail(in, c.architecture + " has no PaddleNLP Llama layout");
  if (c.attention_bias || c.o_proj_bias) fail(in, "has attention biases, which PaddleNLP's Llama does not have");
  if (!c.rope_scaling.type.empty()) fail(in, "rope_scaling '" + c.rope_scaling.type + "' has no PaddleNLP Llama equivalent");
  if (c.head_dim * c.num_attention_heads != c.hidden_size)
    fail(in, "head_dim " + std::to_string(c.head_dim) + " is not hidden_size / num_attention_heads, which PaddleNLP assumes");
}

std::vector<std::pair<std::string, Tensor>> paddle_checkpoint_tensors(LlamaConfig& c, const WeightSource& src,
                                                                      const std::string& in) {
  check_paddle_can_express(c, in);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Expected& e : expected_tensors(c, src)) {
    Tensor t = checked(src, e, in);
    if (e.linear) t = gather_transposed(t, {0}, t.shape()[1]);
    out.emplace_back(paddle_name_of(e.name).name, as_dtype_bits(t, DType::BF16, DType::U16));
  }
  if (!src.has("lm_head.weight")) {  // tied: PaddleNLP would start lm_head at random
    const Tensor e = src.get("model.embed_tokens.weight");
    out.emplace_back("lm_head.weight", as_dtype_bits(gather_transposed(e, {0}, e.shape()[1]), DType::BF16, DType::U16));
    c.tie_word_embeddings = false;
  }
  return out;
}

CheckpointLayout parse_checkpoint_layout(const std::string& name) {
  if (name == "hf") return CheckpointLayout::HuggingFace;
  if (name == "paddle") return CheckpointLayout::PaddleNLP;
  fail("--to", "expected hf or paddle, got '" + name + "'");
}

size_t convert_checkpoint(const std::string& in, CheckpointLayout to, const std::string& out_dir, bool force) {
  ModelSource ms = open_model_source(in);
  LlamaConfig cfg = ms.config;
  if (cfg.rope_layout != RopeLayout::RotateHalf)
    fail(in, "is a llama2.c checkpoint (interleaved RoPE), which oar convert does not rewrite yet");
  std::vector<std::pair<std::string, Tensor>> tensors;
  if (to == CheckpointLayout::PaddleNLP) {
    tensors = paddle_checkpoint_tensors(cfg, *ms.weights, in);
  } else {
    for (const Expected& e : expected_tensors(cfg, *ms.weights)) tensors.emplace_back(e.name, checked(*ms.weights, e, in));
  }
  const std::string side_dir = dir_exists(in) ? in : "";
  write_directory_atomically(out_dir, force, {in}, [&](const std::string& tmp) {
    write_safetensors(join_path(tmp, "model.safetensors"), tensors,
                      {{"format", to == CheckpointLayout::PaddleNLP ? "np" : "pt"}});
    write_file_atomic(join_path(tmp, "config.json"), to_hf_config_json(cfg));
    if (!side_dir.empty()) copy_model_side_files(side_dir, tmp);
  });
  return tensors.size();
}

}  // namespace oar
