// `oar preprocess` as a library call: text cleaning as PaddleNLP's create_pretraining_data.py, the written
// .bin/.idx read back to the same ids (round trip), documents/sequences/EOS, and clear errors.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/fs.h"
#include "data/indexed_dataset.h"
#include "data/preprocess.h"
#include "data/text_encoder.h"
#include "test_data_util.h"

using namespace oar;
using namespace oar::test;

namespace {

}  // namespace

TEST(PreprocessText, CollapsesRunsLongerThanTheLimit) {
  const std::string a100(100, 'a'), a101(101, 'a');
  EXPECT_EQ(collapse_repeated_chars("x" + a100 + "y", 100), "x" + a100 + "y");  // 100 kept
  EXPECT_EQ(collapse_repeated_chars("x" + a101 + "y", 100), "xay");            // 101 -> 1
  EXPECT_EQ(collapse_repeated_chars(std::string(300, '-') + "b" + a101, 100), "-ba");
  std::string nl(150, '\n');
  EXPECT_EQ(collapse_repeated_chars(nl, 100), nl);  // "." does not match a newline
  std::string han;
  for (int i = 0; i < 120; i++) han += "\xE5\x93\x88";  // U+54C8, three bytes each: counted as characters
  EXPECT_EQ(collapse_repeated_chars(han + "!", 100), "\xE5\x93\x88!");
  EXPECT_EQ(collapse_repeated_chars("aab", 1), "ab");
  EXPECT_EQ(collapse_repeated_chars("", 100), "");
}

TEST(PreprocessText, StripsLikePython) {
  EXPECT_EQ(python_strip("  \t hi there \r\n"), "hi there");
  EXPECT_EQ(python_strip("\xE3\x80\x80hi\xC2\xA0"), "hi");  // U+3000 and U+00A0 are whitespace to Python
  EXPECT_EQ(python_strip("\xE2\x80\x8Bhi"), "\xE2\x80\x8Bhi");  // U+200B is not
  EXPECT_EQ(python_strip("   "), "");
  EXPECT_EQ(python_lstrip(" \n hi \n "), "hi \n ");
  EXPECT_EQ(python_rstrip(" \n hi \xE3\x80\x80"), " \n hi");
  // Bytes that are not well-formed UTF-8 are never whitespace: a stray continuation byte 0xA0, a U+3000 cut short,
  // an overlong space.
  EXPECT_EQ(python_strip("\xA0hi\xA0"), "\xA0hi\xA0");
  EXPECT_EQ(python_strip("\xE3\x80"), "\xE3\x80");
  EXPECT_EQ(python_rstrip("hi\xE3"), "hi\xE3");
  EXPECT_EQ(python_strip("\xC0\xA0hi"), "\xC0\xA0hi");
}

TEST(Preprocess, RoundTripSameIds) {
  DataTempDir dir;
  std::filesystem::create_directories(dir.file("in/sub"));
  write_text(dir.file("in/b.jsonl"),
             "{\"text\": \"Hello world\"}\n"
             "{\"text\": \"   \"}\n"  // nothing left after stripping: not a document
             "\n"
             "{\"text\": \"" + std::string(150, 'z') + " done\", \"other\": 1}\n");
  write_text(dir.file("in/sub/a.jsonl"), "{\"text\": \"Once upon a time, there was a little girl named Lily.\"}\n");
  write_text(dir.file("in/notes.txt"), "not read\n");
  PreprocessOptions opt;
  opt.input_path = dir.file("in");
  opt.output_prefix = dir.file("out");
  opt.append_eos = true;
  opt.workers = 2;
  PreprocessStats st = preprocess_corpus(opt, spm(), nullptr);
  EXPECT_EQ(st.files, 2);
  EXPECT_EQ(st.documents, 3);
  EXPECT_EQ(st.sequences, 3);
  EXPECT_EQ(st.dtype, IndexedDType::U16);  // vocabulary 700
  TextEncoder enc(spm());
  const int32_t eos = spm().eos_ids().front();
  // Files in sorted path order: in/b.jsonl, then in/sub/a.jsonl.
  std::vector<std::vector<int32_t>> want = {enc.encode("Hello world", false), enc.encode("z done", false),
                                            enc.encode("Once upon a time, there was a little girl named Lily.", false)};
  auto ds = IndexedDataset::open(opt.output_prefix);
  ASSERT_EQ(ds->num_sequences(), 3);
  ASSERT_EQ(ds->num_documents(), 3);
  int64_t tokens = 0;
  for (size_t i = 0; i < want.size(); i++) {
    want[i].push_back(eos);
    EXPECT_EQ(ds->get(int64_t(i)), want[i]) << i;
    EXPECT_EQ(ds->document_start(int64_t(i)), int64_t(i));
    tokens += int64_t(want[i].size());
  }
  EXPECT_EQ(st.tokens, tokens);
  EXPECT_EQ(ds->total_tokens(), tokens);
}

