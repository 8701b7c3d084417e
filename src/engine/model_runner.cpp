#include "engine/model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace oar {

TokenLogprob token_logprob(const float* logits, int64_t V, int32_t token, int32_t k) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < V; i++) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int64_t i = 0; i < V; i++) sum += std::exp(double(logits[i]) - double(mx));
  const double lse = double(mx) + std::log(sum);
  TokenLogprob r;
  r.token = token;
  r.logprob = token >= 0 && token < V ? float(double(logits[token]) - lse) : -INFINITY;
  if (k > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(V), 0);
    std::iota(idx.begin(), idx.end(), 0);
    const size_t n = std::min<size_t>(size_t(k), idx.size());
    std::partial_sort(idx.begin(), idx.begin() + ptrdiff_t(n), idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (size_t i = 0; i < n; i++) r.top.emplace_back(idx[i], float(double(logits[idx[i]]) - lse));
  }
  return r;
}

std::vector<int32_t> ModelRunner::execute(const StepPlan& plan) {
  for (auto [src, dst] : bm_.take_copies()) cache_.copy_block(src, dst);
  std::vector<int32_t> out(plan.chunks.size(), -1);
  sample_row_.assign(plan.chunks.size(), -1);
  lps_.assign(plan.chunks.size(), {});
  if (plan.chunks.empty()) return out;
  StepBatch batch;
  struct PromptRows {
    int64_t first_row = 0, first_pos = 0, count = 0;  // logits_ rows for prompt positions [first_pos, +count)
  };
  std::vector<PromptRows> prompt_rows(plan.chunks.size());
  for (size_t i = 0; i < plan.chunks.size(); i++) {
    const ScheduledChunk& c = plan.chunks[i];
    const Sequence& s = *c.seq;
    int64_t row0 = batch.add_sequence(s.tokens.data() + s.num_computed, c.n, s.num_computed, bm_.table(s.id));
    if (s.needs_prompt_logits()) {
      // Row t holds the distribution of token t + 1; the prompt's last row is the sampling row.
      const int64_t lo = std::max(s.num_computed, s.next_prompt_logprob - 1);
      const int64_t hi = std::min(s.num_computed + c.n, s.prompt_len - 1);
      PromptRows& p = prompt_rows[i];
      p.first_row = int64_t(batch.logit_rows.size());
      p.first_pos = lo;
      for (int64_t t = lo; t < hi; t++, p.count++) batch.logit_rows.push_back(row0 + (t - s.num_computed));
    }
    if (c.sample) {
      sample_row_[i] = int64_t(batch.logit_rows.size());
      batch.logit_rows.push_back(row0 + c.n - 1);
    }
  }
  model_.forward(batch, cache_, device_logits_);
  logits_ = model_.backend().download(device_logits_);
  const int64_t V = model_.config().vocab_size;
  const float* L = logits_.data<float>();
  for (size_t i = 0; i < plan.chunks.size(); i++) {
    Sequence& s = *plan.chunks[i].seq;
    const PromptRows& p = prompt_rows[i];
    const int32_t k = std::max<int32_t>(0, s.params.logprobs);
    for (int64_t j = 0; j < p.count; j++) {
      const int64_t t = p.first_pos + j;
      lps_[i].prompt.push_back(token_logprob(L + (p.first_row + j) * V, V, s.tokens[size_t(t + 1)], k));
    }
    if (p.count > 0) s.next_prompt_logprob = p.first_pos + p.count + 1;
    if (sample_row_[i] >= 0) {
      lps_[i].has_sampled = s.params.logprobs >= 0;
      out[i] = sample_from(i, s, lps_[i].has_sampled ? &lps_[i].sampled : nullptr);
    }
  }
  return out;
}

int32_t ModelRunner::sample_from(size_t chunk, Sequence& s, TokenLogprob* lp) {
  const int64_t V = model_.config().vocab_size;
  const float* raw = logits_.data<float>() + sample_row_.at(chunk) * V;
  // The sampler edits its row (penalties, temperature); keep the logits intact for logprobs and last_logits().
  row_.assign(raw, raw + V);
  const int32_t t = s.sampler.next(row_.data(), V, s.tokens);
  if (lp) *lp = token_logprob(raw, V, t, std::max<int32_t>(0, s.params.logprobs));
  return t;
}

}  // namespace oar
