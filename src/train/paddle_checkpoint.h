// A training run's checkpoints in PaddleNLP's layout (save_format "paddle"): what PaddleNLP 2.8.1's Trainer
// writes on one card with unified_checkpoint true, so that PaddleNLP resumes (with unified_checkpoint true) or
// predicts from an oar run, and oar resumes from it too.
//   config.json, model-00001-of-00001.safetensors, model.safetensors.index.json
//       the model, Paddle names and [in, out]; with low-precision parameters (bf16/fp16 with fp16_opt_level O2)
//       in that dtype (bfloat16 as U16), else float32
//   master_weights-00001-of-00001.safetensors, master_weights.safetensors.index.json
//       the float32 master weights, with low-precision parameters only
//   lora_config.json, peft_model-00001-of-00001.safetensors, peft_model.safetensors.index.json
//       a LoRA run's adapter instead of the model (float32)
//   optimizer-00001-of-00001.safetensors, optimizer.safetensors.index.json
//       AdamW's "<name>/moment1_0" and "<name>/moment2_0" in the parameter's Paddle shape, and "<name>/beta1_pow_acc_0",
//       "<name>/beta2_pow_acc_0" ([1]: beta^(t+1), as Paddle keeps them after t steps)
//   scheduler.pdparams      {"last_epoch": scheduler steps, "last_lr": the next step's learning rate}
//   trainer_state.json      PaddleNLP's TrainerState fields only (its loader refuses any other key)
//   oar_trainer_state.json  oar's own state (data position, loss scaler, logging interval), which oar resumes from
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/convert.h"
#include "io/weight_source.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/train_args.h"
#include "train/trainable_llama.h"

namespace oar {

// The dtype PaddleNLP's parameters have in this run: bfloat16 / float16 with fp16_opt_level O2 (master weights
// kept beside them), else float32 (O1 keeps float32 parameters and casts per op).
DType paddle_params_dtype(const TrainArgs& a);

inline constexpr const char* kOarTrainerStateFile = "oar_trainer_state.json";
inline constexpr const char* kPaddleOptimizerIndex = "optimizer.safetensors.index.json";

// The model's weights (or, with `lora`, its adapter) as above: `weights` as TrainableLlama::export_weights(true)
// gives them, of the whole model (a pipeline's stages gathered). `params_dtype`: F32, or BF16/F16 for
// low-precision parameters (master weights written beside them). Throws for what PaddleNLP's Llama cannot hold.
void save_paddle_weights(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& weights,
                         const LlamaConfig& cfg, const LoraOptions* lora, const std::string& base_model_name_or_path,
                         DType params_dtype);
// DIR holds float32 master weights (a low-precision run's checkpoint in PaddleNLP's layout).
bool has_paddle_master_weights(const std::string& dir);
// The float32 master weights of DIR under Hugging Face names (open_model_source reads the model itself).
std::unique_ptr<WeightSource> open_paddle_weights(const std::string& dir, const LlamaConfig& cfg);
// Deletes the weight files that training writes in `layout` (model, adapter, master weights, their indexes,
// oar_trainer_state.json for PaddleNLP's) from `dir`, if there.
void remove_layout_files(const std::string& dir, CheckpointLayout layout);

// `moments`: "<param>.exp_avg" then "<param>.exp_avg_sq" for each parameter (AdamW::state_tensors,
// ParameterShards::gather_moments, a pipeline's stages gathered); `steps`: the updates taken.
void save_paddle_optimizer(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& moments,
                           const AdamWConfig& c, int64_t steps, bool master_weights);
// The moments under AdamW::load_state's names ("<param>.exp_avg", "<param>.exp_avg_sq"), in oar's orientation.
std::map<std::string, Tensor> read_paddle_optimizer(const std::string& dir, const std::vector<Parameter*>& params);

// scheduler.pdparams, a pickle paddle.load reads.
void save_paddle_scheduler(const std::string& dir, int64_t last_epoch, double last_lr);
// trainer_state.json as PaddleNLP's TrainerState.save_to_json writes it.
std::string paddle_trainer_state_json(const TrainerState& s, double num_train_epochs);

}  // namespace oar
