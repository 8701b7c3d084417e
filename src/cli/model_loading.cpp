#include "cli/model_loading.h"

#include <filesystem>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/model_config.h"
#include "io/gguf.h"
#include "io/model_source.h"
#include "io/packed_model.h"
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

bool flag_value(const CLI::Option* opt, const std::string& v) {
  if (opt->count() == 0) return false;
  if (v.empty() || v == "true" || v == "True" || v == "1") return true;
  if (v == "false" || v == "False" || v == "0") return false;
  throw Error(opt->get_name() + ": expected true or false, got '" + v + "'");
}

std::optional<ExportSettings> read_export_settings(const std::string& model_path) {
  const std::string cfg = join_path(model_path, "config.json");
  if (!dir_exists(model_path) || !file_exists(cfg) || !has_packed_weights(model_path)) return std::nullopt;
  const nlohmann::json j = parse_json_file(cfg);
  auto str = [&](const char* key) -> std::string {
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return "";
    if (!j[key].is_string()) fail(cfg, std::string(key) + " must be a string or null");
    return j[key].get<std::string>();
  };
  auto num = [&](const char* key, int64_t dflt) -> int64_t {
    if (!j.is_object() || !j.contains(key) || j[key].is_null()) return dflt;
    if (!j[key].is_number_integer()) fail(cfg, std::string(key) + " must be an integer");
    return j[key].get<int64_t>();
  };
  ExportSettings s;
  s.dtype = str("infer_model_dtype");
  if (s.dtype.empty()) fail(cfg, std::string("has ") + kPackedWeightsFile + " beside it but no infer_model_dtype (not written by oar export)");
  s.quant_type = str("infer_model_quant_type");
  s.cachekv_int8_type = str("infer_model_cachekv_int8_type");
  s.group_size = num("infer_model_weightonly_group_size", -1);
  s.block_size = num("infer_model_block_size", 64);
  if (s.block_size < 1) fail(cfg, "infer_model_block_size must be a positive integer");
  s.max_seq_len = num("infer_model_max_seq_len", 0);
  return s;
}

void match_export(const std::string& model_path, LoadFlags& f) {
  const std::optional<ExportSettings> s = read_export_settings(model_path);
  if (!s) return;
  auto mismatch = [&](const std::string& flag, const std::string& given, const std::string& exported) {
    throw Error(model_path + " was exported with " + flag + " " + (exported.empty() ? "none" : exported) +
                ", not " + given + " (run it with the export's flags, or export again)");
  };
  if (!f.dtype.empty() && parse_dtype(f.dtype) != parse_dtype(s->dtype)) mismatch("--dtype", f.dtype, s->dtype);
  f.dtype = s->dtype;
  if (!f.quant_type.empty() && f.quant_type != s->quant_type) mismatch("--quant_type", f.quant_type, s->quant_type);
  f.quant_type = s->quant_type;
  if (f.group_size != -1 && f.group_size != s->group_size)
    mismatch("--weightonly_group_size", std::to_string(f.group_size), std::to_string(s->group_size));
  f.group_size = s->group_size;
  // The KV cache: flags given must name the export's kind; none given take it.
  if (!f.cachekv_given && f.cachekv_int8_type.empty()) {
    f.cachekv_int8_type = s->cachekv_int8_type;
    return;
  }
  const KVCacheDType given = parse_cachekv_int8(f.cachekv_given, f.cachekv_int8, f.cachekv_int8_type, f.quant_type);
  const KVCacheDType exported = parse_cachekv_int8(false, "", s->cachekv_int8_type, s->quant_type);
  auto kind = [](KVCacheDType d) {
    return std::string(d == KVCacheDType::Int8Static ? "static" : d == KVCacheDType::Int8Dynamic ? "dynamic" : "none");
  };
  if (given != exported) mismatch("--cachekv_int8_type", kind(given), kind(exported));
}

void match_export_block_size(const std::string& model_path, bool given, int64_t& block_size) {
  const std::optional<ExportSettings> s = read_export_settings(model_path);
  if (!s) return;
  if (given && block_size != s->block_size)
    throw Error(model_path + " was exported with --block_size " + std::to_string(s->block_size) + ", not " +
                std::to_string(block_size) + " (run it with the export's flags, or export again)");
  block_size = s->block_size;
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
  if (!lora_path.empty() && has_packed_weights(model_path))
    fail(model_path, "is an export: merge the LoRA adapter when exporting (oar export --lora_path)");
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
