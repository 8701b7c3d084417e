// `oar export`: PaddleNLP's export_model.py. The model is loaded as `oar predict` would load it with the same flags
// (dtype, --quant_type with its scales, --lora_path merged), and --output_path gets what predict needs to start
// without converting anything: the weights packed in their load format, page-aligned so they map as they are
// (io/packed_model.h), config.json with PaddleNLP's infer_model_* keys (and oar's quant type), the tokenizer's and
// the generation config's files, and the static KV cache's scales. `oar predict --mode static` runs it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/model_loading.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "io/model_source.h"
#include "io/packed_model.h"
#include "model/kv_cache.h"
#include "model/packed_weights.h"
#include "train/checkpoint.h"

namespace oar::cli {
namespace {

struct ExportArgs {
  std::string model, output_path, lora_path, dtype, quant_type, device = "cpu", model_prefix = "model";
  std::string inference_model, block_attn, cachekv_int8, cachekv_int8_type, cachekv_scales;
  int64_t group_size = -1, block_size = 64, src_length = 1024, max_length = 1024, batch_size = 1;
  bool force = false;
};

// config.json as the checkpoint has it, with what the export fixed: PaddleNLP's infer_model_* keys, oar's quant
// type and group size, and the tie of the head as loaded (PaddleNLP checkpoints keep their own head).
nlohmann::json export_config(const ExportArgs& a, const LlamaModel& m, KVCacheDType kv) {
  nlohmann::json c = parse_json_file(join_path(a.model, "config.json"));
  if (!c.is_object()) fail(join_path(a.model, "config.json"), "expected a JSON object");
  c["tie_word_embeddings"] = m.config().tie_word_embeddings;
  c["infer_model_dtype"] = dtype_name(m.dtype());
  c["infer_model_block_size"] = a.block_size;
  c["infer_model_max_seq_len"] = std::min<int64_t>(a.src_length + a.max_length, m.max_positions());
  c["infer_model_cachekv_int8_type"] = kv == KVCacheDType::Int8Static    ? nlohmann::json("static")
                                       : kv == KVCacheDType::Int8Dynamic ? nlohmann::json("dynamic")
                                                                         : nlohmann::json(nullptr);
  c["infer_model_quant_type"] = a.quant_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(a.quant_type);
  c["infer_model_weightonly_group_size"] = a.group_size;
  c["infer_model_oar_version"] = OAR_VERSION;
  return c;
}

// What the export reads, which --output_path must not hold.
std::vector<std::string> inputs_of(const ExportArgs& a) {
  std::vector<std::string> in{a.model};
  if (!a.lora_path.empty()) in.push_back(a.lora_path);
  return in;
}

int run_export(ExportArgs& a, bool cachekv_given) {
  if (a.device != "cpu") throw Error("--device " + a.device + ": this build runs on cpu only");
  if (a.model_prefix != "model") throw Error("--model_prefix " + a.model_prefix + ": oar's export is always 'model'");
  if (a.output_path.empty()) throw Error("--output_path is required");
  if (!dir_exists(a.model) || !file_exists(join_path(a.model, "config.json")))
    fail(a.model, "oar export takes a checkpoint directory (Hugging Face or PaddleNLP: config.json and weights)");
  if (read_export_settings(a.model)) fail(a.model, "is already an export");
  const KVCacheDType kv = parse_cachekv_int8(cachekv_given, a.cachekv_int8, a.cachekv_int8_type, a.quant_type);
  std::string scales;
  if (kv == KVCacheDType::Int8Static) {  // found now, not after the load
    scales = cachekv_scales_path_for(a.model, a.cachekv_scales);
    if (!file_exists(scales))
      fail(scales, "the static int8 KV cache needs this file (PaddleNLP's PTQ writes it; or pass --cachekv_scales)");
    load_cachekv_scales(scales, open_model_source(a.model).config);  // checked as the engine will read it
  }
  const auto t0 = std::chrono::steady_clock::now();
  LoadedModel lm = load_model_and_tokenizer(a.model, "", a.dtype, a.lora_path, a.quant_type, a.group_size);
  const nlohmann::json config = export_config(a, *lm.model, kv);
  write_directory_atomically(a.output_path, a.force, inputs_of(a), [&](const std::string& tmp) {
    write_packed_weights(join_path(tmp, kPackedWeightsFile), packed_weights(*lm.model));
    copy_tokenizer_files(a.model, tmp);
    if (!scales.empty()) write_file_atomic(join_path(tmp, "cachekv_scales.json"), read_file(scales));
    write_file_atomic(join_path(tmp, "config.json"), config.dump(2) + "\n");
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("export: %s (%s weights, dtype %s%s) written to %s in %.1f s; run it with oar predict --mode static "
              "--model_name_or_path %s\n",
              a.model.c_str(), weight_format_name(lm.model->projection_format()), dtype_name(lm.model->dtype()),
              kv == KVCacheDType::F32 ? "" : kv == KVCacheDType::Int8Static ? ", static int8 KV cache" : ", int8 KV cache",
              a.output_path.c_str(), s, a.output_path.c_str());
  return 0;
}

}  // namespace

Action add_export(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  app.add_option("--model_name_or_path", a->model, "Hugging Face or PaddleNLP checkpoint directory")->required();
  app.add_option("--output_path", a->output_path, "directory to write (replaced only with --force)")->required();
  app.add_option("--lora_path", a->lora_path, "LoRA adapter merged into the weights before they are packed");
  app.add_option("--dtype", a->dtype, "float32, bfloat16 or float16 (default: bfloat16 for 16-bit checkpoints, else float32)");
  app.add_option("--quant_type", a->quant_type, kQuantTypeHelp);
  app.add_option("--weightonly_group_size", a->group_size, "weight_only_int4's group: -1 (per channel), 64 or 128");
  CLI::Option* inference_opt = app.add_option("--inference_model", a->inference_model,
      "PaddleNLP's fused inference model: oar's always is one (accepted as true or false)")->expected(0, 1);
  CLI::Option* block_opt = app.add_option("--block_attn", a->block_attn,
      "PaddleNLP's block attention: oar's engine always pages its KV cache (accepted as true or false)")->expected(0, 1);
  app.add_option("--block_size", a->block_size, "KV positions per block, recorded as infer_model_block_size")
      ->check(positive_int());
  CLI::Option* int8_opt = app.add_option("--cachekv_int8", a->cachekv_int8,
      "int8 KV cache: bare or true = dynamic scales; also dynamic|static")->expected(0, 1);
  app.add_option("--cachekv_int8_type", a->cachekv_int8_type, "dynamic or static (cachekv_scales.json, copied into the export)");
  app.add_option("--cachekv_scales", a->cachekv_scales, "static int8 scales (default: cachekv_scales.json in the model directory)");
  app.add_option("--src_length", a->src_length, "with --max_length: infer_model_max_seq_len")->check(positive_int());
  app.add_option("--max_length", a->max_length, "with --src_length: infer_model_max_seq_len")->check(non_negative_int());
  app.add_option("--batch_size", a->batch_size, "accepted (the engine batches at run time)")->check(positive_int());
  app.add_option("--device", a->device, "cpu");
  app.add_option("--model_prefix", a->model_prefix, "model (the only name oar writes)");
  app.add_flag("--force", a->force, "replace an existing --output_path");
  return [a, inference_opt, block_opt, int8_opt]() -> int {
    flag_value(inference_opt, a->inference_model);  // checked, no effect
    flag_value(block_opt, a->block_attn);
    return run_export(*a, int8_opt->count() > 0);
  };
}

}  // namespace oar::cli
