// A model on disk as its config and its weights: a Hugging Face directory (config.json + safetensors, sharded or
// not), a PaddleNLP one (its names, [in, out] linear weights, safetensors or .pdparams; io/paddle_layout.h), a
// llama.cpp GGUF file (io/gguf.h) or a llama2.c checkpoint file. Every loader (inference, training, LoRA merge) opens models through this
// one function and builds its own representation from the result.
#pragma once
#include <memory>
#include <string>

#include "core/model_config.h"
#include "io/weight_source.h"

namespace oar {

struct ModelSource {
  LlamaConfig config;
  std::unique_ptr<WeightSource> weights;  // zero-copy views of the mapped files
};

// Throws oar::Error naming the path: missing, no config.json in a directory, or a bad file.
ModelSource open_model_source(const std::string& path);

// Copies the files that travel with a checkpoint unchanged (generation settings, the tokenizer's files) from one
// model directory to another, each atomically; absent ones are skipped.
void copy_model_side_files(const std::string& from_dir, const std::string& to_dir);

}  // namespace oar
