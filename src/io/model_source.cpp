#include "io/model_source.h"

#include "core/error.h"
#include "core/fs.h"
#include "io/llama2c.h"
#include "io/paddle_layout.h"
#include "io/safetensors.h"

namespace oar {

ModelSource open_model_source(const std::string& path) {
  ModelSource ms;
  if (dir_exists(path)) {
    const std::string cfg_path = join_path(path, "config.json");
    if (!file_exists(cfg_path) && !dir_exists(cfg_path)) fail(path, "no config.json in this directory");
    ms.config = load_hf_config(cfg_path);
    const bool safetensors = file_exists(join_path(path, "model.safetensors")) ||
                             file_exists(join_path(path, "model.safetensors.index.json"));
    if (!safetensors && has_pdparams(path)) ms.weights = open_pdparams_dir(path);
    else ms.weights = std::make_unique<WeightStoreSource>(WeightStore::open_dir(path));
    if (is_paddle_layout(*ms.weights)) ms.weights = paddle_layout_as_hf(std::move(ms.weights), ms.config);
    return ms;
  }
  if (!file_exists(path)) fail(path, "no such file or directory");
  Llama2cCheckpoint ck = load_llama2c_checkpoint(path);
  ms.config = ck.config;
  ms.weights = std::move(ck.weights);
  return ms;
}

}  // namespace oar
