// Fine-tuning data with PaddleNLP's rules, pinned one by one with the small SentencePiece fixture
// (tests/fixtures/tokenizers/spm: vocab 700, BOS 1, EOS 2): reading src/tgt JSON lines, sources cut keeping
// their start, with BOS (tests/fixtures/tokenizers/paddlenlp_expected.json: what paddlenlp 2.8.1 gives), special-token
// text as PaddleNLP's tokenizer reads it, right-truncated targets, EOS only when there is room, labels, the shift, and chat-template rounds.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/fs.h"
#include "data/sft_chat.h"
#include "data/sft_dataset.h"
#include "test_data_util.h"

using namespace oar;
using namespace oar::test;

namespace {

// From tests/fixtures/tokenizers/spm/expected.json (sentencepiece's own ids, no BOS).
const std::vector<int32_t> kHello = {441, 472, 576, 543, 291};  // "Hello world"
const std::vector<int32_t> kOnce = {535, 580, 286, 321, 591, 275, 279, 519, 308, 605, 281, 371, 477, 582,
                                    279, 272, 305, 577, 287, 289, 385, 581, 284, 392, 585, 393, 466, 595};
const char* kOnceText = "Once upon a time, there was a little girl named Lily.";
constexpr int32_t BOS = 1, EOS = 2, X = -100;

SftRecord rec(std::vector<std::string> src, std::vector<std::string> tgt) {
  SftRecord r;
  r.src = std::move(src);
  r.tgt = std::move(tgt);
  r.where = "test";
  return r;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
std::vector<int32_t> rep(int32_t v, size_t n) { return std::vector<int32_t>(n, v); }
std::vector<int32_t> head(const std::vector<int32_t>& v, size_t n) { return {v.begin(), v.begin() + long(n)}; }
std::vector<int32_t> tail(const std::vector<int32_t>& v, size_t n) { return {v.end() - long(n), v.end()}; }

// ids / labels before the shift -> the example PaddleNLP yields.
SftExample shifted(const std::vector<int32_t>& ids, const std::vector<int32_t>& labels) {
  return SftExample{head(ids, ids.size() - 1), tail(labels, labels.size() - 1)};
}

void expect_example(const SftExample& got, const SftExample& want) {
  EXPECT_EQ(got.input_ids, want.input_ids);
  EXPECT_EQ(got.labels, want.labels);
}

}  // namespace

TEST(SftTokenize, FixtureIdsAreWhatTheRulesAssume) {
  TextEncoder enc(spm());
  ASSERT_EQ(spm().bos_id(), BOS);
  ASSERT_EQ(spm().eos_ids().front(), EOS);
  EXPECT_EQ(enc.encode("Hello world", false), kHello);
  EXPECT_EQ(enc.encode(kOnceText, false), kOnce);
  EXPECT_EQ(enc.encode("Hello world", true), cat({{BOS}, kHello}));
}

TEST(SftTokenize, SourceWithBosTargetWithEosLabelsOnTarget) {
  TextEncoder enc(spm());
  SftOptions opt;  // src_length 1024, max_length 2048: nothing is cut
  const SftRecord r = rec({"Hello world"}, {kOnceText});
  const auto src = cat({{BOS}, kHello});
  const auto tgt = cat({kOnce, {EOS}});
  expect_example(tokenize_sft_example(enc, r, opt), shifted(cat({src, tgt}), cat({rep(X, src.size()), tgt})));
  // The shift in the data: labels[t] is input_ids[t + 1] wherever it is learned.
  SftExample ex = tokenize_sft_example(enc, r, opt);
  ASSERT_EQ(ex.input_ids.size(), ex.labels.size());
  for (size_t t = 0; t + 1 < ex.input_ids.size(); t++) {
    if (ex.labels[t] != X) {
      EXPECT_EQ(ex.labels[t], ex.input_ids[t + 1]);
    }
  }
  EXPECT_EQ(ex.labels.back(), EOS);
  EXPECT_EQ(std::count(ex.labels.begin(), ex.labels.end(), X), long(src.size()) - 1);
}

TEST(SftTokenize, SourceTruncatedKeepingItsStartAndBos) {
  TextEncoder enc(spm());
  SftOptions opt;
  opt.src_length = 4;  // BOS + the first 3 tokens of the source (released PaddleNLP keeps the start)
  const auto src = cat({{BOS}, head(kHello, 3)});
  const auto tgt = cat({kOnce, {EOS}});
  expect_example(tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt),
                 shifted(cat({src, tgt}), cat({rep(X, 4), tgt})));
  opt.src_length = 1;  // room for BOS only: PaddleNLP's tokenizer gives up and cuts nothing (fixture: paddlenlp_expected)
  SftExample ex = tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt);
  EXPECT_EQ(ex.input_ids.front(), BOS);
  EXPECT_EQ(head(std::vector<int32_t>(ex.input_ids.begin() + 1, ex.input_ids.end()), kHello.size()), kHello);
  EXPECT_EQ(ex.input_ids[1 + kHello.size()], kOnce[0]);
}

