// The arguments of `oar pretrain` and `oar finetune`: PaddleNLP's keys (paddlenlp/trainer/training_args.py,
// llm/utils/argument.py, llm/run_pretrain.py) with PaddleNLP's defaults, read from a JSON file and overridden by
// `--key value` on the command line, as `run_finetune.py cfg.json --key value` does.
//
// Every key of PaddleNLP's DCU and generic Llama configs is accepted. Keys fall in four groups:
//  - honoured: they change what oar does (the fields below);
//  - ignored: accepted, but they change nothing on one CPU process (fused kernels, dataloader workers, ...);
//    the ones present are listed once, on one line;
//  - refused when set: features oar does not have (QLoRA, prefix tuning, PTQ in the trainer, ...) are an error
//    when they would change the result;
//  - unknown: a warning per key, then ignored (PaddleNLP's parser would refuse them; a warning keeps configs
//    written for newer PaddleNLP versions usable).
// Parallel degrees are checked against the world size (mpirun -np); data parallelism is their remainder.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace oar {

enum class TrainMode { Pretrain, Finetune };

struct TrainArgs {
  TrainMode mode = TrainMode::Finetune;
  std::string config_file;  // where the JSON came from ("" when none), for messages

  // ---- model ----
  std::string model_name_or_path;
  std::string tokenizer_name_or_path;  // "" = model_name_or_path
  bool continue_training = true;       // finetune: true (from_pretrained); pretrain: false (random init)
  int64_t num_hidden_layers = -1;      // pretrain: overrides the config's layer count when > 0
  double initializer_range = -1;       // overrides config.json's when > 0 (random init only)

  // ---- LoRA ----
  bool lora = false;
  std::string lora_path;  // start from this adapter (needs lora)
  int64_t lora_rank = 8;
  bool rslora = false;          // scaling 4/sqrt(r) instead of 2 (PaddleNLP: alpha = 4 with rslora)
  double lora_plus_scale = 1.0;  // LoRA+: learning-rate multiplier of the B matrices

  // ---- finetune data ----
  std::string dataset_name_or_path;
  int64_t src_length = 1024;
  int64_t max_length = 2048;
  bool zero_padding = false;
  bool greedy_zero_padding = false;
  int64_t pad_to_multiple_of = 0;
  bool pad_to_max_length = false;
  std::string chat_template;  // file or directory; "" = chat_template.json beside the tokenizer; "none" disables
  bool eval_with_do_generation = false;

  // ---- pretrain data ----
  std::string input_dir;
  std::string split = "949,50,1";
  int64_t max_seq_length = 1024;
  std::string data_impl = "mmap";
  int64_t eval_iters = 10;  // batches per evaluation (PaddleNLP's pretraining eval_iters)

  // ---- loop ----
  std::string output_dir;
  bool overwrite_output_dir = false;
  bool do_train = false, do_eval = false, do_predict = false;
  int64_t per_device_train_batch_size = 8;
  int64_t per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double num_train_epochs = 1.0;
  int64_t max_steps = -1;
  int64_t seed = 42;
  bool dataloader_drop_last = false;  // finetune: drop the last, smaller batch of each epoch
  bool benchmark = false;  // train only: no evaluation, no checkpoints; prints Effective_Tokens_per_second

  // ---- optimizer and schedule ----
  std::string optim = "adamw";
  double learning_rate = 5e-5;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;
  std::string lr_scheduler_type = "linear";
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;
  double min_learning_rate = 1e-5;  // pretrain's WarmupDecay schedules only
  int64_t decay_steps = -1;         // <= 0: unset (max_steps)
  double num_cycles = 0.5, lr_end = 1e-7, power = 1.0;

  // ---- precision and memory ----
  bool fp16 = false, bf16 = false;
  std::string fp16_opt_level = "O1";
  double scale_loss = 32768;
  bool recompute = false;
  std::string recompute_granularity = "full";

