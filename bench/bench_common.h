// Helpers shared by the benchmark programs: a random-weight model built in memory (no file), and timing.
#pragma once
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "io/weight_source.h"
#include "model/llama.h"

namespace oar::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline LlamaConfig tinyllama_1_1b() { return llama_preset("tinyllama-1.1b"); }

// Uniform values in [-a, a] from a counter-based hash: fast and parallel.
inline Tensor random_tensor(const Shape& shape, DType dt, float a, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    uint64_t z = (uint64_t(i) + seed * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 31;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 29;
    float v = (float(z >> 40) / float(1 << 24) * 2 - 1) * a;
    if (dt == DType::BF16) t.data<uint16_t>()[i] = f32_to_bf16(v);
    else t.data<float>()[i] = v;
  }
  return t;
}

// quant: the projections' format (quantized at load), as LlamaModel::from_weights.
inline std::unique_ptr<LlamaModel> random_model(const LlamaConfig& c, DType dt,
                                                std::optional<QuantSpec> quant = std::nullopt) {
  std::map<std::string, Tensor> m;
  uint64_t seed = 1;
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  const float a = 0.03f;
  m["model.embed_tokens.weight"] = random_tensor({c.vocab_size, C}, dt, a, seed++);
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    m[p + "input_layernorm.weight"] = random_tensor({C}, DType::F32, 1.0f, seed++);
    m[p + "post_attention_layernorm.weight"] = random_tensor({C}, DType::F32, 1.0f, seed++);
    m[p + "self_attn.q_proj.weight"] = random_tensor({c.q_dim(), C}, dt, a, seed++);
    m[p + "self_attn.k_proj.weight"] = random_tensor({c.kv_dim(), C}, dt, a, seed++);
    m[p + "self_attn.v_proj.weight"] = random_tensor({c.kv_dim(), C}, dt, a, seed++);
    m[p + "self_attn.o_proj.weight"] = random_tensor({C, c.q_dim()}, dt, a, seed++);
    m[p + "mlp.gate_proj.weight"] = random_tensor({F, C}, dt, a, seed++);
    m[p + "mlp.up_proj.weight"] = random_tensor({F, C}, dt, a, seed++);
    m[p + "mlp.down_proj.weight"] = random_tensor({C, F}, dt, a, seed++);
  }
  m["model.norm.weight"] = random_tensor({C}, DType::F32, 1.0f, seed++);
  m["lm_head.weight"] = random_tensor({c.vocab_size, C}, dt, a, seed++);
  TensorMapSource src("random " + std::string(dtype_name(dt)) + " model", std::move(m));
  return LlamaModel::from_weights(c, src, dt, cpu_backend(), quant);
}

}  // namespace oar::bench
