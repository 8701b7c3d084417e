#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <unordered_map>

#include "core/error.h"
#include "engine/block_manager.h"
#include "engine/model_runner.h"
#include "engine/scheduler.h"
#include "model/kv_cache.h"

namespace oar {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A request's state beyond what the scheduler needs: its text so far and its timing.
struct Request {
  Request(uint64_t id, std::vector<int32_t> prompt, const RequestParams& p, const Tokenizer& tok)
      : seq(id, std::move(prompt), p), decoder(tok, seq.tokens) {}
  Sequence seq;
  StreamDecoder decoder;  // continues the prompt: the text is what the tokens add to it
  std::string text;    // generated text so far
  size_t emitted = 0;  // bytes of `text` already returned
  double submitted = 0, first_token = 0;
  bool aborted = false;
  std::vector<TokenLogprob> prompt_logprobs;  // gathered over the prefill chunks, returned with the first output
  bool prompt_logprobs_sent = false;
  std::vector<uint64_t> followers;  // requests sharing this one's prompt, waiting for its prefill
  bool follower = false;            // waits for a leader (not in the scheduler)
  bool sampled = false;             // its prefill has completed once
};

// Where the earliest stop string starts in text[from..), or npos.
size_t find_stop(const std::string& text, size_t from, const std::vector<std::string>& stops) {
  size_t best = std::string::npos;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    size_t p = text.find(s, from);
    if (p < best) best = p;
  }
  return best;
}

// Bytes at the end of text[from..) that could be the start of a stop string: held back until resolved.
size_t stop_prefix_tail(const std::string& text, size_t from, const std::vector<std::string>& stops) {
  size_t hold = 0;
  const size_t avail = text.size() - from;
  for (const std::string& s : stops)
    for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), avail); k > hold; k--)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

}  // namespace

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Eos:
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Aborted: return "abort";
    case FinishReason::None: break;
  }
  return "";
}

struct Engine::Impl {
  Impl(LlamaModel& m, const Tokenizer& t, const EngineConfig& c) : model(m), tok(t), cfg(c) {}
  LlamaModel& model;
  const Tokenizer& tok;
  EngineConfig cfg;
  std::vector<int32_t> eos;
  std::unique_ptr<KVCache> cache;
  std::unique_ptr<BlockManager> blocks;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<ModelRunner> runner;
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests;
  std::vector<uint64_t> pending_finish;  // max_new_tokens 0 or aborted: reported by the next step()
  uint64_t next_id = 1;
  EngineMetrics m;  // counters and latency samples (the gauges are filled in by metrics())

  bool is_eos(int32_t t) const { return std::find(eos.begin(), eos.end(), t) != eos.end(); }
  RequestOutput finish(Request& r, FinishReason why);
  void emit_text(Request& r, RequestOutput& o, bool final);
  // Appends a sampled token: text, stop/EOS/length checks, its output (finishing the request when done).
  RequestOutput accept_token(Request& r, int32_t tok, const TokenLogprob* lp, double t);
  // The prompt logprobs go out with a request's first output.
  void attach_prompt_logprobs(Request& r, RequestOutput& o);
  // The leader's prefill is done (chunk `chunk` of the last forward): its followers share its blocks now.
  void start_followers(Request& leader, size_t chunk, double t, std::vector<RequestOutput>& outs);
  // A leader that leaves before its prefill completed: its followers become ordinary waiting requests.
  void release_followers(Request& leader);
};

