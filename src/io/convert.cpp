#include "io/convert.h"

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

constexpr const char* kProjections[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

// Every tensor of a Llama checkpoint under its Hugging Face name, in the order transformers saves them, with
// whether it is a linear weight (the ones PaddleNLP stores transposed).
std::vector<std::pair<std::string, bool>> hf_tensor_names(const LlamaConfig& c, const WeightSource& src) {
  std::vector<std::pair<std::string, bool>> names = {{"model.embed_tokens.weight", false}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* proj : kProjections) {
      names.push_back({p + proj + ".weight", true});
      if (src.has(p + proj + ".bias")) names.push_back({p + proj + ".bias", false});
    }
    names.push_back({p + "input_layernorm.weight", false});
    names.push_back({p + "post_attention_layernorm.weight", false});
  }
  names.push_back({"model.norm.weight", false});
  if (src.has("lm_head.weight")) names.push_back({"lm_head.weight", true});
  return names;
}

std::vector<std::pair<std::string, Tensor>> paddle_tensors(LlamaConfig& c, const WeightSource& src,
                                                           const std::string& in) {
  if (c.attention_bias || c.o_proj_bias) fail(in, "has attention biases, which PaddleNLP's Llama does not have");
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, linear] : hf_tensor_names(c, src)) {
    Tensor t = src.get(name);
    if (linear) t = gather_transposed(t, {0}, t.shape()[1]);
    out.emplace_back(name.rfind("model.", 0) == 0 ? "llama." + name.substr(6) : name, as_dtype_bits(t, DType::BF16, DType::U16));
  }
  if (!src.has("lm_head.weight")) {  // tied: PaddleNLP would start lm_head at random
    const Tensor e = src.get("model.embed_tokens.weight");
    out.emplace_back("lm_head.weight", as_dtype_bits(gather_transposed(e, {0}, e.shape()[1]), DType::BF16, DType::U16));
    c.tie_word_embeddings = false;
  }
  return out;
}

}  // namespace

CheckpointLayout parse_checkpoint_layout(const std::string& name) {
  if (name == "hf") return CheckpointLayout::HuggingFace;
  if (name == "paddle") return CheckpointLayout::PaddleNLP;
  fail("--to", "expected hf or paddle, got '" + name + "'");
}

size_t convert_checkpoint(const std::string& in, CheckpointLayout to, const std::string& out_dir, bool force) {
  ModelSource ms = open_model_source(in);
  LlamaConfig cfg = ms.config;
  std::vector<std::pair<std::string, Tensor>> tensors;
  if (to == CheckpointLayout::PaddleNLP) {
    tensors = paddle_tensors(cfg, *ms.weights, in);
  } else {
    for (const auto& [name, linear] : hf_tensor_names(cfg, *ms.weights)) tensors.emplace_back(name, ms.weights->get(name));
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
