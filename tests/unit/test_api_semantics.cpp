// What the OpenAI-compatible API promises, below HTTP: incremental detokenization and the special-token text
// rule against Hugging Face (tests/fixtures/tokenizers/api_expected.json, from
// tests/reference/make_api_fixtures.py), the engine's logprobs against transformers' logits
// (tests/fixtures/models/*/expected.safetensors), and n samples sharing their prompt's KV blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/fs.h"
#include "data/text_encoder.h"
#include "engine/engine.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "test_model_util.h"
#include "tokenizer/tokenizer.h"
#include "test_letter_tokenizer.h"

using namespace oar;
using oar::test::LetterTokenizer;
using nlohmann::json;

namespace {

std::string fixtures(const std::string& rel) { return std::string(OAR_FIXTURES_DIR) + "/" + rel; }

const json& api_expected() {
  static const json j = json::parse(read_file(fixtures("tokenizers/api_expected.json")));
  return j;
}

std::unique_ptr<Tokenizer> fixture_tokenizer(const std::string& kind) {
  return load_tokenizer(fixtures(kind == "spm" ? "tokenizers/spm/tokenizer.model" : "tokenizers/bpe"));
}

class ApiTokenizer : public ::testing::TestWithParam<const char*> {};

// The completion text is decode(prompt + generated) minus decode(prompt), streamed or at once; a
// SentencePiece first token keeps its leading space ("Once" -> " upon a time").
TEST_P(ApiTokenizer, IncrementalDetokenizationEqualsHuggingFace) {
  auto tok = fixture_tokenizer(GetParam());
  const json& cases = api_expected()[GetParam()]["detok"];
  ASSERT_GT(cases.size(), 100u);
  int leading_space = 0, split_chars = 0;
  for (const json& c : cases) {
    auto prompt = c["prompt"].get<std::vector<int32_t>>();
    auto gen = c["generated"].get<std::vector<int32_t>>();
    const std::string want = c["completion"].get<std::string>();
    StreamDecoder d(*tok, prompt);
    std::string streamed;
    for (int32_t id : gen) streamed += d.push(id);
    streamed += d.flush();
    EXPECT_EQ(streamed, want) << "prompt " << c["prompt"].dump() << " generated " << c["generated"].dump();
    EXPECT_EQ(decode_continuation(*tok, prompt, gen), want);
    leading_space += !want.empty() && want[0] == ' ' && prompt.size() > 1;
    split_chars += (static_cast<unsigned char>(tok->token_bytes(gen[0])[0]) & 0xC0) == 0x80;
  }
  EXPECT_GT(leading_space, 20) << "the cases must exercise the leading space of the first generated token";
  EXPECT_GT(split_chars, 5) << "the cases must split multi-byte characters between prompt and completion";
}

// Literal special-token text follows HF's default on every path: Tokenizer::encode, the training-data encoder's
// default rule (preprocess) and the chat template (serve's chat endpoint); serve and predict call
// Tokenizer::encode. Fine-tuning data follows PaddleNLP instead (test_data_sft.cpp).
TEST_P(ApiTokenizer, SpecialTokenTextEncodesAsHuggingFace) {
  auto tok = fixture_tokenizer(GetParam());
  TextEncoder enc(*tok);
  for (const json& c : api_expected()[GetParam()]["specials"]) {
    const std::string text = c["text"].get<std::string>();
    EXPECT_EQ(tok->encode(text, false), c["ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(tok->encode(text, true), c["ids_bos"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(enc.encode(text, true), c["ids_bos"].get<std::vector<int32_t>>()) << text;
    std::vector<std::string> texts;
    for (int32_t id : c["ids_bos"].get<std::vector<int32_t>>()) texts.push_back(openai_token_text(*tok, id));
    EXPECT_EQ(texts, c["token_texts"].get<std::vector<std::string>>()) << text;
  }
  const std::string bos = tok->id_to_piece(tok->bos_id()), eos = tok->id_to_piece(tok->eos_ids()[0]);
  ChatTemplate chat(api_expected()["chat_template"].get<std::string>(), "fixture", bos, eos);
  for (const json& c : api_expected()[GetParam()]["chat"]) {
    std::vector<ChatMessage> msgs;
    for (const json& m : c["messages"]) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    EXPECT_EQ(chat.encode(*tok, msgs, false), c["ids"].get<std::vector<int32_t>>()) << c["messages"].dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, ApiTokenizer, ::testing::Values("spm", "bpe"));

struct RefPrompt {
  std::vector<int32_t> ids, greedy;
  Tensor logits;  // [len, V], transformers
};

std::vector<RefPrompt> ref_prompts(const std::string& model) {
  const std::string dir = fixtures("models/" + model);
  auto j = json::parse(read_file(dir + "/expected.json"));
  WeightStore exp = WeightStore::open_file(dir + "/expected.safetensors");
  std::vector<RefPrompt> out;
  for (auto& p : j["prompts"])
    out.push_back({p["ids"].get<std::vector<int32_t>>(), p["greedy_new_tokens"].get<std::vector<int32_t>>(),
                   exp.get(p["logits_key"].get<std::string>())});
  return out;
}

// log-softmax in double.
std::vector<double> log_softmax(const float* x, int64_t V) {
  double mx = -INFINITY, sum = 0;
  for (int64_t i = 0; i < V; i++) mx = std::max(mx, double(x[i]));
  for (int64_t i = 0; i < V; i++) sum += std::exp(double(x[i]) - mx);
  std::vector<double> out(static_cast<size_t>(V), 0.0);
  for (int64_t i = 0; i < V; i++) out[size_t(i)] = double(x[i]) - mx - std::log(sum);
  return out;
}

std::map<uint64_t, std::vector<RequestOutput>> run_all(Engine& e) {
  std::map<uint64_t, std::vector<RequestOutput>> outs;
  for (int guard = 0; e.has_work() && guard < 10000; guard++)
    for (auto& o : e.step()) outs[o.request_id].push_back(std::move(o));
  return outs;
}

RequestParams greedy(int64_t max_new, int32_t logprobs = -1, bool prompt_lps = false) {
  RequestParams p;
  p.sampling.greedy = true;
  p.max_new_tokens = max_new;
  p.ignore_eos = true;
  p.logprobs = logprobs;
  p.prompt_logprobs = prompt_lps;
  return p;
}

// Each entry's logprob and top-k equal log-softmax of transformers' logits row (row t scores token t + 1).
void expect_matches_rows(const std::vector<TokenLogprob>& got, const std::vector<int32_t>& ids, const Tensor& logits,
                         int64_t first_row, int32_t k, const std::string& what) {
  const int64_t V = logits.shape()[1];
  for (size_t i = 0; i < got.size(); i++) {
    const int64_t row = first_row + int64_t(i);
    std::vector<double> ref = log_softmax(logits.data<float>() + row * V, V);
    const int32_t tok = ids[size_t(row + 1)];
    ASSERT_EQ(got[i].token, tok) << what << " position " << row + 1;
    EXPECT_NEAR(got[i].logprob, ref[size_t(tok)], 1e-3) << what << " position " << row + 1;
    ASSERT_EQ(int32_t(got[i].top.size()), k) << what;
    std::vector<int32_t> order(static_cast<size_t>(V), 0);
    for (int32_t v = 0; v < V; v++) order[size_t(v)] = v;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ref[size_t(a)] > ref[size_t(b)]; });
    for (int32_t j = 0; j < k; j++) {
      EXPECT_NEAR(got[i].top[size_t(j)].second, ref[size_t(order[size_t(j)])], 1e-3) << what << " top " << j;
      EXPECT_NEAR(got[i].top[size_t(j)].second, ref[size_t(got[i].top[size_t(j)].first)], 1e-3) << what;
    }
  }
}

class EngineLogprobs : public ::testing::TestWithParam<const char*> {};

// echo + logprobs with max_tokens 0: every prompt token after the first, with chunked prefill (several chunks
// per prompt) and after a prefix-cache hit (whose logits were never computed: the request computes them all).
TEST_P(EngineLogprobs, PromptLogprobsEqualTransformers) {
  auto m = LlamaModel::load(fixtures(std::string("models/") + GetParam()), DType::F32);
  LetterTokenizer tok;
  for (int64_t budget : {int64_t(2048), int64_t(7)}) {
    EngineConfig ec;
    ec.block_size = 4;
    ec.num_blocks = 256;
    ec.max_num_batched_tokens = budget;
    Engine e(*m, tok, ec);
    auto prompts = ref_prompts(GetParam());
    // Warm the prefix cache with the same prompts first.
    for (auto& p : prompts) e.add_request(p.ids, greedy(1));
    run_all(e);
    std::vector<uint64_t> ids;
    for (auto& p : prompts) ids.push_back(e.add_request(p.ids, greedy(0, 3, true)));
    auto outs = run_all(e);
    for (size_t i = 0; i < prompts.size(); i++) {
      const auto& o = outs[ids[i]];
      ASSERT_EQ(o.size(), 1u);
      EXPECT_TRUE(o[0].finished);
      EXPECT_TRUE(o[0].new_tokens.empty());
      ASSERT_EQ(o[0].prompt_logprobs.size(), prompts[i].ids.size() - 1);
      expect_matches_rows(o[0].prompt_logprobs, prompts[i].ids, prompts[i].logits, 0, 3,
                          "budget " + std::to_string(budget));
    }
  }
}

// Generated tokens' logprobs (raw model distribution: the same whatever the temperature) against
// transformers' logits of the whole greedy sequence, recomputed here with oar's reference-checked forward.
TEST_P(EngineLogprobs, GeneratedTokenLogprobsAreTheModelsLogSoftmax) {
  auto m = LlamaModel::load(fixtures(std::string("models/") + GetParam()), DType::F32);
  LetterTokenizer tok;
  EngineConfig ec;
  ec.block_size = 8;
  ec.num_blocks = 128;
  Engine e(*m, tok, ec);
  auto prompts = ref_prompts(GetParam());
  std::vector<uint64_t> ids;
  for (auto& p : prompts) ids.push_back(e.add_request(p.ids, greedy(6, 5, true)));
  auto outs = run_all(e);
  for (size_t i = 0; i < prompts.size(); i++) {
    std::vector<int32_t> gen;
    std::vector<TokenLogprob> lps;
    for (auto& o : outs[ids[i]]) {
      gen.insert(gen.end(), o.new_tokens.begin(), o.new_tokens.end());
      lps.insert(lps.end(), o.logprobs.begin(), o.logprobs.end());
    }
    ASSERT_EQ(gen, std::vector<int32_t>(prompts[i].greedy.begin(), prompts[i].greedy.begin() + 6));
    ASSERT_EQ(lps.size(), 6u);
    // The first generated token is scored by the prompt's last transformers row; all of them by the rows of a
    // plain forward over prompt + generated (oar's forward, itself checked against transformers).
    std::vector<int32_t> seq = prompts[i].ids;
    seq.insert(seq.end(), gen.begin(), gen.end());
    const int64_t P = int64_t(prompts[i].ids.size());
    expect_matches_rows({lps[0]}, seq, prompts[i].logits, P - 1, 5, "first token vs transformers");
    expect_matches_rows(lps, seq, test::prompt_logits(*m, seq), P - 1, 5, "generated tokens");
    for (auto& lp : lps) EXPECT_EQ(lp.top[0].first, lp.token) << "greedy picks the most likely token";
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EngineLogprobs, ::testing::Values("mha", "gqa"));

// n samples of one prompt: one prefill, the prompt's blocks shared (fork + copy-on-write), and each sample
// exactly what it would be alone.
TEST(EngineSamples, SharePromptBlocksAndMatchIndependentRuns) {
  auto m = LlamaModel::load(fixtures("models/mha"), DType::F32);
  LetterTokenizer tok;
  auto prompts = ref_prompts("mha");
  const std::vector<int32_t>& prompt = prompts.back().ids;  // the longest
  ASSERT_GE(prompt.size(), 20u);
  ASSERT_NE(prompt.size() % 8, 0u) << "the last prompt block must be partial (copy on write)";
  EngineConfig ec;
  ec.block_size = 8;
  ec.num_blocks = 200;
  ec.enable_prefix_caching = false;  // sharing must not depend on the prefix cache
  const int n = 4;
  const int64_t prompt_blocks = (int64_t(prompt.size()) + 7) / 8;
  auto sampled = [](uint64_t seed) {
    RequestParams p;
    p.sampling.temperature = 1.0;
    p.sampling.seed = seed;
    p.max_new_tokens = 5;
    p.ignore_eos = true;
    p.logprobs = 1;
    return p;
  };
  std::map<uint64_t, std::vector<int32_t>> alone;
  {
    Engine e(*m, tok, ec);
    std::vector<uint64_t> ids;
    for (int j = 0; j < n; j++) ids.push_back(e.add_request(prompt, sampled(100 + j)));
    auto outs = run_all(e);
    for (int j = 0; j < n; j++)
      for (auto& o : outs[ids[size_t(j)]]) alone[100 + j].insert(alone[100 + j].end(), o.new_tokens.begin(), o.new_tokens.end());
  }
  Engine e(*m, tok, ec);
  std::vector<uint64_t> ids;
  for (int j = 0; j < n; j++) {
    RequestParams p = sampled(100 + j);
    if (j > 0) p.share_prompt_with = ids[0];
    ids.push_back(e.add_request(prompt, p));
  }
  std::map<uint64_t, std::vector<int32_t>> got;
  int64_t steps = 0, max_used = 0;
  while (e.has_work()) {
    for (auto& o : e.step()) got[o.request_id].insert(got[o.request_id].end(), o.new_tokens.begin(), o.new_tokens.end());
    if (++steps == 1) {
      // After the prefill every sample has its first token and they all hold the one copy of the prompt
      // (alone they would hold n copies).
      EXPECT_EQ(e.metrics().blocks_used, prompt_blocks) << "the samples do not share the prompt's blocks";
      EXPECT_EQ(e.metrics().running, n);
    }
    max_used = std::max(max_used, e.metrics().blocks_used);
  }
  for (int j = 0; j < n; j++) EXPECT_EQ(got[ids[size_t(j)]], alone[100 + j]) << "sample " << j;
  // Later each sample writes only its own positions: the full prompt blocks stay shared.
  const int64_t full = int64_t(prompt.size()) / 8, per_sample = (int64_t(prompt.size()) + 4 + 7) / 8 - full;
  EXPECT_LE(max_used, full + n * per_sample);
  EXPECT_EQ(steps, 5) << "one prefill step for all samples, then one step per further token";
  EXPECT_EQ(e.metrics().blocks_used, 0);
}

}  // namespace

namespace {

// A leader that leaves before its prefill (its client went away) hands its waiting samples back to the
// scheduler as ordinary requests; an aborted sample just leaves. Nothing leaks.
TEST(EngineSamples, AbortedLeaderOrSampleLeavesTheOthersRunning) {
  auto m = LlamaModel::load(fixtures("models/mha"), DType::F32);
  LetterTokenizer tok;
  const std::vector<int32_t> prompt = ref_prompts("mha").back().ids;
  EngineConfig ec;
  ec.block_size = 8;
  ec.num_blocks = 200;
  Engine e(*m, tok, ec);
  std::vector<uint64_t> ids;
  for (int j = 0; j < 4; j++) {
    RequestParams p = greedy(3);
    if (j > 0) p.share_prompt_with = ids[0];
    ids.push_back(e.add_request(prompt, p));
  }
  e.abort_request(ids[0]);
  e.abort_request(ids[2]);
  auto outs = run_all(e);
  for (int j : {0, 2}) {
    ASSERT_EQ(outs[ids[size_t(j)]].size(), 1u);
    EXPECT_EQ(outs[ids[size_t(j)]][0].finish_reason, FinishReason::Aborted);
  }
  auto want = ref_prompts("mha").back().greedy;
  for (int j : {1, 3}) {
    std::vector<int32_t> got;
    for (auto& o : outs[ids[size_t(j)]]) got.insert(got.end(), o.new_tokens.begin(), o.new_tokens.end());
    EXPECT_EQ(got, std::vector<int32_t>(want.begin(), want.begin() + 3)) << "sample " << j;
  }
  EXPECT_EQ(e.metrics().running, 0);
  EXPECT_EQ(e.metrics().waiting, 0);
}

}  // namespace
