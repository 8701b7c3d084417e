// `oar finetune` / `oar pretrain` arguments: PaddleNLP's config files as they are, defaults, aliases, ignored and
// unknown keys, command-line overrides, contradictions and parallel degrees.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "train/train_args.h"

namespace oar {
namespace {

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

std::string error_of(TrainMode mode, const std::string& json, const std::vector<std::string>& cli = {}) {
  try {
    parse_train_args_text(mode, json, "cfg.json", cli, nullptr);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// llm/dcu/llama/sft_argument.json, verbatim keys and values (model and data paths as in the file).
const char* kDcuSft = R"({
  "model_name_or_path": "meta-llama/Llama-2-13b", "dataset_name_or_path": "./data",
  "output_dir": "./checkpoints/llama_sft_ckpts", "logging_dir": "./checkpoints/llama_lora_ckpts",
  "per_device_train_batch_size": 1, "gradient_accumulation_steps": 32, "per_device_eval_batch_size": 2,
  "eval_accumulation_steps": 2, "num_train_epochs": 1, "learning_rate": 3e-05, "warmup_steps": 30,
  "logging_steps": 1, "evaluation_strategy": "steps", "save_strategy": "steps", "eval_step": 80000,
  "save_step": 80000, "src_length": 1024, "max_length": 2048, "fp16": true, "fp16_opt_level": "O2",
  "do_train": true, "do_eval": true, "disable_tqdm": true, "load_best_model_at_end": true,
  "eval_with_do_generation": true, "metric_for_best_model": "accuracy", "recompute": false,
  "save_total_limit": 1, "tensor_parallel_degree": 1, "pipeline_parallel_degree": 1, "intokens": false,
  "zero_padding": false, "use_flash_attention": false})";

TEST(TrainArgs, DcuSftConfigParsesWithAliases) {
  ArgsReport rep;
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, kDcuSft, "sft_argument.json", {}, &rep);
  EXPECT_EQ(a.eval_steps, 80000);  // eval_step
  EXPECT_EQ(a.save_steps, 80000);  // save_step
  EXPECT_FALSE(a.zero_padding);    // intokens and zero_padding agree
  EXPECT_TRUE(a.fp16);
  EXPECT_EQ(a.fp16_opt_level, "O2");
  EXPECT_EQ(a.gradient_accumulation_steps, 32);
  EXPECT_DOUBLE_EQ(a.learning_rate, 3e-5);
  EXPECT_TRUE(a.load_best_model_at_end);
  EXPECT_EQ(a.greater_is_better, 1);  // accuracy: greater is better
  EXPECT_TRUE(a.continue_training);   // finetune default
  EXPECT_TRUE(has(rep.ignored, "use_flash_attention"));
  EXPECT_TRUE(has(rep.ignored, "eval_accumulation_steps"));
  EXPECT_TRUE(has(rep.ignored, "logging_dir"));
  EXPECT_EQ(std::count_if(rep.warnings.begin(), rep.warnings.end(),
                          [](const std::string& w) { return w.find("unknown") != std::string::npos; }), 0);
}

TEST(TrainArgs, DcuLoraAndGenericConfigs) {
  // run_lora.sh's keys; generic llm/config/llama/lora_argument.json and sft_argument.json.
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, R"({
    "model_name_or_path": "m", "dataset_name_or_path": "d", "output_dir": "o", "learning_rate": 3e-04,
    "lora": true, "fp16": true, "fp16_opt_level": "O2", "do_train": true})", "lora.json", {}, nullptr);
  EXPECT_TRUE(a.lora);
  EXPECT_EQ(a.lora_rank, 8);
  ArgsReport rep;
  TrainArgs g = parse_train_args_text(TrainMode::Finetune, R"({
    "model_name_or_path": "meta-llama/Meta-Llama-3-8B", "dataset_name_or_path": "./data",
    "output_dir": "./checkpoints/lora_ckpts", "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
    "per_device_eval_batch_size": 8, "eval_accumulation_steps": 16, "num_train_epochs": 3, "learning_rate": 3e-04,
    "warmup_steps": 30, "logging_steps": 1, "evaluation_strategy": "steps", "save_strategy": "steps",
    "save_steps": 1, "src_length": 1024, "max_length": 2048, "bf16": true, "fp16_opt_level": "O2",
    "do_train": true, "do_eval": false, "disable_tqdm": true, "load_best_model_at_end": false,
    "eval_with_do_generation": false, "metric_for_best_model": "accuracy", "recompute": true,
    "save_total_limit": 1, "tensor_parallel_degree": 1, "pipeline_parallel_degree": 1, "sharding": "stage1",
    "lora": true, "zero_padding": false, "use_flash_attention": true, "unified_checkpoint": true, "pissa": false})",
                                      "lora_argument.json", {}, &rep);
  EXPECT_TRUE(g.bf16);
  EXPECT_TRUE(g.recompute);
  EXPECT_TRUE(g.do_eval);  // evaluation_strategy steps turns do_eval on, as PaddleNLP
  EXPECT_TRUE(has(rep.ignored, "unified_checkpoint"));
  EXPECT_TRUE(has(rep.ignored, "pissa"));  // false: accepted
  TrainArgs s = parse_train_args_text(TrainMode::Finetune, R"({
    "model_name_or_path": "m", "dataset_name_or_path": "d", "output_dir": "o", "gradient_accumulation_steps": 2,
    "evaluation_strategy": "epoch", "save_strategy": "epoch", "bf16": true, "fp16_opt_level": "O2",
    "pipeline_parallel_config": "disable_p2p_cache_shape", "sharding": "stage2", "zero_padding": false,
    "unified_checkpoint": true, "use_flash_attention": false, "do_train": true})", "sft_argument.json", {}, nullptr);
  EXPECT_EQ(s.evaluation_strategy, "epoch");
}

