// LoRA adapters on disk and in memory. On disk: Hugging Face PEFT's layout, so PEFT and transformers load what oar
// trains and oar loads what they make:
//
//   DIR/adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...], ...}
//   DIR/adapter_model.safetensors  base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight  [r, in]
//                                  base_model.model.model.layers.N.self_attn.q_proj.lora_B.weight  [out, r]
//
// An adapted linear computes x W^T + scaling (x A^T) B^T, i.e. its weight becomes W + scaling B A, with scaling
// alpha / r (alpha / sqrt(r) with rsLoRA). Targets: the seven Llama projections q/k/v/o_proj (self_attn) and
// gate/up/down_proj (mlp); anything else (embeddings, lm_head, fused qkv, DoRA, modules_to_save, bias training,
// per-module rank_pattern/alpha_pattern) is refused by name rather than applied wrongly.
//
// PaddleNLP's own files are read too: DIR/lora_config.json (r, lora_alpha, target_modules as a list of regexes
// matched against whole module names, rslora) with weights in its unified checkpoint (the shards listed by
// DIR/peft_model.safetensors.index.json, or DIR/peft_model.safetensors), its pickle DIR/lora_model_state.pdparams
// (read without executing it: io/pdparams.h) or DIR/adapter_model.safetensors, named
// llama.layers.N.self_attn.q_proj.lora_A / .lora_B in Paddle's [in, out] orientation (A [in, r], B [r, out];
// transposed on load). Tensor-parallel splits (tensor_parallel_degree > 1), PiSSA and MoRA adapters are refused.
//
// Errors are oar::Error, one line, naming the file.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/model_config.h"
#include "core/tensor.h"
#include "io/weight_source.h"
#include "train/trainable_llama.h"

namespace oar {

class LlamaModel;

// The seven projections LoRA can target, in PaddleNLP's and our canonical order.
const std::vector<std::string>& lora_projection_names();

// One adapted linear layer: its weight W [out, in] becomes W + scaling * B @ A.
struct LoraPair {
  Tensor A;  // [r, in] float32
  Tensor B;  // [out, r] float32
};

struct LoraAdapter {
  int64_t rank = 8;
  double alpha = 16;
  bool rslora = false;                // scaling alpha / sqrt(r) instead of alpha / r
  std::vector<std::string> targets;   // projection names ("q_proj", ...), canonical order
  std::vector<int64_t> layers;        // PEFT's layers_to_transform, sorted; empty: every layer
  std::string base_model_name_or_path;
  // Keyed by the adapted weight's Hugging Face name, e.g. "model.layers.0.self_attn.q_proj.weight".
  std::map<std::string, LoraPair> modules;
  std::string where;  // the file it was read from, for messages ("" when built in memory)

  double scaling() const;
};

// ---- files ----

// Reads a PEFT adapter directory (or PaddleNLP's lora_config.json + peft_model.safetensors). Checks the config
// against the tensors: every tensor belongs to a targeted projection, A and B come in pairs, every rank equals r.
LoraAdapter load_lora_adapter(const std::string& dir);

// Checks an adapter against the base model it is applied to: A [r, in] and B [out, r] with that projection's in/out,
// layer indices < num_hidden_layers, and every targeted projection of every selected layer present (an adapter
// for a deeper or shallower model is refused). `base_where` names the base in the message.
void check_lora_against_config(const LoraAdapter& a, const LlamaConfig& cfg, const std::string& base_where);

// Writes DIR/adapter_model.safetensors (float32) and DIR/adapter_config.json, each atomically, creating DIR if
// needed. The config holds only keys that every PEFT 0.x knows (peft 0.13.2's LoraConfig raises TypeError on
// an unknown key).
void save_lora_adapter(const std::string& dir, const LoraAdapter& a);

// DIR holds an adapter config (PEFT's adapter_config.json or PaddleNLP's lora_config.json).
bool is_lora_adapter_dir(const std::string& dir);

// Writes the adapter as PaddleNLP's single-card unified checkpoint: DIR/lora_config.json,
// DIR/peft_model-00001-of-00001.safetensors (llama.layers.N.<module>.lora_A [in, r] / .lora_B [r, out], float32)
// and DIR/peft_model.safetensors.index.json, which PaddleNLP's LoRAModel.from_pretrained loads.
void save_lora_adapter_paddle(const std::string& dir, const LoraAdapter& a);

// ---- the training model's side (TrainableLlama names: "model.layers.N.self_attn.q_proj.lora_A.weight") ----

// Collects the LoRA tensors of TrainableLlama::export_weights(true) (other names are skipped) into an adapter with
// the given options. Tensors are copied to float32.
LoraAdapter lora_adapter_from_named(const std::vector<std::pair<std::string, Tensor>>& named, const LoraOptions& opt,
                                    const std::string& base_model_name_or_path);
// The adapter's tensors under TrainableLlama's names, float32, for copying into its parameters on resume.
std::vector<std::pair<std::string, Tensor>> lora_named_tensors(const LoraAdapter& a);
// The LoraOptions that recreate this adapter's layout in TrainableLlama::add_lora (rank, alpha, targets).
// Throws for rsLoRA adapters, which the training model does not implement.
LoraOptions lora_options_of(const LoraAdapter& a);

// ---- merging ----

// W + scaling * B @ A computed in float32 and returned as `out` dtype. W: [out, in] float32, bfloat16 or float16.
Tensor merge_lora_weight(const Tensor& W, const LoraPair& p, double scaling, DType out);

// A WeightSource that serves the base's tensors with the adapter merged into the adapted weights. Merged tensors
// come back as float32 (the model converts them to its compute dtype: one rounding, not two) or, with
// keep_stored_dtype, in the base tensor's own dtype (for writing a merged checkpoint).
class LoraMergedSource : public WeightSource {
 public:
  LoraMergedSource(const WeightSource& base, const LoraAdapter& adapter, bool keep_stored_dtype = false)
      : base_(base), adapter_(adapter), keep_stored_dtype_(keep_stored_dtype) {}
  bool has(const std::string& name) const override { return base_.has(name); }
  Tensor get(const std::string& name) const override;
  std::string where() const override { return base_.where(); }

 private:
  const WeightSource& base_;
  const LoraAdapter& adapter_;
  bool keep_stored_dtype_;
};

// Loads a model (Hugging Face directory or llama2.c file, as LlamaModel::load) with an adapter merged into its
// weights in memory, as PaddleNLP's predictor does with --lora_path (quantized after the merge, when `quant` says).
std::unique_ptr<LlamaModel> load_llama_with_lora(const std::string& model_path, const std::string& lora_dir, DType dtype,
                                                 std::optional<QuantSpec> quant = std::nullopt);

// `oar merge-lora`: writes BASE + adapter as a Hugging Face checkpoint in out_dir: config.json and
// generation_config.json as the base's, weights with the base's file layout (single file or the same shards and
// index) and dtypes, tokenizer files copied. Built in a temporary directory beside out_dir and renamed into place;
// an existing out_dir is an error unless `force` (then it is replaced). Returns the adapter it applied.
LoraAdapter merge_lora_checkpoint(const std::string& base_dir, const std::string& lora_dir, const std::string& out_dir,
                           bool force);

}  // namespace oar
