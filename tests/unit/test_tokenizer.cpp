// Tokenizer tests on the small fixtures in tests/fixtures/tokenizers (made by
// tests/reference/make_tokenizer_fixtures.py with Python sentencepiece / tokenizers), plus hand-built files for
// llama2.c's format and for error handling. Tests on the real Llama tokenizers are in test_tokenizer_shared.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "test_tokenizer_util.h"
#include "tokenizer/tokenizer.h"

namespace oar {
namespace {

using nlohmann::json;
using test::ids_of;
using test::load_json;
using test::stream_decode;
using test::TempDir;
using test::tok_fixture;
using test::valid_utf8;

// Expects `f` to throw oar::Error whose message contains every one of `needles`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
    ADD_FAILURE() << "expected oar::Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Reference ids of the fixtures

struct FixtureCase {
  const char* dir;
  const char* kind;
};

class TokenizerFixture : public ::testing::TestWithParam<FixtureCase> {
 protected:
  void SetUp() override {
    tok_ = load_tokenizer(tok_fixture(GetParam().dir));
    expected_ = load_json(tok_fixture(std::string(GetParam().dir) + "/expected.json"));
  }
  std::unique_ptr<Tokenizer> tok_;
  json expected_;
};

TEST_P(TokenizerFixture, IdsMatchReferenceLibrary) {
  EXPECT_EQ(tok_->kind(), GetParam().kind);
  EXPECT_EQ(tok_->vocab_size(), expected_["vocab_size"].get<int32_t>());
  EXPECT_EQ(tok_->bos_id(), expected_["bos_id"].get<int32_t>());
  ASSERT_GE(expected_["cases"].size(), 40u);
  for (const json& c : expected_["cases"]) {
    std::string text = c["text"];
    EXPECT_EQ(tok_->encode(text, false), ids_of(c["ids"])) << "text: " << c["text"].dump();
    EXPECT_EQ(tok_->encode(text, true), ids_of(c["ids_bos"])) << "text: " << c["text"].dump();
  }
}

TEST_P(TokenizerFixture, DecodeMatchesReferenceLibrary) {
  for (const json& c : expected_["cases"]) {
    EXPECT_EQ(tok_->decode(ids_of(c["ids"])), c["decoded"].get<std::string>()) << "text: " << c["text"].dump();
    EXPECT_EQ(tok_->decode(ids_of(c["ids_bos"])), c["decoded"].get<std::string>()) << "text: " << c["text"].dump();
  }
}

TEST_P(TokenizerFixture, StreamDecoderConcatenationEqualsDecode) {
  for (const json& c : expected_["cases"]) {
    for (const char* key : {"ids", "ids_bos"}) {
      std::vector<int32_t> ids = ids_of(c[key]);
      EXPECT_EQ(stream_decode(*tok_, ids), tok_->decode(ids)) << "text: " << c["text"].dump();
    }
  }
}

TEST_P(TokenizerFixture, TokenBytesOfEveryIdStreamToValidUtf8) {
  // Every id on its own, and all ids in a row: whatever the bytes, chunks are valid UTF-8.
  std::vector<int32_t> all;
  for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
    all.push_back(id);
    std::string d = tok_->decode({id});
    EXPECT_TRUE(valid_utf8(d)) << "decode of id " << id;
  }
  std::string s = stream_decode(*tok_, all);
  EXPECT_TRUE(valid_utf8(s));
  // Out-of-range ids are ignored rather than crashing.
  EXPECT_EQ(tok_->token_bytes(-1), "");
  EXPECT_EQ(tok_->token_bytes(tok_->vocab_size() + 5), "");
  EXPECT_EQ(tok_->decode({-7, tok_->vocab_size()}), "");
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, TokenizerFixture,
                         ::testing::Values(FixtureCase{"spm", "sentencepiece"}, FixtureCase{"bpe", "bpe"},
                                           FixtureCase{"bpe_gpt2", "bpe"}),
                         [](const auto& info) { return std::string(info.param.dir); });

// decode(encode(x)) == x for the tokenizers that do not change text (no prefix space, no special-token text).
TEST(TokenizerRoundTrip, SentencePieceAndLlama3StyleBpe) {
  for (const char* dir : {"spm", "bpe"}) {
    auto tok = load_tokenizer(tok_fixture(dir));
    json expected = load_json(tok_fixture(std::string(dir) + "/expected.json"));
    std::vector<std::string> texts;
    for (const json& c : expected["cases"]) texts.push_back(c["text"]);
    texts.push_back("Multi\nline\r\n\ttext with 1234567 numbers, émojis 🦙🎉 and 中文");
    texts.push_back(std::string("\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD thumbs"));
    for (const std::string& t : texts) {
      if (std::string(dir) == "bpe" && t.find("<|") != std::string::npos) continue;  // specials are dropped
      EXPECT_EQ(tok->decode(tok->encode(t, false)), t) << dir << ": " << json(t).dump();
      EXPECT_EQ(tok->decode(tok->encode(t, true)), t) << dir << ": " << json(t).dump();
    }
  }
}

// PaddleNLP saves Llama's SentencePiece model as sentencepiece.bpe.model: a model directory with only that loads it.
TEST(TokenizerRoundTrip, PaddleNlpSentencePieceFileName) {
  TempDir dir;
  dir.write("sentencepiece.bpe.model", read_file(tok_fixture("spm/tokenizer.model")));
  auto paddle = load_tokenizer(dir.path());
  auto hf = load_tokenizer(tok_fixture("spm"));
  EXPECT_EQ(paddle->vocab_size(), hf->vocab_size());
  EXPECT_EQ(paddle->encode("Hello world, 中文", true), hf->encode("Hello world, 中文", true));
}

// ---------------------------------------------------------------------------------------------------------------
// SentencePiece specifics

TEST(SentencePieceTokenizer, SpecialAndBytePieces) {
  auto tok = load_tokenizer(tok_fixture("spm/tokenizer.model"));
  EXPECT_TRUE(tok->strips_leading_space());
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_TRUE(tok->is_special(2));
  EXPECT_EQ(tok->token_bytes(1), "");
  EXPECT_EQ(tok->token_bytes(1, true), "<s>");
  EXPECT_EQ(tok->id_to_piece(3 + 0x0A), "<0x0A>");
  EXPECT_EQ(tok->token_bytes(3 + 0x0A), "\n");
  EXPECT_EQ(tok->token_bytes(3 + 0xF0), "\xF0");
  // <unk> is a special token as in Hugging Face's tokenizers: skipped when decoding (not the library's " ⁇ ").
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_EQ(tok->token_bytes(0), "");
  EXPECT_EQ(tok->token_bytes(0, true), "<unk>");
  EXPECT_EQ(tok->decode({1, 0, tok->encode("Hi", false)[0]}), tok->decode({tok->encode("Hi", false)[0]}));
  EXPECT_EQ(tok->chat_template(), "");
  // A piece with the visible-space marker: bytes have a plain space.
  auto ids = tok->encode("Hello world", false);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(tok->token_bytes(ids[0])[0], ' ');
}

TEST(SentencePieceTokenizer, InvalidUtf8InputIsRepairedNotRejected) {
  auto tok = load_tokenizer(tok_fixture("spm"));
  EXPECT_EQ(tok->encode("a\xFF" "b", false), tok->encode("a\xEF\xBF\xBD" "b", false));
}

// ---------------------------------------------------------------------------------------------------------------
// StreamDecoder

// Finds the id whose bytes are exactly `bytes` among non-special tokens.
int32_t id_with_bytes(const Tokenizer& tok, const std::string& bytes) {
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    if (!tok.is_special(id) && tok.token_bytes(id) == bytes) return id;
  return -1;
}

TEST(StreamDecoder, EmojiSplitAcrossByteTokensComesOutWhole) {
  for (const char* dir : {"spm", "bpe", "bpe_gpt2"}) {
    auto tok = load_tokenizer(tok_fixture(dir));
    std::string text = "\xF0\x9F\xA6\x99";  // 🦙: several byte tokens in every fixture
    auto ids = tok->encode(text, true);
    ASSERT_GE(ids.size(), 3u) << dir;
    StreamDecoder sd(*tok);
    std::string all;
    for (int32_t id : ids) {
      std::string chunk = sd.push(id);
      EXPECT_TRUE(chunk.empty() || chunk == " " || chunk == text || chunk == " " + text)
          << dir << " chunk " << json(chunk).dump();
      all += chunk;
    }
    all += sd.flush();
    EXPECT_EQ(all, tok->decode(ids)) << dir;
  }
}

TEST(StreamDecoder, InvalidSequencesBecomeReplacementCharacters) {
  auto tok = load_tokenizer(tok_fixture("bpe"));
  int32_t e4 = id_with_bytes(*tok, "\xE4"), b8 = id_with_bytes(*tok, "\xB8"), a = id_with_bytes(*tok, "a");
  int32_t ff = id_with_bytes(*tok, "\xFF");
  ASSERT_GE(e4, 0);
  ASSERT_GE(b8, 0);
  ASSERT_GE(a, 0);
  ASSERT_GE(ff, 0);
  const std::string fffd = "\xEF\xBF\xBD";
  StreamDecoder sd(*tok);
  EXPECT_EQ(sd.push(e4), "");      // could still become 中 (E4 B8 AD)
  EXPECT_EQ(sd.push(b8), "");
  EXPECT_EQ(sd.push(a), fffd + "a");  // E4 B8 then 'a': one U+FFFD for the cut-off sequence
  EXPECT_EQ(sd.push(ff), fffd);       // never valid: out at once
  EXPECT_EQ(sd.push(e4), "");
  EXPECT_EQ(sd.flush(), fffd);
  EXPECT_EQ(tok->decode({e4, b8, a, ff, e4}), fffd + "a" + fffd + fffd);
}

TEST(StreamDecoder, DropsTheFirstLeadingSpaceOnlyForSentencePiece) {
  auto spm = load_tokenizer(tok_fixture("spm"));
  auto ids = spm->encode("Hello world", true);
  EXPECT_EQ(stream_decode(*spm, ids), "Hello world");
  auto bpe = load_tokenizer(tok_fixture("bpe"));
  ids = bpe->encode(" Hello world", true);
  EXPECT_EQ(stream_decode(*bpe, ids), " Hello world");
}

// ---------------------------------------------------------------------------------------------------------------
// tokenizer.json specifics

TEST(BpeTokenizer, Llama3StyleSpecialsAndConfig) {
  auto tok = load_tokenizer(tok_fixture("bpe"));
  json expected = load_json(tok_fixture("bpe/expected.json"));
  int32_t bot = expected["bos_id"], eot = expected["eos_ids"][0], eotext = expected["eos_ids"][1];
  EXPECT_EQ(tok->bos_id(), bot);
  // tokenizer_config.json says <|eot_id|>; <|end_of_text|> is kept as a stop token too.
  std::vector<int32_t> eos = tok->eos_ids();
  ASSERT_GE(eos.size(), 2u);
  EXPECT_EQ(eos[0], eot);
  EXPECT_NE(std::find(eos.begin(), eos.end(), eotext), eos.end());
  EXPECT_TRUE(tok->is_special(bot));
  EXPECT_TRUE(tok->is_special(eot));
  EXPECT_EQ(tok->token_bytes(eot), "");
  EXPECT_EQ(tok->token_bytes(eot, true), "<|eot_id|>");
  EXPECT_EQ(tok->id_to_piece(eot), "<|eot_id|>");
  EXPECT_FALSE(tok->strips_leading_space());
  json cfg = load_json(tok_fixture("bpe/tokenizer_config.json"));
  EXPECT_EQ(tok->chat_template(), cfg["chat_template"].get<std::string>());
  // The special-token text inside a string is one id.
  auto ids = tok->encode("a<|eot_id|>b", false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), eot), ids.end());

  // The file alone (no config): BOS from the template, EOS by name.
  auto bare = load_bpe_json(tok_fixture("bpe/tokenizer.json"));
  EXPECT_EQ(bare->bos_id(), bot);
  EXPECT_EQ(bare->eos_ids(), (std::vector<int32_t>{eotext, eot}));
  EXPECT_EQ(bare->chat_template(), "");
}

