#include "engine/kv_perplexity.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace oar {

PerplexityResult perplexity_with_kv(LlamaModel& model, const std::vector<int32_t>& tokens, int64_t ctx, KVQuant quant,
                                    const KVStaticScales* static_scales,
                                    const std::function<void(int64_t, int64_t)>& progress) {
  if (ctx < 2) throw Error("--ctx must be at least 2");
  if (ctx > model.max_positions())
    throw Error("--ctx " + std::to_string(ctx) + " exceeds the model's context of " + std::to_string(model.max_positions()));
  if (int64_t(tokens.size()) < 2) throw Error("perplexity: the input has fewer than 2 tokens");
  const int64_t V = model.config().vocab_size;
  const int64_t block = 64;
  const int64_t nblocks = (ctx + block - 1) / block;
  KVCache cache(model.config(), nblocks, block, quant, static_scales);
  std::vector<int32_t> table(static_cast<size_t>(nblocks));
  for (int64_t b = 0; b < nblocks; b++) table[size_t(b)] = int32_t(b);
  PerplexityResult res;
  double nll = 0;
  const int64_t total = int64_t(tokens.size());
  const int64_t windows = (total + ctx - 1) / ctx;
  Tensor logits;
  for (int64_t w = 0; w < windows; w++) {
    const int64_t b = w * ctx, n = std::min(ctx, total - b);
    if (n < 2) break;  // a final window of one token predicts nothing
    StepBatch batch;
    batch.add_sequence(tokens.data() + b, n, 0, table);
    for (int64_t r = 0; r < n - 1; r++) batch.logit_rows.push_back(r);
    model.forward(batch, cache, logits);
    for (int64_t r = 0; r < n - 1; r++) {
      const float* row = logits.data<float>() + r * V;
      const float mx = *std::max_element(row, row + V);
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
