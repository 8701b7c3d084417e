// The serving engine end to end on the Hugging Face fixture models (tests/fixtures/models): greedy float32
// outputs of a batch of mixed-length prompts equal transformers' greedy continuations and the plain Generator's,
// with chunked prefill, with forced preemption (a KV cache too small for all at once) and with prefix-cache hits;
// per-request sampling independent of batching; stop strings, EOS, aborts and input checks.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "engine/engine.h"
#include "infer/generator.h"
#include "model/llama.h"
#include "test_letter_tokenizer.h"

using namespace oar;
using oar::test::LetterTokenizer;

namespace {

const char* kModels[] = {"mha", "gqa", "tied", "llama3_rope", "attn_bias", "sharded_bf16", "f16"};

std::string model_dir(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/models/" + name; }

struct Prompt {
  std::vector<int32_t> ids, greedy;
};

std::vector<Prompt> load_prompts(const std::string& name) {
  auto j = nlohmann::json::parse(read_file(model_dir(name) + "/expected.json"));
  std::vector<Prompt> out;
  for (auto& p : j["prompts"]) out.push_back({p["ids"].get<std::vector<int32_t>>(), p["greedy_new_tokens"].get<std::vector<int32_t>>()});
  return out;
}

std::string letters(const std::vector<int32_t>& ids) {
  LetterTokenizer t;
  std::string s;
  for (int32_t i : ids) s += t.token_bytes(i, false);
  return s;
}

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason reason = FinishReason::None;
  int steps_with_output = 0;
};

// Runs the engine until idle; results by request id.
std::map<uint64_t, Result> run_all(Engine& e) {
  std::map<uint64_t, Result> r;
  for (int guard = 0; e.has_work(); guard++) {
    if (guard > 100000) throw Error("engine did not finish");
    for (const RequestOutput& o : e.step()) {
      Result& x = r[o.request_id];
      x.tokens.insert(x.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      x.text += o.new_text;
      if (o.finished) x.reason = o.finish_reason;
      x.steps_with_output++;
    }
  }
  return r;
}

RequestParams greedy(int64_t max_new) {
  RequestParams p;
  p.sampling.greedy = true;
  p.sampling.top_p = 0;
  p.sampling.temperature = 1;
  p.max_new_tokens = max_new;
  p.ignore_eos = true;
  return p;
}

std::vector<std::vector<int32_t>> generator_greedy(LlamaModel& m, const std::vector<std::vector<int32_t>>& prompts, int64_t max_new) {
  std::vector<GenerationRequest> reqs;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.prompt = p;
    r.max_new_tokens = max_new;
    r.sampling.greedy = true;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  Generator gen(m, 16);
  std::vector<std::vector<int32_t>> out;
  for (auto& o : gen.run(reqs, {})) out.push_back(o.tokens);
  return out;
}

}  // namespace

class EngineGreedy : public ::testing::TestWithParam<const char*> {};

// Every prompt at once with a 24-token step budget (so the 33- and 60-token prompts are prefilled in chunks
// beside the others' decodes): transformers' and the plain path's tokens exactly.
TEST_P(EngineGreedy, BatchEqualsTransformersAndGenerator) {
  auto m = LlamaModel::load(model_dir(GetParam()), DType::F32);
  auto prompts = load_prompts(GetParam());
  LetterTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 8;
  cfg.num_blocks = 64;
  cfg.max_num_batched_tokens = 24;
  Engine e(*m, tok, cfg);
  std::vector<uint64_t> ids;
  std::vector<std::vector<int32_t>> ps;
  for (const Prompt& p : prompts) {
    ids.push_back(e.add_request(p.ids, greedy(int64_t(p.greedy.size()))));
    ps.push_back(p.ids);
  }
  auto res = run_all(e);
  auto gen = generator_greedy(*m, ps, 16);
  for (size_t i = 0; i < prompts.size(); i++) {
    EXPECT_EQ(res[ids[i]].tokens, prompts[i].greedy) << GetParam() << " prompt " << i;
    EXPECT_EQ(res[ids[i]].tokens, gen[i]) << GetParam() << " prompt " << i;
    EXPECT_EQ(res[ids[i]].reason, FinishReason::Length);
    EXPECT_EQ(res[ids[i]].text, letters(prompts[i].greedy));
  }
  EngineMetrics mt = e.metrics();
  EXPECT_EQ(mt.preemptions, 0);
  EXPECT_EQ(mt.generated_tokens, 16 * int64_t(prompts.size()));
  EXPECT_EQ(mt.finished_requests, int64_t(prompts.size()));
  EXPECT_EQ(mt.running + mt.waiting, 0);
  EXPECT_EQ(mt.blocks_free, mt.blocks_total);  // everything released (cached blocks count as free)
}

// A cache with room for the longest sequence and little more: requests preempt each other and resume by
// recompute, with the same tokens.
TEST_P(EngineGreedy, ForcedPreemptionKeepsOutputs) {
  auto m = LlamaModel::load(model_dir(GetParam()), DType::F32);
  auto prompts = load_prompts(GetParam());
  LetterTokenizer tok;
  for (bool caching : {false, true}) {
    EngineConfig cfg;
    cfg.block_size = 4;
    size_t longest = 0;
    for (const Prompt& p : prompts) longest = std::max(longest, p.ids.size() + p.greedy.size());
    cfg.num_blocks = int64_t((longest + 3) / 4) + 2;
    cfg.enable_prefix_caching = caching;
    Engine e(*m, tok, cfg);
    std::vector<uint64_t> ids;
    // each prompt twice: more sequences than fit
    for (int rep = 0; rep < 2; rep++)
      for (const Prompt& p : prompts) ids.push_back(e.add_request(p.ids, greedy(16)));
    auto res = run_all(e);
    for (size_t i = 0; i < ids.size(); i++)
      EXPECT_EQ(res[ids[i]].tokens, prompts[i % prompts.size()].greedy) << GetParam() << " request " << i;
    EXPECT_GT(e.metrics().preemptions, 0) << "the cache was meant to be too small";
    EXPECT_EQ(e.metrics().blocks_free, cfg.num_blocks);
  }
}

// Prompts sharing a prefix longer than a block: the later ones reuse the cached blocks (hits counted), with
// the same tokens as the plain path computing everything.
TEST_P(EngineGreedy, PrefixCacheHitsKeepOutputs) {
  auto m = LlamaModel::load(model_dir(GetParam()), DType::F32);
  auto prompts = load_prompts(GetParam());
  const Prompt& longp = prompts.back();  // 33 or 60 tokens
  std::vector<std::vector<int32_t>> ps;
  ps.push_back(longp.ids);
  for (size_t cut : {size_t(9), size_t(17), size_t(30)}) {  // shared prefix, different tail
    std::vector<int32_t> v(longp.ids.begin(), longp.ids.begin() + long(cut));
    for (int i = 0; i < 5; i++) v.push_back(int32_t((cut * 7 + size_t(i) * 13) % 250 + 3));
    ps.push_back(v);
  }
  auto want = generator_greedy(*m, ps, 12);
  LetterTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 8;
  cfg.num_blocks = 64;
  Engine e(*m, tok, cfg);
  // first the long prompt alone, then the variants together with the long prompt again
  uint64_t first = e.add_request(ps[0], greedy(12));
  auto r1 = run_all(e);
  EXPECT_EQ(r1[first].tokens, want[0]);
  EXPECT_EQ(e.metrics().prefix_cache_hits, 0);
  std::vector<uint64_t> ids;
  for (const auto& p : ps) ids.push_back(e.add_request(p, greedy(12)));
  auto r2 = run_all(e);
  for (size_t i = 0; i < ps.size(); i++) EXPECT_EQ(r2[ids[i]].tokens, want[i]) << GetParam() << " prompt " << i;
  EngineMetrics mt = e.metrics();
  // the long prompt again: all its full blocks but the one holding its last token; the variants: 1, 2, 3 blocks
  const int64_t again = (int64_t(ps[0].size()) - 1) / 8;
  EXPECT_EQ(mt.prefix_cache_hits, again + 1 + 2 + 3) << GetParam();
  EXPECT_GT(mt.prefix_cache_queries, mt.prefix_cache_hits);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineGreedy, ::testing::ValuesIn(kModels),
                         [](const auto& info) { return std::string(info.param); });

// Sampled requests draw from their own seeded streams: a request's tokens are the same alone or in a batch.
TEST(Engine, SamplingDoesNotDependOnBatching) {
  auto m = LlamaModel::load(model_dir("gqa"), DType::F32);
  auto prompts = load_prompts("gqa");
  LetterTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 8;
  cfg.num_blocks = 64;
  auto params = [](uint64_t seed) {
    RequestParams p;
    p.sampling.seed = seed;
    p.sampling.top_p = 0.9;
    p.sampling.temperature = 1.3;
    p.sampling.top_k = 40;
    p.max_new_tokens = 20;
    p.ignore_eos = true;
    return p;
  };
  std::vector<std::vector<int32_t>> alone;
  for (size_t i = 0; i < prompts.size(); i++) {
    Engine e(*m, tok, cfg);
    uint64_t id = e.add_request(prompts[i].ids, params(100 + i));
    alone.push_back(run_all(e)[id].tokens);
  }
  Engine e(*m, tok, cfg);
  std::vector<uint64_t> ids;
  for (size_t i = prompts.size(); i-- > 0;) ids.insert(ids.begin(), e.add_request(prompts[i].ids, params(100 + i)));
  auto res = run_all(e);
  for (size_t i = 0; i < prompts.size(); i++) EXPECT_EQ(res[ids[i]].tokens, alone[i]) << "request " << i;
  EXPECT_NE(alone[1], alone[2]);
}

// Stop strings (matched on the text, cut with what follows, never half-emitted), EOS, zero new tokens, aborts.
TEST(Engine, StopsAtStopStringsEosAndLength) {
  auto m = LlamaModel::load(model_dir("mha"), DType::F32);
  const Prompt p = load_prompts("mha")[2];
  const std::string full = letters(p.greedy);  // 16 letters
  EngineConfig cfg;
  cfg.block_size = 4;
  cfg.num_blocks = 64;
  {
    LetterTokenizer tok;
    Engine e(*m, tok, cfg);
    RequestParams sp = greedy(16);
    sp.stop = {full.substr(5, 3), "zzzzzzzz"};  // the first occurrence of a 3-letter piece of the output
    uint64_t id = e.add_request(p.ids, sp);
    uint64_t plain = e.add_request(p.ids, greedy(16));
    auto res = run_all(e);
    const size_t at = full.find(full.substr(5, 3));
    EXPECT_EQ(res[id].text, full.substr(0, at));
    EXPECT_EQ(res[id].reason, FinishReason::Stop);
    EXPECT_EQ(res[id].tokens, std::vector<int32_t>(p.greedy.begin(), p.greedy.begin() + long(at + 3)));
    EXPECT_EQ(res[plain].text, full);
    EXPECT_STREQ(finish_reason_name(res[id].reason), "stop");
    EXPECT_STREQ(finish_reason_name(res[plain].reason), "length");
  }
  {
    // the 6th greedy token is EOS: it ends the request (at its first occurrence) and is returned, without text
    LetterTokenizer tok({p.greedy[5]});
    const long stop_len = long(std::find(p.greedy.begin(), p.greedy.end(), p.greedy[5]) - p.greedy.begin()) + 1;
    Engine e(*m, tok, cfg);
    RequestParams sp = greedy(16);
    sp.ignore_eos = false;
    uint64_t id = e.add_request(p.ids, sp);
    uint64_t ign = e.add_request(p.ids, greedy(16));
    uint64_t zero = e.add_request(p.ids, greedy(0));
    auto res = run_all(e);
    EXPECT_EQ(res[id].tokens, std::vector<int32_t>(p.greedy.begin(), p.greedy.begin() + stop_len));
    EXPECT_EQ(res[id].reason, FinishReason::Eos);
    EXPECT_EQ(res[ign].tokens.size(), 16u);
    EXPECT_TRUE(res[zero].tokens.empty());
    EXPECT_EQ(res[zero].reason, FinishReason::Length);
  }
  {
    LetterTokenizer tok;
    Engine e(*m, tok, cfg);
    uint64_t a = e.add_request(p.ids, greedy(16));
    uint64_t b = e.add_request(p.ids, greedy(16));
    e.step();
    e.step();
    EXPECT_GT(e.metrics().blocks_used, 0);
    e.abort_request(a);
    e.abort_request(12345);  // unknown: ignored
    auto outs = e.step();
    bool saw_abort = false;
    for (auto& o : outs)
      if (o.request_id == a) {
        saw_abort = o.finished && o.finish_reason == FinishReason::Aborted;
        EXPECT_EQ(o.completion_tokens, 2);
      }
    EXPECT_TRUE(saw_abort);
    auto res = run_all(e);
    EXPECT_EQ(res.count(a), 0u);
    EXPECT_EQ(res[b].tokens.size(), 13u);  // 16 minus the 3 it had
    EXPECT_EQ(e.metrics().blocks_free, cfg.num_blocks);
    EXPECT_EQ(e.metrics().finished_requests, 2);
  }
}

TEST(Engine, RefusesRequestsThatCanNeverRun) {
  auto m = LlamaModel::load(model_dir("mha"), DType::F32);  // context 128
  LetterTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 4;
  cfg.num_blocks = 8;  // 32 positions
  cfg.max_waiting = 2;
  Engine e(*m, tok, cfg);
  EXPECT_THROW(e.add_request({}, greedy(4)), Error);
  EXPECT_THROW(e.add_request(std::vector<int32_t>(129, 5), greedy(4)), Error);  // beyond the context
  EXPECT_THROW(e.add_request(std::vector<int32_t>(20, 5), greedy(20)), Error);  // 39 positions > 32
  EXPECT_THROW(e.add_request({1, 300}, greedy(4)), Error);                      // outside the vocabulary
  RequestParams bad = greedy(4);
  bad.sampling.temperature = -1;
  EXPECT_THROW(e.add_request({1, 5}, bad), Error);
  EXPECT_NE(e.add_request(std::vector<int32_t>(20, 5), greedy(13)), 0u);  // 32 positions: fits exactly
  EXPECT_NE(e.add_request({1, 5}, greedy(4)), 0u);
  EXPECT_EQ(e.add_request({1, 5}, greedy(4)), 0u);  // queue full
  auto res = run_all(e);
  EXPECT_EQ(res.size(), 2u);
  for (auto& [id, r] : res) EXPECT_EQ(r.reason, FinishReason::Length);
}

// A prompt that fills the context stops at the context's end with "length".
TEST(Engine, StopsAtTheContextEnd) {
  auto m = LlamaModel::load(model_dir("mha"), DType::F32);  // context 128
  LetterTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 16;
  cfg.num_blocks = 16;
  Engine e(*m, tok, cfg);
  uint64_t id = e.add_request(std::vector<int32_t>(120, 7), greedy(50));
  auto res = run_all(e);
  EXPECT_EQ(res[id].tokens.size(), 8u);
  EXPECT_EQ(res[id].reason, FinishReason::Length);
}
