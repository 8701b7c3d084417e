// Pretraining samples: NumPy's RandomState shuffle bit for bit, and PaddleNLP's GPTDataset doc/sample/shuffle
// indices, split bounds and sample tokens against fixtures from tests/reference/make_gpt_index_fixtures.py.
#include <gtest/gtest.h>

#include <numeric>

#include "data/gpt_dataset.h"
#include "data/indexed_dataset.h"
#include "data/numpy_random.h"
#include "test_data_util.h"

using namespace oar;
using namespace oar::test;
using nlohmann::json;

TEST(NumpyRandomState, ShuffleMatchesNumpy) {
  const json j = load_json_file(data_fixture("numpy_shuffle.json"));
  ASSERT_GT(j["shuffles"].size(), 10u);
  for (const auto& c : j["shuffles"]) {
    const uint32_t seed = c["seed"].get<uint32_t>();
    const size_t n = c["n"].get<size_t>();
    std::vector<int64_t> v(n);
    std::iota(v.begin(), v.end(), 0);
    NumpyRandomState rng(seed);
    rng.shuffle(v);
    SCOPED_TRACE("seed " + std::to_string(seed) + " n " + std::to_string(n));
    const auto head = c["head"].get<std::vector<int64_t>>();
    for (size_t i = 0; i < head.size(); i++) EXPECT_EQ(v[i], head[i]);
    const auto tail = c["tail"].get<std::vector<int64_t>>();
    for (size_t i = 0; i < tail.size(); i++) EXPECT_EQ(v[n - tail.size() + i], tail[i]);
    EXPECT_EQ(checksum(v), c["checksum"].get<std::string>());
  }
}

TEST(NumpyRandomState, StateCarriesAcrossShuffles) {
  const json j = load_json_file(data_fixture("numpy_shuffle.json"))["sequential"];
  NumpyRandomState rng(j["seed"].get<uint32_t>());
  std::vector<int32_t> a(100);
  std::vector<uint32_t> b(37);
  std::iota(a.begin(), a.end(), 0);
  std::iota(b.begin(), b.end(), 0u);
  rng.shuffle(a);
  rng.shuffle(b);
  EXPECT_EQ(a, j["first"].get<std::vector<int32_t>>());
  EXPECT_EQ(b, j["second"].get<std::vector<uint32_t>>());
}

TEST(NumpyRandomState, IntervalStaysInRange) {
  NumpyRandomState rng(3);
  for (uint64_t max : {0ull, 1ull, 2ull, 5ull, 1000ull, 0xffffffffull, 0x100000000ull, 0xffffffffffffull})
    for (int k = 0; k < 200; k++) EXPECT_LE(rng.interval(max), max);
}

TEST(GptSplit, BoundsLikePaddleNLP) {
  // Counted in sequences; Python's round() (half to even); the rounding error moved onto every bound.
  EXPECT_EQ(gpt_split_bounds("949,50,1", 1000), (std::array<int64_t, 4>{0, 949, 999, 1000}));
  EXPECT_EQ(gpt_split_bounds("949,50,1", 60), (std::array<int64_t, 4>{0, 57, 60, 60}));
  EXPECT_EQ(gpt_split_bounds("98/2", 60), (std::array<int64_t, 4>{0, 59, 60, 60}));
  EXPECT_EQ(gpt_split_bounds("1", 60), (std::array<int64_t, 4>{0, 60, 60, 60}));
  EXPECT_EQ(gpt_split_bounds(" 1 , 1 ", 5), (std::array<int64_t, 4>{0, 3, 5, 5}));  // round(2.5) = 2, then +1 each
  EXPECT_EQ(gpt_split_bounds("1,1,1", 2), (std::array<int64_t, 4>{0, 0, 1, 2}));  // 1,1,1 then shifted by -1
  EXPECT_EQ(gpt_split_bounds("1,1,1,5", 3), (std::array<int64_t, 4>{0, 1, 2, 3}));  // a fourth entry is ignored
  EXPECT_TRUE(throws_error([] { gpt_split_bounds("9a,1", 10); }, {"split", "9a,1"}));
  EXPECT_TRUE(throws_error([] { gpt_split_bounds("0,0,0", 10); }, {"split"}));
  EXPECT_TRUE(throws_error([] { gpt_split_bounds("", 10); }, {"split"}));
  EXPECT_TRUE(throws_error([] { gpt_check_data_split("1,0,0", true, true, false); }, {"split"}));
  EXPECT_NO_THROW(gpt_check_data_split("1,0,0", true, false, false));
}

