// The scheduler on its own: a block manager and sequences, no model (a "forward" just marks the chunks computed
// and a sampled token is a made-up id). Admission order, chunked prefill, preemption and resumption.
#include <gtest/gtest.h>

#include <memory>

#include "engine/scheduler.h"

using namespace oar;

namespace {

struct Fixture {
  Fixture(int64_t blocks, int64_t bs, int64_t max_seqs, int64_t budget, bool caching = false)
      : geo{blocks, bs}, bm(geo, caching), sched(bm, max_seqs, budget) {}
  KVGeometry geo;
  BlockManager bm;
  Scheduler sched;
  std::vector<std::unique_ptr<Sequence>> seqs;
  int32_t next_token = 1000;

  Sequence* add(int64_t prompt_len, int64_t max_new = 100, int32_t first = 1) {
    std::vector<int32_t> p;
    for (int64_t i = 0; i < prompt_len; i++) p.push_back(first + int32_t(i));
    RequestParams rp;
    rp.max_new_tokens = max_new;
    seqs.push_back(std::make_unique<Sequence>(uint64_t(seqs.size() + 1), p, rp));
    sched.add(seqs.back().get());
    return seqs.back().get();
  }
  // One step: schedule, "run", append a token to each sampling chunk. Returns the plan.
  StepPlan step() {
    StepPlan plan = sched.schedule();
    sched.complete(plan);
    for (auto& c : plan.chunks)
      if (c.sample) c.seq->tokens.push_back(next_token++);
    return plan;
  }
};

std::vector<uint64_t> ids_of(const std::vector<Sequence*>& v) {
  std::vector<uint64_t> r;
  for (auto* s : v) r.push_back(s->id);
  return r;
}
std::vector<uint64_t> ids_of(const std::deque<Sequence*>& v) { return ids_of(std::vector<Sequence*>(v.begin(), v.end())); }

// (id, n, sample) of each chunk
std::vector<std::tuple<uint64_t, int64_t, bool>> chunks_of(const StepPlan& p) {
  std::vector<std::tuple<uint64_t, int64_t, bool>> r;
  for (auto& c : p.chunks) r.emplace_back(c.seq->id, c.n, c.sample);
  return r;
}

using C = std::tuple<uint64_t, int64_t, bool>;

}  // namespace

TEST(Scheduler, AdmitsFirstComeFirstServedUpToMaxSeqs) {
  Fixture f(64, 4, 2, 100);
  Sequence* a = f.add(5);
  Sequence* b = f.add(3);
  Sequence* c = f.add(2);
  StepPlan p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 5, true}, {2, 3, true}}));
  EXPECT_EQ(ids_of(f.sched.running()), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(ids_of(f.sched.waiting()), (std::vector<uint64_t>{3}));
  // decodes: one token each, in admission order
  p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 1, true}}));
  EXPECT_EQ(a->tokens.size(), 7u);
  // a finishes: c is admitted in the very next step, after b's decode
  f.sched.finish(a);
  EXPECT_EQ(a->status, Sequence::Status::Finished);
  EXPECT_FALSE(f.bm.has(1));
  p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{2, 1, true}, {3, 2, true}}));
  EXPECT_EQ(ids_of(f.sched.running()), (std::vector<uint64_t>{2, 3}));
  (void)b;
  (void)c;
}

TEST(Scheduler, ChunksLongPromptsByTheTokenBudget) {
  Fixture f(64, 4, 4, 8);
  f.add(3);
  f.step();  // sequence 1 prefilled (3 tokens), now decoding
  f.add(20);
  f.add(2);
  // budget 8: 1's decode, then 7 tokens of 2's prompt; 3 waits behind (no budget left)
  StepPlan p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 7, false}}));
  EXPECT_EQ(ids_of(f.sched.waiting()), (std::vector<uint64_t>{3}));
  p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 7, false}}));
  // the last 6 prompt tokens: 2 samples its first token; 3 fits into the 1 token left of the budget
  p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 6, true}, {3, 1, false}}));
  p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 1, true}, {3, 1, true}}));
  EXPECT_EQ(f.seqs[1]->num_computed, 21);
  EXPECT_EQ(f.seqs[1]->num_generated(), 2);
}

TEST(Scheduler, HeadOfQueueIsNotOvertaken) {
  Fixture f(4, 4, 8, 100);  // 16 positions in all
  f.add(9);                 // 3 blocks
  f.step();
  f.add(8);  // needs 2 blocks: only 1 free
  f.add(1);  // would fit, but must not overtake
  StepPlan p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}}));
  EXPECT_EQ(ids_of(f.sched.waiting()), (std::vector<uint64_t>{2, 3}));
}

