// The continuous-batching scheduler. Every step:
//   1. running sequences, in admission order, each get their next chunk: the rest of a prompt being prefilled
//      (at most what the token budget max_num_batched_tokens leaves) or the one token to decode; when one needs
//      a block and none is free, the most recently admitted running sequence is preempted by recompute (its
//      blocks freed; it goes to the front of the waiting queue and later recomputes prompt + generated tokens,
//      so it resumes exactly where it stopped);
//   2. unless someone was preempted this step, waiting sequences are admitted first come, first served while
//      the budget, max_num_seqs and the free blocks allow (prefix-cache hits skip their cached blocks); a prompt
//      longer than the remaining budget is chunked and continues next step.
// Finished sequences are retired at once by finish(), freeing their blocks for the next step's admissions.
#pragma once
#include <cstdint>
#include <deque>
#include <vector>

#include "engine/block_manager.h"
#include "engine/engine.h"
#include "infer/sampler.h"

namespace oar {

// One request as the scheduler and the model runner see it.
struct Sequence {
  Sequence(uint64_t id, std::vector<int32_t> prompt, const RequestParams& params);
  uint64_t id;
  std::vector<int32_t> tokens;  // the prompt, then each generated token
  int64_t prompt_len;
  int64_t num_computed = 0;     // leading tokens whose K/V are in the cache
  int64_t next_prompt_logprob = 1;  // params.prompt_logprobs: the first prompt position whose logprob is not known
  RequestParams params;
  Sampler sampler;              // this request's own random stream (seeded by params.sampling.seed)
  enum class Status { Waiting, Running, Finished } status = Status::Waiting;
  int64_t num_generated() const { return int64_t(tokens.size()) - prompt_len; }
  // Its prefill must produce logits for prompt positions (so no prefix-cache reuse).
  bool needs_prompt_logits() const { return params.prompt_logprobs && next_prompt_logprob < prompt_len; }
};

// Compute tokens[num_computed, num_computed + n) of seq this step; `sample`: its last row's logits choose the
// next token (the chunk reaches the end of the known tokens).
struct ScheduledChunk {
  Sequence* seq = nullptr;
  int64_t n = 0;
  bool sample = false;
};

struct StepPlan {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;  // in the order they were preempted
  int64_t num_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(BlockManager& blocks, int64_t max_num_seqs, int64_t max_num_batched_tokens);
  void add(Sequence* s);  // to the back of the waiting queue
  // A sequence that already has its blocks (forked from another's) joins the running ones directly.
  void add_running(Sequence* s);
  StepPlan schedule();
  // After the plan's forward: the chunks' tokens are in the cache (full blocks enter the prefix cache).
  void complete(const StepPlan& plan);
  // Retires a waiting or running sequence (finished or aborted) and frees its blocks.
  void finish(Sequence* s);

  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const std::vector<Sequence*>& running() const { return running_; }  // in admission order
  int64_t num_preemptions() const { return preemptions_; }

 private:
  void preempt(Sequence* s);

  BlockManager& bm_;
  int64_t max_num_seqs_, max_num_batched_tokens_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;
  int64_t preemptions_ = 0;
};

}  // namespace oar
