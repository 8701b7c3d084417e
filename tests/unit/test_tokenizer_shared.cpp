// Tokenizer tests against the real Llama tokenizers in ../shared/data (skipped when that directory is absent):
// Llama-3 tokenizer.json vs ids from HF tokenizers (tests/fixtures/tokenizers/shared_expected.json), Llama-2 and
// tok512 tokenizer.model vs Python sentencepiece (shared/data/tokenizer_cases/spm_cases.jsonl), and llama2.c's
// tokenizer.bin files vs the same cases and run.c's outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <tuple>

#include "test_tokenizer_util.h"
#include "io/gguf.h"
#include "tokenizer/tokenizer.h"

namespace oar {
namespace {

using nlohmann::json;
using test::ids_of;
using test::load_json;
using test::shared_data;
using test::stream_decode;
using test::tok_fixture;

// Text that spells out "<s>", "</s>" or "<unk>": encoded as those tokens (Hugging Face's rule), not as text.
bool spells_special(const std::string& text) {
  for (const char* s : {"<s>", "</s>", "<unk>"})
    if (text.find(s) != std::string::npos) return true;
  return false;
}

#define REQUIRE_SHARED(rel)                                                                              \
  do {                                                                                                   \
    if (!std::filesystem::exists(shared_data(rel)))                                                      \
      GTEST_SKIP() << "shared test data not found: " << shared_data(rel)                                 \
                   << " (the ../shared/data directory next to the repository is absent)";                \
  } while (0)

std::vector<json> spm_cases(const std::string& model) {
  std::vector<json> out;
  std::string text = test::slurp(shared_data("tokenizer_cases/spm_cases.jsonl"));
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    if (nl > pos) {
      json j = json::parse(text.substr(pos, nl - pos));
      if (j["model"] == model) out.push_back(j);
    }
    pos = nl + 1;
  }
  return out;
}

uint64_t fnv1a64_int32le(const std::vector<int32_t>& ids) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    auto u = uint32_t(id);
    for (int k = 0; k < 4; ++k) {
      h ^= (u >> (8 * k)) & 0xFF;
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

TEST(SharedLlama3, IdsMatchHuggingFaceTokenizers) {
  REQUIRE_SHARED("llama3_tokenizer/tokenizer.json");
  auto tok = load_tokenizer(shared_data("llama3_tokenizer"));
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->vocab_size(), 128256);
  EXPECT_EQ(tok->bos_id(), 128000);
  std::vector<int32_t> eos = tok->eos_ids();
  EXPECT_EQ(eos[0], 128001);  // tokenizer_config.json's eos_token
  EXPECT_NE(std::find(eos.begin(), eos.end(), 128009), eos.end());  // <|eot_id|>
  EXPECT_NE(tok->chat_template().find("<|start_header_id|>"), std::string::npos);
  json expected = load_json(tok_fixture("shared_expected.json"));
  ASSERT_GE(expected["llama3"].size(), 40u);
  for (const json& c : expected["llama3"]) {
    std::string text = c["text"];
    std::vector<int32_t> ids = ids_of(c["ids"]);
    EXPECT_EQ(tok->encode(text, false), ids) << "text: " << c["text"].dump();
    std::vector<int32_t> with_bos = tok->encode(text, true);
    ASSERT_FALSE(with_bos.empty());
    EXPECT_EQ(with_bos[0], 128000);
    EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>()) << "text: " << c["text"].dump();
    EXPECT_EQ(stream_decode(*tok, with_bos), tok->decode(ids));
  }
}

