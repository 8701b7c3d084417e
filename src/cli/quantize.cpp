// `oar quantize CFG.json`, and `oar finetune CFG.json` when it sets "do_ptq": true (as PaddleNLP's run_finetune.py
// runs ptq_argument.json): post-training quantization for a8w8. The model runs over the calibration data
// (DIR/quant.json, else DIR/train.json: src/tgt JSON lines) for ptq_step batches while PaddleNLP's observers
// watch (infer/calibration.h), then output_dir gets what PaddleNLP writes: act_scales.json, weight_scales.json
// (each projection's per-output-channel absmax), cachekv_scales.json (a8w8c8), the model's files and config.json
// with quantization_config. `oar predict/serve/perplexity --quant_type a8w8` on output_dir then runs with the
// calibrated static activation steps. With "smooth": true, SmoothQuant (infer/smoothing.h) first smooths the
// weights over smooth_step batches; the observers then watch the smoothed model, and output_dir gets its weights.
// Shift, GPTQ and AWQ are not built: their keys set to true are an error.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "core/mpi_world.h"
#include "data/sft_dataset.h"
#include "infer/calibration.h"
#include "infer/smoothing.h"
#include "io/packed_model.h"
#include "io/safetensors.h"
#include "io/model_source.h"
#include "kernels/weight.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/train_args.h"
#include "train/train_setup.h"

