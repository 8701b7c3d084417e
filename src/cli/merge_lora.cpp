// `oar merge-lora`: PaddleNLP's llm/tools/merge_lora_params.py. Base model + LoRA adapter -> a Hugging Face
// checkpoint with W + scaling * B @ A in every adapted weight (float32 math, stored back in the base's dtype).
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "train/lora_io.h"

namespace oar::cli {

Action add_merge_lora(CLI::App& app) {
  struct Args {
    std::string model, lora, output, device = "cpu", safe_serialization;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--model_name_or_path", a->model, "base model: Hugging Face directory")->required();
  app.add_option("--lora_path", a->lora, "adapter directory: PEFT (adapter_config.json) or PaddleNLP (lora_config.json)")
      ->required();
  app.add_option("--output_path", a->output, "directory to write the merged checkpoint to")->required();
  app.add_option("--device", a->device, "cpu");
  app.add_option("--safe_serialization", a->safe_serialization, "accepted for PaddleNLP; the output is always safetensors");
  app.add_flag("--force", a->force, "replace an existing output directory");
  return [a]() -> int {
    if (a->device != "cpu") throw Error("--device " + a->device + ": this build runs on cpu only");
    LoraAdapter ad = merge_lora_checkpoint(a->model, a->lora, a->output, a->force);
    std::printf("merged LoRA %s (r %lld, alpha %g, scaling %g, %zu weights) into %s -> %s\n", a->lora.c_str(),
                (long long)ad.rank, ad.alpha, ad.scaling(), ad.modules.size(), a->model.c_str(), a->output.c_str());
    return 0;
  };
}

}  // namespace oar::cli
