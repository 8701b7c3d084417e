#include "engine/scheduler.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace oar {

// Every request draws from stream 0 of its own seed, so what it samples depends on nothing but its parameters.
Sequence::Sequence(uint64_t id_, std::vector<int32_t> prompt, const RequestParams& p)
    : id(id_), tokens(std::move(prompt)), prompt_len(int64_t(tokens.size())), params(p), sampler(p.sampling, 0) {}

Scheduler::Scheduler(BlockManager& blocks, int64_t max_num_seqs, int64_t max_num_batched_tokens)
    : bm_(blocks), max_num_seqs_(max_num_seqs), max_num_batched_tokens_(max_num_batched_tokens) {
  if (max_num_seqs <= 0) throw Error("scheduler: max_num_seqs must be positive");
  if (max_num_batched_tokens <= 0) throw Error("scheduler: max_num_batched_tokens must be positive");
}

void Scheduler::add(Sequence* s) {
  s->status = Sequence::Status::Waiting;
  waiting_.push_back(s);
}

void Scheduler::add_running(Sequence* s) {
  s->status = Sequence::Status::Running;
  running_.push_back(s);
}

void Scheduler::preempt(Sequence* s) {
  // Recompute: drop its cache (full blocks stay findable in the prefix cache until evicted) and queue it first.
  bm_.free(s->id);
  s->num_computed = 0;
  s->status = Sequence::Status::Waiting;
  running_.erase(std::find(running_.begin(), running_.end(), s));
  waiting_.push_front(s);
  preemptions_++;
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  int64_t budget = max_num_batched_tokens_;

  // Running sequences first, oldest first. A victim is always the last of running_, so it is never one that
  // already has a chunk in this plan: either one further back, or the sequence being scheduled itself.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    const int64_t n = std::min(int64_t(s->tokens.size()) - s->num_computed, budget);
    if (n <= 0) throw Error("scheduler: running sequence " + std::to_string(s->id) + " has no token to compute");
    bool self_preempted = false;
    while (!bm_.ensure_slots(s->id, s->num_computed + n)) {
      Sequence* victim = running_.back();
      preempt(victim);
      plan.preempted.push_back(victim);
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // it was the last running sequence
    plan.chunks.push_back({s, n, s->num_computed + n == int64_t(s->tokens.size())});
    budget -= n;
    plan.num_tokens += n;
    i++;
  }

  // Then admissions, first come first served: the queue's head waits until it fits (no overtaking), and
  // nobody is admitted in a step that had to preempt (the blocks are evidently short).
  while (plan.preempted.empty() && !waiting_.empty() && int64_t(running_.size()) < max_num_seqs_ && budget > 0) {
    Sequence* s = waiting_.front();
    // A request for prompt logprobs needs the logits of every prompt position: it computes them all.
    BlockManager::PrefixMatch m = s->needs_prompt_logits() ? BlockManager::PrefixMatch{} : bm_.match_prefix(s->tokens);
    const int64_t n = std::min(int64_t(s->tokens.size()) - m.num_tokens, budget);
    if (!bm_.admit(s->id, s->tokens, m, m.num_tokens + n)) break;
    waiting_.pop_front();
    s->num_computed = m.num_tokens;
    s->status = Sequence::Status::Running;
    running_.push_back(s);
    plan.chunks.push_back({s, n, s->num_computed + n == int64_t(s->tokens.size())});
    budget -= n;
    plan.num_tokens += n;
  }
  return plan;
}

void Scheduler::complete(const StepPlan& plan) {
  for (const ScheduledChunk& c : plan.chunks) {
    c.seq->num_computed += c.n;
    bm_.commit(c.seq->id, c.seq->tokens.data(), c.seq->num_computed);
  }
}

void Scheduler::finish(Sequence* s) {
  auto r = std::find(running_.begin(), running_.end(), s);
  if (r != running_.end()) running_.erase(r);
  auto w = std::find(waiting_.begin(), waiting_.end(), s);
  if (w != waiting_.end()) waiting_.erase(w);
  bm_.free(s->id);
  s->status = Sequence::Status::Finished;
}

}  // namespace oar
