// Where a model's named tensors come from (safetensors directory, llama2.c file, ...). Names follow
// Hugging Face's LlamaForCausalLM ("model.layers.0.self_attn.q_proj.weight"); a loader for another format maps
// its layout onto these names, so the model has a single loading path.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace oar {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  virtual Tensor get(const std::string& name) const = 0;  // throws oar::Error naming the file when missing
  virtual std::string where() const = 0;                   // directory or file, for messages
};

// A map of tensors held in memory or as views of a mapped file.
class TensorMapSource : public WeightSource {
 public:
  TensorMapSource(std::string where, std::map<std::string, Tensor> tensors)
      : where_(std::move(where)), tensors_(std::move(tensors)) {}
  bool has(const std::string& name) const override { return tensors_.count(name) > 0; }
  Tensor get(const std::string& name) const override;
  std::string where() const override { return where_; }

 private:
  std::string where_;
  std::map<std::string, Tensor> tensors_;
};

}  // namespace oar
