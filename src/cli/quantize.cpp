// `oar quantize CFG.json`, and `oar finetune CFG.json` when it sets "do_ptq": true (as PaddleNLP's run_finetune.py
// runs ptq_argument.json): post-training quantization for a8w8. The float32 model runs over the calibration data
// (DIR/quant.json, else DIR/train.json: src/tgt JSON lines) for ptq_step batches while PaddleNLP's observers
// watch (infer/calibration.h), then output_dir gets what PaddleNLP writes: act_scales.json, weight_scales.json
// (each projection's per-output-channel absmax), cachekv_scales.json (a8w8c8), the model's files and config.json
// with quantization_config. `oar predict/serve/perplexity --quant_type a8w8` on output_dir then runs with the
// calibrated static activation steps. SmoothQuant, Shift, GPTQ and AWQ are not built: their keys set to true are
// an error.
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "data/sft_dataset.h"
#include "infer/calibration.h"
#include "io/model_source.h"
#include "tokenizer/tokenizer.h"

namespace oar::cli {
namespace {

struct PtqArgs {
  std::string model, dataset, output_dir, quant_type = "a8w8";
  int64_t ptq_step = 32, batch_size = 8, src_length = 1024, max_length = 2048;  // PaddleNLP's defaults
  ObserverReduce act = ObserverReduce::Average, kv = ObserverReduce::Average;
  bool overwrite = false;
};

// The keys PTQ reads from a PaddleNLP argument file; the training keys beside them are not used.
PtqArgs read_ptq_args(const std::string& path) {
  const nlohmann::json j = parse_json_file(path);
  if (!j.is_object()) fail(path, "expected a JSON object of PaddleNLP arguments");
  auto str = [&](const char* key, std::string& out, bool required) {
    if (!j.contains(key)) {
      if (required) fail(path, std::string("'") + key + "' is required");
      return;
    }
    if (!j[key].is_string()) fail(path, std::string("'") + key + "' must be a string");
    out = j[key].get<std::string>();
  };
  auto num = [&](const char* key, int64_t& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0) fail(path, std::string("'") + key + "' must be a positive integer");
    out = j[key].get<int64_t>();
  };
  auto flag = [&](const char* key) { return j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); };
  PtqArgs a;
  str("model_name_or_path", a.model, true);
  str("dataset_name_or_path", a.dataset, true);
  str("output_dir", a.output_dir, true);
  str("quant_type", a.quant_type, false);
  num("ptq_step", a.ptq_step);
  num("per_device_train_batch_size", a.batch_size);
  num("src_length", a.src_length);
  num("max_length", a.max_length);
  a.overwrite = flag("overwrite_output_dir");
  if (a.quant_type != "a8w8" && a.quant_type != "a8w8c8")
    fail(path, "quant_type '" + a.quant_type + "': PTQ is built for a8w8 and a8w8c8 (the weight_only types need no "
                                                "calibration: pass --quant_type to predict, serve or perplexity)");
  std::string method = "avg";
  str("act_quant_method", method, false);
  if (method != "avg" && method != "abs_max") fail(path, "act_quant_method '" + method + "' (avg or abs_max)");
  a.act = method == "avg" ? ObserverReduce::Average : ObserverReduce::Max;
  method = "avg_headwise";
  str("cachekv_quant_method", method, false);
  if (method != "avg_headwise" && method != "abs_max_headwise")
    fail(path, "cachekv_quant_method '" + method + "' (avg_headwise or abs_max_headwise)");
  a.kv = method == "avg_headwise" ? ObserverReduce::Average : ObserverReduce::Max;
  method = "abs_max_channel_wise";
  str("weight_quant_method", method, false);
  if (method != "abs_max_channel_wise") fail(path, "weight_quant_method '" + method + "': only abs_max_channel_wise is built");
  for (const char* key : {"smooth", "shift", "do_gptq", "do_awq", "do_qat"})
    if (flag(key)) fail(path, std::string("'") + key + "': true is not built yet (set it to false: oar's PTQ observes the "
                                                         "weights as they are, without SmoothQuant, Shift, GPTQ or AWQ)");
  if (j.contains("skip_list_names") && !j["skip_list_names"].empty())
    fail(path, "'skip_list_names' is not supported (every projection is quantized)");
  return a;
}

// Batches of the calibration examples, in file order: ptq_step of them at most.
std::vector<std::vector<std::vector<int32_t>>> calibration_batches(const PtqArgs& a, const Tokenizer& tok) {
  const std::string split = file_exists(join_path(a.dataset, "quant.json")) ? "quant" : "train";
  SftOptions opt;
  opt.src_length = a.src_length;
  opt.max_length = a.max_length;
  const std::vector<SftExample> ex = load_sft_examples(a.dataset, split, tok, opt);
  std::vector<std::vector<std::vector<int32_t>>> batches;
  for (size_t i = 0; i < ex.size() && int64_t(batches.size()) < a.ptq_step; i += size_t(a.batch_size)) {
    batches.emplace_back();
    for (size_t j = i; j < std::min(ex.size(), i + size_t(a.batch_size)); j++) batches.back().push_back(ex[j].input_ids);
  }
  if (batches.empty()) fail(join_path(a.dataset, split + ".json"), "no calibration examples");
  std::printf("ptq: %zu batches of up to %lld examples from %s\n", batches.size(), (long long)a.batch_size,
              join_path(a.dataset, split + ".json").c_str());
  return batches;
}