TEST(GptSplit, PretrainNumSamples) {
  // bs 2, eval bs 3, world 1, 100 steps, grad acc 4, eval every 30 steps
  EXPECT_EQ(pretrain_num_samples(2, 3, 1, 100, 4, 30), (std::array<int64_t, 3>{800, 120, 300}));
}

TEST(GptDataset, IndexedFixturesReadBack) {
  const json meta = load_json_file(data_fixture("gpt_index_cases.json"))["datasets"];
  for (const std::string name : {"gpt_u16", "gpt_i32"}) {
    auto ds = IndexedDataset::open(data_fixture(name));
    const json& m = meta[name];
    EXPECT_STREQ(indexed_dtype_name(ds->dtype()), m["dtype"].get<std::string>().c_str());
    const auto sizes = m["sizes"].get<std::vector<int32_t>>();
    const auto doc_idx = m["doc_idx"].get<std::vector<int64_t>>();
    ASSERT_EQ(ds->num_sequences(), int64_t(sizes.size()));
    ASSERT_EQ(ds->num_documents() + 1, int64_t(doc_idx.size()));
    for (size_t i = 0; i < sizes.size(); i++) EXPECT_EQ(ds->sequence_length(int64_t(i)), sizes[i]);
    for (size_t d = 0; d < doc_idx.size(); d++) EXPECT_EQ(ds->document_start(int64_t(d)), doc_idx[d]);
    std::vector<int32_t> all;
    for (int64_t i = 0; i < ds->num_sequences(); i++) ds->read(i, 0, -1, all);
    EXPECT_EQ(checksum(all), m["tokens_checksum"].get<std::string>()) << name;
  }
}

TEST(GptDataset, SampleOrderMatchesPaddleNLP) {
  const json j = load_json_file(data_fixture("gpt_index_cases.json"));
  int checked = 0;
  for (const auto& c : j["cases"]) {
    auto data = IndexedDataset::open(data_fixture(c["dataset"].get<std::string>()));
    const std::string split = c["split"];
    const auto bounds = gpt_split_bounds(split, data->num_sequences());
    EXPECT_EQ(std::vector<int64_t>(bounds.begin(), bounds.end()), c["bounds"].get<std::vector<int64_t>>());
    const auto nums = c["num_samples"].get<std::vector<int64_t>>();
    const int64_t seq_len = c["seq_length"];
    const uint32_t seed = c["seed"];
    const char* names[3] = {"train", "valid", "test"};
    for (size_t s = 0; s < 3; s++) {
      const json& want = c["splits"][s];
      SCOPED_TRACE(c["dataset"].get<std::string>() + " split " + split + " seed " + std::to_string(seed) + " " +
                   names[s]);
      if (want.is_null()) {
        EXPECT_LE(bounds[s + 1], bounds[s]);
        continue;
      }
      GptDataset ds(data, names[s], bounds[s], bounds[s + 1], nums[s], seq_len, seed);
      const GptIndices& ix = ds.indices();
      EXPECT_EQ(ix.num_epochs, want["num_epochs"].get<int64_t>());
      EXPECT_EQ(ix.tokens_per_epoch, want["tokens_per_epoch"].get<int64_t>());
      EXPECT_EQ(ix.separate_last_epoch, want["separate_last_epoch"].get<bool>());
      EXPECT_EQ(ix.doc_idx, want["doc_idx"].get<std::vector<int32_t>>());
      EXPECT_EQ(ix.sample_idx, want["sample_idx"].get<std::vector<int64_t>>());
      EXPECT_EQ(ix.shuffle_idx, want["shuffle_idx"].get<std::vector<int64_t>>());
      ASSERT_EQ(ds.size(), want["num_samples_total"].get<int64_t>());
      EXPECT_GE(ds.size(), nums[s]);
      for (const auto& [i, tokens] : want["samples"].items())
        EXPECT_EQ(ds.sample(std::stoll(i)), tokens.get<std::vector<int32_t>>()) << "sample " << i;
      std::vector<int32_t> all, one;
      for (int64_t i = 0; i < ds.size(); i++) {
        ds.sample(i, one);
        ASSERT_EQ(int64_t(one.size()), seq_len + 1);
        all.insert(all.end(), one.begin(), one.end());
      }
      EXPECT_EQ(checksum(all), want["tokens_checksum"].get<std::string>());
      checked++;
    }
  }
  EXPECT_GE(checked, 20);
}

