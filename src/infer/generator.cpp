#include "infer/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace oar {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct SeqState {
  BlockTable table;
  std::vector<int32_t> history;  // prompt + generated, for the repetition penalty
  int64_t cached = 0;            // positions already in the KV cache
  bool done = false;
};

}  // namespace

std::vector<GenerationOutput> Generator::run(const std::vector<GenerationRequest>& reqs,
                                             const std::vector<int32_t>& eos_ids, GenerationStats* stats,
                                             const std::function<void(size_t, int32_t)>& on_token) {
  const LlamaConfig& cfg = model_.config();
  const size_t B = reqs.size();
  std::vector<GenerationOutput> out(B);
  if (B == 0) return out;
  int64_t blocks = 0;
  for (const auto& r : reqs) {
    if (r.prompt.empty()) throw Error("generation: empty prompt (at least the BOS token is needed)");
    r.sampling.validate();
    int64_t total = int64_t(r.prompt.size()) + r.max_new_tokens;
    if (total > model_.max_positions())
      throw Error("prompt of " + std::to_string(r.prompt.size()) + " tokens plus " + std::to_string(r.max_new_tokens) +
                  " new tokens exceeds the model's context of " + std::to_string(model_.max_positions()) + " tokens");
    blocks += (total + block_size_ - 1) / block_size_;
  }
  KVCache cache(cfg, blocks, block_size_, KVCacheDType::F32, nullptr, model_.backend());
  BlockAllocator alloc(blocks);
  std::vector<SeqState> seqs(B);
  std::vector<Sampler> samplers;
  for (size_t i = 0; i < B; i++) {
    samplers.emplace_back(reqs[i].sampling, i);
    seqs[i].history = reqs[i].prompt;
    if (!seqs[i].table.reserve(int64_t(reqs[i].prompt.size()) + reqs[i].max_new_tokens, block_size_, alloc))
      throw Error("generation: kv cache too small");  // cannot happen: sized above
  }
  const int64_t V = cfg.vocab_size;
  Tensor logits;
  GenerationStats st;
  st.kv_cache_bytes = cache.bytes();
  const double t0 = now_s();

  auto is_eos = [&](int32_t t) { return std::find(eos_ids.begin(), eos_ids.end(), t) != eos_ids.end(); };
  auto emit = [&](size_t i, float* row) {
    int32_t tok = samplers[i].next(row, V, seqs[i].history);
    out[i].tokens.push_back(tok);
    seqs[i].history.push_back(tok);
    if (on_token) on_token(i, tok);
    st.generated_tokens++;
    if (!reqs[i].ignore_eos && is_eos(tok)) {
      out[i].stopped_at_eos = true;
      seqs[i].done = true;
    }
    if (int64_t(out[i].tokens.size()) >= reqs[i].max_new_tokens) seqs[i].done = true;
  };

  // Prefill: prompt chunks packed into steps of at most max_batch_tokens rows.
  {
    size_t i = 0;
    int64_t off = 0;
    while (i < B) {
      StepBatch batch;
      std::vector<size_t> owners;  // request of each logit row
      int64_t budget = max_batch_tokens_;
      while (i < B && budget > 0) {
        if (reqs[i].max_new_tokens == 0) { seqs[i].done = true; i++; off = 0; continue; }
        const auto& p = reqs[i].prompt;
        int64_t n = std::min<int64_t>(int64_t(p.size()) - off, budget);
        int64_t row0 = batch.add_sequence(p.data() + off, n, off, seqs[i].table.blocks);
        budget -= n;
        off += n;
        seqs[i].cached = off;
        if (off == int64_t(p.size())) {
          batch.logit_rows.push_back(row0 + n - 1);
          owners.push_back(i);
          i++;
          off = 0;
        }
      }
      if (batch.tokens.empty()) break;
      model_.forward(batch, cache, logits);
      st.prompt_tokens += int64_t(batch.tokens.size());
      Tensor host = model_.backend().download(logits);
      for (size_t r = 0; r < owners.size(); r++) emit(owners[r], host.data<float>() + int64_t(r) * V);
    }
  }
  const double t1 = now_s();
  st.prefill_seconds = t1 - t0;
  st.time_to_first_token = t1 - t0;

  // Decode: one token per unfinished sequence per step.
  for (;;) {
    StepBatch batch;
    std::vector<size_t> owners;
    for (size_t i = 0; i < B; i++) {
      if (seqs[i].done) continue;
      int32_t last = out[i].tokens.back();
      int64_t row = batch.add_sequence(&last, 1, seqs[i].cached, seqs[i].table.blocks);
      batch.logit_rows.push_back(row);
      owners.push_back(i);
    }
    if (owners.empty()) break;
    model_.forward(batch, cache, logits);
    st.decode_steps++;
    Tensor host = model_.backend().download(logits);
    for (size_t r = 0; r < owners.size(); r++) {
      seqs[owners[r]].cached++;
      emit(owners[r], host.data<float>() + int64_t(r) * V);
    }
  }
  st.decode_seconds = now_s() - t1;
  for (auto& s : seqs) s.table.release_all(alloc);
  if (stats) *stats = st;
  return out;
}

PerplexityResult perplexity(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress, KVCacheDType kv_quant,
                            const KVStaticScales* static_scales) {
  if (ctx < 2) throw Error("--ctx must be at least 2");
  if (ctx > model.max_positions())
    throw Error("--ctx " + std::to_string(ctx) + " exceeds the model's context of " + std::to_string(model.max_positions()));
  if (int64_t(tokens.size()) < 2) throw Error("perplexity: the input has fewer than 2 tokens");
  const int64_t V = model.config().vocab_size;
  const int64_t block = 64;
  const int64_t nblocks = (ctx + block - 1) / block;
  KVCache cache(model.config(), nblocks, block, kv_quant, static_scales, model.backend());
  std::vector<int32_t> table(static_cast<size_t>(nblocks), 0);
  for (int64_t b = 0; b < nblocks; b++) table[size_t(b)] = int32_t(b);
  PerplexityResult res;
  double nll = 0;
  const int64_t total = int64_t(tokens.size());
  const int64_t windows = (total + ctx - 1) / ctx;
  Tensor logits;
  for (int64_t w = 0; w < windows; w++) {
    int64_t b = w * ctx, n = std::min(ctx, total - b);
    if (n < 2) break;  // a final window of one token predicts nothing
    StepBatch batch;
    batch.add_sequence(tokens.data() + b, n, 0, table);
    for (int64_t r = 0; r < n - 1; r++) batch.logit_rows.push_back(r);
    model.forward(batch, cache, logits);
    const Tensor host = model.backend().download(logits);
    for (int64_t r = 0; r < n - 1; r++) {
      const float* row = host.data<float>() + r * V;
      float mx = row[0];
      for (int64_t i = 1; i < V; i++) mx = std::max(mx, row[i]);
      double s = 0;
      for (int64_t i = 0; i < V; i++) s += std::exp(double(row[i]) - mx);
      nll += (std::log(s) + mx) - row[tokens[size_t(b + r + 1)]];
      res.predicted_tokens++;
    }
    res.windows++;
    if (progress) progress(w + 1, windows);
  }
  res.mean_nll = nll / double(res.predicted_tokens);
  res.perplexity = std::exp(res.mean_nll);
  return res;
}

}  // namespace oar
