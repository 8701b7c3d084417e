// Checkpoint directories of a training run, in PaddleNLP's / Hugging Face's layout:
//   output_dir/checkpoint-N/
//     config.json, model.safetensors           the model (or adapter_config.json + adapter_model.safetensors)
//     tokenizer files                           copied from the tokenizer directory
//     optimizer.safetensors                     AdamW moments "<param>.exp_avg" / ".exp_avg_sq" (float32)
//     trainer_state.json                        step, scheduler, loss scale, data position, RNG, log history
//     training_args.json                        the arguments of the run
// A checkpoint is written under a hidden temporary name in output_dir and renamed into place, so a killed run
// never leaves a half-written checkpoint-N; the newest complete one is what a restart resumes from.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace oar {

// "checkpoint-N" directories of `dir` with their N, oldest first; only complete ones (with trainer_state.json).
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir);
// PaddleNLP's get_last_checkpoint: the checkpoint-N with the largest N, or "" when none.
std::string last_checkpoint(const std::string& dir);

// Writes output_dir/checkpoint-<step> atomically: `fill` writes the files into a fresh temporary directory,
// which is then renamed into place (replacing an older checkpoint of the same step). Returns the final path.
std::string write_checkpoint_dir(const std::string& output_dir, int64_t step,
                                 const std::function<void(const std::string& tmp_dir)>& fill);
// Deletes the oldest checkpoints beyond `limit` (limit <= 0: keep all), never `keep` (the best model's).
// Returns the deleted paths.
std::vector<std::string> rotate_checkpoints(const std::string& output_dir, int64_t limit, const std::string& keep);
// Removes temporary directories left by a killed run.
void remove_stale_temporaries(const std::string& output_dir);

// Copies the tokenizer files found in `tokenizer_dir` (tokenizer.json, tokenizer.model, tokenizer_config.json,
// special_tokens_map.json, added_tokens.json, generation_config.json, chat_template.json, tokenizer.bin) into
// `dst`. A file path copies that file and the JSON files beside it. Returns how many were copied.
int copy_tokenizer_files(const std::string& tokenizer_path, const std::string& dst);

// What the trainer records beside the weights.
struct TrainerState {
  int64_t global_step = 0;       // optimizer steps taken or skipped (PaddleNLP's global_step)
  int64_t scheduler_steps = 0;   // steps that updated the weights (the LR scheduler's position)
  int64_t max_steps = 0;
  double epoch = 0;              // progress_or_epoch after global_step
  int64_t micro_batches = 0;     // data position: micro-batches consumed
  double loss_scale = 1.0;
  int64_t loss_scale_good_steps = 0, loss_scale_bad_steps = 0;
  int64_t seed = 42;
  double interval_loss_sum = 0;  // the logging interval in progress (so a resumed run logs the same averages)
  int64_t interval_steps = 0;
  double total_loss_sum = 0;     // for train_loss at the end
  double best_metric = 0;
  bool has_best = false;
  std::string best_model_checkpoint;
  int64_t best_step = -1;
  nlohmann::json log_history = nlohmann::json::array();

  nlohmann::json to_json() const;
  // `where` names the file in errors.
  static TrainerState from_json(const nlohmann::json& j, const std::string& where);
};

}  // namespace oar
