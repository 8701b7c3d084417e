// The engine's block manager: prefix sharing, copy-on-write, LRU eviction of cached blocks, and 10,000 random
// operations checked against an independent model (a fake KV cache holding token ids, and ownership counted
// from the tables).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "engine/block_manager.h"

using namespace oar;

namespace {

// A fake KV cache: each block slot holds the token id written there (-1: never written).
struct FakeCache {
  FakeCache(int64_t blocks, int64_t bs) : bs(bs), slots(size_t(blocks), std::vector<int32_t>(size_t(bs), -1)) {}
  int64_t bs;
  std::vector<std::vector<int32_t>> slots;
  void apply(const std::vector<std::pair<int32_t, int32_t>>& copies) {
    for (auto [s, d] : copies) slots[size_t(d)] = slots[size_t(s)];
  }
  int32_t at(const std::vector<int32_t>& table, int64_t pos) const {
    return slots[size_t(table[size_t(pos / bs)])][size_t(pos % bs)];
  }
};

std::vector<int32_t> iota_tokens(int32_t from, int64_t n) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; i++) t.push_back(from + int32_t(i));
  return t;
}

// Admits a sequence for all of `tokens`, writes them into the fake cache and commits them.
void admit_all(BlockManager& bm, FakeCache& fc, uint64_t id, const std::vector<int32_t>& tokens) {
  auto m = bm.match_prefix(tokens);
  ASSERT_TRUE(bm.admit(id, tokens, m, int64_t(tokens.size())));
  const auto& t = bm.table(id);
  for (int64_t p = m.num_tokens; p < int64_t(tokens.size()); p++) fc.slots[size_t(t[size_t(p / fc.bs)])][size_t(p % fc.bs)] = tokens[size_t(p)];
  bm.commit(id, tokens.data(), int64_t(tokens.size()));
}

}  // namespace

TEST(BlockManager, SharesFullPrefixBlocksAndCountsHits) {
  const KVGeometry geo{16, 4};
  BlockManager bm(geo, true);
  FakeCache fc(16, 4);
  std::vector<int32_t> a = iota_tokens(100, 10);  // blocks [100..103] [104..107] and a partial [108 109]
  admit_all(bm, fc, 1, a);
  EXPECT_EQ(bm.num_free_blocks(), 13);
  std::vector<int32_t> b(a.begin(), a.begin() + 8);
  b.push_back(7);
  b.push_back(8);  // same two full blocks, different tail
  auto m = bm.match_prefix(b);
  ASSERT_EQ(m.blocks.size(), 2u);
  EXPECT_EQ(m.blocks[0], bm.table(1)[0]);
  EXPECT_EQ(m.blocks[1], bm.table(1)[1]);
  EXPECT_EQ(m.evictable, 0);  // still held by sequence 1
  ASSERT_TRUE(bm.admit(2, b, m, 10));
  EXPECT_EQ(bm.num_cached(2), 8);
  EXPECT_EQ(bm.table(2).size(), 3u);
  EXPECT_NE(bm.table(2)[2], bm.table(1)[2]);
  EXPECT_EQ(bm.prefix_hits(), 2);
  EXPECT_EQ(bm.prefix_queries(), 2 + 2);  // (10 - 1) / 4 full blocks looked up per admission
  // shared: two tables + the cache
  EXPECT_EQ(bm.allocator().ref_count(bm.table(1)[0]), 3);
  // a different first block breaks the chain even when the second block's tokens are equal
  std::vector<int32_t> c = a;
  c[0] = 999;
  EXPECT_EQ(bm.match_prefix(c).blocks.size(), 0u);
}

TEST(BlockManager, LastTokenIsNeverServedFromTheCache) {
  const KVGeometry geo{8, 4};
  BlockManager bm(geo, true);
  FakeCache fc(8, 4);
  std::vector<int32_t> a = iota_tokens(1, 8);  // exactly two full blocks
  admit_all(bm, fc, 1, a);
  EXPECT_EQ(bm.match_prefix(a).blocks.size(), 1u);  // the second block holds the last token: recomputed
  std::vector<int32_t> a9 = iota_tokens(1, 9);
  EXPECT_EQ(bm.match_prefix(a9).blocks.size(), 2u);
}

TEST(BlockManager, FreedBlocksStayCachedUntilNeededLeastRecentFirst) {
  const KVGeometry geo{4, 2};
  BlockManager bm(geo, true);
  FakeCache fc(4, 2);
  admit_all(bm, fc, 1, iota_tokens(10, 4));  // two full blocks
  admit_all(bm, fc, 2, iota_tokens(50, 4));
  const int32_t a0 = bm.table(1)[0], a1 = bm.table(1)[1], b0 = bm.table(2)[0];
  bm.free(1);  // released tail first: a1 is older in the LRU than a0
  bm.free(2);
  EXPECT_EQ(bm.num_free_blocks(), 4);
  EXPECT_EQ(bm.num_evictable_blocks(), 4);
  EXPECT_EQ(bm.allocator().num_free(), 0);
  // Sequence 1's prefix is found again, without any new block.
  auto m = bm.match_prefix(iota_tokens(10, 5));
  EXPECT_EQ(m.blocks.size(), 2u);
  EXPECT_EQ(m.evictable, 2);
  // A new unrelated sequence of 2 blocks evicts the least recently freed: a1 first, then a0.
  std::vector<int32_t> x = iota_tokens(200, 3);
  auto mx = bm.match_prefix(x);
  ASSERT_TRUE(bm.admit(3, x, mx, 3));
  std::vector<int32_t> got = bm.table(3);
  std::sort(got.begin(), got.end());
  std::vector<int32_t> want = {a0, a1};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(bm.match_prefix(iota_tokens(10, 5)).blocks.size(), 0u);
  EXPECT_EQ(bm.match_prefix(iota_tokens(50, 5)).blocks.size(), 2u);  // b's blocks survived
  (void)b0;
}

