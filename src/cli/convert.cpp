// `oar convert`: rewrites a checkpoint in Hugging Face's or PaddleNLP's layout (io/convert.h), so that a model
// moves between oar, transformers and PaddleNLP without Python.
#include <cstdio>

#include "cli/commands.h"
#include "io/convert.h"

namespace oar::cli {

Action add_convert(CLI::App& app) {
  struct Args {
    std::string model, to, output;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--model_name_or_path", a->model,
                 "model to read: Hugging Face or PaddleNLP directory (safetensors or .pdparams), or llama2.c file")
      ->required();
  app.add_option("--to", a->to, "layout to write: hf (transformers) or paddle (PaddleNLP)")->required();
  app.add_option("--output_path", a->output, "directory to write")->required();
  app.add_flag("--force", a->force, "replace an existing output directory");
  return [a]() -> int {
    const CheckpointLayout to = parse_checkpoint_layout(a->to);
    const size_t n = convert_checkpoint(a->model, to, a->output, a->force);
    std::printf("converted %s -> %s (%s layout, %zu tensors)\n", a->model.c_str(), a->output.c_str(),
                to == CheckpointLayout::PaddleNLP ? "PaddleNLP" : "Hugging Face", n);
    return 0;
  };
}

}  // namespace oar::cli
