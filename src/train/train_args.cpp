#include "train/train_args.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "train/train_args_validate.h"

namespace oar {
namespace {

using nlohmann::json;

enum class Kind { Bool, Int, Float, Str, Tri };  // Tri: optional bool stored as int (-1 unset)
enum class Scope { Both, Pretrain, Finetune };

struct Field {
  Kind kind;
  void* ptr;
  Scope scope;
};

// The honoured keys, bound to the fields of `a`.
std::map<std::string, Field> bind_fields(TrainArgs& a) {
  std::map<std::string, Field> f;
  auto B = [&](const char* k, bool& v, Scope s = Scope::Both) { f[k] = {Kind::Bool, &v, s}; };
  auto I = [&](const char* k, int64_t& v, Scope s = Scope::Both) { f[k] = {Kind::Int, &v, s}; };
  auto F = [&](const char* k, double& v, Scope s = Scope::Both) { f[k] = {Kind::Float, &v, s}; };
  auto S = [&](const char* k, std::string& v, Scope s = Scope::Both) { f[k] = {Kind::Str, &v, s}; };
  const Scope P = Scope::Pretrain, FT = Scope::Finetune;
  S("model_name_or_path", a.model_name_or_path);
  S("tokenizer_name_or_path", a.tokenizer_name_or_path);
  B("continue_training", a.continue_training);
  I("num_hidden_layers", a.num_hidden_layers, P);
  F("initializer_range", a.initializer_range);
  B("lora", a.lora, FT);
  S("lora_path", a.lora_path, FT);
  I("lora_rank", a.lora_rank, FT);
  B("rslora", a.rslora, FT);
  F("lora_plus_scale", a.lora_plus_scale, FT);
  S("dataset_name_or_path", a.dataset_name_or_path, FT);
  I("src_length", a.src_length, FT);
  I("max_length", a.max_length, FT);
  B("zero_padding", a.zero_padding, FT);
  B("greedy_zero_padding", a.greedy_zero_padding, FT);
  I("pad_to_multiple_of", a.pad_to_multiple_of, FT);
  B("pad_to_max_length", a.pad_to_max_length, FT);
  S("chat_template", a.chat_template, FT);
  B("eval_with_do_generation", a.eval_with_do_generation, FT);
  S("input_dir", a.input_dir, P);
  S("split", a.split, P);
  I("max_seq_length", a.max_seq_length, P);
  S("data_impl", a.data_impl, P);
  I("eval_iters", a.eval_iters, P);
  S("output_dir", a.output_dir);
  B("overwrite_output_dir", a.overwrite_output_dir);
  B("do_train", a.do_train);
  B("do_eval", a.do_eval);
  B("do_predict", a.do_predict);
  I("per_device_train_batch_size", a.per_device_train_batch_size);
  I("per_device_eval_batch_size", a.per_device_eval_batch_size);
  I("gradient_accumulation_steps", a.gradient_accumulation_steps);
  F("num_train_epochs", a.num_train_epochs);
  I("max_steps", a.max_steps);
  I("seed", a.seed);
  B("benchmark", a.benchmark);
  B("dataloader_drop_last", a.dataloader_drop_last);
  S("optim", a.optim);
  F("learning_rate", a.learning_rate);
  F("weight_decay", a.weight_decay);
  F("adam_beta1", a.adam_beta1);
  F("adam_beta2", a.adam_beta2);
  F("adam_epsilon", a.adam_epsilon);
  F("max_grad_norm", a.max_grad_norm);
  S("lr_scheduler_type", a.lr_scheduler_type);
  F("warmup_ratio", a.warmup_ratio);
  I("warmup_steps", a.warmup_steps);
  F("min_learning_rate", a.min_learning_rate, P);
  I("decay_steps", a.decay_steps);
  F("num_cycles", a.num_cycles);
  F("lr_end", a.lr_end);
  F("power", a.power);
  B("fp16", a.fp16);
  B("bf16", a.bf16);
  S("fp16_opt_level", a.fp16_opt_level);
  F("scale_loss", a.scale_loss);
  B("recompute", a.recompute);
  S("recompute_granularity", a.recompute_granularity);
  S("logging_strategy", a.logging_strategy);
  I("logging_steps", a.logging_steps);
  B("logging_first_step", a.logging_first_step);
  B("disable_tqdm", a.disable_tqdm);
  S("evaluation_strategy", a.evaluation_strategy);
  I("eval_steps", a.eval_steps);
  I("max_evaluate_steps", a.max_evaluate_steps);
  S("save_strategy", a.save_strategy);
  S("save_format", a.save_format);
  I("save_steps", a.save_steps);
  I("save_total_limit", a.save_total_limit);
  S("resume_from_checkpoint", a.resume_from_checkpoint);
  B("ignore_data_skip", a.ignore_data_skip);
  B("ignore_save_lr_and_optim", a.ignore_save_lr_and_optim);
  B("ignore_load_lr_and_optim", a.ignore_load_lr_and_optim);
  B("load_best_model_at_end", a.load_best_model_at_end);
  S("metric_for_best_model", a.metric_for_best_model);
  f["greater_is_better"] = {Kind::Tri, &a.greater_is_better, Scope::Both};
  I("tensor_parallel_degree", a.tensor_parallel_degree);
  I("pipeline_parallel_degree", a.pipeline_parallel_degree);
  I("sharding_parallel_degree", a.sharding_parallel_degree);
  S("log_dir", a.log_dir);
  I("sep_parallel_degree", a.sep_parallel_degree);
  I("context_parallel_degree", a.context_parallel_degree);
  I("virtual_pp_degree", a.virtual_pp_degree);
  S("sharding", a.sharding);
  B("sequence_parallel", a.sequence_parallel);
  return f;
}

// Old or alternative spellings -> the key they stand for.
const std::map<std::string, std::string>& aliases() {
  static const std::map<std::string, std::string> m = {
      {"eval_step", "eval_steps"},                // PaddleNLP's DCU configs (argparse prefix match)
      {"save_step", "save_steps"},                // idem
      {"intokens", "zero_padding"},               // deprecated DataArgument name
      {"task_name_or_path", "dataset_name_or_path"},  // deprecated DataArgument name
      {"eval_strategy", "evaluation_strategy"},   // newer Hugging Face spelling
      {"sharding_degree", "sharding_parallel_degree"},  // deprecated TrainingArguments name
  };
  return m;
}

// Accepted, changing nothing on one CPU process.
const std::set<std::string>& ignored_keys() {
  static const std::set<std::string> s = {
      // fused kernels and attention implementations: same math
      "use_flash_attention", "use_fused_rms_norm", "use_fused_rope", "fuse_attention_qkv", "fuse_attention_ffn",
      "use_fast_layer_norm", "enable_linear_fused_grad_add", "fuse_sequence_parallel_allreduce", "flash_mask",
      "use_quick_lora", "tensor_parallel_output", "to_static",
      // checkpoint formats: save_format chooses oar's layout (PaddleNLP's is always its unified checkpoint)
      "unified_checkpoint", "unified_checkpoint_config", "save_sharded_model", "load_sharded_model",
      "use_async_save", "ordered_save_group_size", "save_sharding_stage1_model_include_freeze_params",
      "force_reshard_pp", "auto_parallel_resume_form_hybrid_parallel",
      // data loading mechanics
      "dataloader_num_workers", "distributed_dataloader", "share_folder", "skip_warmup", "lazy", "data_cache",
      "lazy_data_processing", "remove_unused_columns", "label_names",
      // memory and communication tuning of parallel runs
      "eval_accumulation_steps", "pipeline_parallel_config", "sharding_parallel_config", "tensor_parallel_config",
      "data_parallel_config", "sequence_parallel_config", "hybrid_parallel_topo_order", "sharding_comm_buffer_size_MB",
      "sharding_parallel_mesh_dimension", "release_grads", "offload_optim", "flatten_param_grads",
      "refined_recompute", "recompute_use_reentrant", "no_recompute_layers", "pp_recompute_interval",
      "enable_auto_parallel", "use_expert_parallel", "expert_max_capacity", "expert_min_capacity",
      // precision: oar always keeps float32 master weights and gradients
      "amp_master_grad", "amp_custom_black_list", "amp_custom_white_list", "fp16_full_eval", "bf16_full_eval",
      // Llama has no dropout
      "hidden_dropout_prob", "attention_probs_dropout_prob",
      // devices, logging back-ends, bookkeeping
      "device", "no_cuda", "local_rank", "logging_dir", "output_signal_dir", "report_to", "run_name",
      "log_on_each_node", "save_on_each_node", "skip_profile_timer", "skip_memory_metrics", "metrics_output_path",
      "prediction_loss_only", "past_index", "ddp_find_unused_parameters", "wandb_api_key", "minimum_eval_times",
      "pdc_download_ckpt", "pdc_download_timeout", "autotuner_benchmark", "do_export",
      // generation-time settings (used only by eval_with_do_generation / predict)
      "top_k", "top_p", "save_generation_output", "model_type",
  };
  return s;
}

// Features oar does not have: an error when set to anything but their "off" value.
const std::map<std::string, std::string>& refused_keys() {
  static const std::map<std::string, std::string> m = {
      {"weight_quantize_algo", "QLoRA (quantized base weights) is not supported; use lora on float weights"},
      {"pissa", "PiSSA initialisation is not supported"},
      {"vera", "VeRA is not supported"},
      {"prefix_tuning", "prefix tuning is not supported"},
      {"reft", "ReFT is not supported"},
      {"neftune", "NEFTune embedding noise is not implemented"},
      {"do_ptq", "PTQ runs as `oar finetune FILE.json` (or `oar quantize FILE.json`) with every setting in the file"},
      {"do_qat", "quantization-aware training is not supported"},
      {"do_gptq", "quantization runs outside the trainer (the quantization issue)"},
      {"do_awq", "quantization runs outside the trainer (the quantization issue)"},
      {"skip_data_intervals", "skipping data intervals is not supported"},
  };
  return m;
}

// Accepted without effect when they carry these values (checked in validate_train_args()).
const std::set<std::string>& off_value_keys() {
  static const std::set<std::string> s = {"ckpt_quant_stage", "weight_blocksize", "vera_rank", "num_prefix_tokens",
                                          "neftune_noise_alpha", "prefix_path"};
  return s;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool parse_bool_text(const std::string& s0, bool* out) {
  std::string s = lower(s0);
  if (s == "true" || s == "1" || s == "yes" || s == "y" || s == "t" || s == "on") { *out = true; return true; }
  if (s == "false" || s == "0" || s == "no" || s == "n" || s == "f" || s == "off") { *out = false; return true; }
  return false;
}

bool parse_int_text(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno == 0 && *end == 0) { *out = v; return true; }
  // "1e3" or "100.0": integral floats are fine
  double d = std::strtod(s.c_str(), &end);
  if (*end == 0 && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) { *out = int64_t(d); return true; }
  return false;
}

bool parse_float_text(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (*end != 0 || !std::isfinite(d)) return false;  // "1e999" is not a usable value
  *out = d;
  return true;
}

// Sets one honoured field from a JSON value (file) or a string (command line, given as a JSON string).
void set_field(const Field& f, const json& v, bool from_cli, const std::string& where, const std::string& key) {
  auto bad = [&](const char* expect) {
    fail(where, (from_cli ? "--" + key : "key '" + key + "'") + ": expected " + expect + ", got " + v.dump());
  };
  if (v.is_null()) return;  // PaddleNLP's None: keep the default
  switch (f.kind) {
    case Kind::Bool:
    case Kind::Tri: {
      bool b = false;
      if (v.is_boolean()) b = v.get<bool>();
      else if (v.is_number()) b = v.get<double>() != 0;  // DCU configs write 0/1
      else if (v.is_string()) { if (!parse_bool_text(v.get<std::string>(), &b)) bad("true or false"); }
      else bad("true or false");
      if (f.kind == Kind::Bool) *static_cast<bool*>(f.ptr) = b;
      else *static_cast<int*>(f.ptr) = b ? 1 : 0;
      break;
    }
    case Kind::Int: {
      // 2^63 and beyond (JSON's unsigned or float values, or digits on the command line) do not fit int64.
      int64_t i = 0;
      if (v.is_number_unsigned()) {
        if (v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) bad("an integer in [-2^63, 2^63)");
        i = int64_t(v.get<uint64_t>());
      } else if (v.is_number_integer()) {
        i = v.get<int64_t>();
      } else if (v.is_number_float()) {
        double d = v.get<double>();
        if (d != std::floor(d)) bad("an integer");
        if (!(std::fabs(d) < 9.2e18)) bad("an integer in [-2^63, 2^63)");
        i = int64_t(d);
      } else if (v.is_string()) {
        if (!parse_int_text(v.get<std::string>(), &i)) bad("an integer in [-2^63, 2^63)");
      } else {
        bad("an integer");
      }
      *static_cast<int64_t*>(f.ptr) = i;
      break;
    }
    case Kind::Float: {
      double d = 0;
      if (v.is_number()) d = v.get<double>();
      else if (v.is_string()) { if (!parse_float_text(v.get<std::string>(), &d)) bad("a number"); }
      else bad("a number");
      *static_cast<double*>(f.ptr) = d;
      break;
    }
    case Kind::Str: {
      if (v.is_string()) *static_cast<std::string*>(f.ptr) = v.get<std::string>();
      else if (v.is_number() || v.is_boolean()) *static_cast<std::string*>(f.ptr) = v.dump();
      else bad("a string");
      break;
    }
  }
}

// The command line as (key, value) pairs: --key value, --key=value, --bool_key (= true).
std::vector<std::pair<std::string, std::string>> split_cli(const std::vector<std::string>& cli,
                                                           const std::map<std::string, Field>& fields) {
  std::vector<std::pair<std::string, std::string>> out;
  auto is_key = [](const std::string& s) { return s.size() > 2 && s[0] == '-' && s[1] == '-'; };
  for (size_t i = 0; i < cli.size(); i++) {
    const std::string& t = cli[i];
    if (!is_key(t)) fail("", "unexpected argument '" + t + "' (expected --key value)");
    std::string key = t.substr(2), value;
    size_t eq = key.find('=');
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else if (i + 1 < cli.size() && !is_key(cli[i + 1])) {
      value = cli[++i];
    } else {
      auto al = aliases().find(key);
      std::string real = al == aliases().end() ? key : al->second;
      auto it = fields.find(real);
      if (it != fields.end() && it->second.kind != Kind::Bool && it->second.kind != Kind::Tri)
        fail("", "--" + key + " needs a value");
      value = "true";  // a bare flag, as PaddleNLP's parser allows for booleans
    }
    out.emplace_back(key, value);
  }
  return out;
}

json read_config_json(const std::string& text, const std::string& where) {
  json j = parse_json(text, where);
  if (!j.is_object()) fail(where, "expected a JSON object of argument names and values");
  return j;
}

TrainArgs parse_impl(TrainMode mode, const json& file_obj, const std::string& file_where,
                     const std::vector<std::string>& cli, ArgsReport* report, int world_size) {
  TrainArgs a;
  a.mode = mode;
  a.config_file = file_where;
  if (mode == TrainMode::Pretrain) a.continue_training = false;  // run_pretrain.py's ModelArguments default
  std::map<std::string, Field> fields = bind_fields(a);
  ArgsReport local;
  ArgsReport& rep = report ? *report : local;
  std::set<std::string> ignored_seen;
  std::map<std::string, std::pair<std::string, json>> file_seen;  // key -> (spelling, value) from the file

  auto apply = [&](const std::string& key0, const json& v, bool from_cli, const std::string& where) {
    std::string key = key0;
    auto al = aliases().find(key);
    if (al != aliases().end()) key = al->second;
    const std::string label = from_cli ? "--" + key0 : "key '" + key0 + "'";
    auto f = fields.find(key);
    if (f != fields.end()) {
      const Scope other = mode == TrainMode::Pretrain ? Scope::Finetune : Scope::Pretrain;
      if (f->second.scope == other) {
        rep.warnings.push_back(where + ": " + label + " is a " + (mode == TrainMode::Pretrain ? "finetune" : "pretrain") +
                               " argument; oar " + (mode == TrainMode::Pretrain ? "pretrain" : "finetune") + " ignores it");
        return;
      }
      // The same key given twice in the file under two spellings (eval_step and eval_steps) must agree.
      if (!from_cli) {
        auto seen = file_seen.find(key);
        if (seen != file_seen.end() && seen->second.second != v)
          fail(where, "'" + seen->second.first + "' and '" + key0 + "' disagree (" + seen->second.second.dump() +
                          " vs " + v.dump() + ")");
        file_seen[key] = {key0, v};
      }
      set_field(f->second, v, from_cli, where, key0);
      if (!a.source.count(key)) a.given.push_back(key);
      a.source[key] = where;
      return;
    }
    if (ignored_keys().count(key)) { ignored_seen.insert(key0); return; }
    auto r = refused_keys().find(key);
    if (r != refused_keys().end()) {
      if (json_truthy(v)) fail(where, label + ": " + r->second);
      ignored_seen.insert(key0);
      return;
    }
    if (off_value_keys().count(key)) {
      if (key == "ckpt_quant_stage" && v.is_string() && v.get<std::string>() != "O0")
        fail(where, label + ": checkpoint quantization is not supported (use O0)");
      ignored_seen.insert(key0);
      return;
    }
    rep.warnings.push_back(where + ": unknown key " + (from_cli ? "--" + key0 : "'" + key0 + "'") + " (ignored)");
  };

  for (auto it = file_obj.begin(); it != file_obj.end(); ++it) apply(it.key(), it.value(), false, file_where);
  for (auto& [k, v] : split_cli(cli, fields)) apply(k, json(v), true, "command line");
  for (const auto& k : ignored_seen) rep.ignored.push_back(k);
  validate_train_args(a, &rep, world_size);
  return a;
}

}  // namespace

bool json_truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) {
    std::string s = lower(v.get<std::string>());
    return !(s.empty() || s == "false" || s == "0" || s == "none" || s == "no" || s == "null");
  }
  return !v.empty();
}

