#include "cli/model_loading.h"

#include <filesystem>

#include "core/error.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "io/gguf.h"
#include "io/model_source.h"
#include "io/ptq_scales.h"
#include "train/lora_io.h"

namespace oar::cli {

KVCacheDType parse_cachekv_int8(bool given, const std::string& value, const std::string& type,
                                const std::string& quant_type) {
  std::string kind = type;
  if (!type.empty() && type != "dynamic" && type != "static")
    throw Error("--cachekv_int8_type: '" + type + "' is not supported (dynamic or static)");
  if (given) {
    std::string v;
    if (value.empty() || value == "true" || value == "True" || value == "1") v = "dynamic";
    else if (value == "dynamic" || value == "static") v = value;
    else if (value != "false" && value != "False" && value != "0")
      throw Error("--cachekv_int8: '" + value + "' is not supported (true, false, dynamic or static)");
    // A bare flag with an explicit type means that type; two explicit kinds must agree.
    const bool explicit_kind = value == "dynamic" || value == "static";
    if (explicit_kind && !kind.empty() && kind != v)
      throw Error("--cachekv_int8 " + v + " contradicts --cachekv_int8_type " + kind);
    if (!v.empty() && (explicit_kind || kind.empty())) kind = v;
    if (v.empty() && quant_type == "a8w8c8")
      throw Error("--cachekv_int8 " + value + " contradicts --quant_type a8w8c8 (a8w8 with the int8 KV cache)");
  }
  // PaddleNLP's c8: the static cache with PTQ's cachekv_scales.json, unless the type says dynamic.
  if (quant_type == "a8w8c8" && kind.empty()) kind = "static";
  if (kind == "dynamic") return KVCacheDType::Int8Dynamic;
  if (kind == "static") return KVCacheDType::Int8Static;
  return KVCacheDType::F32;
}

namespace {

// A file of the model's directory, or beside a checkpoint file.
std::string beside_model(const std::string& model_path, const std::string& file) {
  return dir_exists(model_path) ? join_path(model_path, file)
                                : (std::filesystem::path(model_path).parent_path() / file).string();
}

// --dtype, else bfloat16 for weights stored in 16 bits or fewer (config.json's torch_dtype, a GGUF file's
// types), else float32.
DType compute_dtype(const std::string& model_path, const std::string& given) {
  if (!given.empty()) return parse_dtype(given);
  std::string stored;
  if (dir_exists(model_path) && file_exists(join_path(model_path, "config.json")))
    stored = load_hf_config(join_path(model_path, "config.json")).torch_dtype;
  else if (is_gguf_file(model_path))
    stored = open_gguf_model(model_path).config.torch_dtype;
  return stored == "bfloat16" || stored == "float16" ? DType::BF16 : DType::F32;
}

// --tokenizer_name_or_path, else the model directory's tokenizer, a GGUF file's own, or the tokenizer files
// beside a checkpoint file. `where` is set to the path it came from.
std::unique_ptr<Tokenizer> find_tokenizer(const std::string& model_path, const std::string& given, std::string& where) {
  where = given;
  if (!where.empty()) return load_tokenizer(where);
  where = model_path;
  if (dir_exists(model_path)) return load_tokenizer(model_path);
  if (is_gguf_file(model_path))
    return make_spm_vocab_tokenizer(gguf_spm_vocab(GgufFile::open(model_path).header, model_path), model_path);
  const std::string dir = std::filesystem::path(model_path).parent_path().string();
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
    where = join_path(dir.empty() ? "." : dir, f);
    if (file_exists(where)) return load_tokenizer(where);
  }
  fail(model_path, "no tokenizer beside this checkpoint (pass --tokenizer_name_or_path)");
}

}  // namespace

LoadedModel load_model_and_tokenizer(const std::string& model_path, const std::string& tokenizer_path,
                                     const std::string& dtype_name_in, const std::string& lora_path,
                                     const std::string& quant_type, int64_t group_size) {
  if (model_path.empty()) throw Error("--model_name_or_path is required");
  std::optional<QuantSpec> quant;
  if (!quant_type.empty()) quant = parse_quant_type(quant_type, group_size);
  else if (group_size != -1) throw Error("--weightonly_group_size needs --quant_type weight_only_int4");
  if (!dir_exists(model_path) && !file_exists(model_path)) fail(model_path, "no such file or directory");
  // a8w8 with PaddleNLP's PTQ output beside the model: its calibrated static activation scales.
  if (quant && quant->format == WeightFormat::A8W8) {
    const std::string scales = beside_model(model_path, "act_scales.json");
    if (file_exists(scales))
      quant->act_steps = std::make_shared<const std::map<std::string, float>>(
          load_act_scales(scales, open_model_source(model_path).config));
  }
  const DType dtype = compute_dtype(model_path, dtype_name_in);
  LoadedModel lm;
  // Tokenizer first: a missing tokenizer is found before minutes of weight loading.
  std::string tok;
  lm.tokenizer = find_tokenizer(model_path, tokenizer_path, tok);
  lm.model = lora_path.empty() ? LlamaModel::load(model_path, dtype, cpu_backend(), quant)
                               : load_llama_with_lora(model_path, lora_path, dtype, quant);
  if (lm.tokenizer->vocab_size() > lm.model->config().vocab_size)
    fail(tok, "tokenizer has " + std::to_string(lm.tokenizer->vocab_size()) + " tokens but the model's vocabulary is " +
                  std::to_string(lm.model->config().vocab_size));
  return lm;
}

std::string cachekv_scales_path_for(const std::string& model_path, const std::string& given) {
  return given.empty() ? beside_model(model_path, "cachekv_scales.json") : given;
}

}  // namespace oar::cli