namespace oar::cli {
namespace {

// Rows of each smoothed input kept for SmoothQuant's search (a 13B's four inputs of 128 rows: ~0.5 GB in all).
constexpr int64_t kSmoothSampleRows = 128;

struct PtqArgs {
  std::string model, dataset, output_dir, quant_type = "a8w8", chat_template;
  int64_t ptq_step = 32, batch_size = 8, src_length = 1024, max_length = 2048;  // PaddleNLP's defaults
  ObserverReduce act = ObserverReduce::Average, kv = ObserverReduce::Average;
  bool overwrite = false;
  bool smooth = false;
  int64_t smooth_step = 32;
  SmoothOptions smoothing;
};

// One PaddleNLP argument file, read key by key; every error names the file.
struct ArgFile {
  std::string path;
  nlohmann::json j;
  std::string str(const char* key, const std::string& fallback, bool required = false) const {
    if (!j.contains(key)) {
      if (required) fail(path, std::string("'") + key + "' is required");
      return fallback;
    }
    if (!j[key].is_string()) fail(path, std::string("'") + key + "' must be a string");
    return j[key].get<std::string>();
  }
  double number(const char* key, double fallback) const {
    if (!j.contains(key)) return fallback;
    if (!j[key].is_number() || !std::isfinite(j[key].get<double>())) fail(path, std::string("'") + key + "' must be a number");
    return j[key].get<double>();
  }
  int64_t positive(const char* key, int64_t fallback) const {
    if (!j.contains(key)) return fallback;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0)
      fail(path, std::string("'") + key + "' must be a positive integer");
    return j[key].get<int64_t>();
  }
  bool on(const char* key) const { return j.contains(key) && json_truthy(j[key]); }  // as the trainer reads it
};

// The observers: act_quant_method, cachekv_quant_method, weight_quant_method.
void read_methods(const ArgFile& f, PtqArgs& a) {
  const std::string act = f.str("act_quant_method", "avg");
  if (act != "avg" && act != "abs_max") fail(f.path, "act_quant_method '" + act + "' (avg or abs_max)");
  a.act = act == "avg" ? ObserverReduce::Average : ObserverReduce::Max;
  const std::string kv = f.str("cachekv_quant_method", "avg_headwise");
  if (kv != "avg_headwise" && kv != "abs_max_headwise")
    fail(f.path, "cachekv_quant_method '" + kv + "' (avg_headwise or abs_max_headwise)");
  a.kv = kv == "avg_headwise" ? ObserverReduce::Average : ObserverReduce::Max;
  const std::string w = f.str("weight_quant_method", "abs_max_channel_wise");
  if (w != "abs_max_channel_wise") fail(f.path, "weight_quant_method '" + w + "': only abs_max_channel_wise is built");
}

// SmoothQuant's keys (PaddleNLP's QuantArgument names and defaults).
void read_smoothing(const ArgFile& f, PtqArgs& a) {
  a.smooth = f.on("smooth");
  a.smooth_step = f.positive("smooth_step", a.smooth_step);
  SmoothOptions& o = a.smoothing;
  o.all_linears = f.on("smooth_all_linears");
  o.piecewise_search = f.on("smooth_piecewise_search");
  o.k_piece = f.positive("smooth_k_piece", o.k_piece);
  o.search_piece = f.on("smooth_search_piece");
  o.alpha_min = f.number("search_alpha_min", o.alpha_min);
  o.alpha_max = f.number("search_alpha_max", o.alpha_max);
  o.scale_min = f.number("search_scale_min", o.scale_min);
  o.scale_max = f.number("search_scale_max", o.scale_max);
  if (!(0 <= o.alpha_min && o.alpha_min <= o.alpha_max && o.alpha_max <= 1))
    fail(f.path, "'search_alpha_min' and 'search_alpha_max' must satisfy 0 <= min <= max <= 1");
  if (!(0 < o.scale_min && o.scale_min <= o.scale_max && o.scale_max <= 1000))
    fail(f.path, "'search_scale_min' and 'search_scale_max' must satisfy 0 < min <= max <= 1000");
  // Folded into v_proj's rows, o_proj's smoothing would rescale V's channels, which a8w8c8's int8 V cache
  // (one step per kv head) would then hold with less precision: with c8, all-linear smoothing is down_proj's only.
  o.o_proj = a.quant_type != "a8w8c8";
  o.act = a.act;  // the search scores with the step PTQ will take (read_methods ran first)
  const std::string sampler = f.str("smooth_sampler", "none");
  if (sampler != "none") fail(f.path, "smooth_sampler '" + sampler + "': only none is built");
}

// The keys PTQ reads from a PaddleNLP argument file; the training keys beside them are not used.
PtqArgs read_ptq_args(const std::string& path) {
  const ArgFile f{path, parse_json_file(path)};
  if (!f.j.is_object()) fail(path, "expected a JSON object of PaddleNLP arguments");
  PtqArgs a;
  a.model = f.str("model_name_or_path", "", true);
  a.dataset = f.str("dataset_name_or_path", "", true);
  a.output_dir = f.str("output_dir", "", true);
  a.quant_type = f.str("quant_type", a.quant_type);
  a.chat_template = f.str("chat_template", "");
  if (a.output_dir.empty()) fail(path, "'output_dir' must name a directory");
  if (f.on("do_train") && f.on("do_ptq"))
    fail(path, "'do_train' and 'do_ptq' are both true: run the fine-tuning first, then PTQ on its output");
  a.ptq_step = f.positive("ptq_step", a.ptq_step);
  a.batch_size = f.positive("per_device_train_batch_size", a.batch_size);
  a.src_length = f.positive("src_length", a.src_length);
  a.max_length = f.positive("max_length", a.max_length);
  a.overwrite = f.on("overwrite_output_dir");
  if (a.quant_type != "a8w8" && a.quant_type != "a8w8c8")
    fail(path, "quant_type '" + a.quant_type + "': PTQ is built for a8w8 and a8w8c8 (the weight_only types need no "
                                                "calibration: pass --quant_type to predict, serve or perplexity)");
  read_methods(f, a);
  read_smoothing(f, a);
  for (const char* key : {"shift", "shift_all_linears", "do_gptq", "do_awq", "do_qat"})
    if (f.on(key))
      fail(path, std::string("'") + key + "': true is not built yet (set it to false: oar's PTQ has SmoothQuant, "
                                          "not Shift, GPTQ or AWQ)");
  if (f.j.contains("skip_list_names") && !f.j["skip_list_names"].empty())
    fail(path, "'skip_list_names' is not supported (every projection is quantized)");
  return a;
}

// Batches of the calibration examples, in file order: ptq_step of them at most (only those are tokenized), each
// as fine-tuning reads it (src_length, max_length, the chat template where the run has one).
std::vector<std::vector<std::vector<int32_t>>> calibration_batches(const PtqArgs& a, const Tokenizer& tok) {
  const std::string path = sft_split_path(a.dataset, file_exists(join_path(a.dataset, "quant.json")) ? "quant" : "train");
  SftOptions opt;
  opt.src_length = a.src_length;
  opt.max_length = a.max_length;
  TrainArgs ta;  // what make_chat_renderer reads: the template key and where the tokenizer lives
  ta.model_name_or_path = a.model;
  ta.chat_template = a.chat_template;
  std::string template_file;
  opt.chat = make_chat_renderer(ta, tok, &template_file);
  const std::vector<SftRecord> recs = read_sft_file(path);
  const TextEncoder enc(tok, SpecialTextRule::PaddleNLP);
  const int64_t steps = a.smooth ? std::max(a.ptq_step, a.smooth_step) : a.ptq_step;
  const size_t wanted = size_t(std::min<int64_t>(int64_t(recs.size()), steps * a.batch_size));
  std::vector<std::vector<std::vector<int32_t>>> batches;
  for (size_t i = 0; i < wanted; i++) {
    if (i % size_t(a.batch_size) == 0) batches.emplace_back();
    batches.back().push_back(tokenize_sft_example(enc, recs[i], opt).input_ids);
  }
  if (batches.empty()) fail(path, "no calibration examples");
  std::printf("ptq: %zu batches of up to %lld examples from %s%s\n", batches.size(), (long long)a.batch_size,
              path.c_str(), template_file.empty() ? "" : (", chat template " + template_file).c_str());
  return batches;
}

// What PaddleNLP's PTQ writes, keyed as its loaders read them ("llama.layers.<i>....").
struct ScaleFiles {
  nlohmann::json act = nlohmann::json::object(), weight = nlohmann::json::object(), cachekv = nlohmann::json::object();
};
ScaleFiles scale_files(const CalibrationStats& st, const LlamaConfig& cfg, const WeightSource& w) {
  ScaleFiles f;
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    const std::string p = "llama.layers." + std::to_string(l) + ".";
    for (size_t j = 0; j < kCalibratedInputs.size(); j++)
      f.act[p + kCalibratedInputs[j] + ".activation_quanter"] = st.act[size_t(l)][j];
    for (const char* proj : kLayerProjections) {
      const Tensor t = w.get("model.layers." + std::to_string(l) + "." + proj + ".weight").to(DType::F32);
      std::vector<double> amax(static_cast<size_t>(t.dim(0)));
      bool finite;
      for (int64_t r = 0; r < t.dim(0); r++) amax[size_t(r)] = row_absmax(t.data<float>() + r * t.dim(1), t.dim(1), &finite);
      f.weight[p + proj + ".weight_quanter"] = amax;
    }
    f.cachekv[p + "self_attn.cachek_matmul.activation_quanter"] = st.k[size_t(l)];
    f.cachekv[p + "self_attn.cachev_matmul.activation_quanter"] = st.v[size_t(l)];
  }
  return f;
}