TEST(Scheduler, PreemptsTheNewestAndResumesItByRecompute) {
  // 6 blocks of 4: three sequences of 7 prompt tokens take 2 blocks each; the first decode that crosses into
  // a third block finds none free.
  Fixture f(6, 4, 8, 100);
  f.add(7, 100, 10);
  f.add(7, 100, 20);
  f.add(7, 100, 30);
  StepPlan p = f.step();  // all three prefilled; each has 8 tokens (7 + 1 sampled), 7 cached
  ASSERT_EQ(p.chunks.size(), 3u);
  EXPECT_EQ(f.bm.num_free_blocks(), 0);
  p = f.step();  // each decodes token 8 -> position 7, still within block 2
  EXPECT_TRUE(p.preempted.empty());
  // Next decode writes position 8 = a third block for 1: none free -> preempt 3 (the newest); 2 then needs one
  // too and takes the last of 3's.
  p = f.step();
  EXPECT_EQ(ids_of(p.preempted), (std::vector<uint64_t>{3}));
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 1, true}}));
  EXPECT_EQ(ids_of(f.sched.waiting()), (std::vector<uint64_t>{3}));
  Sequence* s3 = f.seqs[2].get();
  EXPECT_EQ(s3->num_computed, 0);
  EXPECT_EQ(s3->tokens.size(), 9u);  // 7 prompt + 2 generated, kept for the recompute
  EXPECT_EQ(s3->status, Sequence::Status::Waiting);
  EXPECT_EQ(f.sched.num_preemptions(), 1);
  // 1 finishes: 3 comes back first and recomputes all 9 tokens in one chunk, sampling its 3rd token
  f.sched.finish(f.seqs[0].get());
  p = f.step();
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{2, 1, true}, {3, 9, true}}));
  EXPECT_EQ(s3->num_generated(), 3);
  EXPECT_EQ(s3->tokens[7], 1002);  // its earlier tokens are unchanged
  EXPECT_EQ(s3->tokens[8], 1005);
}

TEST(Scheduler, PreemptedSequencesQueueInAdmissionOrderAheadOfNewOnes) {
  Fixture f(5, 4, 8, 100);
  f.add(4, 100, 10);  // 1 block each after prefill (4 tokens cached), a 2nd block at the first decode
  f.add(4, 100, 20);
  f.add(4, 100, 30);
  f.add(4, 100, 40);
  f.add(4, 100, 50);
  f.step();  // 5 sequences, 5 blocks, each with a sampled token at position 4
  EXPECT_EQ(f.bm.num_free_blocks(), 0);
  Sequence* late = f.add(1, 100, 90);
  // 1 needs a block: 5 goes and 1 takes its block; 2 needs one: 4 goes; 3 needs one: it is the newest left,
  // so it goes itself
  StepPlan p = f.step();
  EXPECT_EQ(ids_of(p.preempted), (std::vector<uint64_t>{5, 4, 3}));
  EXPECT_EQ(chunks_of(p), (std::vector<C>{{1, 1, true}, {2, 1, true}}));
  // the preempted resume oldest first, all before the later request
  EXPECT_EQ(ids_of(f.sched.waiting()), (std::vector<uint64_t>{3, 4, 5, late->id}));
  // and nobody was admitted in the step that preempted
  EXPECT_EQ(ids_of(f.sched.running()), (std::vector<uint64_t>{1, 2}));
}

TEST(Scheduler, NeverSchedulesMoreThanTheBudgetOrMaxSeqs) {
  Fixture f(1000, 4, 3, 16, true);
  for (int i = 0; i < 10; i++) f.add(5 + 3 * i, 4, 1);  // shared prefixes: prefix hits along the way
  int steps = 0;
  while (!f.sched.waiting().empty() || !f.sched.running().empty()) {
    StepPlan p = f.step();
    EXPECT_LE(p.num_tokens, 16);
    EXPECT_LE(int64_t(f.sched.running().size()), 3);
    for (Sequence* s : std::vector<Sequence*>(f.sched.running()))
      if (s->num_generated() >= s->params.max_new_tokens) f.sched.finish(s);
    ASSERT_LT(++steps, 1000);
  }
  for (auto& s : f.seqs) EXPECT_EQ(s->num_generated(), 4);
  EXPECT_GT(f.bm.prefix_hits(), 0);
  EXPECT_EQ(f.bm.num_free_blocks(), 1000);
}
