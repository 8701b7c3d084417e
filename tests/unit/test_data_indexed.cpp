// The .bin/.idx indexed dataset: writer -> reader round trips for every integer dtype, and every kind of
// truncated or inconsistent file refused with an oar::Error naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/fs.h"
#include "data/indexed_dataset.h"
#include "test_data_util.h"

using namespace oar;
using namespace oar::test;

namespace {

std::vector<std::vector<std::vector<int32_t>>> sample_docs() {
  return {{{5, 6, 7}, {8}}, {{9, 10}}, {{0, 1, 2, 3, 4, 255}}, {{11}, {12}, {13, 14}}};
}

void write_docs(const std::string& prefix, IndexedDType dt, const std::vector<std::vector<std::vector<int32_t>>>& docs) {
  IndexedDatasetWriter w(prefix, dt);
  for (const auto& d : docs) {
    for (const auto& s : d) w.add_item(s);
    w.end_document();
  }
  w.finalize();
}

std::string bytes_of(const std::string& path) { return read_file(path); }

// Patches `n` bytes at `at` of a copy of the .idx and returns the new prefix.
template <class T>
void poke(std::string& s, size_t at, T v) {
  std::memcpy(&s[at], &v, sizeof(T));
}

}  // namespace

TEST(IndexedDataset, RoundTripEveryIntegerDtype) {
  DataTempDir dir;
  for (IndexedDType dt : {IndexedDType::U8, IndexedDType::I8, IndexedDType::I16, IndexedDType::I32, IndexedDType::I64,
                          IndexedDType::U16, IndexedDType::U32, IndexedDType::U64}) {
    auto docs = sample_docs();
    if (dt == IndexedDType::I8) docs[2][0][5] = 127;  // 255 does not fit int8
    const std::string prefix = dir.file(std::string("rt_") + indexed_dtype_name(dt));
    write_docs(prefix, dt, docs);
    auto ds = IndexedDataset::open(prefix);
    EXPECT_EQ(ds->dtype(), dt);
    EXPECT_EQ(ds->num_documents(), 4);
    EXPECT_EQ(ds->num_sequences(), 7);
    EXPECT_EQ(ds->total_tokens(), 16);
    int64_t seq = 0;
    for (size_t d = 0; d < docs.size(); d++) {
      EXPECT_EQ(ds->document_start(int64_t(d)), seq);
      for (const auto& s : docs[d]) EXPECT_EQ(ds->get(seq++), s);
    }
    EXPECT_EQ(ds->document_start(4), 7);
    EXPECT_EQ(ds->get(0, 1, 2), (std::vector<int32_t>{6, 7}));
    EXPECT_EQ(ds->get(2, 2), (std::vector<int32_t>{}));
    // The byte layout of the header: magic, version 1, dtype code, N, D.
    const std::string idx = bytes_of(prefix + ".idx");
    ASSERT_EQ(idx.size(), 34u + 12 * 7 + 8 * 5);
    EXPECT_EQ(idx.substr(0, 9), std::string("MMIDIDX\0\0", 9));
    EXPECT_EQ(uint8_t(idx[17]), uint8_t(dt));
    EXPECT_EQ(bytes_of(prefix + ".bin").size(), 16 * indexed_dtype_size(dt));
  }
}

TEST(IndexedDataset, PaddleNlpDtypeCodes) {
  EXPECT_EQ(int(IndexedDType::U8), 1);
  EXPECT_EQ(int(IndexedDType::I32), 4);
  EXPECT_EQ(int(IndexedDType::F64), 6);  // Megatron has float32 here; PaddleNLP float64
  EXPECT_EQ(int(IndexedDType::F32), 7);
  EXPECT_EQ(int(IndexedDType::U16), 8);
  EXPECT_EQ(int(IndexedDType::U64), 10);
  EXPECT_EQ(indexed_dtype_for_vocab(32000), IndexedDType::U16);
  EXPECT_EQ(indexed_dtype_for_vocab(65534), IndexedDType::U16);
  EXPECT_EQ(indexed_dtype_for_vocab(65535), IndexedDType::I32);
  EXPECT_EQ(indexed_dtype_for_vocab(128256), IndexedDType::I32);
}

TEST(IndexedDataset, EmptyDatasetRoundTrips) {
  DataTempDir dir;
  IndexedDatasetWriter w(dir.file("empty"), IndexedDType::U16);
  w.finalize();
  auto ds = IndexedDataset::open(dir.file("empty"));
  EXPECT_EQ(ds->num_sequences(), 0);
  EXPECT_EQ(ds->num_documents(), 0);
}

TEST(IndexedDataset, WriterIsAtomic) {
  DataTempDir dir;
  const std::string prefix = dir.file("atomic");
  {
    IndexedDatasetWriter w(prefix, IndexedDType::U16);
    w.add_item(std::vector<int32_t>{1, 2, 3});
    w.end_document();
    EXPECT_FALSE(file_exists(prefix + ".bin"));  // only a temporary name until finalize
    // destroyed without finalize: the temporary files go away
  }
  EXPECT_FALSE(file_exists(prefix + ".bin"));
  EXPECT_FALSE(file_exists(prefix + ".idx"));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  // A value that does not fit the dtype is refused, naming the file.
  IndexedDatasetWriter w(prefix, IndexedDType::U16);
  EXPECT_TRUE(throws_error([&] { w.add_item(std::vector<int32_t>{70000}); }, {"atomic.bin", "70000", "uint16"}));
  EXPECT_TRUE(throws_error([&] { IndexedDatasetWriter(dir.file("no/such/dir/x"), IndexedDType::U16); },
                           {"no/such/dir/x.bin"}));
}