// PaddleNLP writes into an existing output_dir; oar replaces it whole, so only when asked.
void refuse_existing_output(const PtqArgs& a) {
  if (!a.overwrite && std::filesystem::exists(a.output_dir))
    fail(a.output_dir, "output_dir already exists (set \"overwrite_output_dir\": true to replace it)");
}

// A weight file into `tmp`: a hard link where the file system allows (a 13B's weights are 26 GB), else a
// copy.
void link_or_copy(const std::filesystem::path& src, const std::string& tmp) {
  namespace fs = std::filesystem;
  const fs::path dst = fs::path(tmp) / src.filename();
  std::error_code ec;
  fs::create_hard_link(src, dst, ec);
  if (!ec) return;
  fs::copy_file(src, dst, ec);
  if (ec) fail(src.string(), "cannot copy to the output: " + ec.message());
}

// A model directory's weight files and their index: what PTQ's output keeps beside the tokenizer's files (not a
// training checkpoint's optimizer state, nor old scale files).
bool is_weight_file(const std::string& name) {
  auto ends = [&](const std::string& suf) {
    return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
  };
  return ends(".safetensors") || ends(".pdparams") || name == "model.safetensors.index.json" ||
         name == "model_state.pdparams.index.json";
}

// The weights PTQ observes and writes: the checkpoint's, with SmoothQuant's tensors in place of theirs.
class SmoothedSource final : public WeightSource {
 public:
  SmoothedSource(const WeightSource& base, std::map<std::string, Tensor> smoothed)
      : base_(base), smoothed_(std::move(smoothed)) {}
  bool has(const std::string& n) const override { return base_.has(n); }
  Tensor get(const std::string& n) const override {
    auto it = smoothed_.find(n);
    return it != smoothed_.end() ? it->second : base_.get(n);
  }
  std::string where() const override { return base_.where() + " (smoothed)"; }
  bool empty() const { return smoothed_.empty(); }

