// `oar finetune CFG.json [--key value ...]` and `oar pretrain CFG.json [--key value ...]`: PaddleNLP's
// run_finetune.py and run_pretrain.py on one process, with the same argument files (src/train/train_args.h).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer.h"
#include "train/train_args.h"
#include "train/train_setup.h"
#include "train/trainer.h"

namespace oar::cli {
namespace {

void say(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

int run_training(TrainMode mode, const std::vector<std::string>& argv) {
  const char* cmd = mode == TrainMode::Pretrain ? "pretrain" : "finetune";
  for (const auto& s : argv)
    if (s == "--help" || s == "-h") {
      std::printf("%s", train_args_help(mode).c_str());
      return 0;
    }
  // The config file is the first argument when it is not a --key (PaddleNLP: a single .json argument).
  std::string config;
  std::vector<std::string> rest = argv;
  if (!rest.empty() && rest[0].rfind("--", 0) != 0) {
    config = rest[0];
    rest.erase(rest.begin());
    if (!file_exists(config)) fail(config, "no such config file");
  }
  ArgsReport rep;
  TrainArgs a = parse_train_args(mode, config, rest, &rep, 1);
  for (const auto& w : rep.warnings) std::fprintf(stderr, "oar: warning: %s\n", w.c_str());
  if (!rep.ignored.empty()) {
    std::string s;
    for (const auto& k : rep.ignored) s += (s.empty() ? "" : ", ") + k;
    say(std::string("oar ") + cmd + ": ignored (no effect on one CPU process): " + s);
  }
  for (const auto& n : rep.notes) say(std::string("oar ") + cmd + ": " + n);
  if (!a.do_train && !a.do_eval && !a.do_predict) {
    say(std::string("oar ") + cmd + ": do_train, do_eval and do_predict are all false: nothing to do (as PaddleNLP)");
    return 0;
  }

  const auto t0 = std::chrono::steady_clock::now();
  auto tok = load_tokenizer(a.tokenizer_path());
  auto model = build_train_model(a, *tok, say);
  const LlamaConfig& cfg = model->llama().config();
  RunData data = build_run_data(a, *tok, cfg.vocab_size, cfg.max_position_embeddings);
  say("Data: " + data.summary);
  if (a.do_eval && !data.eval) say(std::string("oar ") + cmd + ": warning: no evaluation data: evaluation skipped");
  if (a.do_predict && !data.test) say(std::string("oar ") + cmd + ": no test data (test split or test.json): do_predict skipped");

  TrainerOptions opt;
  opt.tokenizer_path = a.tokenizer_path();
  opt.progress_bar = true;
  Trainer trainer(a, *model, data.train.get(), data.eval.get(), data.test.get(), opt);
  TrainResult r = trainer.run();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string done = std::string("oar ") + cmd + ": done in " + std::to_string(int64_t(secs + 0.5)) + " s";
  if (a.do_train && !a.benchmark)
    done += "; model in " + a.output_dir + (model->llama().has_lora() ? (a.save_format == "paddle" ? " (PaddleNLP LoRA checkpoint: oar predict --lora_path)"
                                                                 : " (PEFT adapter: oar predict --lora_path)")
                                    : "") +
            " after " + std::to_string(r.global_step) + " steps";
  if (a.do_train || a.do_eval)
    done += "; metrics in " + join_path(a.output_dir, "metrics.jsonl") + "; loss curve in " +
            join_path(a.output_dir, "loss_curve.svg");
  say(done);
  return 0;
}

Action add_training_command(CLI::App& app, TrainMode mode) {
  // Every argument after the sub-command is ours: PaddleNLP's keys are many and open-ended.
  app.allow_extras();
  app.prefix_command();
  app.set_help_flag();
  app.footer(train_args_help(mode));
  CLI::App* sub = &app;
  return [sub, mode]() -> int { return run_training(mode, sub->remaining()); };
}

}  // namespace

Action add_finetune(CLI::App& app) { return add_training_command(app, TrainMode::Finetune); }
Action add_pretrain(CLI::App& app) { return add_training_command(app, TrainMode::Pretrain); }

}  // namespace oar::cli