Engine::Engine(LlamaModel& model, const Tokenizer& tokenizer, const EngineConfig& cfg)
    : impl_(std::make_unique<Impl>(model, tokenizer, cfg)) {
  Impl& I = *impl_;
  const LlamaConfig& mc = model.config();
  if (cfg.block_size <= 0) throw Error("--block_size must be positive");
  if (cfg.max_num_seqs <= 0) throw Error("--batch_size (max_num_seqs) must be positive");
  if (cfg.max_num_batched_tokens <= 0) throw Error("--max_num_batched_tokens must be positive");
  if (cfg.num_blocks < 0) throw Error("engine: num_blocks must not be negative");
  const KVCacheDType quant = cfg.kv_dtype;
  const size_t per_block = KVCache::bytes_per_block(mc, cfg.block_size, quant);
  int64_t nb = cfg.num_blocks;
  if (nb == 0) {
    nb = int64_t(cfg.kv_cache_memory_bytes / per_block);
    const int64_t useful = cfg.max_num_seqs * ((model.max_positions() + cfg.block_size - 1) / cfg.block_size);
    nb = std::min(nb, useful);
    if (nb == 0)
      throw Error("--kv_cache_memory_gb: the KV cache budget of " + std::to_string(cfg.kv_cache_memory_bytes) +
                  " bytes holds no block (one block of " + std::to_string(cfg.block_size) + " positions takes " +
                  std::to_string(per_block) + " bytes)");
  }
  KVStaticScales scales;
  if (quant == KVCacheDType::Int8Static) {
    if (cfg.cachekv_scales_path.empty()) throw Error("--cachekv_int8_type static needs a cachekv_scales.json file");
    scales = load_cachekv_scales(cfg.cachekv_scales_path, mc);
  }
  I.eos = tokenizer.eos_ids();
  I.cache = std::make_unique<KVCache>(mc, nb, cfg.block_size, quant, &scales, model.backend());
  I.blocks = std::make_unique<BlockManager>(I.cache->geometry(), cfg.enable_prefix_caching);
  I.scheduler = std::make_unique<Scheduler>(*I.blocks, cfg.max_num_seqs, cfg.max_num_batched_tokens);
  I.runner = std::make_unique<ModelRunner>(model, *I.cache, *I.blocks);
  I.cfg.num_blocks = nb;
  I.m.kv_cache_bytes = I.cache->bytes();
  I.m.kv_bytes_per_block = per_block;
}

Engine::~Engine() = default;

const EngineConfig& Engine::config() const { return impl_->cfg; }

uint64_t Engine::add_request(std::vector<int32_t> prompt, const RequestParams& params) {
  Impl& I = *impl_;
  params.sampling.validate();
  if (params.max_new_tokens < 0) throw Error("max_new_tokens must not be negative");
  const int64_t ctx = I.model.max_positions();
  const int64_t n = int64_t(prompt.size());
  if (n == 0) throw Error("empty prompt (at least the BOS token is needed)");
  if (n > ctx)
    throw Error("prompt of " + std::to_string(n) + " tokens is longer than the model's context (" +
                std::to_string(ctx) + " tokens)");
  const int32_t V = int32_t(I.model.config().vocab_size);
  for (int32_t t : prompt)
    if (t < 0 || t >= V) throw Error("token id " + std::to_string(t) + " is outside the vocabulary (size " + std::to_string(V) + ")");
  // The most positions it will ever cache (the last token chosen is never fed back) must fit the cache alone,
  // or preemption could never make room for it.
  const int64_t last = std::min(n + params.max_new_tokens, ctx);
  const int64_t need = I.blocks->blocks_needed(std::max(n, last - 1));
  if (need > I.blocks->num_blocks())
    throw Error("prompt of " + std::to_string(n) + " tokens plus " + std::to_string(params.max_new_tokens) +
                " new tokens needs " + std::to_string(need) + " KV blocks; the cache has " +
                std::to_string(I.blocks->num_blocks()) + " (raise --kv_cache_memory_gb)");
  if (params.logprobs > int32_t(I.model.config().vocab_size)) throw Error("logprobs: more top tokens than the vocabulary has");
  if (int64_t(I.scheduler->waiting().size()) >= I.cfg.max_waiting) return 0;
  const uint64_t id = I.next_id++;
  auto r = std::make_unique<Request>(id, std::move(prompt), params, I.tok);
  r->submitted = now_s();
  const bool run_prompt = params.max_new_tokens > 0 || params.prompt_logprobs;
  Request* leader = nullptr;
  if (auto it = I.requests.find(params.share_prompt_with); run_prompt && it != I.requests.end()) {
    Request& l = *it->second;
    if (!l.aborted && !l.follower && !l.sampled && l.seq.status != Sequence::Status::Finished &&
        l.seq.tokens == r->seq.tokens)
      leader = &l;
  }
  if (!run_prompt) {
    I.pending_finish.push_back(id);
  } else if (leader) {
    r->follower = true;
    leader->followers.push_back(id);
  } else {
    I.scheduler->add(&r->seq);
  }
  I.requests.emplace(id, std::move(r));
  return id;
}

