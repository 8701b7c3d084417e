// Helpers shared by the model-level tests: all-position logits of one prompt, and a relative error.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "data/train_batch.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace oar::test {

// A language-modelling micro-batch of B rows of L pseudo-random tokens below `vocab` (each row's next token as
// its label, the last position not counted).
inline TrainBatch lm_batch(int64_t B, int64_t L, int seed, int64_t vocab = 96) {
  TrainBatch b;
  b.B = B;
  b.L = L;
  uint32_t x = uint32_t(seed) * 2654435761u + 7u;
  for (int64_t i = 0; i < B * L; i++) {
    x = x * 1664525u + 1013904223u;
    b.input_ids.push_back(int32_t((x >> 8) % uint32_t(vocab)));
  }
  for (int64_t i = 0; i < B * L; i++) b.labels.push_back(i % L == L - 1 ? -100 : b.input_ids[size_t(i + 1)]);
  return b;
}

// A small random model's shape (GQA, untied) for the training tests' property checks.
inline LlamaConfig small_train_config(int64_t layers = 2) {
  LlamaConfig c;
  c.vocab_size = 96;
  c.hidden_size = 32;
  c.intermediate_size = 56;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.initializer_range = 0.2;
  return c;
}

// All-position logits of one prompt, prefilled in one pass through a KV cache of the given kind.
inline Tensor prompt_logits(LlamaModel& m, const std::vector<int32_t>& ids, KVCacheDType q = KVCacheDType::F32,
                            const KVStaticScales* scales = nullptr) {
  const int64_t n = int64_t(ids.size());
  const int64_t bs = 16, nb = (n + bs - 1) / bs;
  KVCache cache(m.config(), nb, bs, q, scales);
  std::vector<int32_t> table(static_cast<size_t>(nb));
  for (int64_t i = 0; i < nb; i++) table[size_t(i)] = int32_t(i);
  StepBatch b;
  b.add_sequence(ids.data(), n, 0, table);
  for (int64_t r = 0; r < n; r++) b.logit_rows.push_back(r);
  Tensor logits;
  m.forward(b, cache, logits);
  return logits;
}

// max |a - b| / max |b| over n floats
inline double max_rel(const float* a, const float* b, int64_t n) {
  double mx = 1e-30, d = 0;
  for (int64_t i = 0; i < n; i++) {
    mx = std::max(mx, double(std::fabs(b[i])));
    d = std::max(d, double(std::fabs(a[i] - b[i])));
  }
  return d / mx;
}

// max |a - b| / max |b|
inline double rel_err(const Tensor& a, const Tensor& b) {
  double mx = 0, diff = 0;
  for (int64_t i = 0; i < b.numel(); i++) {
    mx = std::max(mx, double(std::fabs(b.item_f32(i))));
    diff = std::max(diff, double(std::fabs(a.item_f32(i) - b.item_f32(i))));
  }
  return diff / mx;
}

}  // namespace oar::test
