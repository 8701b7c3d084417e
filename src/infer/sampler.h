// Choosing the next token from logits, in PaddleNLP's predictor order: repetition penalty, temperature,
// top-k, top-p (nucleus), then a draw. Greedy is argmax (ties to the lowest id, like torch.argmax).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace oar {

// Temperatures below this sample the most likely token (as greedy); every path (predict, engine, serve) gets it.
constexpr double kGreedyTemperature = 1e-5;

struct SamplingParams {
  bool greedy = false;
  int64_t top_k = 0;      // 0: off
  double top_p = 0.7;     // 1.0 or 0: off (PaddleNLP's greedy_search sets 0)
  double temperature = 0.95;
  double repetition_penalty = 1.0;
  uint64_t seed = 42;
  // Throws oar::Error naming the flag for values that make no sense (negative, NaN, top_p > 1, ...).
  void validate() const;
};

class Sampler {
 public:
  Sampler(const SamplingParams& p, uint64_t stream_id);
  // `logits` is modified (penalties, temperature). `seen` are the ids the penalty applies to.
  int32_t next(float* logits, int64_t vocab, const std::vector<int32_t>& seen);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

int32_t argmax(const float* x, int64_t n);

}  // namespace oar