void Engine::abort_request(uint64_t id) {
  Impl& I = *impl_;
  auto it = I.requests.find(id);
  if (it == I.requests.end() || it->second->aborted) return;
  it->second->aborted = true;
  I.pending_finish.push_back(id);
}

bool Engine::has_work() const {
  const Impl& I = *impl_;
  return !I.pending_finish.empty() || !I.scheduler->waiting().empty() || !I.scheduler->running().empty();
}

// Returns text[emitted..) that is settled: everything on the final call, else all but a possible stop-string start.
void Engine::Impl::emit_text(Request& r, RequestOutput& o, bool final) {
  size_t end = r.text.size();
  if (!final) end -= stop_prefix_tail(r.text, r.emitted, r.seq.params.stop);
  o.new_text = r.text.substr(r.emitted, end - r.emitted);
  r.emitted = end;
}

RequestOutput Engine::Impl::finish(Request& r, FinishReason why) {
  RequestOutput o;
  o.request_id = r.seq.id;
  o.finished = true;
  o.finish_reason = why;
  if (why != FinishReason::Aborted) {
    if (why != FinishReason::Stop) {
      // The bytes held back for a partial character come out now, and may complete a stop string.
      r.text += r.decoder.flush();
      size_t p = find_stop(r.text, r.emitted, r.seq.params.stop);
      if (p != std::string::npos) {
        r.text.resize(p);
        o.finish_reason = FinishReason::Stop;
      }
    }
    emit_text(r, o, true);
  }
  if (why != FinishReason::Aborted) attach_prompt_logprobs(r, o);
  o.prompt_tokens = r.seq.prompt_len;
  o.completion_tokens = r.seq.num_generated();
  release_followers(r);
  const double t = now_s();
  if (why != FinishReason::Aborted && o.completion_tokens >= 2) m.tpot_seconds.push_back((t - r.first_token) / double(o.completion_tokens - 1));
  m.finished_requests++;
  scheduler->finish(&r.seq);
  return o;
}

void Engine::Impl::attach_prompt_logprobs(Request& r, RequestOutput& o) {
  if (!r.seq.params.prompt_logprobs || r.prompt_logprobs_sent) return;
  o.prompt_logprobs = std::move(r.prompt_logprobs);
  r.prompt_logprobs_sent = true;
}

void Engine::Impl::release_followers(Request& leader) {
  for (uint64_t id : leader.followers) {
    auto it = requests.find(id);
    if (it == requests.end() || it->second->aborted) continue;
    it->second->follower = false;
    scheduler->add(&it->second->seq);
  }
  leader.followers.clear();
}

RequestOutput Engine::Impl::accept_token(Request& r, int32_t tok, const TokenLogprob* lp, double t) {
  Sequence& s = r.seq;
  const int64_t ctx = model.max_positions();
  s.tokens.push_back(tok);
  m.generated_tokens++;
  if (s.num_generated() == 1) {
    r.first_token = t;
    m.ttft_seconds.push_back(t - r.submitted);
    m.prompt_tokens += s.prompt_len;
  }
  r.text += r.decoder.push(tok);
  FinishReason why = FinishReason::None;
  size_t stop_at = find_stop(r.text, r.emitted, s.params.stop);
  if (stop_at != std::string::npos) {
    r.text.resize(stop_at);
    why = FinishReason::Stop;
  } else if (!s.params.ignore_eos && is_eos(tok)) {
    why = FinishReason::Eos;
  } else if (s.num_generated() >= s.params.max_new_tokens || int64_t(s.tokens.size()) >= ctx) {
    why = FinishReason::Length;  // max_new_tokens, or the context is full
  }
  RequestOutput o;
  if (why != FinishReason::None) {
    o = finish(r, why);
  } else {
    o.request_id = s.id;
    emit_text(r, o, false);
    attach_prompt_logprobs(r, o);
    o.prompt_tokens = s.prompt_len;
    o.completion_tokens = s.num_generated();
  }
  o.new_tokens.push_back(tok);
  if (lp) o.logprobs.push_back(*lp);
  return o;
}