TEST(TrainArgs, PretrainConfigs) {
  ArgsReport rep;
  // llm/dcu/llama/run_pretrain.sh's keys (pp 8 replaced by 1: one process).
  TrainArgs a = parse_train_args_text(TrainMode::Pretrain, R"({
    "model_name_or_path": "meta-llama/Llama-2-13b", "tokenizer_name_or_path": "meta-llama/Llama-2-13b",
    "input_dir": "llama/data", "output_dir": "llama/output", "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1024, "per_device_eval_batch_size": 64, "tensor_parallel_degree": 1,
    "pipeline_parallel_degree": 1, "pipeline_parallel_config": "disable_partial_send_recv",
    "sharding_parallel_degree": -1, "virtual_pp_degree": 1, "sharding": "stage1", "sequence_parallel": 0,
    "adam_beta1": 0.9, "adam_beta2": 0.95, "use_flash_attention": true, "use_fused_rms_norm": true,
    "use_fused_rope": true, "max_seq_length": 4096, "learning_rate": 1e-04, "min_learning_rate": 1e-05,
    "warmup_steps": 2000, "logging_steps": 1, "max_steps": 200000, "save_steps": 500, "eval_steps": 2000,
    "weight_decay": 0.1, "max_grad_norm": 1.0, "amp_master_grad": 1, "fp16": true, "fp16_opt_level": "O2",
    "dataloader_num_workers": 1, "continue_training": 0, "do_train": true, "do_eval": true, "do_predict": true,
    "disable_tqdm": true, "recompute": false, "distributed_dataloader": 0, "recompute_granularity": "full",
    "save_total_limit": 10})", "pretrain.json", {}, &rep);
  EXPECT_FALSE(a.continue_training);
  EXPECT_DOUBLE_EQ(a.adam_beta2, 0.95);
  EXPECT_EQ(a.max_seq_length, 4096);
  EXPECT_DOUBLE_EQ(a.min_learning_rate, 1e-5);
  EXPECT_TRUE(has(rep.ignored, "amp_master_grad"));
  EXPECT_TRUE(has(rep.ignored, "use_fused_rope"));
  // Generic pretrain_argument.json with tp 2: refused on one process, saying how to start more.
  std::string e = error_of(TrainMode::Pretrain, R"({"model_name_or_path": "m", "input_dir": "d", "output_dir": "o",
    "tensor_parallel_degree": 2, "max_steps": 10, "do_train": true})");
  EXPECT_NE(e.find("tensor_parallel_degree 2"), std::string::npos) << e;
  EXPECT_NE(e.find("mpirun -np"), std::string::npos) << e;
  EXPECT_NE(error_of(TrainMode::Pretrain, R"({"model_name_or_path": "m", "input_dir": "d", "output_dir": "o",
    "do_train": true})").find("max_steps"), std::string::npos);
}