TEST(SharedLlama3, TinyShakespeareIdsAndSpeed) {
  REQUIRE_SHARED("llama3_tokenizer/tokenizer.json");
  REQUIRE_SHARED("text/tinyshakespeare/input.txt");
  auto tok = load_tokenizer(shared_data("llama3_tokenizer"));
  std::string text = test::slurp(shared_data("text/tinyshakespeare/input.txt"));
  json ref = load_json(tok_fixture("shared_expected.json"))["llama3_tinyshakespeare"];
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> ids = tok->encode(text, false);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("llama3 encode of %zu bytes: %zu ids in %.3f s\n", text.size(), ids.size(), secs);
  EXPECT_EQ(ids.size(), ref["count"].get<size_t>());
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(fnv1a64_int32le(ids)));
  EXPECT_EQ(std::string(hex), ref["fnv1a64_int32le"].get<std::string>());
  EXPECT_EQ(tok->decode(ids), text);
#if !defined(OAR_SANITIZE) && defined(NDEBUG)
  EXPECT_LT(secs, 5.0) << "encoding 1 MB should take well under a second or two";
#endif
}

TEST(SharedLlama2, SentencePieceMatchesSpmCases) {
  REQUIRE_SHARED("tokenizer_cases/spm_cases.jsonl");
  REQUIRE_SHARED("llama2_tokenizer/tokenizer.model");
  REQUIRE_SHARED("stories260K/tok512.model");
  for (auto [model, path] : {std::pair<std::string, std::string>{"llama2", "llama2_tokenizer/tokenizer.model"},
                             {"tok512", "stories260K/tok512.model"}}) {
    auto tok = load_tokenizer(shared_data(path));
    EXPECT_EQ(tok->kind(), "sentencepiece");
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
    EXPECT_TRUE(tok->strips_leading_space());
    std::vector<json> cases = spm_cases(model);
    ASSERT_GE(cases.size(), 40u) << model;
    for (const json& c : cases) {
      std::string text = c["text"];
      std::vector<int32_t> ids = ids_of(c["ids"]);
      if (spells_special(text)) {
        // Python sentencepiece spells "<s>" out; oar follows Hugging Face's LlamaTokenizerFast (the token itself).
        EXPECT_EQ(tok->encode(text, false), std::vector<int32_t>{text == "<s>" ? 1 : 2}) << model << ": " << text;
        continue;
      }
      EXPECT_EQ(tok->encode(text, false), ids) << model << ": " << c["text"].dump();
      std::vector<int32_t> with_bos = ids;
      with_bos.insert(with_bos.begin(), 1);
      EXPECT_EQ(tok->encode(text, true), with_bos) << model << ": " << c["text"].dump();
      EXPECT_EQ(tok->decode(ids), c["decoded"].get<std::string>()) << model << ": " << c["text"].dump();
      EXPECT_EQ(stream_decode(*tok, with_bos), c["decoded"].get<std::string>()) << model << ": " << c["text"].dump();
      for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(tok->id_to_piece(ids[i]), c["pieces"][i].get<std::string>());
    }
  }
}

TEST(SharedLlama2, SentencePieceMatchesSharedExpected) {
  REQUIRE_SHARED("llama2_tokenizer/tokenizer.model");
  auto tok = load_tokenizer(shared_data("llama2_tokenizer"));
  EXPECT_EQ(tok->kind(), "sentencepiece");  // tokenizer.model is preferred over tokenizer.bin
  json expected = load_json(tok_fixture("shared_expected.json"));
  for (const json& c : expected["llama2"]) {
    EXPECT_EQ(tok->encode(c["text"].get<std::string>(), false), ids_of(c["ids"])) << c["text"].dump();
    EXPECT_EQ(tok->decode(ids_of(c["ids"])), c["decoded"].get<std::string>()) << c["text"].dump();
  }
}

