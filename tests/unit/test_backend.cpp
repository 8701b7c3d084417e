// The Backend abstraction is real: the `sim` backend's memory faults when host code touches it, and the model's
// forward pass, the plain generator and the serving engine (paged KV, prefix sharing, copy-on-write, int8 KV,
// logprobs) run on it with results bit-identical to the CPU backend's. A layer that read or wrote a tensor's
// memory directly, instead of through its backend, would crash these tests.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "engine/engine.h"
#include "infer/generator.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "test_model_util.h"
#include "train/optimizer.h"
#include "train/trainable_llama.h"
#include "test_letter_tokenizer.h"

using namespace oar;
using oar::test::LetterTokenizer;

namespace {

std::string model_dir(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/models/" + name; }

std::vector<std::vector<int32_t>> fixture_prompts(const std::string& name) {
  auto j = nlohmann::json::parse(read_file(model_dir(name) + "/expected.json"));
  std::vector<std::vector<int32_t>> out;
  for (auto& p : j["prompts"]) out.push_back(p["ids"].get<std::vector<int32_t>>());
  return out;
}

Tensor host_floats(std::initializer_list<float> v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::F32);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

TEST(BackendRegistry, NamesItsBackendsAndRejectsAnUnknownOne) {
  EXPECT_EQ(backend_names(), (std::vector<std::string>{"cpu", "sim"}));
  EXPECT_EQ(std::string(backend("cpu").name()), "cpu");
  EXPECT_EQ(backend("sim").device(), Device::Sim);
  try {
    make_backend("cuda");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown backend 'cuda' (this build has: cpu, sim)"), std::string::npos)
        << e.what();
  }
  // Each instance owns its kernels (and their scratch), so two ranks do not share buffers.
  auto a = make_backend("cpu"), b = make_backend("cpu");
  EXPECT_NE(&a->ops(), &b->ops());
  EXPECT_EQ(a->communicator().size(), 1);
}

TEST(SimBackend, UploadDownloadAndCopyRoundTrip) {
  Backend& sim = backend("sim");
  Tensor host = host_floats({1.5f, -2.0f, 3.25f, 0.0f});
  Tensor t = sim.upload(host);
  EXPECT_EQ(t.device(), Device::Sim);
  Tensor u = sim.empty({4}, DType::F32);
  sim.copy(t, u);
  Tensor back = sim.download(u);
  EXPECT_EQ(back.device(), Device::CPU);
  EXPECT_TRUE(same_bits(back, host));
  EXPECT_TRUE(same_bits(sim.download(sim.empty({3}, DType::F32)), Tensor::empty({3}, DType::F32)));  // zero-filled
}

TEST(SimBackend, HostOperationsOnASimTensorThrow) {
  Backend& sim = backend("sim");
  Tensor t = sim.upload(host_floats({1, 2}));
  EXPECT_THROW(t.to(DType::BF16), Error);
  EXPECT_THROW(t.item_f32(0), Error);
  EXPECT_THROW(cpu_backend().download(t), Error);
  // An op given an operand in host memory refuses it, as a GPU's kernels would have to.
  Tensor on_host = host_floats({1, 2});
  EXPECT_THROW(sim.ops().add_inplace(t, on_host), Error);
  EXPECT_THROW(sim.upload(t), Error);
}

TEST(SimBackendDeathTest, HostReadOrWriteOfASimTensorFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Backend& sim = backend("sim");
  Tensor t = sim.upload(host_floats({7, 8}));
  EXPECT_DEATH(
      {
        volatile float x = t.data<float>()[1];
        (void)x;
      },
      "");
  EXPECT_DEATH(t.data<float>()[0] = 1.0f, "");
  // The same values, read through the backend.
  EXPECT_EQ(sim.download(t).data<float>()[1], 8.0f);
}

class SimForward : public ::testing::TestWithParam<const char*> {};

// Prefill of every fixture prompt, then a decode step on the same cache: bit-identical logits.
TEST_P(SimForward, LogitsEqualTheCpuBackendsBitForBit) {
  auto cpu = LlamaModel::load(model_dir(GetParam()), DType::F32, cpu_backend());
  auto sim = LlamaModel::load(model_dir(GetParam()), DType::F32, backend("sim"));
  for (const auto& ids : fixture_prompts(GetParam())) {
    const int64_t n = int64_t(ids.size()), bs = 8, nb = (n + 1 + bs - 1) / bs;
    std::vector<int32_t> table(static_cast<size_t>(nb));
    for (int64_t i = 0; i < nb; i++) table[size_t(i)] = int32_t(nb - 1 - i);  // out of order: the table matters
    Tensor logits[2];
    for (int which = 0; which < 2; which++) {
      LlamaModel& m = which ? *sim : *cpu;
      KVCache cache(m.config(), nb, bs, KVCacheDType::Int8Dynamic, nullptr, m.backend());
      StepBatch prefill;
      prefill.add_sequence(ids.data(), n, 0, table);
      for (int64_t r = 0; r < n; r++) prefill.logit_rows.push_back(r);
      Tensor out;
      m.forward(prefill, cache, out);
      StepBatch decode;
      const int32_t next = 5;
      decode.add_sequence(&next, 1, n, table);
      decode.logit_rows.push_back(0);
      Tensor out2;
      m.forward(decode, cache, out2);
      EXPECT_EQ(out.device(), m.backend().device());
      Tensor a = m.backend().download(out), b = m.backend().download(out2);
      logits[which] = Tensor::empty({a.numel() + b.numel()}, DType::F32);
      std::memcpy(logits[which].data<float>(), a.raw(), a.nbytes());
      std::memcpy(logits[which].data<float>() + a.numel(), b.raw(), b.nbytes());
    }
    EXPECT_TRUE(same_bits(logits[0], logits[1])) << "prompt of " << n << " tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SimForward, ::testing::Values("gqa", "tied", "attn_bias", "sharded_bf16"));

TEST(SimForward, ACacheOnAnotherBackendIsRefused) {
  auto sim = LlamaModel::load(model_dir("gqa"), DType::F32, backend("sim"));
  KVCache cache(sim->config(), 2, 8);  // cpu
  StepBatch b;
  const std::vector<int32_t> table{0, 1};
  const int32_t t = 3;
  b.add_sequence(&t, 1, 0, table);
  b.logit_rows.push_back(0);
  Tensor logits;
  EXPECT_THROW(sim->forward(b, cache, logits), Error);
}

TEST(SimGenerator, SampledTokensAndPerplexityEqualTheCpuBackends) {
  auto cpu = LlamaModel::load(model_dir("gqa"), DType::BF16, cpu_backend());
  auto sim = LlamaModel::load(model_dir("gqa"), DType::BF16, backend("sim"));
  std::vector<GenerationRequest> reqs;
  for (const auto& p : fixture_prompts("gqa")) {
    GenerationRequest r;
    r.prompt = p;
    r.max_new_tokens = 12;
    r.sampling.temperature = 0.8;
    r.sampling.seed = 7;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  auto a = Generator(*cpu, 8).run(reqs, {});
  auto b = Generator(*sim, 8).run(reqs, {});
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++) EXPECT_EQ(a[i].tokens, b[i].tokens) << "request " << i;
  std::vector<int32_t> text;  // every prompt, in windows of 8
  for (const auto& r : reqs) text.insert(text.end(), r.prompt.begin(), r.prompt.end());
  const PerplexityResult pa = perplexity(*cpu, text, 8), pb = perplexity(*sim, text, 8);
  EXPECT_GT(pa.windows, 2);
  EXPECT_EQ(pa.mean_nll, pb.mean_nll);
}

namespace {

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;  // sampled and top tokens', then prompt logprobs
  bool operator==(const Outcome&) const = default;
};

// Sampled requests with logprobs, one with prompt logprobs, a repeated prompt (prefix-cache hits) and an n = 2
// pair sharing its prompt blocks (copy-on-write when both write into the shared last block).
std::map<uint64_t, Outcome> serve(LlamaModel& m, KVCacheDType kv) {
  LetterTokenizer tok;
  EngineConfig cfg;
  cfg.block_size = 4;
  cfg.num_blocks = 48;
  cfg.max_num_batched_tokens = 20;
  cfg.enable_prefix_caching = true;
  cfg.kv_dtype = kv;
  Engine e(m, tok, cfg);
  auto prompts = fixture_prompts("gqa");
  prompts.push_back(prompts[0]);
  RequestParams p;
  p.sampling.temperature = 0.9;
  p.sampling.top_k = 8;
  p.max_new_tokens = 10;
  p.ignore_eos = true;
  p.logprobs = 2;
  for (size_t i = 0; i < prompts.size(); i++) {
    p.sampling.seed = 100 + i;
    p.prompt_logprobs = i == 1;
    e.add_request(prompts[i], p);
  }
  p.prompt_logprobs = false;
  const uint64_t first = e.add_request(prompts[2], p);
  p.share_prompt_with = first;
  e.add_request(prompts[2], p);
  std::map<uint64_t, Outcome> out;
  for (int guard = 0; e.has_work(); guard++) {
    if (guard > 10000) throw Error("engine did not finish");
    for (const RequestOutput& o : e.step()) {
      Outcome& r = out[o.request_id];
      r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      for (const auto* lps : {&o.logprobs, &o.prompt_logprobs})
        for (const TokenLogprob& lp : *lps) {
          r.logprobs.push_back(lp.logprob);
          for (auto& [id, v] : lp.top) r.logprobs.push_back(v + float(id));
        }
    }
  }
  return out;
}

}  // namespace

TEST(SimEngine, PagedKvPrefixSharingAndLogprobsEqualTheCpuBackends) {
  auto cpu = LlamaModel::load(model_dir("gqa"), DType::F32, cpu_backend());
  auto sim = LlamaModel::load(model_dir("gqa"), DType::F32, backend("sim"));
  for (KVCacheDType kv : {KVCacheDType::F32, KVCacheDType::Int8Dynamic}) {
    auto a = serve(*cpu, kv), b = serve(*sim, kv);
    ASSERT_EQ(a.size(), b.size());
    for (auto& [id, r] : a) {
      EXPECT_EQ(r.tokens.size(), 10u) << "request " << id;
      EXPECT_TRUE(r == b[id]) << "request " << id << ", kv " << kv_cache_dtype_name(kv);
    }
  }
}

namespace {

struct TrainOutcome {
  std::vector<double> losses, grad_norms;
  std::vector<std::pair<std::string, Tensor>> weights, optimizer_state;  // host copies
  Tensor logits;
};

// Three optimizer steps of two micro-batches each (labels partly ignored, one packed row of two segments):
// forward, backward, global-norm clip, AdamW with weight decay.
TrainOutcome train(Backend& be, DType compute, bool lora, bool recompute) {
  TrainOptions opt;
  opt.compute = compute;
  opt.recompute = recompute;
  auto m = TrainableLlama::from_pretrained(model_dir("gqa"), opt, be);
  if (lora) {
    LoraOptions lo;
    lo.rank = 4;
    m->add_lora(lo);
  }
  AdamWConfig ac;
  ac.weight_decay = 0.1;
  AdamW adam(ac, m->parameters());
  const int64_t B = 2, L = 12;
  TrainOutcome out;
  for (int step = 0; step < 3; step++) {
    m->zero_grad();
    for (int micro = 0; micro < 2; micro++) {
      std::vector<int32_t> ids, labels;
      for (int64_t t = 0; t < B * L; t++) {
        ids.push_back(int32_t(3 + (t * 7 + step * 5 + micro * 11) % 60));
        labels.push_back(t % 5 == 0 ? -100 : int32_t(3 + (t * 13 + step) % 60));
      }
      TrainBatch b = TrainBatch::causal(B, L, ids, labels);
      b.segment_ids.assign(size_t(B * L), 0);
      for (int64_t i = L + 5; i < 2 * L; i++) b.segment_ids[size_t(i)] = 1;  // row 1 packs two examples
      out.losses.push_back(m->forward_backward(b, 0.5f));
    }
    const double norm = std::sqrt(grad_sq_sum(m->parameters()));
    out.grad_norms.push_back(norm);
    clip_grads(m->parameters(), norm, 0.5);
    adam.step(1e-3);
  }
  for (auto& [name, t] : m->export_weights(true)) out.weights.emplace_back(name, t.contiguous());
  out.optimizer_state = adam.state_tensors();
  std::vector<int32_t> ids(size_t(L), 7);
  out.logits = m->forward_logits(TrainBatch::causal(1, L, ids, std::vector<int32_t>(size_t(L), -100)));
  return out;
}

void expect_same(const std::vector<std::pair<std::string, Tensor>>& a, const std::vector<std::pair<std::string, Tensor>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(same_bits(a[i].second, b[i].second)) << a[i].first;
  }
}

}  // namespace

// Full fine-tuning and LoRA, in float32 and bfloat16, with and without recompute: every loss, gradient norm,
// weight, optimizer moment and the final logits are bit-identical on sim and cpu.
TEST(SimTrain, StepsOptimizerAndLogitsEqualTheCpuBackendsBitForBit) {
  struct Case {
    DType compute;
    bool lora, recompute;
  };
  for (Case k : {Case{DType::F32, true, false}, Case{DType::BF16, true, true}, Case{DType::F32, false, false}}) {
    SCOPED_TRACE(std::string(dtype_name(k.compute)) + (k.lora ? " lora" : " full") + (k.recompute ? " recompute" : ""));
    TrainOutcome a = train(cpu_backend(), k.compute, k.lora, k.recompute);
    TrainOutcome b = train(backend("sim"), k.compute, k.lora, k.recompute);
    EXPECT_EQ(a.losses, b.losses);
    EXPECT_EQ(a.grad_norms, b.grad_norms);
    EXPECT_GT(a.grad_norms.back(), 0.0);
    EXPECT_NE(a.losses.front(), a.losses.back());  // the steps changed the model
    expect_same(a.weights, b.weights);
    expect_same(a.optimizer_state, b.optimizer_state);
    EXPECT_TRUE(same_bits(a.logits, b.logits));
  }
}

TEST(Weight, PackWeightConvertsOnceAndKeepsAMatchingMatrixZeroCopyOnTheCpu) {
  Tensor host = Tensor::empty({3, 4}, DType::F32);
  for (int i = 0; i < 12; i++) host.data<float>()[i] = 0.1f * float(i) - 0.5f;
  const Weight same = cpu_backend().pack_weight(host, WeightFormat::F32);
  EXPECT_EQ(same.data.raw(), host.raw());  // no copy
  EXPECT_EQ(same.out, 3);
  EXPECT_EQ(same.in, 4);
  const Weight bf = cpu_backend().pack_weight(host, WeightFormat::BF16);
  EXPECT_EQ(bf.format, WeightFormat::BF16);
  EXPECT_TRUE(same_bits(bf.data, host.to(DType::BF16)));
  EXPECT_EQ(bf.bytes(), 12u * 2);
  const Weight on_sim = backend("sim").pack_weight(host, WeightFormat::BF16);
  EXPECT_EQ(on_sim.device(), Device::Sim);
  EXPECT_TRUE(same_bits(backend("sim").download(on_sim.data), bf.data));
  EXPECT_THROW(Weight::dense(Tensor::empty({12}, DType::F32)), Error);
  EXPECT_THROW(cpu_backend().pack_weight(Tensor::empty({12}, DType::F32), WeightFormat::F32), Error);
}

TEST(Weight, LinearRefusesWeightsThatDoNotMatchTheirFormat) {
  Tensor x = Tensor::empty({1, 4}, DType::F32), y = Tensor::empty({1, 3}, DType::F32);
  Weight f16 = Weight::dense(Tensor::empty({3, 4}, DType::BF16));
  f16.format = WeightFormat::F16;  // bfloat16 data called float16
  EXPECT_THROW(cpu_backend().ops().linear(x, f16, nullptr, y), Error);
  Weight lying = Weight::dense(Tensor::empty({3, 4}, DType::F32));
  lying.format = WeightFormat::BF16;  // data that does not match the format
  EXPECT_THROW(cpu_backend().ops().linear(x, lying, nullptr, y), Error);
  lying = Weight::dense(Tensor::empty({3, 4}, DType::F32));
  lying.out = 4;  // a logical shape that does not match the data
  EXPECT_THROW(cpu_backend().ops().linear(x, lying, nullptr, y), Error);
}
