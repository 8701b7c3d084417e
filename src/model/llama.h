// The Llama decoder: embedding, N x (RMSNorm, attention with RoPE and GQA, residual, RMSNorm, SwiGLU MLP,
// residual), final RMSNorm and LM head. One forward step runs any mix of sequences (prompt chunks and single
// decode tokens) flattened into T rows, reading and writing the paged KV cache through block tables.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/tensor.h"
#include "io/weight_source.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "model/kv_cache.h"

namespace oar {

struct LlamaLayerWeights {
  Tensor input_norm, post_attn_norm;         // [C] float32
  Weight q_proj, k_proj, v_proj, o_proj;     // [out, in], in the load's weight format
  Tensor q_bias, k_bias, v_bias, o_bias;     // [out] float32, when the config has attention_bias
  Weight gate_proj, up_proj, down_proj;      // [out, in], in the load's weight format
};

struct LlamaWeights {
  Tensor embed_tokens;  // [V, C]
  std::vector<LlamaLayerWeights> layers;
  Tensor final_norm;  // [C] float32
  Weight lm_head;     // [V, C]; shares the embedding's memory when tied and of the same dtype
};

// The rows of one forward step.
struct StepBatch {
  std::vector<int32_t> tokens;     // [T]
  std::vector<int32_t> positions;  // [T]
  std::vector<SeqSlice> seqs;      // which rows belong to which sequence, and its block table
  std::vector<int64_t> logit_rows; // rows whose logits are wanted, in output order
  // Appends a sequence's n new tokens starting at position pos0; returns its first row.
  int64_t add_sequence(const int32_t* toks, int64_t n, int64_t pos0, const std::vector<int32_t>& block_table);
};

class LlamaModel {
 public:
  // Loads a Hugging Face directory (config.json + safetensors), an oar export, a GGUF file or a llama2.c checkpoint file.
  // Weights are converted to `dtype` (float32, bfloat16 or float16: stored so, products in float32 or on the
  // bf16 units) for the matrix products; norms and biases stay float32. They are uploaded to `backend`, which runs the forward (on the CPU: zero-copy views of the mapped
  // files). quant: the format of the attention and MLP projections, quantized as they load (PaddleNLP's
  // weight_only_int8 and weight_only_int4); none keeps dtype's dense format, except for projections a file stores
  // in an oar format (a GGUF file's Q4_0, an oar export's any), which stay as stored (see pack_projection). The embedding and the LM head stay in `dtype`, as PaddleNLP's weight-only types leave them.
  static std::unique_ptr<LlamaModel> load(const std::string& path, DType dtype, Backend& backend = cpu_backend(),
                                          std::optional<QuantSpec> quant = std::nullopt);
  static std::unique_ptr<LlamaModel> from_weights(const LlamaConfig& cfg, const WeightSource& src, DType dtype,
                                                  Backend& backend = cpu_backend(),
                                                  std::optional<QuantSpec> quant = std::nullopt);

  const LlamaConfig& config() const { return cfg_; }
  Backend& backend() const { return *be_; }
  DType dtype() const { return dtype_; }
  // The attention and MLP weights' format (the first projection's: a GGUF file may store layers differently).
  WeightFormat projection_format() const { return proj_.format; }
  const QuantSpec& projection_spec() const { return proj_; }
  const LlamaWeights& weights() const { return w_; }
  // Bytes of weights read by one decode step (all matrices once, plus one embedding row).
  size_t decode_weight_bytes() const;
  int64_t max_positions() const { return rope_.max_positions; }

  // Runs one step. logits: [logit_rows.size(), V] float32 on the model's backend (download them to read them on
  // the host), resized as needed. The cache must be on the same backend.
  void forward(const StepBatch& batch, KVCache& cache, Tensor& logits);

 private:
  LlamaModel() = default;
  std::vector<Tensor*> vector_tensors();  // the embedding, norms and biases (what is not a Weight)
  LlamaConfig cfg_;
  DType dtype_ = DType::F32;
  QuantSpec proj_{WeightFormat::F32, -1};
  LlamaWeights w_;
  RopeTable rope_;
  Backend* be_ = nullptr;
};

}  // namespace oar