// llama2.c's encoder is not SentencePiece, but for Llama-2 it gives the same ids on every case, and for tok512 on
// every case that SentencePiece does not whitespace-normalise (tok512 has remove_extra_whitespaces; run.c never
// collapses spaces): those are the cases whose `roundtrip` is true.
TEST(SharedLlama2c, TokenizerBinMatchesSentencePieceCases) {
  REQUIRE_SHARED("tokenizer_cases/spm_cases.jsonl");
  REQUIRE_SHARED("llama2_tokenizer/tokenizer.bin");
  REQUIRE_SHARED("stories260K/tok512.bin");
  using Case = std::tuple<std::string, std::string, int32_t>;
  for (auto [model, path, vocab] :
       {Case{"llama2", "llama2_tokenizer/tokenizer.bin", 32000}, Case{"tok512", "stories260K/tok512.bin", 512}}) {
    auto tok = load_llama2c_tokenizer(shared_data(path), vocab);
    EXPECT_EQ(tok->vocab_size(), vocab);
    EXPECT_EQ(load_tokenizer(shared_data(path))->vocab_size(), vocab);  // to the end of the file
    size_t checked = 0;
    for (const json& c : spm_cases(model)) {
      if (!c["roundtrip"].get<bool>() || spells_special(c["text"])) continue;  // the latter: as SharedLlama2
      std::string text = c["text"];
      std::vector<int32_t> ids = ids_of(c["ids"]);
      EXPECT_EQ(tok->encode(text, false), ids) << model << ": " << c["text"].dump();
      EXPECT_EQ(tok->decode(ids), text) << model << ": " << c["text"].dump();
      std::vector<int32_t> with_bos = tok->encode(text, true);
      EXPECT_EQ(stream_decode(*tok, with_bos), text) << model << ": " << c["text"].dump();
      ++checked;
    }
    EXPECT_GE(checked, 33u) << model;
  }
}

// A GGUF file's embedded Llama-2 vocabulary (tokenizer.ggml.*, "\u2581" for spaces, token types) encodes as
// Llama-2's tokenizer.model does on the same cases as tokenizer.bin.
TEST(SharedGguf, EmbeddedVocabularyMatchesSentencePieceCases) {
  REQUIRE_SHARED("tokenizer_cases/spm_cases.jsonl");
  REQUIRE_SHARED("tiny_random_llama2_gguf/llama-2-tiny-random.gguf");
  const std::string path = shared_data("tiny_random_llama2_gguf/llama-2-tiny-random.gguf");
  auto tok = make_spm_vocab_tokenizer(gguf_spm_vocab(GgufFile::open(path).header, path), path);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_TRUE(tok->is_special(2));
  EXPECT_EQ(tok->encode("<s>", false), std::vector<int32_t>{1});
  size_t checked = 0;
  for (const json& c : spm_cases("llama2")) {
    if (!c["roundtrip"].get<bool>() || spells_special(c["text"])) continue;
    const std::string text = c["text"];
    const std::vector<int32_t> ids = ids_of(c["ids"]);
    EXPECT_EQ(tok->encode(text, false), ids) << c["text"].dump();
    EXPECT_EQ(tok->decode(ids), text) << c["text"].dump();
    ++checked;
  }
  EXPECT_GE(checked, 33u);
}

TEST(SharedLlama2c, Tok512MatchesRunCOutputs) {
  REQUIRE_SHARED("stories260K/tok512.bin");
  REQUIRE_SHARED("stories260K/reference/reference_numpy.json");
  auto tok = load_llama2c_tokenizer(shared_data("stories260K/tok512.bin"), 512);
  json ref = load_json(shared_data("stories260K/reference/reference_numpy.json"));
  // run.c's encoding of a prompt (BOS, no EOS).
  const json& ce = ref["cross_entropy"];
  EXPECT_EQ(tok->encode(ce["text"].get<std::string>(), true), ids_of(ce["ids_with_bos"]));
  EXPECT_EQ(tok->encode("Once upon a time", true), (std::vector<int32_t>{1, 403, 407, 261, 378}));
  // run.c's printed text for the greedy ids (the file ends with the "\n" run.c prints after generating).
  std::string printed = test::slurp(shared_data("stories260K/reference/greedy_noprompt_n256.txt"));
  ASSERT_FALSE(printed.empty());
  printed.pop_back();
  std::vector<int32_t> ids = ids_of(ref["greedy"]["ids"]);
  EXPECT_EQ(tok->decode(ids), printed);
  EXPECT_EQ(stream_decode(*tok, ids), printed);
}

}  // namespace
}  // namespace oar
