#include "engine/model_runner.h"

#include <cstring>

namespace oar {

std::vector<int32_t> ModelRunner::execute(const StepPlan& plan) {
  for (auto [src, dst] : bm_.take_copies()) cache_.copy_block(src, dst);
  std::vector<int32_t> out(plan.chunks.size(), -1);
  if (plan.chunks.empty()) return out;
  StepBatch batch;
  for (const ScheduledChunk& c : plan.chunks) {
    const Sequence& s = *c.seq;
    int64_t row0 = batch.add_sequence(s.tokens.data() + s.num_computed, c.n, s.num_computed, bm_.table(s.id));
    if (c.sample) batch.logit_rows.push_back(row0 + c.n - 1);
  }
  model_.forward(batch, cache_, logits_);
  const int64_t V = model_.config().vocab_size;
  int64_t r = 0;
  for (size_t i = 0; i < plan.chunks.size(); i++) {
    if (!plan.chunks[i].sample) continue;
    Sequence& s = *plan.chunks[i].seq;
    // The sampler edits its row (penalties, temperature); keep the logits intact for last_logits().
    row_.assign(logits_.data<float>() + r * V, logits_.data<float>() + (r + 1) * V);
    out[i] = s.sampler.next(row_.data(), V, s.tokens);
    r++;
  }
  return out;
}

}  // namespace oar
