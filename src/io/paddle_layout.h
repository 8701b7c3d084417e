// PaddleNLP's Llama checkpoints, seen through Hugging Face names so that every loader reads them unchanged.
//
// PaddleNLP names tensors "llama.layers.N..." (HF: "model.layers.N..."), stores every linear weight (q/k/v/o,
// gate/up/down, lm_head) as [in, out] (HF: [out, in]), and with fuse_attention_qkv / fuse_attention_ffn keeps
//   qkv_proj [in, (H + 2 KV) D]: for each KV head i, its H/KV query heads, then k_i, then v_i;
//   gate_up_fused_proj [in, 2 I]: gate, then up.
// Norms and the embedding are stored as in HF. bfloat16 tensors are stored as uint16 (numpy has no bfloat16):
// safetensors dtype U16, .pdparams numpy uint16; both read as bfloat16. The weights come from model.safetensors (+ shards and index) or
// model_state.pdparams (+ model_state.pdparams.index.json when sharded).
#pragma once
#include <memory>
#include <string>

#include "core/model_config.h"
#include "io/weight_source.h"

namespace oar {

// True when the tensors use PaddleNLP's names (a "llama.embed_tokens.weight").
bool is_paddle_layout(const WeightSource& s);

// HF names over a PaddleNLP-layout source: linear weights transposed (a copy), fused ones split. `cfg` gives the
// head counts that the fused qkv layout needs.
std::unique_ptr<WeightSource> paddle_layout_as_hf(std::unique_ptr<WeightSource> paddle, const LlamaConfig& cfg);

// DIR holds model_state.pdparams or model_state.pdparams.index.json.
bool has_pdparams(const std::string& dir);
// The tensors of DIR/model_state.pdparams, or of the shards DIR/model_state.pdparams.index.json lists ("weight_map",
// as in the safetensors index). Throws oar::Error naming the file.
std::unique_ptr<WeightSource> open_pdparams_dir(const std::string& dir, const std::string& stem = "model_state");

// A tensor's PaddleNLP name and orientation, from its Hugging Face (or oar training) name:
//   "model.X" -> "llama.X"; "lm_head.weight" unchanged;
//   "...<proj>.weight" (q/k/v/o, gate/up/down, lm_head): transposed to [in, out];
//   "...<proj>.lora_A.weight" / ".lora_B.weight" -> "...<proj>.lora_A" / ".lora_B", transposed ([in, r], [r, out]).
// Other names (norms, the embedding, names of no Llama) keep their orientation.
struct PaddleTensorName {
  std::string name;
  bool transposed = false;
};
PaddleTensorName paddle_name_of(const std::string& hf_name);

// `t` relabelled as `to` when its dtype is `from` (same element size, same bits, no copy); else `t`.
Tensor as_dtype_bits(const Tensor& t, DType from, DType to);

// A [rows, cols] matrix's column ranges [start, start + width) for each start, transposed and stacked:
// a [starts.size() * width, rows] copy. Any 2-, 4- or 8-byte dtype.
Tensor gather_transposed(const Tensor& w, const std::vector<int64_t>& starts, int64_t width);

}  // namespace oar
