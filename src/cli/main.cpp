// oar: one binary for the life of a Llama model. Errors in input are one line on stderr and exit code 2.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <new>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

namespace {

// How long an idle OpenMP thread spins at a barrier before it sleeps. libgomp's default, 300,000 spins, wastes the
// time slices of threads whose peers were descheduled on a busy machine: users saw a small model train 100x
// slower and the 110M model decode 4x slower with two busy processes. Sleeping at once (passive) costs a futex
// wake-up per barrier on a quiet machine (+35% per decode step here). 10,000 spins kept the loaded slowdown under
// 2.5x and cost 4-9% on a quiet machine (bench/busy_machine.py, BENCHMARKS.md).
constexpr const char* kDefaultSpinCount = "10000";

// libgomp reads its variables once, when it is loaded, before main: to give users this default without a wrapper
// script, set it and start again. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone.
void default_openmp_wait_policy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  setenv("GOMP_SPINCOUNT", kDefaultSpinCount, 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run on with libgomp's default
}

}  // namespace

int main(int argc, char** argv) {
  default_openmp_wait_policy(argv);
  // A write past a file-size limit (ulimit -f) then fails with EFBIG and takes the ordinary error path (temporary
  // files removed, one line, exit 2) instead of killing the process mid-write.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"oar: pretrain, fine-tune and serve Llama-family models (CPU)", "oar"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("oar ") + OAR_VERSION);
  std::map<CLI::App*, oar::cli::Action> actions;
  auto reg = [&](const char* name, const char* help, oar::cli::Action (*add)(CLI::App&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    actions[sub] = add(*sub);
  };
  reg("predict", "generate text (PaddleNLP predictor flags), or --benchmark", oar::cli::add_predict);
  reg("perplexity", "perplexity of a text file over non-overlapping windows", oar::cli::add_perplexity);
  reg("env", "list the devices and what oar uses on them", oar::cli::add_env);
  reg("create-model", "write a random-weight Llama (Hugging Face layout) for tests and benchmarks",
      oar::cli::add_create_model);
  reg("serve", "OpenAI-compatible HTTP server (completions, chat, streaming, /metrics) over the serving engine",
      oar::cli::add_serve);
  reg("bench-serve", "load a running server with concurrent streaming clients: throughput, TTFT, TPOT",
      oar::cli::add_bench_serve);
  reg("merge-lora", "merge a LoRA adapter into its base model and write a Hugging Face checkpoint",
      oar::cli::add_merge_lora);
  reg("convert", "rewrite a checkpoint in Hugging Face's or PaddleNLP's layout", oar::cli::add_convert);
  reg("preprocess", "tokenize JSON-lines text into PaddleNLP's .bin/.idx pretraining format",
      oar::cli::add_preprocess);
  reg("pretrain", "pretrain a Llama on .bin/.idx data (PaddleNLP run_pretrain.py's argument files)",
      oar::cli::add_pretrain);
  reg("finetune", "fine-tune (SFT or LoRA) on src/tgt JSON lines (PaddleNLP run_finetune.py's argument files)",
      oar::cli::add_finetune);
  reg("quantize", "post-training quantization for a8w8 (PaddleNLP's ptq_argument.json): calibrated scale files",
      oar::cli::add_quantize);
  reg("export", "pack a model for fast loading in its inference format (PaddleNLP's export_model.py flags)",
      oar::cli::add_export);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "oar: error: %s (see oar --help)\n", e.what());
    return 2;
  }
  try {
    for (auto& [sub, act] : actions)
      if (sub->parsed()) return act();
    return 2;
  } catch (const oar::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "oar: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "oar: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oar: internal error: %s\n", e.what());
    return 1;
  }
}