TEST(TrainArgs, PaddleNLPDefaults) {
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, R"({"model_name_or_path": "m", "output_dir": "o"})", "c", {}, nullptr);
  EXPECT_DOUBLE_EQ(a.learning_rate, 5e-5);
  EXPECT_DOUBLE_EQ(a.weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(a.adam_beta1, 0.9);
  EXPECT_DOUBLE_EQ(a.adam_beta2, 0.999);
  EXPECT_DOUBLE_EQ(a.adam_epsilon, 1e-8);
  EXPECT_DOUBLE_EQ(a.max_grad_norm, 1.0);
  EXPECT_EQ(a.logging_steps, 500);
  EXPECT_EQ(a.save_steps, 500);
  EXPECT_EQ(a.lr_scheduler_type, "linear");
  EXPECT_EQ(a.per_device_train_batch_size, 8);
  EXPECT_EQ(a.gradient_accumulation_steps, 1);
  EXPECT_EQ(a.max_steps, -1);
  EXPECT_DOUBLE_EQ(a.num_train_epochs, 1.0);
  EXPECT_EQ(a.seed, 42);
  EXPECT_EQ(a.src_length, 1024);
  EXPECT_EQ(a.max_length, 2048);
  EXPECT_DOUBLE_EQ(a.scale_loss, 32768.0);
  EXPECT_FALSE(a.do_train);
  TrainArgs p = parse_train_args_text(TrainMode::Pretrain, R"({"model_name_or_path": "m", "output_dir": "o"})", "c", {}, nullptr);
  EXPECT_FALSE(p.continue_training);
  EXPECT_EQ(p.split, "949,50,1");
  EXPECT_EQ(p.max_seq_length, 1024);
  EXPECT_DOUBLE_EQ(p.min_learning_rate, 1e-5);
}

TEST(TrainArgs, CommandLineOverridesTheFile) {
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, kDcuSft, "sft.json",
                                      {"--learning_rate", "1e-4", "--fp16=false", "--bf16", "--eval_step", "40000",
                                       "--output_dir", "/tmp/x"},
                                      nullptr);
  EXPECT_DOUBLE_EQ(a.learning_rate, 1e-4);
  EXPECT_FALSE(a.fp16);
  EXPECT_TRUE(a.bf16);  // a bare flag is true
  EXPECT_EQ(a.eval_steps, 40000);
  EXPECT_EQ(a.output_dir, "/tmp/x");
  EXPECT_EQ(a.source.at("learning_rate"), "command line");
  EXPECT_EQ(a.source.at("src_length"), "sft.json");
  EXPECT_NE(error_of(TrainMode::Finetune, "{}", {"--learning_rate"}).find("needs a value"), std::string::npos);
  EXPECT_NE(error_of(TrainMode::Finetune, "{}", {"oops"}).find("unexpected argument"), std::string::npos);
  EXPECT_NE(error_of(TrainMode::Finetune, R"({"model_name_or_path": "m", "output_dir": "o"})", {"--max_steps", "ten"})
                .find("--max_steps: expected an integer"), std::string::npos);
}

