// Runs one scheduled step: one StepBatch with every chunk of the plan (each SeqSlice reading and writing the
// KV cache through the block manager's table of its sequence), logit rows only for the chunks that end at the
// last known token (plus, for requests that want prompt logprobs, their prompt positions), then one token
// sampled per such chunk with that request's own Sampler.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/block_manager.h"
#include "engine/scheduler.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace oar {

class ModelRunner {
 public:
  ModelRunner(LlamaModel& model, KVCache& cache, BlockManager& blocks) : model_(model), cache_(cache), bm_(blocks) {}
  // Performs the block manager's pending copy-on-write copies, runs the forward and samples. Returns one
  // token per chunk of the plan (-1 for chunks that do not sample).
  std::vector<int32_t> execute(const StepPlan& plan);

  // What the last execute() computed besides the tokens, per chunk of the plan.
  struct ChunkLogprobs {
    bool has_sampled = false;
    TokenLogprob sampled;             // the sampled token's, when its request asked for logprobs
    std::vector<TokenLogprob> prompt; // prompt positions this chunk covered (Sequence::next_prompt_logprob advanced)
  };
  const std::vector<ChunkLogprobs>& logprobs() const { return lps_; }
  // Samples for another sequence from the sampling row of chunk `chunk` of the last execute() (a sample that
  // shares the prompt); fills *lp when non-null.
  int32_t sample_from(size_t chunk, Sequence& s, TokenLogprob* lp);

  // The logits of the sampling chunks from the last execute(), [rows, V] in plan order (tests). With prompt
  // logprobs requested the prompt rows come before their chunk's sampling row.
  const Tensor& last_logits() const { return logits_; }  // host memory

 private:
  LlamaModel& model_;
  KVCache& cache_;
  BlockManager& bm_;
  Tensor device_logits_;  // the forward's output, on the model's backend
  Tensor logits_;         // the same values in host memory (on the CPU backend: the same tensor)
  std::vector<float> row_;
  std::vector<int64_t> sample_row_;  // per chunk: its sampling row in logits_, or -1
  std::vector<ChunkLogprobs> lps_;
};

}  // namespace oar
