// Where a model's named tensors come from (safetensors directory, llama2.c file, ...). Names follow
// Hugging Face's LlamaForCausalLM ("model.layers.0.self_attn.q_proj.weight"); a loader for another format maps
// its layout onto these names, so the model has a single loading path.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace oar {

// A tensor its file stores in oar's weight_only_int4 layout as it is (kernels/weight.h: q + 8 in nibbles, in
// each 32 inputs byte j holding inputs j and j + 16, one float32 scale per group): quants [out, in / 2] uint8 and
// scales [out, in / group_size] float32, repacked without going through float (GGUF's Q4_0, groups of 32).
struct StoredInt4 {
  Tensor quants, scales;
  int64_t group_size = 0;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // The tensor's values: as stored for float types (views of mapped files), dequantized to float32 otherwise.
  virtual Tensor get(const std::string& name) const = 0;  // throws oar::Error naming the file when missing
  virtual std::string where() const = 0;                   // directory or file, for messages
  // Bits per weight when the file stores the tensor quantized (GGUF), else 0. Cheap: nothing is read.
  virtual int quantized_bits(const std::string& /*name*/) const { return 0; }
  // The tensor as oar's int4 when its stored bits are that layout, else nothing.
  virtual std::optional<StoredInt4> stored_int4(const std::string& /*name*/) const { return std::nullopt; }
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