TEST(TrainArgs, ContradictionsAreErrors) {
  const std::string base = R"("model_name_or_path": "m", "output_dir": "o", "dataset_name_or_path": "d")";
  auto err = [&](const std::string& extra) { return error_of(TrainMode::Finetune, "{" + base + ", " + extra + "}"); };
  EXPECT_NE(err(R"("fp16": true, "bf16": true)").find("cannot both be true"), std::string::npos);
  EXPECT_NE(err(R"("fp16_opt_level": "O2")").find("O2 needs fp16 or bf16"), std::string::npos);
  EXPECT_NE(err(R"("fp16_opt_level": "O3")").find("not one of"), std::string::npos);
  EXPECT_NE(err(R"("lora_path": "/tmp")").find("needs lora true"), std::string::npos);
  EXPECT_NE(err(R"("greedy_zero_padding": true)").find("needs zero_padding"), std::string::npos);
  EXPECT_NE(err(R"("src_length": 4096)").find("leaves no room"), std::string::npos);
  EXPECT_NE(err(R"("eval_step": 10, "eval_steps": 20)").find("disagree"), std::string::npos);
  EXPECT_NE(err(R"("lr_scheduler_type": "exotic")").find("not one of"), std::string::npos);
  EXPECT_NE(err(R"("optim": "adafactor")").find("optim"), std::string::npos);
  EXPECT_NE(err(R"("weight_quantize_algo": "nf4")").find("QLoRA"), std::string::npos);
  EXPECT_NE(err(R"("neftune": true)").find("NEFTune"), std::string::npos);
  EXPECT_NE(err(R"("pipeline_parallel_degree": 4)").find("pipeline_parallel_degree 4 = 4 processes"), std::string::npos);
  EXPECT_NE(err(R"("sharding_parallel_degree": 8, "sharding": "stage1")").find("sharding_parallel_degree 8 = 8 processes"),
            std::string::npos);
  EXPECT_NE(err(R"("sep_parallel_degree": 2)").find("world size 1"), std::string::npos);
  // Every degree and the product are named (a pp 4 / tp 2 / sharding 2 file once read "tensor parallel degree 16").
  EXPECT_NE(err(R"("pipeline_parallel_degree": 4, "tensor_parallel_degree": 2, "sharding_parallel_degree": 2)")
                .find("tensor_parallel_degree 2 x pipeline_parallel_degree 4 x sharding_parallel_degree 2 = 16 processes"),
            std::string::npos);
  EXPECT_NE(err(R"("sequence_parallel": true)").find("tensor_parallel_degree > 1"), std::string::npos);
  EXPECT_NE(err(R"("sharding": "stage4")").find("stage4"), std::string::npos);
  EXPECT_NE(err(R"("load_best_model_at_end": true, "evaluation_strategy": "steps", "eval_steps": 3, "save_steps": 10)")
                .find("multiple of eval_steps"), std::string::npos);
  EXPECT_NE(err(R"("per_device_train_batch_size": 0)").find("per_device_train_batch_size"), std::string::npos);
  EXPECT_NE(err(R"("warmup_ratio": 1.5)").find("warmup_ratio"), std::string::npos);
  EXPECT_NE(error_of(TrainMode::Finetune, "[1]").find("JSON object"), std::string::npos);
  EXPECT_NE(error_of(TrainMode::Finetune, "{").find("invalid JSON"), std::string::npos);
  // An error names where the value came from.
  EXPECT_EQ(err(R"("fp16": true, "bf16": true)").rfind("cfg.json", 0), 0u);
}

TEST(TrainArgs, UnknownKeysWarnAndOtherCommandsKeysAreNoted) {
  ArgsReport rep;
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, R"({"model_name_or_path": "m", "output_dir": "o",
    "learnig_rate": 1, "input_dir": "x", "sharding_degree": 1, "task_name_or_path": "d"})", "c.json", {"--foo", "1"}, &rep);
  EXPECT_EQ(a.dataset_name_or_path, "d");  // task_name_or_path
  EXPECT_EQ(a.sharding_parallel_degree, 1);
  int unknown = 0, other = 0;
  for (const auto& w : rep.warnings) {
    unknown += w.find("unknown key") != std::string::npos;
    other += w.find("is a pretrain argument") != std::string::npos;
  }
  EXPECT_EQ(unknown, 2);  // learnig_rate, --foo
  EXPECT_EQ(other, 1);    // input_dir
}