TrainArgs parse_train_args_text(TrainMode mode, const std::string& json_text, const std::string& where,
                                const std::vector<std::string>& cli, ArgsReport* report, int world_size) {
  json obj = json_text.empty() ? json::object() : read_config_json(json_text, where);
  return parse_impl(mode, obj, where, cli, report, world_size);
}

TrainArgs parse_train_args(TrainMode mode, const std::string& config_file, const std::vector<std::string>& cli,
                           ArgsReport* report, int world_size) {
  if (config_file.empty()) return parse_impl(mode, json::object(), "", cli, report, world_size);
  return parse_impl(mode, read_config_json(read_file(config_file), config_file), config_file, cli, report, world_size);
}

std::string train_args_json(const TrainArgs& a0) {
  TrainArgs a = a0;
  json j = json::object();
  j["oar_command"] = a.is_pretrain() ? "pretrain" : "finetune";
  for (auto& [k, f] : bind_fields(a)) {
    const Scope other = a.is_pretrain() ? Scope::Finetune : Scope::Pretrain;
    if (f.scope == other) continue;
    switch (f.kind) {
      case Kind::Bool: j[k] = *static_cast<bool*>(f.ptr); break;
      case Kind::Tri: { int v = *static_cast<int*>(f.ptr); if (v >= 0) j[k] = bool(v); else j[k] = nullptr; break; }
      case Kind::Int: j[k] = *static_cast<int64_t*>(f.ptr); break;
      case Kind::Float: j[k] = *static_cast<double*>(f.ptr); break;
      case Kind::Str: j[k] = *static_cast<std::string*>(f.ptr); break;
    }
  }
  return j.dump(2) + "\n";
}

