#include "train/paddle_checkpoint.h"

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "io/convert.h"
#include "io/paddle_layout.h"
#include "io/pdparams.h"
#include "io/safetensors.h"
#include "io/weight_source.h"
#include "train/lora_io.h"

namespace oar {
namespace {

using json = nlohmann::json;
using Named = std::vector<std::pair<std::string, Tensor>>;

constexpr const char* kModelShard = "model-00001-of-00001.safetensors";
constexpr const char* kModelIndex = "model.safetensors.index.json";
constexpr const char* kMasterShard = "master_weights-00001-of-00001.safetensors";
constexpr const char* kMasterIndex = "master_weights.safetensors.index.json";
constexpr const char* kOptimizerShard = "optimizer-00001-of-00001.safetensors";

// One shard and its index, as PaddleNLP's save_single_card_checkpoint / _optimizer write them.
void write_single_shard(const std::string& dir, const std::string& shard, const std::string& index_name,
                        const Named& tensors, json extra = json::object()) {
  json weight_map = json::object();
  int64_t total = 0;
  for (const auto& [name, t] : tensors) {
    weight_map[name] = shard;
    total += int64_t(t.nbytes());
  }
  write_safetensors(join_path(dir, shard), tensors, {{"format", "np"}});
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  index.update(extra);
  write_file_atomic(join_path(dir, index_name), index.dump(4) + "\n");
}

Tensor to_paddle(const Tensor& t, const PaddleTensorName& pn) {
  return pn.transposed ? t.transpose(0, 1).contiguous() : t.contiguous();
}

// `weights` (Hugging Face names) in PaddleNLP's layout and `dtype`, as oar convert --to paddle writes them.
Named paddle_model_tensors(const Named& weights, DType dtype, LlamaConfig& cfg) {
  std::map<std::string, Tensor> by_name;
  for (const auto& [name, t] : weights) by_name.emplace(name, t.to(dtype));
  TensorMapSource src("the trained model", std::move(by_name));
  return paddle_checkpoint_tensors(cfg, src, "the trained model");
}

}  // namespace

DType paddle_params_dtype(const TrainArgs& a) {
  if (a.fp16_opt_level != "O2") return DType::F32;
  return a.bf16 ? DType::BF16 : a.fp16 ? DType::F16 : DType::F32;
}

void save_paddle_weights(const std::string& dir, const Named& named, const LlamaConfig& model_cfg, const LoraOptions* lora,
                         const std::string& base, DType params_dtype) {
  const bool master = params_dtype != DType::F32;
  if (lora) {
    save_lora_adapter_paddle(dir, lora_adapter_from_named(named, *lora, base));
    if (master) {  // PaddleNLP keeps the adapter's float32 copy as master weights
      Named adapter;
      for (const auto& [name, t] : named)
        if (name.find(".lora_") != std::string::npos) {
          const PaddleTensorName pn = paddle_name_of(name);
          adapter.emplace_back(pn.name, to_paddle(t.to(DType::F32), pn));
        }
      write_single_shard(dir, kMasterShard, kMasterIndex, adapter);
    }
    return;
  }
  Named weights;
  for (const auto& [name, t] : named)
    if (name.find(".lora_") == std::string::npos) weights.emplace_back(name, t);
  LlamaConfig cfg = model_cfg;
  cfg.torch_dtype = dtype_name(params_dtype);
  LlamaConfig master_cfg = cfg;  // paddle_model_tensors unties the config it is given; the model's is written
  write_single_shard(dir, kModelShard, kModelIndex, paddle_model_tensors(weights, params_dtype, cfg));
  write_file_atomic(join_path(dir, "config.json"), to_hf_config_json(cfg));
  if (master) write_single_shard(dir, kMasterShard, kMasterIndex, paddle_model_tensors(weights, DType::F32, master_cfg));
}

bool has_paddle_master_weights(const std::string& dir) { return file_exists(join_path(dir, kMasterIndex)); }

std::unique_ptr<WeightSource> open_paddle_weights(const std::string& dir, const LlamaConfig& cfg) {
  const std::string index = join_path(dir, kMasterIndex);
  if (!file_exists(index)) fail(dir, std::string("no master weights (") + kMasterIndex + ")");
  auto paddle = std::make_unique<TensorMapSource>(index, read_indexed_tensors(dir, index, read_safetensors_file));
  return paddle_layout_as_hf(std::move(paddle), cfg);
}

void remove_layout_files(const std::string& dir, CheckpointLayout layout) {
  static const char* const hf[] = {"model.safetensors", "adapter_config.json", "adapter_model.safetensors"};
  static const char* const paddle[] = {kModelShard, kModelIndex, kMasterShard, kMasterIndex, "lora_config.json",
                                       "peft_model-00001-of-00001.safetensors", "peft_model.safetensors.index.json",
                                       kOarTrainerStateFile};
  std::error_code ec;
  if (layout == CheckpointLayout::HuggingFace) {
    for (const char* f : hf) std::filesystem::remove(join_path(dir, f), ec);
  } else {
    for (const char* f : paddle) std::filesystem::remove(join_path(dir, f), ec);
  }
}

void save_paddle_optimizer(const std::string& dir, const Named& state, const AdamWConfig& c, int64_t steps,
                           bool master_weights) {
  const std::string m1 = ".exp_avg", m2 = ".exp_avg_sq";
  auto param_of = [&](size_t i, const std::string& suffix) {
    const std::string& n = state[i].first;
    if (n.size() <= suffix.size() || n.compare(n.size() - suffix.size(), suffix.size(), suffix) != 0)
      throw Error("save_paddle_optimizer: '" + n + "' is not a parameter's " + suffix);
    return n.substr(0, n.size() - suffix.size());
  };
  if (state.size() % 2 != 0) throw Error("save_paddle_optimizer: two moments per parameter expected");
  // Paddle starts beta^t at beta and multiplies after each update: after t steps it holds beta^(t+1).
  const double t1 = double(steps + 1);
  Named out;
  for (size_t i = 0; i < state.size() / 2; ++i) {
    const std::string param = param_of(2 * i, m1);
    if (param_of(2 * i + 1, m2) != param) throw Error("save_paddle_optimizer: the moments of '" + param + "' are not paired");
    const PaddleTensorName pn = paddle_name_of(param);
    out.emplace_back(pn.name + "/moment1_0", to_paddle(state[2 * i].second, pn));
    out.emplace_back(pn.name + "/moment2_0", to_paddle(state[2 * i + 1].second, pn));
    for (const auto& [suffix, beta] : {std::pair{"/beta1_pow_acc_0", c.beta1}, std::pair{"/beta2_pow_acc_0", c.beta2}}) {
      Tensor pow = Tensor::empty({1}, DType::F32);
      pow.data<float>()[0] = float(std::pow(beta, t1));
      out.emplace_back(pn.name + suffix, pow);
    }
  }
  write_single_shard(dir, kOptimizerShard, kPaddleOptimizerIndex, out, {{"master_weights", master_weights}});
}

std::map<std::string, Tensor> read_paddle_optimizer(const std::string& dir, const std::vector<Parameter*>& params) {
  const std::string index = join_path(dir, kPaddleOptimizerIndex);
  const std::map<std::string, Tensor> paddle = read_indexed_tensors(dir, index, read_safetensors_file);
  std::map<std::string, Tensor> out;
  for (const Parameter* p : params) {
    if (!p->trainable) continue;
    const PaddleTensorName pn = paddle_name_of(p->name);
    for (const auto& [paddle_suffix, oar_suffix] : {std::pair{"/moment1_0", ".exp_avg"}, std::pair{"/moment2_0", ".exp_avg_sq"}}) {
      auto it = paddle.find(pn.name + paddle_suffix);
      if (it == paddle.end()) fail(index, "missing optimizer state '" + pn.name + paddle_suffix + "'");
      if (pn.transposed && it->second.shape().size() != 2)
        fail(index, "optimizer state '" + it->first + "' is " + shape_str(it->second.shape()) + ", not a matrix");
      out.emplace(p->name + oar_suffix, to_paddle(it->second, pn));  // the transpose is its own inverse
    }
  }
  return out;
}

void save_paddle_scheduler(const std::string& dir, int64_t last_epoch, double last_lr) {
  write_file_atomic(join_path(dir, "scheduler.pdparams"), pickle_number_dict({{"last_epoch", last_epoch}, {"last_lr", last_lr}}));
}

std::string paddle_trainer_state_json(const TrainerState& s, double num_train_epochs) {
  json j = {{"epoch", s.epoch},
            {"global_step", s.global_step},
            {"max_steps", s.max_steps},
            {"num_train_epochs", int64_t(std::ceil(num_train_epochs))},
            {"total_flos", 0},
            {"log_history", s.log_history},
            {"best_metric", s.has_best ? json(s.best_metric) : json(nullptr)},
            {"best_model_checkpoint", s.has_best ? json(s.best_model_checkpoint) : json(nullptr)},
            {"is_local_process_zero", true},
            {"is_world_process_zero", true},
            {"trial_name", nullptr},
            {"trial_params", nullptr}};
  return j.dump(2) + "\n";
}

}  // namespace oar
