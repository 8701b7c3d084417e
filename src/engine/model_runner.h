// Runs one scheduled step: one StepBatch with every chunk of the plan (each SeqSlice reading and writing the
// KV cache through the block manager's table of its sequence), logit rows only for the chunks that end at the
// last known token, then one token sampled per such chunk with that request's own Sampler.
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
  // The logits of the sampling chunks from the last execute(), [rows, V] in plan order (tests).
  const Tensor& last_logits() const { return logits_; }

 private:
  LlamaModel& model_;
  KVCache& cache_;
  BlockManager& bm_;
  Tensor logits_;
  std::vector<float> row_;
};

}  // namespace oar