// A tokenizer.json small enough to check by hand: all 256 byte characters, "ab", "Ġab" and two merges.
std::string tiny_bpe_json(const json& pre_tokenizer, bool ignore_merges = false) {
  json vocab = json::object();
  int id = 0;
  // The GPT-2 byte-to-character table, written out independently of the library.
  for (int b = 0, extra = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    }
    vocab[s] = id++;
  }
  vocab["ab"] = id++;                 // 256
  vocab["\xC4\xA0" "ab"] = id++;      // 257 "Ġab"
  vocab["\xC4\xA0" "a"] = id++;       // 258 "Ġa"
  json j = {{"version", "1.0"},
            {"added_tokens", json::array({{{"id", 259}, {"content", "<|x|>"}, {"special", true}}})},
            {"normalizer", nullptr},
            {"pre_tokenizer", pre_tokenizer},
            {"post_processor", nullptr},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model",
             {{"type", "BPE"},
              {"vocab", vocab},
              {"ignore_merges", ignore_merges},
              {"merges", json::array({"a b", json::array({"\xC4\xA0", "a"}), json::array({"\xC4\xA0" "a", "b"})})}}}};
  return j.dump();
}

TEST(BpeTokenizer, HandCheckedMergesAndPreTokenization) {
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  auto tok = parse_bpe_json(tiny_bpe_json(byte_level), "tiny.json");
  // Byte b has id b here, so "Ġ" (the space) is 32. "ab" -> [ab]. " ab" -> "Ġab" = [Ġ, a, b]: a+b (rank 0)
  // beats Ġ+a (rank 1), and no merge Ġ+ab exists, so [Ġ, ab] (the rank-2 merge Ġa+b is never reached).
  EXPECT_EQ(tok->encode("ab ab", false), (std::vector<int32_t>{256, 32, 256}));
  EXPECT_EQ(tok->encode("<|x|>ab", false), (std::vector<int32_t>{259, 256}));
  EXPECT_EQ(tok->encode("", false), std::vector<int32_t>{});
  EXPECT_EQ(tok->encode("ba", false), (std::vector<int32_t>{'b', 'a'}));
  EXPECT_EQ(tok->decode({256, 32, 256}), "ab ab");
  EXPECT_EQ(tok->decode({259, 256}), "ab");  // the special token is skipped
  // ignore_merges: a pre-token that is itself in the vocabulary is taken whole.
  auto whole = parse_bpe_json(tiny_bpe_json(byte_level, true), "tiny.json");
  EXPECT_EQ(whole->encode("ab ab", false), (std::vector<int32_t>{256, 257}));
  // add_prefix_space applies to every segment between added tokens, as in tokenizers.
  json prefixed = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  auto pre = parse_bpe_json(tiny_bpe_json(prefixed, true), "tiny.json");
  EXPECT_EQ(pre->encode("ab<|x|>ab", false), (std::vector<int32_t>{257, 259, 257}));
}