TEST(Preprocess, SplitSentencesAndMaxDocs) {
  DataTempDir dir;
  write_text(dir.file("c.jsonl"), "{\"body\": \"Hello world\\n\\nthe end\"}\n{\"body\": \"second\"}\n");
  PreprocessOptions opt;
  opt.input_path = dir.file("c.jsonl");
  opt.output_prefix = dir.file("out");
  opt.json_key = "body";
  opt.split_sentences = true;
  opt.max_doc_num = 1;
  PreprocessStats st = preprocess_corpus(opt, spm(), nullptr);
  EXPECT_EQ(st.documents, 1);
  EXPECT_EQ(st.sequences, 2);  // the empty middle line is no sequence
  auto ds = IndexedDataset::open(opt.output_prefix);
  TextEncoder enc(spm());
  EXPECT_EQ(ds->get(0), enc.encode("Hello world", false));
  EXPECT_EQ(ds->get(1), enc.encode("the end", false));
  EXPECT_EQ(ds->document_start(1), 2);
}

TEST(Preprocess, ErrorsNameFileAndLineAndLeaveNoOutput) {
  DataTempDir dir;
  PreprocessOptions opt;
  opt.output_prefix = dir.file("out");
  struct Case {
    std::string text, expect;
  };
  const std::vector<Case> cases = {
      {"{\"text\": \"ok\"}\n{\"txt\": \"x\"}\n", "bad.jsonl:2: no \"text\" key"},
      {"{\"text\": \"ok\"}\n\n{oops\n", "bad.jsonl:3: invalid JSON"},
      {"{\"text\": 5}\n", "bad.jsonl:1: \"text\" is not a string"},
      {"[\"text\"]\n", "bad.jsonl:1: each line must be a JSON object"},
  };
  for (const auto& c : cases) {
    write_text(dir.file("bad.jsonl"), c.text);
    opt.input_path = dir.file("bad.jsonl");
    EXPECT_TRUE(throws_error([&] { preprocess_corpus(opt, spm(), nullptr); }, {c.expect})) << c.text;
    EXPECT_FALSE(file_exists(opt.output_prefix + ".bin"));
    EXPECT_FALSE(file_exists(opt.output_prefix + ".idx"));
  }
  std::filesystem::remove(dir.file("bad.jsonl"));
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));  // no temporary files left behind
  write_text(dir.file("x.json"), "{}\n");
  opt.input_path = dir.file("x.json");
  EXPECT_TRUE(throws_error([&] { preprocess_corpus(opt, spm(), nullptr); }, {"x.json", "not a .jsonl"}));
  opt.input_path = dir.path();
  EXPECT_TRUE(throws_error([&] { preprocess_corpus(opt, spm(), nullptr); }, {"no .jsonl files"}));
  opt.input_path = dir.file("missing");
  EXPECT_TRUE(throws_error([&] { preprocess_corpus(opt, spm(), nullptr); }, {"missing", "no such file"}));
}