  // ---- logging, evaluation, saving ----
  std::string logging_strategy = "steps";
  int64_t logging_steps = 500;
  bool logging_first_step = false;
  bool disable_tqdm = false;
  std::string evaluation_strategy = "no";
  int64_t eval_steps = -1;  // unset: logging_steps
  int64_t max_evaluate_steps = -1;
  std::string save_strategy = "steps";
  // Layout of checkpoints and the final model: "hf" (Hugging Face / PEFT) or "paddle" (PaddleNLP's unified
  // checkpoint, which PaddleNLP resumes with unified_checkpoint true): train/paddle_checkpoint.h.
  std::string save_format = "hf";
  int64_t save_steps = 500;
  int64_t save_total_limit = -1;  // unset: keep all
  std::string resume_from_checkpoint;
  bool ignore_data_skip = false;
  bool ignore_save_lr_and_optim = false, ignore_load_lr_and_optim = false;
  bool load_best_model_at_end = false;
  std::string metric_for_best_model;
  int greater_is_better = -1;  // -1 unset, 0 false, 1 true

  // ---- parallelism (validated against the world size) ----
  int64_t tensor_parallel_degree = -1, pipeline_parallel_degree = -1, sharding_parallel_degree = -1;
  int64_t sep_parallel_degree = -1, context_parallel_degree = -1, virtual_pp_degree = 1;
  std::string sharding;
  bool sequence_parallel = false;
  int64_t data_parallel_degree = 1;  // derived: the world size over the other degrees
  std::string log_dir = "log";       // a multi-process run's workerlog.N files (paddle.distributed.launch's --log_dir)

  // Keys that were set (file or command line), after alias resolution, in first-seen order; and where the
  // value came from ("cfg.json" or "command line"), for messages.
  std::vector<std::string> given;
  std::map<std::string, std::string> source;
  bool was_given(const std::string& key) const { return source.count(key) > 0; }

  // Derived helpers.
  bool is_pretrain() const { return mode == TrainMode::Pretrain; }
  // The ZeRO stage of `sharding` (1, 2 or 3), 0 without one.
  int sharding_stage() const;
  // The ranks that read different data (PaddleNLP's dataset_world_size): data parallelism x sharding.
  int64_t dataset_world_size() const { return data_parallel_degree * std::max<int64_t>(1, sharding_parallel_degree); }
  std::string tokenizer_path() const { return tokenizer_name_or_path.empty() ? model_name_or_path : tokenizer_name_or_path; }
  int64_t effective_eval_steps() const { return eval_steps > 0 ? eval_steps : logging_steps; }
};

// Messages produced while parsing (the caller prints them: ignored keys on one line, one warning per line).
struct ArgsReport {
  std::vector<std::string> ignored;   // keys present that change nothing here
  std::vector<std::string> warnings;  // unknown keys, keys of the other command, ...
  std::vector<std::string> notes;     // derived settings worth a line (e.g. "eval_steps = logging_steps = 10")
};

// Builds the arguments: defaults for `mode`, then the JSON object of `config_file` (when not empty), then the
// `--key value` / `--key=value` / `--bool_key` pairs of `cli`, then validation (contradictions, parallel degrees
// against world_size). Throws oar::Error naming the file or the flag.
TrainArgs parse_train_args(TrainMode mode, const std::string& config_file, const std::vector<std::string>& cli,
                           ArgsReport* report, int world_size = 1);
// The same from JSON text (tests); `where` names it in messages.
TrainArgs parse_train_args_text(TrainMode mode, const std::string& json_text, const std::string& where,
                                const std::vector<std::string>& cli, ArgsReport* report, int world_size = 1);

// The arguments as a JSON object text (saved beside checkpoints as training_args.json).
std::string train_args_json(const TrainArgs& a);

// One line per group, for `--help`.
std::string train_args_help(TrainMode mode);
// Whether an argument value counts as set, as PaddleNLP's keys are tested: true, a nonzero number, a string other
// than "", "false", "0", "none", "no" or "null", a non-empty list or object.
bool json_truthy(const nlohmann::json& v);

}  // namespace oar