void Engine::Impl::start_followers(Request& leader, size_t chunk, double t, std::vector<RequestOutput>& outs) {
  std::vector<uint64_t> ids;
  ids.swap(leader.followers);
  for (uint64_t id : ids) {
    auto it = requests.find(id);
    if (it == requests.end() || it->second->aborted) continue;
    Request& f = *it->second;
    f.follower = false;
    f.sampled = true;
    f.prompt_logprobs = leader.prompt_logprobs;  // the same prompt
    if (f.seq.params.max_new_tokens == 0) {  // prompt logprobs only
      outs.push_back(finish(f, FinishReason::Length));
      requests.erase(it);
      continue;
    }
    blocks->fork(leader.seq.id, f.seq.id);  // the prompt's blocks, shared; a partial last one is copied on write
    f.seq.num_computed = leader.seq.num_computed;
    scheduler->add_running(&f.seq);
    TokenLogprob lp;
    const bool want = f.seq.params.logprobs >= 0;
    const int32_t tok = runner->sample_from(chunk, f.seq, want ? &lp : nullptr);
    RequestOutput o = accept_token(f, tok, want ? &lp : nullptr, t);
    if (o.finished) requests.erase(it);
    outs.push_back(std::move(o));
  }
}

std::vector<RequestOutput> Engine::step() {
  Impl& I = *impl_;
  std::vector<RequestOutput> outs;
  // Aborted requests and those asking for no tokens leave first, freeing their blocks for this step.
  for (uint64_t id : I.pending_finish) {
    auto it = I.requests.find(id);
    if (it == I.requests.end()) continue;
    Request& r = *it->second;
    outs.push_back(I.finish(r, r.aborted ? FinishReason::Aborted : FinishReason::Length));
    I.requests.erase(it);
  }
  I.pending_finish.clear();

  StepPlan plan = I.scheduler->schedule();
  I.m.preemptions += int64_t(plan.preempted.size());
  if (plan.empty()) return outs;
  std::vector<int32_t> sampled = I.runner->execute(plan);
  I.scheduler->complete(plan);
  const std::vector<ModelRunner::ChunkLogprobs>& lps = I.runner->logprobs();
  const double t = now_s();
  for (size_t i = 0; i < plan.chunks.size(); i++) {
    Sequence& s = *plan.chunks[i].seq;
    Request& r = *I.requests.at(s.id);
    for (const TokenLogprob& p : lps[i].prompt) r.prompt_logprobs.push_back(p);
    if (!plan.chunks[i].sample) continue;
    r.sampled = true;
    std::vector<RequestOutput> follower_outs;
    if (!r.followers.empty()) I.start_followers(r, i, t, follower_outs);  // before the leader may finish
    if (s.params.max_new_tokens == 0) {  // it ran for its prompt logprobs only
      outs.push_back(I.finish(r, FinishReason::Length));
      I.requests.erase(s.id);
    } else {
      RequestOutput o = I.accept_token(r, sampled[i], lps[i].has_sampled ? &lps[i].sampled : nullptr, t);
      if (o.finished) I.requests.erase(s.id);
      outs.push_back(std::move(o));
    }
    // The leader's output first: it carries what its followers' outputs may refer to.
    for (auto& o : follower_outs) outs.push_back(std::move(o));
  }
  return outs;
}

EngineMetrics Engine::metrics() const {
  const Impl& I = *impl_;
  EngineMetrics m = I.m;
  m.running = int64_t(I.scheduler->running().size());
  m.waiting = int64_t(I.scheduler->waiting().size());
  m.blocks_total = I.blocks->num_blocks();
  m.blocks_free = I.blocks->num_free_blocks();
  m.blocks_used = m.blocks_total - m.blocks_free;
  m.prefix_cache_queries = I.blocks->prefix_queries();
  m.prefix_cache_hits = I.blocks->prefix_hits();
  return m;
}

void Engine::take_latency_samples(std::vector<double>& ttft_seconds, std::vector<double>& tpot_seconds) {
  ttft_seconds = std::move(impl_->m.ttft_seconds);
  tpot_seconds = std::move(impl_->m.tpot_seconds);
  impl_->m.ttft_seconds.clear();
  impl_->m.tpot_seconds.clear();
}

}  // namespace oar