TEST(SftTokenize, TargetTruncatedFromTheRightWithoutEos) {
  TextEncoder enc(spm());
  SftOptions opt;
  opt.max_length = 20;  // source 6 tokens -> target limit 14 -> cut, no EOS
  const auto src = cat({{BOS}, kHello});
  const auto tgt = head(kOnce, 14);
  SftExample ex = tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt);
  expect_example(ex, shifted(cat({src, tgt}), cat({rep(X, 6), tgt})));
  EXPECT_EQ(ex.size(), opt.max_length - 1);
  EXPECT_NE(ex.labels.back(), EOS);
}

TEST(SftTokenize, EosOnlyWhenThereIsRoomForIt) {
  TextEncoder enc(spm());
  SftOptions opt;
  const size_t src_len = 6;
  opt.max_length = int64_t(src_len + kOnce.size());  // the target fits exactly: not cut, but no room for EOS
  SftExample exact = tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt);
  EXPECT_EQ(exact.labels.back(), kOnce.back());
  opt.max_length += 1;  // one more: EOS appended
  SftExample room = tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt);
  EXPECT_EQ(room.labels.back(), EOS);
  EXPECT_EQ(room.size(), exact.size() + 1);
  // A source that uses the whole budget leaves an empty target (no EOS either).
  opt.max_length = 6;
  SftExample none = tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt);
  EXPECT_EQ(none.input_ids, head(cat({{BOS}, kHello}), 5));
  EXPECT_EQ(none.labels, rep(X, 5));
}

TEST(SftTokenize, OnlyTheFirstTurnWithoutTemplate) {
  TextEncoder enc(spm());
  SftOptions opt;
  SftExample a = tokenize_sft_example(enc, rec({"Hello world", "ignored"}, {kOnceText, "ignored too"}), opt);
  SftExample b = tokenize_sft_example(enc, rec({"Hello world"}, {kOnceText}), opt);
  expect_example(a, b);
}

TEST(SftTokenize, PromptForGenerationIsUnshifted) {
  TextEncoder enc(spm());
  SftOptions opt;
  opt.src_length = 4;
  SftPrompt p = tokenize_sft_prompt(enc, rec({"Hello world"}, {kOnceText}), opt);
  EXPECT_EQ(p.input_ids, cat({{BOS}, head(kHello, 3)}));
  EXPECT_EQ(p.target_ids, cat({kOnce, {EOS}}));
}

TEST(SftTokenize, SpecialTokenTextBecomesItsId) {
  // "</s>" written in the data is the EOS token, as PaddleNLP's tokenizer (which never splits special tokens).
  TextEncoder enc(spm());
  EXPECT_EQ(enc.encode("Hello world</s>Hello world", false), cat({kHello, {EOS}, kHello}));
  EXPECT_EQ(enc.encode("<s>", false), (std::vector<int32_t>{BOS}));
}

