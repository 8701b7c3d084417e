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

// A projection its file stores in one of oar's weight formats as it is (kernels/weight.h has the layouts), used
// without going through float: GGUF's Q4_0 (weight_only_int4 in groups of 32) and oar export's packed file (any
// format). `format` is the format's name (weight_format_name: "weight_only_int4", "a8w8", ...); the loader checks
// every part against the format and the shape the config implies.
struct StoredWeight {
  std::string format;
  Tensor data, scales, row_sums;  // scales: quantized formats; row_sums: a8w8
  int64_t group_size = 0;         // weight_only_int4
  float act_step = 0;             // a8w8's static activation step (0: per token)
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
  // The tensor in one of oar's weight formats when the file stores it so, else nothing.
  virtual std::optional<StoredWeight> stored_weight(const std::string& /*name*/) const { return std::nullopt; }
  // The loader is done with the tensor's bytes in the file (it converted them): the source may let their pages go
  // (MappedFile::release). A hint, never a promise: get() still works after it.
  virtual void release(const std::string& /*name*/) const {}
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
