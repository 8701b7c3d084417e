// Zero padding (packing in order and greedy, as PaddleNLP's ZeroPaddingMapDataset), padded batches and the
// pretraining batch, down to every field of TrainBatch.
#include <gtest/gtest.h>

#include "data/batching.h"
#include "test_data_util.h"

using namespace oar;
using namespace oar::test;

namespace {

// An example of n tokens whose ids tell where they come from (100 * k + t); the last half learned.
SftExample ex(int k, int n) {
  SftExample e;
  for (int t = 0; t < n; t++) {
    e.input_ids.push_back(100 * k + t);
    e.labels.push_back(t >= n / 2 ? 100 * k + t + 1 : -100);
  }
  return e;
}

std::vector<SftExample> exs(const std::vector<int>& lens) {
  std::vector<SftExample> v;
  for (size_t k = 0; k < lens.size(); k++) v.push_back(ex(int(k), lens[k]));
  return v;
}

std::vector<std::vector<int64_t>> composition(const std::vector<PackedRow>& rows) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& r : rows) out.push_back(r.examples);
  return out;
}

using Comp = std::vector<std::vector<int64_t>>;

}  // namespace

TEST(ZeroPadding, InOrderPacksAndDropsTooLong) {
  // max_length 10: [4,5] fit (9), 3 starts a new pack, 12 is dropped, 6 fits after 3 (9), 1 -> 10, 2 new.
  const auto v = exs({4, 5, 3, 12, 6, 1, 2});
  const auto rows = pack_in_order(v, 10);
  EXPECT_EQ(composition(rows), (Comp{{0, 1}, {2, 4, 5}, {6}}));
  // Row contents: examples concatenated, positions restart, segments count up.
  const PackedRow& r = rows[1];
  ASSERT_EQ(r.size(), 10);
  std::vector<int32_t> ids, pos, seg, labels;
  for (int k : {2, 4, 5}) {
    for (int t = 0; t < v[size_t(k)].size(); t++) {
      ids.push_back(v[size_t(k)].input_ids[size_t(t)]);
      labels.push_back(v[size_t(k)].labels[size_t(t)]);
      pos.push_back(t);
      seg.push_back(k == 2 ? 0 : k == 4 ? 1 : 2);
    }
  }
  EXPECT_EQ(r.input_ids, ids);
  EXPECT_EQ(r.labels, labels);
  EXPECT_EQ(r.position_ids, pos);
  EXPECT_EQ(r.segment_ids, seg);
  // An example exactly max_length long is kept, alone.
  EXPECT_EQ(composition(pack_in_order(exs({10, 1}), 10)), (Comp{{0}, {1}}));
  EXPECT_TRUE(pack_in_order(exs({11, 12}), 10).empty());
}

TEST(ZeroPadding, GreedyPutsEachExampleInTheEmptiestPack) {
  // max_length 10. 6 -> pack0 (room 4); 7 fits nowhere -> pack1 (room 3); 3 -> pack0 (the most room, 4) -> 1;
  // 2 -> pack1 (3) -> 1; 5 -> new pack2 (5); 4 -> pack2 -> 1; 1 -> pack0 (first of the rooms 1,1,1) -> 0.
  const auto rows = pack_greedy(exs({6, 7, 3, 2, 5, 4, 1}), 10);
  EXPECT_EQ(composition(rows), (Comp{{0, 2, 6}, {1, 3}, {4, 5}}));
  for (const auto& r : rows) EXPECT_LE(r.size(), 10);
  // Too-long examples are dropped before buffering.
  EXPECT_EQ(composition(pack_greedy(exs({11, 3, 3}), 10)), (Comp{{1, 2}}));
}

TEST(ZeroPadding, GreedyWorksInBuffers) {
  // Buffer of 2: {6, 6} then {3, 3}; the second buffer's examples never join the first buffer's packs.
  EXPECT_EQ(composition(pack_greedy(exs({6, 6, 3, 3}), 10, 2)), (Comp{{0}, {1}, {2, 3}}));
  EXPECT_EQ(composition(pack_greedy(exs({6, 6, 3, 3}), 10, 500)), (Comp{{0, 2}, {1, 3}}));
  // 1200 examples of length 3 with the default buffer of 500: packs of 3 examples, never across buffers.
  std::vector<int> lens(1200, 3);
  const auto rows = pack_greedy(exs(lens), 10);
  int64_t n = 0;
  for (const auto& r : rows) {
    n += int64_t(r.examples.size());
    EXPECT_EQ(r.examples.front() / 500, r.examples.back() / 500);
  }
  EXPECT_EQ(n, 1200);
}

