// Shared by the commands that load a model: the model, its tokenizer, and the dtype rule.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>

#include "engine/engine.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace oar::cli {

struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

// model_path: a Hugging Face directory or a llama2.c checkpoint file. tokenizer_path: empty to look beside the
// model (the directory itself; for a file, tokenizer.json / tokenizer.model / tokenizer.bin in its directory).
// dtype: "" picks bfloat16 for models stored in 16-bit, float32 otherwise. lora_path: a LoRA adapter directory
// to merge into the weights as they load (PaddleNLP's --lora_path), or "". quant_type: PaddleNLP's --quant_type
// for the projections, quantized at load (weight_only_int8, weight_only_int4), or "" for dtype's dense weights;
// group_size: its --weightonly_group_size (-1: per channel).
// Static int8 KV scales: the given file, else cachekv_scales.json where PaddleNLP's PTQ writes it, in the model
// directory (beside the file for a single-file checkpoint).
std::string cachekv_scales_path_for(const std::string& model_path, const std::string& given);

// The KV cache format that PaddleNLP's flags name, parsed the same way by predict, perplexity and serve:
// --cachekv_int8 bare, true or 1: int8 with dynamic scales; false or 0: float32; dynamic or static: int8 with
// those scales. --cachekv_int8_type dynamic|static says the same and must agree. `given`: --cachekv_int8
// appeared; `value`: its value ("" when bare). --quant_type a8w8c8 asks for the int8 cache: static unless the
// flags say dynamic. Throws oar::Error naming the flag for anything else.
KVCacheDType parse_cachekv_int8(bool given, const std::string& value, const std::string& type,
                                const std::string& quant_type = "");

// PaddleNLP bools may be given bare ("--block_attn") or with a value ("--block_attn true"); throws oar::Error naming
// the flag for any other value.
bool flag_value(const CLI::Option* opt, const std::string& v);

// What oar export recorded in an export's config.json: PaddleNLP's infer_model_dtype, _cachekv_int8_type,
// _block_size and _max_seq_len, and oar's infer_model_quant_type and _weightonly_group_size ("" / -1: none).
// Nothing for a checkpoint (no packed weights).
struct ExportSettings {
  std::string dtype, quant_type, cachekv_int8_type;
  int64_t group_size = -1, block_size = 64, max_seq_len = 0;
};
std::optional<ExportSettings> read_export_settings(const std::string& model_path);

// The flags every model-loading command shares, as given ("" / -1 / false where left out).
struct LoadFlags {
  std::string dtype, quant_type;
  int64_t group_size = -1;
  bool cachekv_given = false;  // --cachekv_int8 appeared
  std::string cachekv_int8, cachekv_int8_type;
};
// An export runs as it was exported (PaddleNLP's --mode static takes the export's flags): each flag left out takes
// the export's value, and one given must equal it, else one oar::Error names the flag and both values. A checkpoint
// leaves the flags as they are.
void match_export(const std::string& model_path, LoadFlags& flags);
// The engine's block size for an export: the one it was exported with (infer_model_block_size); a --block_size
// given that differs is an error. A checkpoint keeps `block_size`.
void match_export_block_size(const std::string& model_path, bool given, int64_t& block_size);
// match_export on a command's own fields of those flags (model, dtype, quant_type, group_size, cachekv_int8,
// cachekv_int8_type); cachekv_given: --cachekv_int8 appeared.
template <class Args>
void match_export_flags(Args& a, bool cachekv_given) {
  LoadFlags f{a.dtype, a.quant_type, a.group_size, cachekv_given, a.cachekv_int8, a.cachekv_int8_type};
  match_export(a.model, f);
  a.dtype = f.dtype;
  a.quant_type = f.quant_type;
  a.group_size = f.group_size;
  a.cachekv_int8_type = f.cachekv_int8_type;
}

// --quant_type's help, the same for every command that loads a model.
inline constexpr const char* kQuantTypeHelp =
    "weight_only_int8, weight_only_int4, a8w8 or a8w8c8: attention and MLP weights quantized at load (int8 per "
    "channel, int4 per --weightonly_group_size; a8w8 also rounds their inputs to int8 and multiplies in integers, "
    "with the static steps of PaddleNLP's act_scales.json where the model directory has one, else per token; "
    "a8w8c8 adds the static int8 KV cache)";

LoadedModel load_model_and_tokenizer(const std::string& model_path, const std::string& tokenizer_path,
                                     const std::string& dtype, const std::string& lora_path = "",
                                     const std::string& quant_type = "", int64_t group_size = -1);

}  // namespace oar::cli