namespace {

const nlohmann::json& paddlenlp_expected() {
  static const nlohmann::json j = load_json_file(std::string(OAR_FIXTURES_DIR) + "/tokenizers/paddlenlp_expected.json");
  return j;
}

// The fixture tokenizer ("spm") and, when ../shared/data has it, the real Llama-2 tokenizer.model ("llama2").
std::vector<std::pair<std::string, std::unique_ptr<Tokenizer>>> paddlenlp_tokenizers() {
  std::vector<std::pair<std::string, std::unique_ptr<Tokenizer>>> out;
  out.emplace_back("spm", load_tokenizer(std::string(OAR_FIXTURES_DIR) + "/tokenizers/spm/tokenizer.model"));
  const std::string l2 = std::string(OAR_SHARED_DATA_DIR) + "/llama2_tokenizer/tokenizer.model";
  if (file_exists(l2) && paddlenlp_expected().contains("llama2")) out.emplace_back("llama2", load_tokenizer(l2));
  // llama2.c's export of the same vocabulary follows the same rule.
  const std::string l2bin = std::string(OAR_SHARED_DATA_DIR) + "/llama2_tokenizer/tokenizer.bin";
  if (file_exists(l2bin) && paddlenlp_expected().contains("llama2")) out.emplace_back("llama2", load_tokenizer(l2bin));
  return out;
}

}  // namespace

TEST(SftTokenize, LongSourceKeepsItsStartAsPaddleNlp) {
  // paddlenlp 2.8.1's tokenizer(src, max_length=src_length, truncation=True, truncation_side="left") keeps the
  // start: the fixture holds its ids for several src_length values.
  for (const auto& [name, tok] : paddlenlp_tokenizers()) {
    TextEncoder enc(*tok, SpecialTextRule::PaddleNLP);
    size_t cut = 0;
    for (const auto& c : paddlenlp_expected()[name]["truncation"]) {
      SftOptions opt;
      opt.src_length = c["src_length"].get<int64_t>();
      const auto want_src = c["src_ids"].get<std::vector<int32_t>>();
      opt.max_length = int64_t(want_src.size()) + 8;  // src_length 1 keeps the whole source (the tokenizer gives up)
      const SftRecord r = rec({c["text"].get<std::string>()}, {"Hello world"});
      EXPECT_EQ(tokenize_sft_prompt(enc, r, opt).input_ids, want_src) << name << " src_length " << opt.src_length;
      const SftExample ex = tokenize_sft_example(enc, r, opt);
      ASSERT_GT(ex.input_ids.size(), want_src.size());
      EXPECT_EQ(head(ex.input_ids, want_src.size()), want_src) << name << " src_length " << opt.src_length;
      cut += enc.encode(c["text"].get<std::string>(), true).size() > want_src.size();
    }
    EXPECT_GE(cut, 3u) << name << ": the cases must cut the source";
  }
}

TEST(SftTokenize, SpecialTokenTextAsPaddleNlpReadsIt) {
  // PaddleNLP's LlamaTokenizer makes "<unk>", "<s>", "</s>" in the text the tokens and drops the whitespace around
  // them; Hugging Face's fast tokenizer (Tokenizer::encode, serve and predict) keeps it.
  for (const auto& [name, tok] : paddlenlp_tokenizers()) {
    TextEncoder pd(*tok, SpecialTextRule::PaddleNLP), hf(*tok);
    size_t differ = 0;
    for (const auto& c : paddlenlp_expected()[name]["specials"]) {
      const std::string text = c["text"].get<std::string>();
      EXPECT_EQ(pd.encode(text, false), c["ids"].get<std::vector<int32_t>>()) << name << ": " << c["text"].dump();
      EXPECT_EQ(pd.encode(text, true), c["ids_bos"].get<std::vector<int32_t>>()) << name << ": " << c["text"].dump();
      EXPECT_EQ(hf.encode(text, false), tok->encode(text, false));
      differ += hf.encode(text, false) != pd.encode(text, false);
    }
    EXPECT_GE(differ, 5u) << name << ": the cases must tell the two rules apart";
  }
  // Without special-token text the two rules agree.
  EXPECT_EQ(TextEncoder(spm(), SpecialTextRule::PaddleNLP).encode(kOnceText, false), kOnce);
}

