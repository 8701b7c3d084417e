#include "io/model_source.h"

#include "core/error.h"
#include "core/fs.h"
#include "io/gguf.h"
#include "io/llama2c.h"
#include "io/packed_model.h"
#include "io/paddle_layout.h"
#include "io/safetensors.h"

namespace oar {

ModelSource open_model_source(const std::string& path) {
  ModelSource ms;
  if (dir_exists(path)) {
    const std::string cfg_path = join_path(path, "config.json");
    if (!file_exists(cfg_path) && !dir_exists(cfg_path)) fail(path, "no config.json in this directory");
    ms.config = load_hf_config(cfg_path);
    if (has_packed_weights(path)) {  // oar export's output
      ms.weights = open_packed_weights(join_path(path, kPackedWeightsFile));
      return ms;
    }
    const bool safetensors = file_exists(join_path(path, "model.safetensors")) ||
                             file_exists(join_path(path, "model.safetensors.index.json"));
    if (!safetensors && has_pdparams(path)) ms.weights = open_pdparams_dir(path);
    else ms.weights = std::make_unique<WeightStoreSource>(WeightStore::open_dir(path));
    if (is_paddle_layout(*ms.weights)) {
      ms.weights = paddle_layout_as_hf(std::move(ms.weights), ms.config);
      // PaddleNLP 2.8.1's Llama ignores tie_word_embeddings: it saves and uses its own lm_head.
      if (ms.weights->has("lm_head.weight")) ms.config.tie_word_embeddings = false;
    }
    return ms;
  }
  if (!file_exists(path)) fail(path, "no such file or directory");
  if (is_gguf_file(path)) {
    GgufModel g = open_gguf_model(path);
    ms.config = g.config;
    ms.weights = std::move(g.weights);
    return ms;
  }
  Llama2cCheckpoint ck = load_llama2c_checkpoint(path);
  ms.config = ck.config;
  ms.weights = std::move(ck.weights);
  return ms;
}

void copy_model_side_files(const std::string& from_dir, const std::string& to_dir) {
  for (const char* f : {"generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer.bin",
                        "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                        "vocab.json", "merges.txt", "sentencepiece.bpe.model"}) {
    const std::string src = join_path(from_dir, f);
    if (file_exists(src)) write_file_atomic(join_path(to_dir, f), read_file(src));
  }
}

}  // namespace oar