TEST(GptDataset, SamplesOverlapByOneTokenAndCoverEveryToken) {
  // Unshuffled order (by sample_idx): sample k's last token is sample k+1's first, so input/labels pairs of
  // consecutive samples tile the epoch's token stream.
  auto data = IndexedDataset::open(data_fixture("gpt_u16"));
  GptDataset ds(data, "train", 0, data->num_sequences(), 20, 16, 42);
  const GptIndices& ix = ds.indices();
  std::vector<int64_t> inverse(ix.shuffle_idx.size());
  for (size_t i = 0; i < ix.shuffle_idx.size(); i++) inverse[size_t(ix.shuffle_idx[i])] = int64_t(i);
  for (int64_t k = 0; k + 1 < ds.size(); k++) {
    auto a = ds.sample(inverse[size_t(k)]), b = ds.sample(inverse[size_t(k + 1)]);
    EXPECT_EQ(a.back(), b.front());
  }
}

TEST(GptDataset, Errors) {
  auto data = IndexedDataset::open(data_fixture("gpt_u16"));
  EXPECT_TRUE(throws_error([&] { GptDataset(data, "train", 0, 10, 5, 0, 1); }, {"max_seq_length"}));
  GptDataset ds(data, "train", 0, 10, 5, 8, 1);
  EXPECT_TRUE(throws_error([&] { ds.sample(ds.size()); }, {"gpt_u16.idx", "out of range"}));
  EXPECT_TRUE(throws_error([&] { ds.sample(-1); }, {"out of range"}));
  std::vector<int32_t> zero_sizes(4, 0);
  EXPECT_TRUE(throws_error([&] { build_gpt_indices(zero_sizes, 0, 4, 10, 8, 1); }, {"no tokens"}));
}

TEST(GptBlending, MatchesFixture) {
  const json j = load_json_file(data_fixture("blending.json"));
  for (const auto& c : j["blends"]) {
    std::vector<uint8_t> di;
    std::vector<int64_t> ds;
    build_blending_indices(c["weights"].get<std::vector<double>>(), c["size"].get<int64_t>(), di, ds);
    EXPECT_EQ(di, c["dataset_index"].get<std::vector<uint8_t>>());
    EXPECT_EQ(ds, c["dataset_sample_index"].get<std::vector<int64_t>>());
  }
}

TEST(GptBlending, BuildsFromDirectoryOfPrefixes) {
  DataTempDir dir;
  for (const std::string name : {"gpt_u16", "gpt_i32"})
    for (const std::string ext : {".bin", ".idx"})
      std::filesystem::copy_file(data_fixture(name + ext), dir.file(name + ext));
  auto inputs = find_pretrain_inputs(dir.path());
  ASSERT_EQ(inputs.size(), 2u);
  EXPECT_EQ(inputs[0].second, dir.file("gpt_i32"));  // sorted
  EXPECT_EQ(inputs[1].second, dir.file("gpt_u16"));
  auto weighted = find_pretrain_inputs("0.3 " + dir.file("gpt_u16") + " 0.7 " + dir.file("gpt_i32"));
  ASSERT_EQ(weighted.size(), 2u);
  EXPECT_DOUBLE_EQ(weighted[0].first, 0.3);

  PretrainDatasets sets = build_pretrain_datasets(inputs, "8,1,1", {30, 6, 3}, 8, 42);
  ASSERT_TRUE(sets.train && sets.valid && sets.test);
  EXPECT_EQ(sets.train->size(), 30);
  EXPECT_EQ(sets.train->seq_length(), 8);
  // Equal weights alternate: sample 0 from dataset 0 (gpt_i32), sample 1 from dataset 1 (gpt_u16), each the
  // sub-dataset's own sample 0.
  auto i32 = IndexedDataset::open(dir.file("gpt_i32"));
  const auto b = gpt_split_bounds("8,1,1", i32->num_sequences());
  GptDataset sub(i32, "train", b[0], b[1], int64_t(std::ceil(30 * 0.5 * 1.005)) + 20, 8, 42);
  EXPECT_EQ(sets.train->sample(0), sub.sample(0));

  // One prefix on its own is not blended.
  PretrainDatasets single = build_pretrain_datasets({{1.0, dir.file("gpt_u16")}}, "949,50,1", {10, 2, 1}, 16, 42);
  EXPECT_TRUE(single.train && single.valid && !single.test);
  EXPECT_TRUE(throws_error([&] { find_pretrain_inputs(dir.file("nothing")); }, {"nothing"}));
  DataTempDir empty;
  EXPECT_TRUE(throws_error([&] { find_pretrain_inputs(empty.path()); }, {"no .idx"}));
}