TEST(Batching, PadsToTheLongestRow) {
  const auto v = exs({3, 5});
  const PackedRow a = single_row(v[0], 0), b = single_row(v[1], 1);
  PadOptions pad;
  pad.pad_id = 7;
  TrainBatch batch = make_batch(std::vector<const PackedRow*>{&a, &b}, pad);
  EXPECT_EQ(batch.B, 2);
  EXPECT_EQ(batch.L, 5);
  EXPECT_EQ(batch.input_ids, (std::vector<int32_t>{0, 1, 2, 7, 7, 100, 101, 102, 103, 104}));
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{-100, 2, 3, -100, -100, -100, -100, 103, 104, 105}));
  EXPECT_EQ(batch.position_ids, (std::vector<int32_t>{0, 1, 2, 0, 0, 0, 1, 2, 3, 4}));
  EXPECT_EQ(batch.segment_ids, (std::vector<int32_t>{0, 0, 0, -1, -1, 0, 0, 0, 0, 0}));
  pad.pad_to_multiple_of = 4;
  EXPECT_EQ(make_batch(std::vector<const PackedRow*>{&a, &b}, pad).L, 8);
  pad.pad_to = 9;
  EXPECT_EQ(make_batch(std::vector<const PackedRow*>{&a, &b}, pad).L, 12);
}

TEST(Batching, PackedRowsKeepTheirSegments) {
  const auto rows = pack_in_order(exs({2, 2, 3}), 4);
  TrainBatch batch = make_batch(rows);
  EXPECT_EQ(batch.B, 2);
  EXPECT_EQ(batch.L, 4);
  EXPECT_EQ(batch.segment_ids, (std::vector<int32_t>{0, 0, 1, 1, 0, 0, 0, -1}));
  EXPECT_EQ(batch.position_ids, (std::vector<int32_t>{0, 1, 0, 1, 0, 1, 2, 0}));
}

TEST(Batching, PretrainBatchShifts) {
  TrainBatch b = make_pretrain_batch({{1, 2, 3, 4}, {5, 6, 7, 8}});
  EXPECT_EQ(b.B, 2);
  EXPECT_EQ(b.L, 3);
  EXPECT_EQ(b.input_ids, (std::vector<int32_t>{1, 2, 3, 5, 6, 7}));
  EXPECT_EQ(b.labels, (std::vector<int32_t>{2, 3, 4, 6, 7, 8}));
  EXPECT_EQ(b.position_ids, (std::vector<int32_t>{0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(b.segment_ids, (std::vector<int32_t>(6, 0)));
  EXPECT_TRUE(throws_error([] { make_pretrain_batch({{1, 2, 3}, {1, 2}}); }, {"different lengths"}));
}

TEST(Batching, SftRowsFollowTheFlags) {
  const auto v = exs({3, 4, 12});
  EXPECT_EQ(composition(sft_rows(v, 10, false, false)), (Comp{{0}, {1}, {2}}));
  EXPECT_EQ(composition(sft_rows(v, 10, true, false)), (Comp{{0, 1}}));
  EXPECT_EQ(composition(sft_rows(exs({6, 6, 3}), 10, true, true)), (Comp{{0, 2}, {1}}));
}

// paddle.io.DistributedBatchSampler's deal: rank r of n takes the r-th contiguous ceil(B/n) rows; a short last
// batch repeats its first rows for the ranks it cannot fill.
TEST(Batching, DataParallelRanksTakeContiguousShares) {
  std::vector<int32_t> ids, labels;
  for (int32_t r = 0; r < 5; r++)
    for (int32_t t = 0; t < 3; t++) {
      ids.push_back(10 * r + t);
      labels.push_back(100 * r + t);
    }
  const TrainBatch g = TrainBatch::causal(5, 3, ids, labels);
  auto first_ids = [](const TrainBatch& b) {
    std::vector<int32_t> v;
    for (int64_t r = 0; r < b.B; r++) v.push_back(b.input_ids[size_t(r * b.L)]);
    return v;
  };
  const TrainBatch r0 = rank_rows(g, 0, 2), r1 = rank_rows(g, 1, 2);
  EXPECT_EQ(first_ids(r0), (std::vector<int32_t>{0, 10, 20}));
  EXPECT_EQ(first_ids(r1), (std::vector<int32_t>{30, 40, 0}));
  EXPECT_EQ(r1.labels[3], 400);  // labels, positions and segments travel with their row
  EXPECT_EQ(r1.L, 3);
  const TrainBatch g4 = TrainBatch::causal(4, 3, std::vector<int32_t>(ids.begin(), ids.begin() + 12),
                                           std::vector<int32_t>(labels.begin(), labels.begin() + 12));
  EXPECT_EQ(first_ids(rank_rows(g4, 1, 2)), (std::vector<int32_t>{20, 30}));
  EXPECT_EQ(first_ids(rank_rows(g4, 3, 4)), (std::vector<int32_t>{30}));
  EXPECT_THROW(rank_rows(g4, 2, 2), Error);
}