 private:
  const WeightSource& base_;
  std::map<std::string, Tensor> smoothed_;
};

// Every tensor of a Llama checkpoint, in Hugging Face's names and order, each read only when it is written (a
// PaddleNLP checkpoint's are transposed copies; a 13B is 26 GB).
std::vector<TensorToWrite> all_tensors(const LlamaConfig& cfg, const WeightSource& w) {
  std::vector<std::string> names{"model.embed_tokens.weight"};
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    names.push_back(p + "input_layernorm.weight");
    names.push_back(p + "post_attention_layernorm.weight");
    for (const char* proj : kLayerProjections) names.push_back(p + proj + ".weight");
    for (const char* b : {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias"})
      if (w.has(p + b)) names.push_back(p + b);
  }
  names.push_back("model.norm.weight");
  if (w.has("lm_head.weight")) names.push_back("lm_head.weight");
  std::vector<TensorToWrite> out;
  for (const std::string& n : names) {
    const Tensor t = w.get(n);  // for its dtype and shape; dropped at once
    out.push_back({n, t.dtype(), t.shape(), [&w, n]() {
                     Tensor v = w.get(n);
                     return v.is_contiguous() ? v : v.contiguous();
                   }});
  }
  return out;
}

// output_dir: the model's weights (its files as they are, or the smoothed model as model.safetensors),
// config.json with quantization_config, and the scale files.
void write_ptq_output(const PtqArgs& a, const CalibrationStats& st, const LlamaConfig& cfg, const SmoothedSource& w) {
  const ScaleFiles files = scale_files(st, cfg, w);
  nlohmann::json config = parse_json_file(join_path(a.model, "config.json"));
  // As the weights were read: a PaddleNLP checkpoint with its own lm_head is untied whatever its config says, and
  // the output's Hugging Face names must say so.
  config["tie_word_embeddings"] = cfg.tie_word_embeddings;
  // All-linear smoothing is folded into v_proj and up_proj: no extra tensors, so not shift_smooth_all_linears.
  config["quantization_config"] = {{"quant_type", a.quant_type}, {"smooth", a.smooth}, {"shift", false},
                                   {"shift_smooth_all_linears", false}};
  refuse_existing_output(a);  // again: it may have appeared during the calibration
  write_directory_atomically(a.output_dir, a.overwrite, {a.model, a.dataset}, [&](const std::string& tmp) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (w.empty()) {
      for (fs::directory_iterator it(a.model, ec), end; !ec && it != end; it.increment(ec))
        if (it->is_regular_file() && is_weight_file(it->path().filename().string())) link_or_copy(it->path(), tmp);
      if (ec) fail(a.model, "cannot list the model directory: " + ec.message());
    } else {
      write_safetensors(join_path(tmp, "model.safetensors"), all_tensors(cfg, w), {{"format", "pt"}});
    }
    copy_tokenizer_files(a.model, tmp);  // tokenizer, generation config and chat template, as a checkpoint's
    write_file_atomic(join_path(tmp, "config.json"), config.dump(2) + "\n");
    write_file_atomic(join_path(tmp, "act_scales.json"), files.act.dump(2) + "\n");
    write_file_atomic(join_path(tmp, "weight_scales.json"), files.weight.dump() + "\n");
    if (a.quant_type == "a8w8c8") write_file_atomic(join_path(tmp, "cachekv_scales.json"), files.cachekv.dump(2) + "\n");
  });
}