TEST(BlockManager, CopyOnWriteAfterFork) {
  const KVGeometry geo{8, 4};
  BlockManager bm(geo, true);
  FakeCache fc(8, 4);
  admit_all(bm, fc, 1, iota_tokens(1, 6));  // one full block, one partial holding 2 tokens
  bm.fork(1, 2);
  const int32_t partial = bm.table(1)[1];
  EXPECT_EQ(bm.allocator().ref_count(partial), 2);
  ASSERT_TRUE(bm.ensure_slots(2, 7));
  auto copies = bm.take_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].first, partial);
  EXPECT_EQ(copies[0].second, bm.table(2)[1]);
  EXPECT_NE(bm.table(2)[1], partial);
  EXPECT_EQ(bm.table(2)[0], bm.table(1)[0]);  // the full block stays shared
  EXPECT_EQ(bm.allocator().ref_count(partial), 1);
  ASSERT_TRUE(bm.ensure_slots(1, 7));  // the parent holds its block alone now: no copy
  EXPECT_TRUE(bm.take_copies().empty());
  EXPECT_EQ(bm.table(1)[1], partial);
}

TEST(BlockManager, RefusesWithoutChangeWhenBlocksRunOut) {
  const KVGeometry geo{3, 4};
  BlockManager bm(geo, false);
  FakeCache fc(3, 4);
  admit_all(bm, fc, 1, iota_tokens(1, 8));
  std::vector<int32_t> t = bm.table(1);
  EXPECT_FALSE(bm.ensure_slots(1, 13));  // needs 2 more
  EXPECT_EQ(bm.table(1), t);
  EXPECT_EQ(bm.num_free_blocks(), 1);
  auto m = bm.match_prefix(iota_tokens(1, 8));
  EXPECT_TRUE(m.blocks.empty());  // prefix caching off
  EXPECT_FALSE(bm.admit(2, iota_tokens(1, 8), m, 8));
  EXPECT_FALSE(bm.has(2));
  EXPECT_EQ(bm.prefix_queries(), 0);
}