std::string fixture_json_with(const std::function<void(json&)>& edit) {
  json j = load_json(tok_fixture("bpe/tokenizer.json"));
  edit(j);
  return j.dump();
}

TEST(BpeTokenizer, UnsupportedFeaturesAreErrorsNamingTheField) {
  auto check = [](const std::function<void(json&)>& edit, std::initializer_list<std::string> needles) {
    std::string text = fixture_json_with(edit);
    expect_error([&] { parse_bpe_json(text, "edited/tokenizer.json"); }, needles);
  };
  check([](json& j) { j["normalizer"] = {{"type", "NFC"}}; }, {"edited/tokenizer.json", "normalizer", "NFC"});
  check([](json& j) { j["model"]["type"] = "WordPiece"; }, {"edited/tokenizer.json", "model.type"});
  check([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {"pre_tokenizer", "Whitespace"});
  check([](json& j) { j["pre_tokenizer"] = nullptr; }, {"pre_tokenizer"});
  check([](json& j) { j["truncation"] = {{"max_length", 8}}; }, {"truncation"});
  check([](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout"});
  check([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, {"decoder"});
  check([](json& j) { j["model"]["merges"].push_back(json::array({"zzq", "qqz"})); }, {"model.merges["});
  check([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; },
        {"pre_tokenizer.pretokenizers[0].pattern.Regex"});
  check([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\bword\\b"; },
        {"word boundary"});
  check(
      [](json& j) {
        j["post_processor"]["processors"][1]["single"].push_back({{"SpecialToken", {{"id", "<|begin_of_text|>"}}}});
      },
      {"post_processor.processors[1].single"});
}

TEST(BpeTokenizer, InvalidJsonAndBadStructureAreErrors) {
  expect_error([] { parse_bpe_json("{\"model\": ", "mem.json"); }, {"mem.json: invalid JSON: "});
  TempDir dir;
  std::string path = dir.write("tokenizer.json", "{ not json");
  expect_error([&] { load_bpe_json(path); }, {path, "invalid JSON"});
  expect_error([&] { load_tokenizer(dir.path()); }, {path, "invalid JSON"});
  for (const char* doc : {"[]", "{}", "null", "{\"model\": null}", "{\"model\": {\"vocab\": [], \"merges\": []}}",
                          "{\"model\": {\"vocab\": {\"a\": -1}, \"merges\": []}}",
                          "{\"model\": {\"vocab\": {\"a\": 99999999}, \"merges\": []}}",
                          "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}",
                          "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a\"]}}",
                          "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": \"x\"}]}",
                          "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": 5}}"}) {
    expect_error([&] { parse_bpe_json(doc, "doc.json"); }, {"doc.json"});
  }
}

TEST(BpeTokenizer, SafeOnHostileText) {
  auto tok = load_tokenizer(tok_fixture("bpe"));
  std::string junk;
  for (int i = 0; i < 4096; ++i) junk += char((i * 7919) & 0xFF);
  auto ids = tok->encode(junk, true);
  EXPECT_FALSE(ids.empty());
  EXPECT_TRUE(valid_utf8(tok->decode(ids)));
  // A long run of one character (one pre-token) and a long whitespace run.
  std::string a(200000, 'a'), sp(200000, ' ');
  EXPECT_EQ(tok->decode(tok->encode(a, false)), a);
  EXPECT_EQ(tok->decode(tok->encode(sp + "x", false)), sp + "x");
  // Invalid UTF-8 is repaired to U+FFFD before pre-tokenization.
  EXPECT_EQ(tok->encode("a\xC3(b", false), tok->encode("a\xEF\xBF\xBD(b", false));
}

// ---------------------------------------------------------------------------------------------------------------
// llama2.c tokenizer.bin, built here so that every rule can be checked by hand

struct BinPiece {
  std::string text;
  float score;
};

std::string llama2c_bin(const std::vector<BinPiece>& extra) {
  std::vector<BinPiece> pieces = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    pieces.push_back({name, 0});
  }
  pieces.insert(pieces.end(), extra.begin(), extra.end());
  std::string out;
  auto put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  int32_t max_len = 8;
  put(&max_len, 4);
  for (const BinPiece& p : pieces) {
    int32_t len = int32_t(p.text.size());
    put(&p.score, 4);
    put(&len, 4);
    put(p.text.data(), p.text.size());
  }
  return out;
}

const std::vector<BinPiece> kExtra = {
    {" ", -1}, {"a", -1}, {"b", -1}, {"ab", 5}, {" a", 3}, {" ab", 10}, {"c", -1}, {"cc", 2}, {"\xC3\xA9", -1}};
// ids:     259       260      261      262        263       264         265       266        267 (é)

TEST(Llama2cTokenizer, EncodesLikeRunC) {
  TempDir dir;
  std::string path = dir.write("tokenizer.bin", llama2c_bin(kExtra));
  auto tok = load_llama2c_tokenizer(path, 259 + int32_t(kExtra.size()));
  EXPECT_EQ(tok->kind(), "llama2c");
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
  EXPECT_TRUE(tok->strips_leading_space());
  using V = std::vector<int32_t>;
  EXPECT_EQ(tok->encode("", true), V{1});
  EXPECT_EQ(tok->encode("", false), V{});
  EXPECT_EQ(tok->encode("ab", true), (V{1, 264}));         // " "+"a"+"b" -> " " "ab" -> " ab"
  EXPECT_EQ(tok->encode("ba", false), (V{259, 261, 260}));  // nothing merges
  EXPECT_EQ(tok->encode("aab", false), (V{263, 262}));      // ab (5) first, then " a" (3)
  EXPECT_EQ(tok->encode("ccc", false), (V{259, 266, 265}));  // a tie: the leftmost pair merges
  EXPECT_EQ(tok->encode("\xC3\xA9x", false), (V{259, 267, 'x' + 3}));  // known code point; unknown -> byte + 3
  EXPECT_EQ(tok->encode("\xE4\xB8\xAD", false), (V{259, 0xE4 + 3, 0xB8 + 3, 0xAD + 3}));
  // Decoding: "<0xNN>" is the byte; the first piece (after BOS) loses its leading space.
  EXPECT_EQ(tok->decode({1, 264, 263}), "ab a");
  EXPECT_EQ(tok->decode({1, 259, 0xE4 + 3, 0xB8 + 3, 0xAD + 3}), "\xE4\xB8\xAD");
  EXPECT_EQ(tok->token_bytes(0x0A + 3), "\n");
  EXPECT_EQ(tok->token_bytes(1), "");
  EXPECT_EQ(tok->token_bytes(1, true), "\n<s>\n");
  EXPECT_EQ(stream_decode(*tok, {1, 264, 263, 259, 0xE4 + 3, 0xB8 + 3, 0xAD + 3, 2}), "ab a \xE4\xB8\xAD");
  // vocab_size 0: read to the end of the file (what load_tokenizer does).
  auto whole = load_tokenizer(dir.path());
  EXPECT_EQ(whole->vocab_size(), 259 + int32_t(kExtra.size()));
  EXPECT_EQ(whole->encode("aab", true), (V{1, 263, 262}));
}

TEST(Llama2cTokenizer, TruncatedOrCorruptFilesAreErrorsNamingTheFile) {
  TempDir dir;
  std::string full = llama2c_bin(kExtra);
  for (size_t cut : {size_t(0), size_t(2), size_t(4 + 3), full.size() - 1, full.size() - 9}) {
    std::string path = dir.write("cut" + std::to_string(cut) + ".bin", full.substr(0, cut));
    expect_error([&] { load_llama2c_tokenizer(path, 0); }, {path});
    expect_error([&] { load_tokenizer(path); }, {path});
  }
  // Fewer tokens in the file than the model's vocab_size.
  std::string path = dir.write("short.bin", full);
  expect_error([&] { load_llama2c_tokenizer(path, 1000); }, {path, "truncated"});
  // A negative length.
  std::string bad = full;
  int32_t neg = -5;
  std::memcpy(&bad[4 + 4], &neg, 4);
  path = dir.write("neg.bin", bad);
  expect_error([&] { load_llama2c_tokenizer(path, 0); }, {path, "length"});
}

// ---------------------------------------------------------------------------------------------------------------
// load_tokenizer: which file, configs, errors

TEST(LoadTokenizer, MissingOrBrokenFilesAreErrorsNamingThem) {
  TempDir dir;
  expect_error([&] { load_tokenizer(dir.path()); }, {dir.path(), "no tokenizer.json, tokenizer.model"});
  expect_error([&] { load_tokenizer(dir.file("nope")); }, {dir.file("nope")});
  expect_error([&] { load_sentencepiece(dir.file("tokenizer.model")); }, {dir.file("tokenizer.model")});
  expect_error([&] { load_bpe_json(dir.file("tokenizer.json")); }, {dir.file("tokenizer.json")});
  expect_error([&] { load_llama2c_tokenizer(dir.file("tokenizer.bin"), 0); }, {dir.file("tokenizer.bin")});
  std::string garbage = dir.write("tokenizer.model", "this is not a protobuf \x01\x02\x03");
  expect_error([&] { load_tokenizer(dir.path()); }, {garbage});
  std::string other = dir.write("vocab.txt", "a\nb\n");
  expect_error([&] { load_tokenizer(other); }, {other});
}

TEST(LoadTokenizer, PrefersTokenizerJsonAndFallsBackToModelWhenUnsupported) {
  std::string model = test::slurp(tok_fixture("spm/tokenizer.model"));
  std::string good_json = test::slurp(tok_fixture("bpe/tokenizer.json"));
  {
    TempDir dir;
    dir.write("tokenizer.model", model);
    dir.write("tokenizer.json", good_json);
    EXPECT_EQ(load_tokenizer(dir.path())->kind(), "bpe");
  }
  {
    // Llama-2 HF folders: a tokenizer.json we do not implement next to tokenizer.model.
    TempDir dir;
    dir.write("tokenizer.model", model);
    dir.write("tokenizer.json", fixture_json_with([](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }));
    EXPECT_EQ(load_tokenizer(dir.path())->kind(), "sentencepiece");
    std::filesystem::remove(dir.file("tokenizer.model"));
    expect_error([&] { load_tokenizer(dir.path()); }, {"normalizer"});
  }
}

TEST(LoadTokenizer, ConfigFilesOverrideSpecialTokens) {
  TempDir dir;
  dir.write("tokenizer.model", test::slurp(tok_fixture("spm/tokenizer.model")));
  dir.write("tokenizer_config.json",
            R"({"bos_token": "</s>", "eos_token": {"content": "<s>", "__type": "AddedToken"},
                "pad_token": "<unk>", "chat_template": "{{ messages }}", "unknown_key": [1, 2]})");
  auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->bos_id(), 2);
  EXPECT_EQ(tok->eos_ids(), (std::vector<int32_t>{1, 2}));  // configured first, the model's own kept
  EXPECT_EQ(tok->pad_id(), 0);
  EXPECT_EQ(tok->chat_template(), "{{ messages }}");
  // special_tokens_map.json wins over tokenizer_config.json (as in transformers); names not in the
  // vocabulary are ignored; generation_config.json adds stop ids.
  dir.write("special_tokens_map.json", R"({"bos_token": "<unk>", "eos_token": "<not-a-token>"})");
  dir.write("generation_config.json", R"({"eos_token_id": [2, 7]})");
  tok = load_tokenizer(dir.path() + "/tokenizer.model");  // a file path reads its directory's configs too
  EXPECT_EQ(tok->bos_id(), 0);
  EXPECT_EQ(tok->eos_ids(), (std::vector<int32_t>{2, 7}));  // "<not-a-token>" replaced "<s>", then was dropped
  // A list of named templates (newer tokenizer_config.json): the "default" one.
  dir.write("tokenizer_config.json",
            R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  EXPECT_EQ(load_tokenizer(dir.path())->chat_template(), "D");
  // Broken JSON in a config file is an error naming it.
  std::string cfg = dir.write("tokenizer_config.json", "{");
  expect_error([&] { load_tokenizer(dir.path()); }, {cfg, "invalid JSON"});
}

}  // namespace
}  // namespace oar
