// The checks of the training arguments taken together (train_args_validate.h), after every key was read: each
// concern in its own function, run in a fixed order.
#include "train/train_args_validate.h"

#include <array>
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/fs.h"

namespace oar {
namespace {

void check_choice(const std::string& key, const std::string& v, std::initializer_list<const char*> choices,
                  const TrainArgs& a) {
  for (const char* c : choices)
    if (v == c) return;
  std::string list;
  for (const char* c : choices) list += std::string(list.empty() ? "" : ", ") + c;
  auto it = a.source.find(key);
  fail(it == a.source.end() ? "" : it->second, key + ": '" + v + "' is not one of " + list);
}

// What the checks share: where a key came from, the failure for a broken rule, and the report's notes
// and warnings.
struct Checker {
  TrainArgs& a;
  ArgsReport* rep;

  std::string where(const std::string& key) const {
    auto it = a.source.find(key);
    return it == a.source.end() ? (a.config_file.empty() ? std::string("arguments") : a.config_file) : it->second;
  }
  void need(bool ok, const std::string& key, const std::string& msg) const {
    if (!ok) fail(where(key), key + ": " + msg);
  }
  void note(const std::string& s) const {
    if (rep) rep->notes.push_back(s);
  }
  void warn(const std::string& s) const {
    if (rep) rep->warnings.push_back(s);
  }
};

struct Degree {
  const char* key;
  int64_t v;
};

std::array<Degree, 5> parallel_degrees(const TrainArgs& a) {
  return {Degree{"tensor_parallel_degree", a.tensor_parallel_degree},
          Degree{"pipeline_parallel_degree", a.pipeline_parallel_degree},
          Degree{"sharding_parallel_degree", a.sharding_parallel_degree},
          Degree{"sep_parallel_degree", a.sep_parallel_degree},
          Degree{"context_parallel_degree", a.context_parallel_degree}};
}

std::string degree_list(const TrainArgs& a) {
  std::string s;
  for (Degree d : parallel_degrees(a))
    if (d.v > 1) s += (s.empty() ? "" : " x ") + std::string(d.key) + " " + std::to_string(d.v);
  return s;
}

// The degrees against the world size, as PaddleNLP's TrainingArguments: sharding_parallel_degree -1 with a
// sharding stage takes what tensor, pipeline and sep/context parallelism leave; data parallelism is the rest.
// Built so far: data, pipeline and tensor parallelism and sharding stage1/stage2; the other degrees above 1
// (sep, context) are refused.
void check_parallel_degrees(const Checker& c, int world_size) {
  TrainArgs& a = c.a;
  int64_t model_parallel = 1;
  for (Degree d : parallel_degrees(a)) {
    c.need(d.v == -1 || d.v >= 1, d.key, "must be -1 (unset) or a positive degree");
    if (d.v > 1 && std::string(d.key) != "sharding_parallel_degree") model_parallel *= d.v;
  }
  if (a.sharding_parallel_degree == -1 && !a.sharding.empty() && world_size % model_parallel == 0)
    a.sharding_parallel_degree = world_size / model_parallel;
  const int64_t product = model_parallel * std::max<int64_t>(1, a.sharding_parallel_degree);
  if (world_size % product != 0) {
    const char* first_set = parallel_degrees(a)[0].key;
    for (Degree d : parallel_degrees(a))
      if (d.v > 1) { first_set = d.key; break; }
    fail(c.where(first_set),
         degree_list(a) + " = " + std::to_string(product) + " processes, which do not divide the world size " +
             std::to_string(world_size) + (world_size == 1 ? " (one process: start oar with mpirun -np N)" : " (mpirun -np)"));
  }
  a.data_parallel_degree = world_size / product;
  const int stage = a.sharding_stage();
  for (Degree d : parallel_degrees(a)) {
    if (d.v <= 1 || std::string(d.key) == "pipeline_parallel_degree" || std::string(d.key) == "tensor_parallel_degree") continue;
    const bool sharding = std::string(d.key) == "sharding_parallel_degree";
    if (sharding && (stage == 1 || stage == 2)) continue;
    fail(c.where(d.key), std::string(d.key) + " " + std::to_string(d.v) +
                             (sharding && stage == 3 ? ": sharding stage3 is not built yet (stage1 and stage2 are)"
                              : sharding             ? ": needs a sharding stage (sharding \"stage1\" or \"stage2\")"
                                                     : ": not built yet; oar trains across processes with data, "
                                                       "pipeline and tensor parallelism and sharding stage1/stage2 (mpirun -np N)"));
  }
  if (stage == 2 && a.sharding_parallel_degree > 1 && a.sharding.find("offload") != std::string::npos)
    c.note("sharding offload ignored: the optimizer state is in host memory already");
}

// The parallelism options that go with the degrees: sep/context, the virtual pipeline, sequence parallelism.
void check_parallel_options(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(!(a.sep_parallel_degree > 1 && a.context_parallel_degree > 1), "sep_parallel_degree",
         "sep and context parallelism cannot be used together");
  c.need(a.virtual_pp_degree >= 1, "virtual_pp_degree", "must be >= 1");
  c.need(a.virtual_pp_degree == 1 || a.pipeline_parallel_degree > 1, "virtual_pp_degree",
         "a virtual pipeline needs pipeline_parallel_degree > 1");
  if (a.virtual_pp_degree > 1)
    fail(c.where("virtual_pp_degree"), "virtual_pp_degree " + std::to_string(a.virtual_pp_degree) +
                                           ": the interleaved pipeline is not built yet (1F1B is: virtual_pp_degree 1)");
  c.need(!a.sequence_parallel || a.tensor_parallel_degree > 1, "sequence_parallel",
         "sequence parallelism needs tensor_parallel_degree > 1");
  if (a.sequence_parallel)
    c.note("sequence_parallel ignored: the norms run on every tensor-parallel rank (the same numbers, without "
           "splitting their activations)");
}

// `sharding`: at most one of stage1/2/3, plus offload (with stage2 or stage3).
void check_sharding(const Checker& c) {
  std::istringstream s(c.a.sharding);
  std::string w;
  int stages = 0;
  bool offload = false;
  while (s >> w) {
    if (w == "stage1" || w == "stage2" || w == "stage3") stages++;
    else if (w == "offload") offload = true;
    else fail(c.where("sharding"), "sharding: '" + w + "' is not stage1, stage2, stage3 or offload");
  }
  c.need(stages <= 1, "sharding", "too many stages");
  c.need(!offload || stages == 1, "sharding", "offload must go with stage2 or stage3");
  // On one process PaddleNLP clears sharding (nothing to shard across): so do we.
}

// fp16/bf16, the AMP level, the loss scale and recompute.
void check_precision(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(!(a.fp16 && a.bf16), a.was_given("fp16") ? "fp16" : "bf16", "fp16 and bf16 cannot both be true");
  check_choice("fp16_opt_level", a.fp16_opt_level, {"O0", "O1", "O2"}, a);
  c.need(!(a.fp16_opt_level == "O2" && !a.fp16 && !a.bf16), "fp16_opt_level",
         "O2 needs fp16 or bf16 (it sets the model dtype to float16 or bfloat16)");
  c.need(a.scale_loss > 0 && std::isfinite(a.scale_loss), "scale_loss", "must be a positive number");
  check_choice("recompute_granularity", a.recompute_granularity, {"full", "full_attn", "core_attn"}, a);
  if (a.recompute && a.recompute_granularity != "full")
    c.note("recompute_granularity " + a.recompute_granularity +
           ": oar recomputes whole decoder layers (gradients are the same)");
}

void check_lora(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(a.lora_path.empty() || a.lora, "lora_path", "a LoRA adapter to start from needs lora true");
  c.need(a.lora_path.empty() || dir_exists(a.lora_path), "lora_path", "'" + a.lora_path + "' is not a directory");
  c.need(a.lora_rank >= 1, "lora_rank", "must be >= 1");
  c.need(a.lora_plus_scale > 0, "lora_plus_scale", "must be > 0");
  if (a.lora && !a.continue_training) c.warn("lora is true with continue_training false: LoRA on a randomly initialised model");
}

// Pretraining's data: indexed .bin/.idx files, sampled max_steps times.
void check_pretrain_data(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(!a.input_dir.empty() || !(a.do_train || a.do_eval || a.do_predict), "input_dir",
         "is required (a directory of .bin/.idx files, or one prefix)");
  c.need(a.max_seq_length >= 1, "max_seq_length", "must be >= 1");
  check_choice("data_impl", a.data_impl, {"mmap"}, a);
  c.need(a.eval_iters >= 1, "eval_iters", "must be >= 1");
  c.need(!a.do_train || a.max_steps > 0, "max_steps",
         "pretraining needs max_steps > 0 (the number of training samples is derived from it, as in PaddleNLP)");
}

// Fine-tuning's data: a train.json/dev.json directory, source and target lengths, padding.
void check_finetune_data(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(!a.dataset_name_or_path.empty() || !(a.do_train || a.do_eval || a.do_predict), "dataset_name_or_path",
         "is required (a directory with train.json and dev.json)");
  c.need(a.src_length >= 1, "src_length", "must be >= 1");
  c.need(a.max_length >= 2, "max_length", "must be >= 2");
  c.need(a.src_length < a.max_length, "src_length",
         std::to_string(a.src_length) + " leaves no room for the target within max_length " + std::to_string(a.max_length));
  c.need(!a.greedy_zero_padding || a.zero_padding, "greedy_zero_padding", "needs zero_padding (intokens) true");
  c.need(a.pad_to_multiple_of >= 0, "pad_to_multiple_of", "must be >= 0");
  if (a.eval_with_do_generation)
    c.warn("eval_with_do_generation: Rouge/BLEU generation metrics are not computed; evaluation reports eval_loss, "
           "perplexity and token accuracy (use oar predict --data_file dev.json for generations)");
}

// The output directory, the model, then the data of the mode.
void check_paths_and_data(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(!a.output_dir.empty(), "output_dir", "is required");
  c.need(!a.model_name_or_path.empty(), "model_name_or_path",
         "is required (a Hugging Face directory; with continue_training false only its config.json and tokenizer are used)");
  if (a.is_pretrain()) {
    check_pretrain_data(c);
  } else {
    check_finetune_data(c);
  }
}

// Batch sizes, accumulation and the length of the run.
void check_batches(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(a.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be >= 1");
  c.need(a.per_device_eval_batch_size >= 1, "per_device_eval_batch_size", "must be >= 1");
  c.need(a.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1");
  c.need(a.max_steps > 0 || a.num_train_epochs > 0 || !a.do_train, "num_train_epochs", "must be > 0 when max_steps is unset");
}

// The optimizer (AdamW only) and gradient clipping.
void check_optimizer(const Checker& c) {
  const TrainArgs& a = c.a;
  check_choice("optim", a.optim, {"adamw"}, a);
  c.need(a.learning_rate >= 0 && std::isfinite(a.learning_rate), "learning_rate", "must be >= 0");
  c.need(a.adam_beta1 >= 0 && a.adam_beta1 < 1, "adam_beta1", "must be in [0, 1)");
  c.need(a.adam_beta2 >= 0 && a.adam_beta2 < 1, "adam_beta2", "must be in [0, 1)");
  c.need(a.adam_epsilon > 0, "adam_epsilon", "must be > 0");
  c.need(a.weight_decay >= 0, "weight_decay", "must be >= 0");
  c.need(a.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 disables clipping)");
}

// The learning-rate schedule, and the seed.
void check_schedule(const Checker& c) {
  const TrainArgs& a = c.a;
  check_choice("lr_scheduler_type", a.lr_scheduler_type, {"linear", "cosine", "constant", "constant_with_warmup", "polynomial"}, a);
  c.need(a.warmup_ratio >= 0 && a.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]");
  c.need(a.warmup_steps >= 0, "warmup_steps", "must be >= 0");
  c.need(a.min_learning_rate >= 0, "min_learning_rate", "must be >= 0");
  c.need(a.seed >= 0, "seed", "must be >= 0");
}

// Logging / evaluation / saving strategies and their step counts (PaddleNLP's __post_init__ rules).
void check_strategies(const Checker& c) {
  TrainArgs& a = c.a;
  check_choice("logging_strategy", a.logging_strategy, {"no", "steps", "epoch"}, a);
  check_choice("evaluation_strategy", a.evaluation_strategy, {"no", "steps", "epoch"}, a);
  check_choice("save_strategy", a.save_strategy, {"no", "steps", "epoch"}, a);
  check_choice("save_format", a.save_format, {"hf", "paddle"}, a);
  if (!a.do_eval && a.evaluation_strategy != "no") a.do_eval = true;
  if (a.do_eval && a.evaluation_strategy == "no") {
    a.evaluation_strategy = "steps";
    c.note("evaluation_strategy set to steps because do_eval is true (as PaddleNLP)");
  }
  c.need(a.logging_strategy != "steps" || a.logging_steps > 0, "logging_steps", "must be > 0 with logging_strategy steps");
  if (a.evaluation_strategy == "steps" && a.eval_steps <= 0) {
    c.need(a.logging_steps > 0, "eval_steps", "evaluation_strategy steps needs eval_steps or logging_steps > 0");
    c.note("eval_steps = logging_steps = " + std::to_string(a.logging_steps) + " (as PaddleNLP)");
  }
  c.need(a.save_strategy != "steps" || a.save_steps > 0, "save_steps", "must be > 0 with save_strategy steps");
  c.need(a.save_total_limit == -1 || a.save_total_limit >= 1, "save_total_limit", "must be >= 1 (or unset)");
}

// load_best_model_at_end's needs, and the defaults of metric_for_best_model and greater_is_better.
void check_best_model(const Checker& c) {
  TrainArgs& a = c.a;
  if (a.load_best_model_at_end) {
    c.need(a.evaluation_strategy == a.save_strategy, "load_best_model_at_end",
           "needs save_strategy and evaluation_strategy to match (" + a.save_strategy + " vs " + a.evaluation_strategy + ")");
    c.need(a.evaluation_strategy != "steps" || a.save_steps % a.effective_eval_steps() == 0, "load_best_model_at_end",
           "needs save_steps (" + std::to_string(a.save_steps) + ") to be a multiple of eval_steps (" +
               std::to_string(a.effective_eval_steps()) + ")");
    if (a.metric_for_best_model.empty()) a.metric_for_best_model = "loss";
  }
  if (a.greater_is_better < 0 && !a.metric_for_best_model.empty())
    a.greater_is_better = (a.metric_for_best_model == "loss" || a.metric_for_best_model == "eval_loss") ? 0 : 1;
}

// The checkpoint to resume from, and the layer-count override.
void check_checkpoint_and_model(const Checker& c) {
  const TrainArgs& a = c.a;
  c.need(a.resume_from_checkpoint.empty() || dir_exists(a.resume_from_checkpoint), "resume_from_checkpoint",
         "'" + a.resume_from_checkpoint + "' is not a directory");
  c.need(a.num_hidden_layers == -1 || a.num_hidden_layers >= 1, "num_hidden_layers", "must be >= 1");
  c.need(a.num_hidden_layers == -1 || !a.continue_training, "num_hidden_layers",
         "changing the layer count of a pretrained checkpoint is not supported (use continue_training false)");
}

}  // namespace

void validate_train_args(TrainArgs& a, ArgsReport* rep, int world_size) {
  const Checker c{a, rep};
  check_parallel_degrees(c, world_size);
  check_parallel_options(c);
  check_sharding(c);
  check_precision(c);
  check_lora(c);
  check_paths_and_data(c);
  check_batches(c);
  check_optimizer(c);
  check_schedule(c);
  check_strategies(c);
  check_best_model(c);
  check_checkpoint_and_model(c);
}

}  // namespace oar
