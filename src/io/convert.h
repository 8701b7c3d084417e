// `oar convert`: a checkpoint in either layout a user moves between, Hugging Face's or PaddleNLP's.
//   hf:     model.safetensors with "model.layers.N..." names, linear weights [out, in], config.json as transformers
//           writes it;
//   paddle: model.safetensors with "llama.layers.N..." names, every linear weight (and lm_head) [in, out], unfused,
//           lm_head always present (PaddleNLP 2.8.1 ignores tie_word_embeddings, so a tied model gets a copy),
//           bfloat16 stored as U16 (what PaddleNLP writes: its numpy safetensors reader has no BF16).
// Tensors keep their stored dtype; generation and tokenizer files are copied.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/model_config.h"
#include "io/weight_source.h"

namespace oar {

enum class CheckpointLayout { HuggingFace, PaddleNLP };

// "hf" or "paddle"; throws oar::Error naming --to otherwise.
CheckpointLayout parse_checkpoint_layout(const std::string& name);

// PaddleNLP 2.8.1's Llama computes only plain Llama: refuses (naming `where`) what it would silently compute
// differently (another architecture, biases, rope_scaling, a head_dim other than hidden / heads).
void check_paddle_can_express(const LlamaConfig& c, const std::string& where);

// Every tensor of `src` (Hugging Face names) in PaddleNLP's layout, checked against `c`; a tied model gets its
// lm_head as a copy and `c` is untied. Refuses (naming `where`) what PaddleNLP's Llama cannot express.
std::vector<std::pair<std::string, Tensor>> paddle_checkpoint_tensors(LlamaConfig& c, const WeightSource& src,
                                                                      const std::string& where);

// Reads `in` (anything open_model_source opens) and writes out_dir in `to`, atomically (write_directory_atomically).
// Returns the number of tensors written.
size_t convert_checkpoint(const std::string& in, CheckpointLayout to, const std::string& out_dir, bool force);

}  // namespace oar