// 10,000 random admissions (prompts drawn from a few shared documents, so prefixes repeat), appends (with
// chunk sizes across block boundaries), forks, frees and re-admissions of freed sequences' tokens. After every
// operation: each sequence reads back exactly its tokens through its table from the fake cache (a write into a
// shared block, a wrong prefix hit or a lost copy shows up here); every block's reference count equals the
// number of tables holding it plus one if cached; the free list holds exactly the blocks nobody holds; the
// evictable count is the number of cached blocks only the cache holds.
TEST(BlockManager, RandomOperationsKeepOwnershipExact) {
  for (bool caching : {true, false}) {
    const int64_t NB = 48, BS = 4;
    const KVGeometry geo{NB, BS};
    BlockManager bm(geo, caching);
    FakeCache fc(NB, BS);
    std::mt19937_64 rng(caching ? 12345 : 777);
    auto rnd = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
    std::vector<std::vector<int32_t>> docs;
    for (int d = 0; d < 3; d++) {
      std::vector<int32_t> doc;
      for (int i = 0; i < 40; i++) doc.push_back(int32_t(rnd(0, 50)));
      docs.push_back(doc);
    }
    std::map<uint64_t, std::vector<int32_t>> model;  // sequence -> tokens committed (the independent model)
    std::vector<std::vector<int32_t>> freed;         // token lists of freed sequences, for re-admission
    uint64_t next_id = 1;
    int64_t admitted = 0, refused = 0, copies_seen = 0;

    auto write = [&](uint64_t id, int64_t from, const std::vector<int32_t>& toks) {
      const auto& t = bm.table(id);
      for (int64_t p = from; p < int64_t(toks.size()); p++) {
        int32_t b = t[size_t(p / BS)];
        // never into a block another table or the prefix cache holds
        ASSERT_EQ(bm.allocator().ref_count(b), 1) << "write into a shared block " << b;
        ASSERT_FALSE(bm.is_cached(b));
        fc.slots[size_t(b)][size_t(p % BS)] = toks[size_t(p)];
      }
    };
    auto check = [&]() {
      std::vector<int32_t> refs(size_t(NB), 0);
      for (auto& [id, toks] : model) {
        const auto& t = bm.table(id);
        ASSERT_EQ(bm.num_cached(id), int64_t(toks.size()));
        ASSERT_EQ(int64_t(t.size()), (int64_t(toks.size()) + BS - 1) / BS);
        std::vector<int32_t> sorted = t;
        std::sort(sorted.begin(), sorted.end());
        ASSERT_TRUE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end()) << "block twice in a table";
        for (int64_t p = 0; p < int64_t(toks.size()); p++) ASSERT_EQ(fc.at(t, p), toks[size_t(p)]) << "seq " << id << " pos " << p;
        for (int32_t b : t) refs[size_t(b)]++;
      }
      int64_t free_count = 0, evictable = 0;
      for (int32_t b = 0; b < NB; b++) {
        int32_t want = refs[size_t(b)] + (bm.is_cached(b) ? 1 : 0);
        ASSERT_EQ(bm.allocator().ref_count(b), want) << "block " << b;
        if (want == 0) free_count++;
        if (bm.is_cached(b) && refs[size_t(b)] == 0) evictable++;
      }
      ASSERT_EQ(bm.allocator().num_free(), free_count);
      ASSERT_EQ(bm.num_evictable_blocks(), evictable);
      ASSERT_EQ(bm.num_free_blocks(), free_count + evictable);
      ASSERT_EQ(bm.sequences().size(), model.size());
    };

    for (int op = 0; op < 10000; op++) {
      int64_t kind = rnd(0, 9);
      if (model.empty() || kind <= 2) {  // admit: a document prefix plus a random tail, or a freed sequence again
        std::vector<int32_t> toks;
        if (!freed.empty() && rnd(0, 3) == 0) {
          toks = freed[size_t(rnd(0, int64_t(freed.size()) - 1))];
        } else {
          const auto& d = docs[size_t(rnd(0, 2))];
          toks.assign(d.begin(), d.begin() + rnd(1, 24));
          for (int64_t i = rnd(0, 5); i > 0; i--) toks.push_back(int32_t(rnd(0, 50)));
        }
        auto m = bm.match_prefix(toks);
        ASSERT_LT(m.num_tokens, int64_t(toks.size()));
        for (int64_t p = 0; p < m.num_tokens; p++) ASSERT_EQ(fc.slots[size_t(m.blocks[size_t(p / BS)])][size_t(p % BS)], toks[size_t(p)]);
        int64_t total = rnd(m.num_tokens + 1, int64_t(toks.size()));  // a first chunk
        bool fits = bm.can_admit(m, total);
        uint64_t id = next_id++;
        ASSERT_EQ(bm.admit(id, toks, m, total), fits);
        if (fits) {
          admitted++;
          std::vector<int32_t> part(toks.begin(), toks.begin() + total);
          write(id, m.num_tokens, part);
          bm.commit(id, part.data(), total);
          model[id] = part;
        } else {
          refused++;
        }
      } else if (kind <= 6) {  // append a chunk of 1..2 blocks' worth of tokens
        auto it = model.begin();
        std::advance(it, rnd(0, int64_t(model.size()) - 1));
        uint64_t id = it->first;
        std::vector<int32_t> toks = it->second;
        const int64_t from = int64_t(toks.size());
        for (int64_t i = rnd(1, 2 * BS); i > 0; i--) toks.push_back(int32_t(rnd(0, 50)));
        const int64_t before_free = bm.num_free_blocks();
        const std::vector<int32_t> before_table = bm.table(id);
        if (bm.ensure_slots(id, int64_t(toks.size()))) {
          auto c = bm.take_copies();
          copies_seen += int64_t(c.size());
          fc.apply(c);
          write(id, from, toks);
          bm.commit(id, toks.data(), int64_t(toks.size()));
          it->second = toks;
        } else {
          ASSERT_EQ(bm.num_free_blocks(), before_free);
          ASSERT_EQ(bm.table(id), before_table);
          ASSERT_TRUE(bm.take_copies().empty());
        }
      } else if (kind == 7) {  // fork
        auto it = model.begin();
        std::advance(it, rnd(0, int64_t(model.size()) - 1));
        uint64_t id = next_id++;
        bm.fork(it->first, id);
        model[id] = it->second;
      } else {  // free
        auto it = model.begin();
        std::advance(it, rnd(0, int64_t(model.size()) - 1));
        freed.push_back(it->second);
        bm.free(it->first);
        model.erase(it);
      }
      check();
      if (HasFatalFailure()) {
        ADD_FAILURE() << "at operation " << op;
        return;
      }
    }
    for (auto& [id, toks] : model) bm.free(id);
    model.clear();
    check();
    EXPECT_EQ(bm.num_free_blocks(), NB) << "leaked blocks";
    EXPECT_GT(admitted, 100);
    EXPECT_GT(refused, 0);
    EXPECT_GT(copies_seen, 0);
    if (caching) {
      EXPECT_GT(bm.prefix_hits(), 100);
    }
    std::printf("  prefix caching %s: %lld admitted, %lld refused, %lld copy-on-write copies, %lld/%lld block hits\n",
                caching ? "on" : "off", (long long)admitted, (long long)refused, (long long)copies_seen,
                (long long)bm.prefix_hits(), (long long)bm.prefix_queries());
  }
}
