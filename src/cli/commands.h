// Sub-commands of the `oar` binary. Each registers its flags on a CLI11 sub-app and returns the action to run.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace oar::cli {

using Action = std::function<int()>;

Action add_predict(CLI::App& app);
Action add_perplexity(CLI::App& app);
Action add_env(CLI::App& app);
Action add_create_model(CLI::App& app);
Action add_serve(CLI::App& app);
Action add_bench_serve(CLI::App& app);
Action add_merge_lora(CLI::App& app);
Action add_convert(CLI::App& app);
Action add_preprocess(CLI::App& app);
Action add_finetune(CLI::App& app);
Action add_pretrain(CLI::App& app);
Action add_quantize(CLI::App& app);
Action add_export(CLI::App& app);
// PTQ of a PaddleNLP argument file (quantize.cpp), also run by `oar finetune` when the file sets do_ptq.
int run_ptq(const std::string& cfg_path);

}  // namespace oar::cli