TEST(IndexedDataset, ReadsFloatAndRefusesNonTokens) {
  // A float32 .bin written by hand: integral values read as ids, anything else is an error.
  DataTempDir dir;
  const std::string p = dir.file("f");
  std::string idx("MMIDIDX\0\0", 9);
  auto app = [&](auto v) { idx.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  app(uint64_t(1));
  app(uint8_t(7));  // float32
  app(uint64_t(2));
  app(uint64_t(2));
  app(int32_t(2));
  app(int32_t(1));
  app(int64_t(0));
  app(int64_t(8));
  app(int64_t(0));
  app(int64_t(2));
  write_text(p + ".idx", idx);
  const float vals[3] = {3.0f, 4.0f, 2.5f};
  write_text(p + ".bin", std::string(reinterpret_cast<const char*>(vals), sizeof(vals)));
  auto ds = IndexedDataset::open(p);
  EXPECT_EQ(ds->get(0), (std::vector<int32_t>{3, 4}));
  EXPECT_TRUE(throws_error([&] { ds->get(1); }, {"f.bin", "not a token id"}));
  EXPECT_TRUE(throws_error([&] { ds->get(0, 1, 5); }, {"f.bin", "outside"}));
  EXPECT_TRUE(throws_error([&] { ds->get(2); }, {"f.idx", "out of range"}));
}

TEST(IndexedDataset, CorruptFilesAreClearErrors) {
  DataTempDir dir;
  const std::string good = dir.file("good");
  write_docs(good, IndexedDType::U16, sample_docs());
  const std::string idx = bytes_of(good + ".idx"), bin = bytes_of(good + ".bin");
  const size_t N = 7, sizes_at = 34, ptr_at = 34 + 4 * N, doc_at = 34 + 12 * N;
  struct Case {
    std::string name, idx, bin, expect;
  };
  std::vector<Case> cases;
  auto with = [&](auto f) {
    std::string s = idx;
    f(s);
    return s;
  };
  cases.push_back({"empty", "", bin, "truncated"});
  cases.push_back({"header_cut", idx.substr(0, 20), bin, "truncated"});
  cases.push_back({"magic", with([](std::string& s) { s[0] = 'X'; }), bin, "magic"});
  cases.push_back({"version", with([](std::string& s) { poke<uint64_t>(s, 9, 2); }), bin, "version 2"});
  cases.push_back({"dtype0", with([](std::string& s) { s[17] = 0; }), bin, "dtype code 0"});
  cases.push_back({"dtype11", with([](std::string& s) { s[17] = 11; }), bin, "dtype code 11"});
  cases.push_back({"arrays_cut", idx.substr(0, idx.size() - 8), bin, "truncated"});
  cases.push_back({"trailing", idx + "junk", bin, "unexpected bytes"});
  cases.push_back({"huge_N", with([](std::string& s) { poke<uint64_t>(s, 18, uint64_t(1) << 62); }), bin, "truncated"});
  cases.push_back({"huge_D", with([](std::string& s) { poke<uint64_t>(s, 26, ~uint64_t(0)); }), bin, "truncated"});
  cases.push_back({"negative_size", with([&](std::string& s) { poke<int32_t>(s, sizes_at + 4, -1); }), bin, "negative size"});
  cases.push_back({"size_vs_pointer", with([&](std::string& s) { poke<int32_t>(s, sizes_at, 2); }), bin, "pointers disagree"});
  cases.push_back({"pointer", with([&](std::string& s) { poke<int64_t>(s, ptr_at + 8, 2); }), bin, "pointers disagree"});
  cases.push_back({"bin_short", idx, bin.substr(0, bin.size() - 2), "past the end of the .bin"});
  cases.push_back({"bin_long", idx, bin + "xx", "the .bin file has"});
  cases.push_back({"doc0", with([&](std::string& s) { poke<int64_t>(s, doc_at, 1); }), bin, "doc_idx[0]"});
  cases.push_back({"doc_order", with([&](std::string& s) { poke<int64_t>(s, doc_at + 16, 1); }), bin, "not monotone"});
  cases.push_back({"doc_range", with([&](std::string& s) { poke<int64_t>(s, doc_at + 24, 99); }), bin, "past 7"});
  cases.push_back({"doc_last", with([&](std::string& s) { poke<int64_t>(s, doc_at + 32, 6); }), bin, "last doc_idx"});
  for (const auto& c : cases) {
    const std::string p = dir.file(c.name);
    write_text(p + ".idx", c.idx);
    write_text(p + ".bin", c.bin);
    EXPECT_TRUE(throws_error([&] { IndexedDataset::open(p); }, {c.name + ".idx", c.expect})) << c.name;
  }
  EXPECT_TRUE(throws_error([&] { IndexedDataset::open(dir.file("missing")); }, {"missing.idx"}));
  write_text(dir.file("nobin.idx"), idx);
  EXPECT_TRUE(throws_error([&] { IndexedDataset::open(dir.file("nobin")); }, {"nobin.bin"}));
}