TEST(SftRead, FineTuningDataReadsSpecialTokenTextAsPaddleNlp) {
  DataTempDir dir;
  write_text(dir.file("train.json"), R"({"src": "a <unk> b", "tgt": "Hi <s> there </s> again"})" "\n");
  auto ids_of = [](const std::string& text) {
    for (const auto& c : paddlenlp_expected()["spm"]["specials"])
      if (c["text"] == text) return c["ids"].get<std::vector<int32_t>>();
    ADD_FAILURE() << text << " not in the fixture";
    return std::vector<int32_t>{};
  };
  const auto ex = load_sft_examples(dir.path(), "train", spm(), SftOptions());
  ASSERT_EQ(ex.size(), 1u);
  const auto src = cat({{BOS}, ids_of("a <unk> b")});
  const auto tgt = cat({ids_of("Hi <s> there </s> again"), {EOS}});
  expect_example(ex[0], shifted(cat({src, tgt}), cat({rep(X, src.size()), tgt})));
}

// ---- chat templates ----

namespace {

// A Llama-2-like template in the ChatRenderer form: "[INST] user [/INST]" then "answer</s>".
ChatSegments llama2_like(const std::vector<std::pair<std::string, std::string>>& conv, const nlohmann::json& ctx) {
  ChatSegments s;
  s.system = ctx.value("system", std::string());
  for (const auto& [u, a] : conv) s.rounds.emplace_back("[INST] " + u + " [/INST]", " " + a + "</s>");
  return s;
}

struct Rounds {
  std::vector<int32_t> system;
  std::vector<std::vector<int32_t>> user, bot;
};

Rounds encode_rounds(const TextEncoder& enc, const SftRecord& r) {
  Rounds out;
  std::vector<std::pair<std::string, std::string>> conv;
  for (size_t i = 0; i < r.src.size(); i++) conv.emplace_back(r.src[i], r.tgt[i]);
  ChatSegments s = llama2_like(conv, r.context);
  if (!s.system.empty()) out.system = enc.encode(s.system, false);
  for (const auto& [u, b] : s.rounds) {
    out.user.push_back(enc.encode(u, false));
    out.bot.push_back(enc.encode(b, false));
  }
  return out;
}

}  // namespace

TEST(SftChat, LabelsOnEveryAnswer) {
  TextEncoder enc(spm());
  SftOptions opt;
  opt.chat = llama2_like;
  SftRecord r = rec({"Hello world", "And then?", "Bye"}, {kOnceText, "The end.", "Bye bye"});
  r.context = {{"system", "Be brief."}};
  const Rounds x = encode_rounds(enc, r);
  ASSERT_EQ(x.bot[0].back(), EOS);  // "</s>" in the answer text is the EOS id
  std::vector<int32_t> ids = x.system, labels = rep(X, x.system.size());
  for (size_t i = 0; i < 3; i++) {
    ids = cat({ids, x.user[i], x.bot[i]});
    labels = cat({labels, rep(X, x.user[i].size()), x.bot[i]});
  }
  expect_example(tokenize_sft_example(enc, r, opt), shifted(ids, labels));
}

TEST(SftChat, OldestRoundsDroppedFirstNewestKept) {
  TextEncoder enc(spm());
  SftRecord r = rec({"Hello world", "And then?", "Bye"}, {kOnceText, "The end.", "Bye bye"});
  r.context = {{"system", "Be brief."}};
  const Rounds x = encode_rounds(enc, r);
  const size_t r1 = x.user[1].size() + x.bot[1].size(), r2 = x.user[2].size() + x.bot[2].size();
  SftOptions opt;
  opt.chat = llama2_like;
  // Room for the system and the last two rounds, not the first (which is the longest).
  opt.max_length = int64_t(x.system.size() + r1 + r2 + 1);
  const auto ids = cat({x.system, x.user[1], x.bot[1], x.user[2], x.bot[2]});
  const auto labels = cat({rep(X, x.system.size()), rep(X, x.user[1].size()), x.bot[1], rep(X, x.user[2].size()),
                           x.bot[2]});
  expect_example(tokenize_sft_example(enc, r, opt), shifted(ids, labels));
  // A round that does not fit stops the walk even when an older one would: only the newest is left.
  opt.max_length = int64_t(x.system.size() + r2 + 1);
  expect_example(tokenize_sft_example(enc, r, opt),
                 shifted(cat({x.system, x.user[2], x.bot[2]}),
                         cat({rep(X, x.system.size() + x.user[2].size()), x.bot[2]})));
}