TEST(TrainArgs, EvalStepsDefaultToLoggingSteps) {
  ArgsReport rep;
  TrainArgs a = parse_train_args_text(TrainMode::Finetune, R"({"model_name_or_path": "m", "output_dir": "o",
    "dataset_name_or_path": "d", "do_eval": true, "logging_steps": 7})", "c", {}, &rep);
  EXPECT_EQ(a.evaluation_strategy, "steps");
  EXPECT_EQ(a.effective_eval_steps(), 7);
  EXPECT_FALSE(rep.notes.empty());
  EXPECT_NE(train_args_json(a).find("\"logging_steps\": 7"), std::string::npos);
}

TEST(TrainArgs, DegreesAgainstTheWorldSizeLeaveDataParallelism) {
  auto parse = [](const std::string& extra, int world) {
    return parse_train_args_text(TrainMode::Pretrain, R"({"model_name_or_path": "m", "input_dir": "d", "output_dir": "o")" +
                                 extra + "}", "cfg.json", {}, nullptr, world);
  };
  auto error_at = [&](const std::string& extra, int world) -> std::string {
    try {
      parse(extra, world);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(parse("", 1).data_parallel_degree, 1);
  EXPECT_EQ(parse("", 4).data_parallel_degree, 4);
  EXPECT_EQ(parse(R"(, "tensor_parallel_degree": 1, "pipeline_parallel_degree": 1)", 2).data_parallel_degree, 2);
  // Not divisible: every degree, the product and the world size.
  EXPECT_NE(error_at(R"(, "tensor_parallel_degree": 2)", 3).find("tensor_parallel_degree 2 = 2 processes, which do not "
                                                                 "divide the world size 3"),
            std::string::npos);
  // Divisible, but sep parallelism is not built: the degree is named. Pipeline and tensor parallelism are, and
  // data parallelism takes the rest.
  EXPECT_NE(error_at(R"(, "sep_parallel_degree": 2)", 4).find("sep_parallel_degree 2: not built yet"),
            std::string::npos);
  EXPECT_EQ(parse(R"(, "tensor_parallel_degree": 2, "pipeline_parallel_degree": 2)", 8).data_parallel_degree, 2);
  const TrainArgs pp = parse(R"(, "pipeline_parallel_degree": 2, "sharding": "stage1")", 8);
  EXPECT_EQ(pp.sharding_parallel_degree, 4);
  EXPECT_EQ(pp.data_parallel_degree, 1);
  EXPECT_EQ(pp.dataset_world_size(), 4);
  EXPECT_EQ(parse(R"(, "pipeline_parallel_degree": 2)", 4).data_parallel_degree, 2);
  EXPECT_NE(error_at(R"(, "pipeline_parallel_degree": 2, "virtual_pp_degree": 2)", 2)
                .find("virtual_pp_degree 2: the interleaved pipeline is not built yet"),
            std::string::npos);
  // sharding_parallel_degree -1 with a stage takes the rest of the world, as in PaddleNLP; stage1 over the whole
  // job is built, and reads data on every rank.
  const TrainArgs s1 = parse(R"(, "sharding": "stage1")", 2);
  EXPECT_EQ(s1.sharding_parallel_degree, 2);
  EXPECT_EQ(s1.data_parallel_degree, 1);
  EXPECT_EQ(s1.dataset_world_size(), 2);
  EXPECT_EQ(parse(R"(, "sharding": "stage1")", 1).data_parallel_degree, 1);
  // stage2, and either stage beside data parallelism: 4 ranks = data 2 x sharding 2, reading data on all four.
  const TrainArgs s2 = parse(R"(, "sharding": "stage2", "sharding_parallel_degree": 2)", 4);
  EXPECT_EQ(s2.sharding_stage(), 2);
  EXPECT_EQ(s2.data_parallel_degree, 2);
  EXPECT_EQ(s2.dataset_world_size(), 4);
  EXPECT_EQ(parse(R"(, "sharding": "stage1 offload", "sharding_parallel_degree": 2)", 2).sharding_stage(), 1);
  EXPECT_NE(error_at(R"(, "sharding": "stage3")", 2).find("sharding_parallel_degree 2: sharding stage3 is not built yet"),
            std::string::npos);
  EXPECT_NE(error_at(R"(, "sharding_parallel_degree": 2)", 2).find("sharding_parallel_degree 2: needs a sharding stage"),
            std::string::npos);
}

}  // namespace
}  // namespace oar
