// `oar convert`: rewrites a checkpoint in Hugging Face's or PaddleNLP's layout (io/convert.h), or a LoRA adapter in
// PEFT's or PaddleNLP's, so that models and adapters move between oar, transformers/PEFT and PaddleNLP.
#include <cstdio>

#include "cli/commands.h"
#include "core/fs.h"
#include "io/convert.h"
#include "train/lora_io.h"

namespace oar::cli {

Action add_convert(CLI::App& app) {
  struct Args {
    std::string model, to, output;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--model_name_or_path", a->model,
                 "model or LoRA adapter to read: Hugging Face / PEFT or PaddleNLP directory (safetensors or .pdparams), or llama2.c file")
      ->required();
  app.add_option("--to", a->to, "layout to write: hf (transformers) or paddle (PaddleNLP)")->required();
  app.add_option("--output_path", a->output, "directory to write")->required();
  app.add_flag("--force", a->force, "replace an existing output directory");
  return [a]() -> int {
    const CheckpointLayout to = parse_checkpoint_layout(a->to);
    if (dir_exists(a->model) && is_lora_adapter_dir(a->model)) {  // an adapter: PEFT's layout or PaddleNLP's
      const LoraAdapter ad = load_lora_adapter(a->model);
      write_directory_atomically(a->output, a->force, {a->model}, [&](const std::string& tmp) {
        if (to == CheckpointLayout::PaddleNLP) save_lora_adapter_paddle(tmp, ad);
        else save_lora_adapter(tmp, ad);
      });
      std::printf("converted LoRA adapter %s -> %s (%s layout, %zu modules)\n", a->model.c_str(), a->output.c_str(),
                  to == CheckpointLayout::PaddleNLP ? "PaddleNLP" : "PEFT", ad.modules.size());
      return 0;
    }
    const size_t n = convert_checkpoint(a->model, to, a->output, a->force);
    std::printf("converted %s -> %s (%s layout, %zu tensors)\n", a->model.c_str(), a->output.c_str(),
                to == CheckpointLayout::PaddleNLP ? "PaddleNLP" : "Hugging Face", n);
    return 0;
  };
}

}  // namespace oar::cli