void print_progress(const char* what, int64_t done, int64_t total) {
  std::printf("ptq: %s %lld/%lld\n", what, (long long)done, (long long)total);
  std::fflush(stdout);
}

// SmoothQuant over the first smooth_step batches: the smoothed tensors, in the checkpoint's dtypes.
std::map<std::string, Tensor> smoothed_tensors(const PtqArgs& a, const ModelSource& ms, DType dtype,
                                               const std::vector<std::vector<std::vector<int32_t>>>& batches) {
  const size_t n = std::min(batches.size(), size_t(a.smooth_step));
  const std::vector<std::vector<std::vector<int32_t>>> first(batches.begin(), batches.begin() + ptrdiff_t(n));
  const ChannelStats stats = observe_channels(ms.config, *ms.weights, dtype, first, kSmoothSampleRows,
                                              [](int64_t d, int64_t t) { print_progress("smooth batch", d, t); });
  std::map<std::string, Tensor> out = smooth_weights(ms.config, *ms.weights, stats, a.smoothing, [](const SmoothReport& r) {
    std::printf("ptq: smooth %s: a8w8 error on sampled rows %.4g -> %.4g (s in [%.3g, %.3g])\n", r.group.c_str(),
                r.error_before, r.error_after, double(r.s_min), double(r.s_max));
  });
  return out;
}

}  // namespace

int run_ptq(const std::string& cfg_path) {
  if (launched_by_mpi()) throw Error("PTQ runs in one process: start it without mpirun");
  const PtqArgs a = read_ptq_args(cfg_path);
  if (!dir_exists(a.model) || !file_exists(join_path(a.model, "config.json")))
    fail(a.model, "PTQ needs a Hugging Face model directory (config.json and safetensors)");
  if (has_packed_weights(a.model)) fail(a.model, "is an oar export: run PTQ on the checkpoint it was exported from");
  refuse_existing_output(a);  // before minutes of calibration
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(a.model);
  const auto batches = calibration_batches(a, *tok);
  const ModelSource ms = open_model_source(a.model);
  // As PaddleNLP's PTQ runs with "bf16": a 16-bit checkpoint's products in bfloat16 (half a float32 copy's memory).
  const DType dtype = ms.config.torch_dtype == "bfloat16" || ms.config.torch_dtype == "float16" ? DType::BF16 : DType::F32;
  const SmoothedSource weights(*ms.weights, a.smooth ? smoothed_tensors(a, ms, dtype, batches) : std::map<std::string, Tensor>{});
  const std::vector<std::vector<std::vector<int32_t>>> ptq(batches.begin(),
                                                           batches.begin() + ptrdiff_t(std::min(batches.size(), size_t(a.ptq_step))));
  const CalibrationStats st = calibrate(ms.config, weights, dtype, ptq, a.act, a.kv,
                                        [](int64_t d, int64_t t) { print_progress("batch", d, t); });
  write_ptq_output(a, st, ms.config, weights);
  std::printf("ptq: %s written to %s (act_scales.json, weight_scales.json%s%s); run it with --quant_type %s\n",
              a.quant_type.c_str(), a.output_dir.c_str(), a.quant_type == "a8w8c8" ? ", cachekv_scales.json" : "",
              a.smooth ? ", smoothed weights" : "", a.quant_type.c_str());
  return 0;
}

Action add_quantize(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  app.add_option("config", *path, "PaddleNLP argument file (ptq_argument.json's keys; see the README)")->required();
  return [path]() -> int { return run_ptq(*path); };
}

}  // namespace oar::cli