TEST(SftChat, NewestRoundAloneTooLongIsCut) {
  TextEncoder enc(spm());
  SftRecord r = rec({std::string("Hello world ") + kOnceText}, {kOnceText});
  r.context = {{"system", "Be brief."}};
  const Rounds x = encode_rounds(enc, r);
  SftOptions opt;
  opt.chat = llama2_like;
  opt.max_length = int64_t(x.system.size()) + 20;
  opt.src_length = int64_t(x.system.size()) + 8;  // the user part keeps 8 tokens, the answer the other 12
  const auto user = head(x.user[0], 8), bot = head(x.bot[0], 12);
  expect_example(tokenize_sft_example(enc, r, opt),
                 shifted(cat({x.system, user, bot}), cat({rep(X, x.system.size() + 8), bot})));
  // The system part must leave room.
  opt.max_length = int64_t(x.system.size());
  EXPECT_TRUE(throws_error([&] { tokenize_sft_example(enc, r, opt); }, {"test", "system"}));
}

// ---- reading files ----

TEST(SftRead, StringsListsAndContext) {
  DataTempDir dir;
  write_text(dir.file("train.json"),
             "{\"src\": \"a\", \"tgt\": \"b\"}\n"
             "\n"
             "{\"src\": [\"q1\", \"q2\"], \"tgt\": [\"a1\", \"a2\"], \"context\": {\"system\": \"s\"}, \"extra\": 1}\n");
  auto recs = read_sft_file(sft_split_path(dir.path(), "train"));
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0].src, std::vector<std::string>{"a"});
  EXPECT_EQ(recs[1].tgt, (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(recs[1].context["system"], "s");
  EXPECT_EQ(recs[1].where, dir.file("train.json") + ":3");
}

TEST(SftRead, BadLinesNameFileAndLine) {
  DataTempDir dir;
  const std::string f = dir.file("train.json");
  struct Case {
    std::string text, expect;
  };
  const std::vector<Case> cases = {
      {"{\"src\": \"a\", \"tgt\": \"b\"}\n{\"src\": \"a\"}\n", ":2: missing"},
      {"{\"src\": \"a\", \"tgt\": \"b\"}\nnot json\n", ":2: invalid JSON"},
      {"[1, 2]\n", ":1: each line must be a JSON object"},
      {"{\"src\": 3, \"tgt\": \"b\"}\n", ":1: \"src\" must be a string"},
      {"{\"src\": [], \"tgt\": []}\n", ":1: \"src\" must be"},
      {"{\"src\": [\"a\", 1], \"tgt\": [\"b\", \"c\"]}\n", ":1: \"src\" must be"},
      {"{\"src\": [\"a\", \"b\"], \"tgt\": [\"c\"]}\n", ":1: \"src\" has 2 turns but \"tgt\" has 1"},
      {"{\"src\": \"a\", \"tgt\": \"b\", \"context\": 5}\n", ":1: \"context\" must be an object"},
  };
  for (const auto& c : cases) {
    write_text(f, c.text);
    EXPECT_TRUE(throws_error([&] { read_sft_file(f); }, {f + c.expect})) << c.text;
  }
  EXPECT_TRUE(throws_error([&] { sft_split_path(dir.path(), "dev"); }, {dir.file("dev.json"), "no such file"}));
  EXPECT_TRUE(throws_error([&] { sft_split_path(dir.file("nodir"), "train"); }, {"nodir", "not a directory"}));
}

TEST(SftRead, PaddleNlpFixtures) {
  const std::string dir = std::string(OAR_SHARED_DATA_DIR) + "/paddlenlp_fixtures";
  if (!file_exists(dir + "/train.json"))
    GTEST_SKIP() << "shared data not found at " << dir << " (../shared/data is optional)";
  SftOptions opt;
  opt.src_length = 64;
  opt.max_length = 128;
  auto train = load_sft_examples(dir, "train", spm(), opt);
  auto dev = load_sft_examples(dir, "dev", spm(), opt);
  EXPECT_EQ(train.size(), 20u);
  EXPECT_EQ(dev.size(), 5u);
  for (const auto& ex : train) {
    ASSERT_EQ(ex.input_ids.size(), ex.labels.size());
    EXPECT_LE(ex.size(), opt.max_length - 1);
    EXPECT_EQ(ex.input_ids.front(), BOS);
    EXPECT_GT(std::count_if(ex.labels.begin(), ex.labels.end(), [](int32_t l) { return l != X; }), 0);
  }
}

// ---- a real Jinja chat template (src/chat), split as PaddleNLP's encode_chat_inputs ----

TEST(SftChat, JinjaTemplateSplitIntoPromptsAndAnswers) {
  auto tmpl = std::make_shared<const ChatTemplate>(builtin_llama2_chat_template(), "llama2 template", "<s>", "</s>");
  ChatRenderer render = paddlenlp_chat_renderer(tmpl);
  const ChatSegments seg = render({{"Hello world", "Hi"}, {"And then?", "The end."}}, nlohmann::json::object());
  ASSERT_EQ(seg.rounds.size(), 2u);
  EXPECT_EQ(seg.system, "");
  EXPECT_EQ(seg.rounds[0].first, "<s>[INST] Hello world [/INST]");
  EXPECT_EQ(seg.rounds[0].second, " Hi </s>");
  EXPECT_EQ(seg.rounds[1].first, "<s>[INST] And then? [/INST]");
  EXPECT_EQ(seg.rounds[1].second, " The end. </s>");

  // Through the SFT reader: BOS and EOS are ids (from the template's text), labels on both answers only.
  TextEncoder enc(spm());
  SftOptions opt;
  opt.chat = render;
  SftExample ex = tokenize_sft_example(enc, rec({"Hello world", "And then?"}, {"Hi", "The end."}), opt);
  std::vector<int32_t> ids, labels;
  for (const auto& [p, a] : seg.rounds) {
    const auto pi = enc.encode(p, false), ai = enc.encode(a, false);
    ids = cat({ids, pi, ai});
    labels = cat({labels, rep(X, pi.size()), ai});
  }
  EXPECT_EQ(ids.front(), BOS);
  EXPECT_EQ(labels.back(), EOS);
  expect_example(ex, shifted(ids, labels));
  // A conversation the template refuses names the record.
  auto bad = std::make_shared<const ChatTemplate>("{{ raise_exception('no') }}", "refusing template", "<s>", "</s>");
  opt.chat = paddlenlp_chat_renderer(bad);
  EXPECT_TRUE(throws_error([&] { tokenize_sft_example(enc, rec({"a"}, {"b"}), opt); }, {"test", "no"}));
}

TEST(SftChat, PaddleNlpChatTemplateJson) {
  // The format of PaddleNLP's llm/docs/chat_template.md: a system snippet over the record's context, and the
  // user / bot snippets over {{user}} / {{bot}}.
  const nlohmann::json spec = {{"system", "{{ system | default('You are helpful.') }}"},
                               {"conversation", {"[INST] {{user}} [/INST]", " {{bot}}</s>"}},
                               {"query", "[INST] {{query}} [/INST]"}};
  ChatRenderer render = legacy_chat_renderer(spec, "chat_template.json");
  ChatSegments s = render({{"Hello world", "Hi"}, {"And?", "Bye"}}, nlohmann::json::object());
  EXPECT_EQ(s.system, "You are helpful.");
  ASSERT_EQ(s.rounds.size(), 2u);
  EXPECT_EQ(s.rounds[0], (std::pair<std::string, std::string>{"[INST] Hello world [/INST]", " Hi</s>"}));
  EXPECT_EQ(s.rounds[1], (std::pair<std::string, std::string>{"[INST] And? [/INST]", " Bye</s>"}));
  EXPECT_EQ(render({{"a", "b"}}, {{"system", "Be brief."}}).system, "Be brief.");
  // The system part is kept apart (never truncated, never learned).
  TextEncoder enc(spm());
  SftOptions opt;
  opt.chat = render;
  SftRecord r = rec({"Hello world"}, {"Hi"});
  SftExample ex = tokenize_sft_example(enc, r, opt);
  const auto sys = enc.encode("You are helpful.", false), user = enc.encode("[INST] Hello world [/INST]", false),
             bot = enc.encode(" Hi</s>", false);
  expect_example(ex, shifted(cat({sys, user, bot}), cat({rep(X, sys.size() + user.size()), bot})));
  EXPECT_TRUE(throws_error([] { legacy_chat_renderer({{"conversation", {"only one"}}}, "ct.json"); },
                           {"ct.json", "conversation"}));
  EXPECT_TRUE(throws_error([] { legacy_chat_renderer({{"conversation", {"{% if %}", "b"}}}, "ct.json"); },
                           {"ct.json"}));
}

TEST(SftChat, ChoosingTheTemplateLikeRunFinetune) {
  DataTempDir dir;
  const std::string tok_dir = dir.file("tok");
  std::filesystem::create_directories(tok_dir);
  // No template anywhere: plain rules.
  EXPECT_FALSE(choose_sft_chat_template("", "model", tok_dir, spm()).render);
  // chat_template.json beside the tokenizer is the default; "none" turns it off.
  write_text(join_path(tok_dir, "chat_template.json"),
             R"({"system": "", "conversation": ["U: {{user}}\n", "B: {{bot}}\n"], "query": "U: {{query}}\n"})");
  SftChatChoice c = choose_sft_chat_template("", "model", tok_dir, spm());
  ASSERT_TRUE(c.render);
  // (jinja2 drops a template's single trailing newline, as PaddleNLP's rendering does)
  EXPECT_EQ(c.render({{"x", "y"}}, nlohmann::json::object()).rounds[0].second, "B: y");
  EXPECT_FALSE(choose_sft_chat_template("None", "model", tok_dir, spm()).render);
  EXPECT_TRUE(choose_sft_chat_template("model", "model", tok_dir, spm()).render);
  // A directory, a Jinja file, HF's {"chat_template": ...} file.
  std::filesystem::create_directories(dir.file("other"));
  write_text(dir.file("other/chat_template.json"), R"({"conversation": ["Q{{user}}", "A{{bot}}"]})");
  EXPECT_EQ(choose_sft_chat_template(dir.file("other"), "model", tok_dir, spm()).render({{"1", "2"}}, {}).rounds[0],
            (std::pair<std::string, std::string>{"Q1", "A2"}));
  write_text(dir.file("t.jinja"), builtin_llama2_chat_template());
  SftChatChoice j = choose_sft_chat_template(dir.file("t.jinja"), "model", tok_dir, spm());
  EXPECT_EQ(j.render({{"u", "a"}}, {}).rounds[0].second, " a </s>");
  write_text(dir.file("hf.json"), nlohmann::json({{"chat_template", builtin_llama2_chat_template()}}).dump());
  EXPECT_EQ(choose_sft_chat_template(dir.file("hf.json"), "model", tok_dir, spm()).render({{"u", "a"}}, {})
                .rounds[0].first, "<s>[INST] u [/INST]");
  // A path that does not exist: PaddleNLP warns and keeps the default.
  SftChatChoice w = choose_sft_chat_template(dir.file("missing.json"), "model", tok_dir, spm());
  EXPECT_NE(w.warning.find("missing.json"), std::string::npos);
  EXPECT_TRUE(w.render);
  write_text(dir.file("bad.json"), R"({"conversation": 3})");
  EXPECT_TRUE(throws_error([&] { choose_sft_chat_template(dir.file("bad.json"), "m", tok_dir, spm()); },
                           {"bad.json", "conversation"}));
}
