// Batch generation on the plain path: the prompts are prefilled together (chunked to bound memory), then every
// step decodes one token for each unfinished sequence in a single batched forward.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/sampler.h"
#include "model/llama.h"

namespace oar {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool ignore_eos = false;  // benchmark mode: always decode max_new_tokens (PaddleNLP sets min_length = max_length)
};

struct GenerationOutput {
  std::vector<int32_t> tokens;  // generated ids (eos included when it ended the sequence)
  bool stopped_at_eos = false;
};

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
  double prefill_seconds = 0, decode_seconds = 0, time_to_first_token = 0;
  size_t kv_cache_bytes = 0;
};

class Generator {
 public:
  explicit Generator(LlamaModel& model, int64_t block_size = 64, int64_t max_batch_tokens = 4096)
      : model_(model), block_size_(block_size), max_batch_tokens_(max_batch_tokens) {}
  // on_token(request index, token) is called as each token is chosen (for streaming output).
  std::vector<GenerationOutput> run(const std::vector<GenerationRequest>& reqs, const std::vector<int32_t>& eos_ids,
                                    GenerationStats* stats = nullptr,
                                    const std::function<void(size_t, int32_t)>& on_token = {});

 private:
  LlamaModel& model_;
  int64_t block_size_, max_batch_tokens_;
};

// exp(mean NLL) over non-overlapping windows of `ctx` tokens; in each window every token after the first is
// predicted from the ones before it in that window.
struct PerplexityResult {
  double perplexity = 0, mean_nll = 0;
  int64_t predicted_tokens = 0, windows = 0;
};
// Each window is prefilled through a KV cache in `kv_quant`'s format (static_scales for KVCacheDType::Int8Static), so
// every attention read goes through it: what an int8 cache costs in accuracy (`oar perplexity --cachekv_int8`).
PerplexityResult perplexity(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t ctx,
                            const std::function<void(int64_t done, int64_t total)>& progress = {},
                            KVCacheDType kv_quant = KVCacheDType::F32, const KVStaticScales* static_scales = nullptr);

}  // namespace oar