std::string train_args_help(TrainMode mode) {
  std::ostringstream o;
  const bool pre = mode == TrainMode::Pretrain;
  o << "usage: oar " << (pre ? "pretrain" : "finetune") << " [CONFIG.json] [--key value ...]\n\n"
    << "PaddleNLP's " << (pre ? "run_pretrain.py" : "run_finetune.py")
    << " arguments, from a JSON file and/or the command line (the command line wins).\n\n";
  o << "model:     model_name_or_path tokenizer_name_or_path continue_training initializer_range"
    << (pre ? " num_hidden_layers" : "") << "\n";
  if (pre) o << "data:      input_dir split max_seq_length eval_iters\n";
  else o << "data:      dataset_name_or_path src_length max_length zero_padding (intokens) greedy_zero_padding chat_template\n"
         << "LoRA:      lora lora_path lora_rank rslora lora_plus_scale\n";
  o << "loop:      output_dir do_train do_eval do_predict per_device_train_batch_size per_device_eval_batch_size\n"
    << "           gradient_accumulation_steps num_train_epochs max_steps seed overwrite_output_dir benchmark\n"
    << "optimizer: learning_rate weight_decay adam_beta1 adam_beta2 adam_epsilon max_grad_norm lr_scheduler_type\n"
    << "           warmup_steps warmup_ratio decay_steps" << (pre ? " min_learning_rate" : "") << " num_cycles lr_end power\n"
    << "precision: fp16 bf16 fp16_opt_level scale_loss recompute\n"
    << "logging:   logging_steps logging_first_step disable_tqdm evaluation_strategy eval_steps (eval_step)\n"
    << "saving:    save_strategy save_steps (save_step) save_total_limit save_format resume_from_checkpoint\n"
    << "           load_best_model_at_end\n"
    << "parallel:  tensor_parallel_degree pipeline_parallel_degree sharding sharding_parallel_degree log_dir\n"
    << "           (mpirun -np N: data parallelism over the ranks the other degrees leave)\n";
  return o.str();
}

int TrainArgs::sharding_stage() const {
  for (int stage : {1, 2, 3})
    if (sharding.find("stage" + std::to_string(stage)) != std::string::npos) return stage;
  return 0;
}

}  // namespace oar