// What PaddleNLP's PTQ writes, keyed as its loaders read them ("llama.layers.<i>....").
nlohmann::json scales_json(const CalibrationStats& st, const LlamaConfig& cfg, const WeightSource& w,
                           nlohmann::json& weight_scales, nlohmann::json& cachekv) {
  nlohmann::json act = nlohmann::json::object();
  weight_scales = nlohmann::json::object();
  cachekv = nlohmann::json::object();
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    const std::string p = "llama.layers." + std::to_string(l) + ".";
    for (size_t j = 0; j < kCalibratedInputs.size(); j++)
      act[p + kCalibratedInputs[j] + ".activation_quanter"] = st.act[size_t(l)][j];
    for (const char* proj : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      const Tensor t = w.get("model.layers." + std::to_string(l) + "." + proj + ".weight").to(DType::F32);
      std::vector<double> amax(size_t(t.dim(0)), 0.0);
      for (int64_t r = 0; r < t.dim(0); r++)
        for (int64_t c = 0; c < t.dim(1); c++) amax[size_t(r)] = std::max(amax[size_t(r)], double(std::fabs(t.data<float>()[r * t.dim(1) + c])));
      weight_scales[p + proj + ".weight_quanter"] = amax;
    }
    cachekv[p + "self_attn.cachek_matmul.activation_quanter"] = st.k[size_t(l)];
    cachekv[p + "self_attn.cachev_matmul.activation_quanter"] = st.v[size_t(l)];
  }
  return act;
}

// output_dir: the model's files as they are (no smoothing changed the weights), config.json with
// quantization_config, and the scale files.
void write_ptq_output(const PtqArgs& a, const CalibrationStats& st, const ModelSource& ms) {
  nlohmann::json weight_scales, cachekv;
  const nlohmann::json act = scales_json(st, ms.config, *ms.weights, weight_scales, cachekv);
  nlohmann::json config = parse_json_file(join_path(a.model, "config.json"));
  config["quantization_config"] = {{"quant_type", a.quant_type}, {"smooth", false}, {"shift", false},
                                   {"shift_smooth_all_linears", false}};
  if (!a.overwrite && std::filesystem::exists(a.output_dir))
    fail(a.output_dir, "output_dir already exists (set \"overwrite_output_dir\": true to replace it)");
  write_directory_atomically(a.output_dir, a.overwrite, {a.model, a.dataset}, [&](const std::string& tmp) {
    namespace fs = std::filesystem;
    for (const auto& e : fs::directory_iterator(a.model)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || name == "config.json" || name == "act_scales.json" || name == "weight_scales.json" ||
          name == "cachekv_scales.json")
        continue;
      fs::copy_file(e.path(), fs::path(tmp) / name);
    }
    write_file_atomic(join_path(tmp, "config.json"), config.dump(2) + "\n");
    write_file_atomic(join_path(tmp, "act_scales.json"), act.dump(2) + "\n");
    write_file_atomic(join_path(tmp, "weight_scales.json"), weight_scales.dump() + "\n");
    if (a.quant_type == "a8w8c8") write_file_atomic(join_path(tmp, "cachekv_scales.json"), cachekv.dump(2) + "\n");
  });
}

}  // namespace

int run_ptq(const std::string& cfg_path) {
  const PtqArgs a = read_ptq_args(cfg_path);
  if (!dir_exists(a.model) || !file_exists(join_path(a.model, "config.json")))
    fail(a.model, "PTQ needs a Hugging Face model directory (config.json and safetensors)");
  if (!a.overwrite && std::filesystem::exists(a.output_dir))  // before minutes of calibration
    fail(a.output_dir, "output_dir already exists (set \"overwrite_output_dir\": true to replace it)");
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(a.model);
  const auto batches = calibration_batches(a, *tok);
  const ModelSource ms = open_model_source(a.model);
  const CalibrationStats st =
      calibrate(ms.config, *ms.weights, batches, a.act, a.kv, [](int64_t done, int64_t total) {
        std::printf("ptq: batch %lld/%lld\n", (long long)done, (long long)total);
        std::fflush(stdout);
      });
  write_ptq_output(a, st, ms);
  std::printf("ptq: %s written to %s (act_scales.json, weight_scales.json%s); run it with --quant_type %s\n",
              a.quant_type.c_str(), a.output_dir.c_str(), a.quant_type == "a8w8c8" ? ", cachekv_scales.json" : "",
              a.quant_type.c_str());
  return 0;
}

Action add_quantize(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  app.add_option("config", *path, "PaddleNLP argument file (ptq_argument.json's keys; see the README)")->required();
  return [path]() -> int { return run_ptq(*path); };
}

}  // namespace oar::cli
