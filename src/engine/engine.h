// The serving engine: many requests at once over the paged KV cache. Parts, each testable alone:
//   BlockManager (block_manager.h) - block tables, prefix sharing, copy-on-write, over BlockAllocator
//   Scheduler    (scheduler.h)     - FCFS admission, chunked prefill, decode, preemption by recompute
//   ModelRunner  (model_runner.h)  - one batched forward for a scheduled step, then per-request sampling
//   Engine       (this file)       - ties them together; `step()` advances every running request by one step
// The HTTP server (src/server) drives an Engine from one loop thread through EngineLoop (thread-safe).
// Engine itself is not thread-safe: call every method from that one thread.
//
// Changes to this API (engine side), all additive; the meaning of Engine's methods is as first declared:
//   - Engine::take_latency_samples(): moves out the TTFT/TPOT samples that EngineMetrics lists (metrics()
//     only reads them).
//   - EngineMetrics: kv_cache_bytes, kv_bytes_per_block (memory of the cache as configured, e.g. int8 vs f32).
//   - Semantics made precise: a request stops at the context end (finish "length") rather than being refused
//     when prompt + max_new_tokens exceeds it; add_request throws oar::Error for an empty prompt, a prompt longer
//     than the context, one whose whole run cannot fit the KV cache even alone, or bad sampling parameters;
//     new_tokens includes an EOS that ended the request (its text is ""); stop strings match the detokenized
//     text and neither the stop string nor anything after it is returned; outputs of requests with
//     max_new_tokens 0 and of aborted requests come from the next step().
//   - Logprobs (RequestParams::logprobs / prompt_logprobs, RequestOutput::logprobs / prompt_logprobs) and samples
//     sharing a prompt (RequestParams::share_prompt_with, for the API's n > 1).
//   - new_text is the text the tokens add after the prompt (decode(prompt + generated) minus decode(prompt)):
//     a SentencePiece first token keeps its leading space, as Hugging Face decoding in context gives it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "infer/sampler.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace oar {

struct EngineConfig {
  int64_t block_size = 64;               // --block_size (PaddleNLP's default)
  // 0: kv_cache_memory_bytes / KVCache::bytes_per_block, at most what max_num_seqs sequences of the full
  // context can use (so that a small model does not claim the whole budget)
  int64_t num_blocks = 0;
  size_t kv_cache_memory_bytes = size_t(1) << 30;  // memory budget for the KV cache (--kv_cache_memory_gb)
  int64_t max_num_seqs = 16;             // running sequences at most (--batch_size in predict)
  int64_t max_num_batched_tokens = 2048; // tokens per forward step (prefill chunks + decodes)
  bool enable_prefix_caching = true;
  KVCacheDType kv_dtype = KVCacheDType::F32;  // --cachekv_int8
  std::string cachekv_scales_path;       // static int8 scales (cachekv_scales.json), for Int8Static
  int64_t max_waiting = 1024;            // queue bound: add_request refuses beyond it (server answers 429)
};

struct RequestParams {
  SamplingParams sampling;
  int64_t max_new_tokens = 16;
  std::vector<std::string> stop;       // stop strings (not included in the output)
  bool ignore_eos = false;
  // >= 0: each generated token's TokenLogprob, with this many most likely tokens (-1: none).
  int32_t logprobs = -1;
  // Also the logprob of every prompt token after the first (with logprobs >= 0 top tokens). Only such a request
  // computes logits for all its prompt positions (and it does not reuse prefix-cached blocks, whose logits were
  // never computed). With max_new_tokens 0 the prompt is still run, for these.
  bool prompt_logprobs = false;
  // The id of a request added before with the same prompt (the API's n > 1). This one then waits for that one's
  // prefill, shares its prompt KV blocks (BlockManager::fork, copy-on-write) and samples its first token from
  // the same logits. 0, or a request that has started generating: none.
  uint64_t share_prompt_with = 0;
};

// A token's log-probability under the model's own distribution: log-softmax of the raw logits (before
// temperature, penalties or top-k/top-p, as vLLM reports by default), and the most likely tokens there.
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // RequestParams::logprobs of them, most likely first (ties: lower id)
};
// log-softmax of one logits row, for `token` and the k most likely tokens.
TokenLogprob token_logprob(const float* logits, int64_t vocab_size, int32_t token, int32_t k);

enum class FinishReason { None, Eos, Length, Stop, Aborted };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "abort" as OpenAI names them (eos/stop -> "stop")

// What one step produced for one request.
struct RequestOutput {
  uint64_t request_id = 0;
  std::vector<int32_t> new_tokens;  // tokens chosen this step (usually one; none while a prompt is being prefilled)
  std::string new_text;             // newly completed UTF-8 text (stop strings held back until resolved)
  bool finished = false;
  FinishReason finish_reason = FinishReason::None;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  std::vector<TokenLogprob> logprobs;         // one per new_tokens entry, when params.logprobs >= 0
  std::vector<TokenLogprob> prompt_logprobs;  // params.prompt_logprobs: prompt tokens 1..n-1, in the first output
};

struct EngineMetrics {
  int64_t running = 0, waiting = 0;
  int64_t blocks_total = 0, blocks_used = 0, blocks_free = 0;
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;  // in blocks
  int64_t generated_tokens = 0, prompt_tokens = 0, preemptions = 0, finished_requests = 0;
  size_t kv_cache_bytes = 0, kv_bytes_per_block = 0;
  // Samples since the last take_latency_samples(): time to first token (from add_request) per request that got
  // one, and time per output token ((finish - first token) / (tokens - 1)) per finished request with >= 2 tokens.
  std::vector<double> ttft_seconds, tpot_seconds;
};

class Engine {
 public:
  Engine(LlamaModel& model, const Tokenizer& tokenizer, const EngineConfig& cfg);
  ~Engine();
  // Queues a request (prompt already tokenized, BOS included). Throws oar::Error for a prompt that can never
  // fit (longer than the context or than the whole KV cache); returns 0 when the waiting queue is full.
  uint64_t add_request(std::vector<int32_t> prompt, const RequestParams& params);
  void abort_request(uint64_t id);  // frees its blocks at the next step
  bool has_work() const;
  // One scheduled forward over every running request; outputs for requests that produced tokens or finished.
  std::vector<RequestOutput> step();
  EngineMetrics metrics() const;
  // Moves out the latency samples gathered since the last call.
  void take_latency_samples(std::vector<double>& ttft_seconds, std::vector<double>& tpot_seconds);
  const EngineConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace oar
