// TrainableLlama against Hugging Face: loss and every parameter's gradient on the committed models (fixtures made by
// tests/reference/make_grad_fixtures.py with transformers' LlamaForCausalLM and torch autograd, float32, eager), and
// the properties the trainer relies on: recompute changes nothing, packing equals separate rows, bf16/fp16 stay close
// to fp32 and fp16 overflow reaches the gradients, LoRA gradients agree with the merged model's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "io/safetensors.h"
#include "train/optimizer.h"
#include "train/trainable_llama.h"
#include "test_model_util.h"

using namespace oar;

namespace {

std::string fixtures() { return std::string(OAR_FIXTURES_DIR); }
std::string model_dir(const std::string& name) { return fixtures() + "/models/" + name; }

TrainBatch fixture_batch(const std::string& json_path) {
  auto j = nlohmann::json::parse(read_file(json_path))["batch"];
  TrainBatch b;
  b.B = j["B"];
  b.L = j["L"];
  b.input_ids = j["input_ids"].get<std::vector<int32_t>>();
  b.position_ids = j["position_ids"].get<std::vector<int32_t>>();
  b.segment_ids = j["segment_ids"].get<std::vector<int32_t>>();
  b.labels = j["labels"].get<std::vector<int32_t>>();
  return b;
}

// max |a - b| / max |b|
double rel_err(const Tensor& a, const Tensor& b) {
  double mx = 0, d = 0;
  for (int64_t i = 0; i < b.numel(); i++) {
    mx = std::max(mx, double(std::fabs(b.item_f32(i))));
    d = std::max(d, double(std::fabs(a.item_f32(i) - b.item_f32(i))));
  }
  return d / std::max(mx, 1e-30);
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::vector<Tensor> grads_copy(TrainableLlama& m) {
  std::vector<Tensor> g;
  for (Parameter* p : m.parameters())
    if (p->trainable) g.push_back(p->grad.contiguous());
  return g;
}

LlamaConfig small_config() { return test::small_train_config(); }

std::vector<int32_t> seq_ids(int64_t n, int64_t vocab, int seed) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  uint32_t x = uint32_t(seed) * 2654435761u + 12345u;
  for (auto& t : v) {
    x = x * 1664525u + 1013904223u;
    t = int32_t((x >> 8) % uint32_t(vocab));
  }
  return v;
}

}  // namespace

class HfGradients : public ::testing::TestWithParam<const char*> {};

// Loss within 1e-5 and every gradient within 1e-4 of its largest element, on a batch with a packed row (two examples,
// positions restarting, no attention across) and a row with unlabelled prompt tokens.
TEST_P(HfGradients, LossAndEveryGradientMatchTransformers) {
  const std::string name = GetParam();
  auto m = TrainableLlama::from_pretrained(model_dir(name), TrainOptions{});
  TrainBatch b = fixture_batch(fixtures() + "/grads/" + name + ".json");
  WeightStore ref = WeightStore::open_file(fixtures() + "/grads/" + name + ".safetensors");
  m->zero_grad();
  LossStats st;
  const double loss = m->forward_backward(b, 1.0f, &st);
  const double want = ref.get("loss").item_f32(0);
  EXPECT_NEAR(loss, want, 1e-5 * std::max(1.0, std::fabs(want)));
  int64_t counted = 0;
  for (int32_t l : b.labels) counted += l != -100;
  EXPECT_EQ(st.tokens, counted);
  int checked = 0;
  double worst = 0;
  for (Parameter* p : m->parameters()) {
    ASSERT_TRUE(ref.has("grad." + p->name)) << p->name;
    Tensor g = ref.get("grad." + p->name);
    ASSERT_EQ(g.shape(), p->grad.shape()) << p->name;
    const double e = rel_err(p->grad, g);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-4) << name << " " << p->name;
    checked++;
  }
  EXPECT_EQ(checked, int(ref.names().size()) - 1);
  std::printf("  %s: loss %.7f (HF %.7f), worst gradient error %.2e of its largest element\n", name.c_str(), loss, want, worst);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfGradients, ::testing::Values("mha", "gqa", "tied"),
                         [](const auto& info) { return std::string(info.param); });

// No gradient: forward_logits reproduces the model fixtures' float32 logits (also attention biases, llama3 RoPE
// scaling and half-precision storage, which have no gradient fixture).
TEST(TrainableLlama, LogitsMatchModelFixtures) {
  for (const char* name : {"mha", "gqa", "tied", "attn_bias", "llama3_rope", "sharded_bf16"}) {
    auto m = TrainableLlama::from_pretrained(model_dir(name), TrainOptions{});
    auto j = nlohmann::json::parse(read_file(model_dir(name) + "/expected.json"));
    WeightStore exp = WeightStore::open_file(model_dir(name) + "/expected.safetensors");
    for (auto& p : j["prompts"]) {
      auto ids = p["ids"].get<std::vector<int32_t>>();
      const int64_t n = int64_t(ids.size());
      Tensor got = m->forward_logits(TrainBatch::causal(1, n, ids, std::vector<int32_t>(size_t(n), -100)));
      EXPECT_LE(rel_err(got, exp.get(p["logits_key"].get<std::string>())), 1e-4) << name << " prompt of " << n;
    }
  }
}

// Activation checkpointing recomputes each layer with the same deterministic kernels: identical bits.
TEST(TrainableLlama, RecomputeGivesIdenticalGradients) {
  for (DType dt : {DType::F32, DType::BF16}) {
    auto m = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{dt, false});
    TrainBatch b = fixture_batch(fixtures() + "/grads/gqa.json");
    m->zero_grad();
    const double l1 = m->forward_backward(b, 1.0f);
    auto g1 = grads_copy(*m);
    m->options().recompute = true;
    m->zero_grad();
    const double l2 = m->forward_backward(b, 1.0f);
    auto g2 = grads_copy(*m);
    EXPECT_EQ(l1, l2);
    ASSERT_EQ(g1.size(), g2.size());
    for (size_t i = 0; i < g1.size(); i++) EXPECT_TRUE(bitwise_equal(g1[i], g2[i])) << dtype_name(dt) << " parameter " << i;
  }
}

// The backward reports each trainable parameter once, in backward order (head and final norm, the last layer
// first, the embedding), and only once its gradient is complete: the gradient seen at the report is the final one.
TEST(TrainableLlama, ReportsEachGradientWhenComplete) {
  for (bool lora : {false, true}) {
    auto m = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{DType::F32, lora});
    if (lora) m->add_lora(LoraOptions{});
    TrainBatch b = fixture_batch(fixtures() + "/grads/gqa.json");
    m->zero_grad();
    std::map<Parameter*, Tensor> seen;
    std::vector<std::string> order;
    m->forward_backward(b, 1.0f, nullptr, [&](const std::vector<Parameter*>& ps) {
      for (Parameter* p : ps) {
        EXPECT_TRUE(seen.emplace(p, p->grad.contiguous()).second) << p->name << " reported twice";
        order.push_back(p->name);
      }
    });
    size_t trainable = 0;
    for (Parameter* p : m->parameters()) {
      if (!p->trainable) continue;
      trainable++;
      ASSERT_TRUE(seen.count(p)) << p->name << " never reported";
      EXPECT_TRUE(bitwise_equal(seen[p], p->grad)) << p->name << " reported before its gradient was complete";
    }
    EXPECT_EQ(seen.size(), trainable);
    const std::string last_layer = "model.layers." + std::to_string(m->config().num_hidden_layers - 1) + ".";
    EXPECT_EQ(order.front(), lora ? last_layer + "self_attn.q_proj.lora_A.weight" : "model.norm.weight");
    if (!lora) EXPECT_EQ(order.back(), "model.embed_tokens.weight");
  }
}

// LoRA and bf16 with recompute: still bitwise identical.
TEST(TrainableLlama, RecomputeWithLoraIdentical) {
  auto m = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{DType::BF16, false});
  LoraOptions lo;
  lo.rank = 4;
  m->add_lora(lo);
  for (Parameter* p : m->parameters())
    if (p->name.find("lora_B") != std::string::npos)
      for (int64_t i = 0; i < p->value.numel(); i++) p->value.data<float>()[i] = 0.01f * float(i % 5);
  TrainBatch b = fixture_batch(fixtures() + "/grads/gqa.json");
  m->zero_grad();
  m->forward_backward(b, 1.0f);
  auto g1 = grads_copy(*m);
  m->options().recompute = true;
  m->zero_grad();
  m->forward_backward(b, 1.0f);
  auto g2 = grads_copy(*m);
  ASSERT_EQ(g1.size(), size_t(2 * 7 * 2));
  for (size_t i = 0; i < g1.size(); i++) EXPECT_TRUE(bitwise_equal(g1[i], g2[i])) << i;
}

// Two examples packed in one row (segments, positions restarting) give the loss and gradients of the same two
// examples in separate rows (the shorter one padded: segment -1, label -100).
TEST(TrainableLlama, PackedRowEqualsSeparateRows) {
  const LlamaConfig cfg = small_config();
  auto m = TrainableLlama::random(cfg, TrainOptions{}, 7);
  auto e1 = seq_ids(5, cfg.vocab_size, 1), e2 = seq_ids(7, cfg.vocab_size, 2);
  auto labels_of = [](const std::vector<int32_t>& e) {
    std::vector<int32_t> l(e.begin() + 1, e.end());
    l.push_back(-100);
    return l;
  };
  TrainBatch packed;
  packed.B = 1;
  packed.L = 12;
  for (int s = 0; s < 2; s++) {
    const auto& e = s == 0 ? e1 : e2;
    auto l = labels_of(e);
    for (size_t i = 0; i < e.size(); i++) {
      packed.input_ids.push_back(e[i]);
      packed.labels.push_back(l[i]);
      packed.position_ids.push_back(int32_t(i));
      packed.segment_ids.push_back(s);
    }
  }
  TrainBatch sep;
  sep.B = 2;
  sep.L = 7;
  for (int s = 0; s < 2; s++) {
    const auto& e = s == 0 ? e1 : e2;
    auto l = labels_of(e);
    for (size_t i = 0; i < 7; i++) {
      const bool pad = i >= e.size();
      sep.input_ids.push_back(pad ? 0 : e[i]);
      sep.labels.push_back(pad ? -100 : l[i]);
      sep.position_ids.push_back(int32_t(i));
      sep.segment_ids.push_back(pad ? -1 : 0);
    }
  }
  m->zero_grad();
  LossStats s1, s2;
  const double l1 = m->forward_backward(packed, 1.0f, &s1);
  auto g1 = grads_copy(*m);
  m->zero_grad();
  const double l2 = m->forward_backward(sep, 1.0f, &s2);
  auto g2 = grads_copy(*m);
  EXPECT_EQ(s1.tokens, 10);
  EXPECT_EQ(s2.tokens, 10);
  EXPECT_NEAR(l1, l2, 1e-6 * std::fabs(l2));
  for (size_t i = 0; i < g1.size(); i++) EXPECT_LE(rel_err(g1[i], g2[i]), 1e-5) << m->parameters()[i]->name;
}

// Accumulating two half-scaled passes equals one full pass (the trainer's gradient accumulation).
TEST(TrainableLlama, GradientsAccumulateWithScale) {
  auto m = TrainableLlama::from_pretrained(model_dir("mha"), TrainOptions{});
  TrainBatch b = fixture_batch(fixtures() + "/grads/mha.json");
  m->zero_grad();
  m->forward_backward(b, 1.0f);
  auto g1 = grads_copy(*m);
  m->zero_grad();
  m->forward_backward(b, 0.5f);
  m->forward_backward(b, 0.5f);
  auto g2 = grads_copy(*m);
  for (size_t i = 0; i < g1.size(); i++) EXPECT_LE(rel_err(g2[i], g1[i]), 1e-6);
}

// bf16 and emulated fp16 compute stay close to fp32: loss within 2%, gradients within 5% of their largest element
// (operands rounded to 8 / 11 significant bits in every product of two layers; the f32 HF test pins the math).
TEST(TrainableLlama, HalfPrecisionComputeCloseToFloat32) {
  TrainBatch b = fixture_batch(fixtures() + "/grads/gqa.json");
  auto ref = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{});
  ref->zero_grad();
  const double l32 = ref->forward_backward(b, 1.0f);
  auto g32 = grads_copy(*ref);
  for (DType dt : {DType::BF16, DType::F16}) {
    auto m = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{dt, false});
    m->zero_grad();
    const double l = m->forward_backward(b, 1.0f);
    EXPECT_NEAR(l, l32, 0.02 * l32) << dtype_name(dt);
    auto g = grads_copy(*m);
    const double tol = dt == DType::BF16 ? 0.05 : 0.01;
    for (size_t i = 0; i < g.size(); i++) EXPECT_LE(rel_err(g[i], g32[i]), tol) << dtype_name(dt) << " " << i;
    // evaluation and logits run in the compute dtype too
    EXPECT_NEAR(m->forward_loss(b), l, 1e-9 + 1e-6 * l);
  }
}

// fp16: a loss scale large enough to overflow float16 gives inf/NaN gradients (the loss scaler's signal), and the
// next normal step is clean again.
TEST(TrainableLlama, Float16OverflowReachesGradients) {
  auto m = TrainableLlama::from_pretrained(model_dir("mha"), TrainOptions{DType::F16, false});
  TrainBatch b = fixture_batch(fixtures() + "/grads/mha.json");
  auto finite = [&] {
    for (Parameter* p : m->parameters())
      for (int64_t i = 0; i < p->grad.numel(); i++)
        if (!std::isfinite(p->grad.data<float>()[i])) return false;
    return true;
  };
  m->zero_grad();
  const double loss = m->forward_backward(b, 1e9f);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_FALSE(finite());
  m->zero_grad();
  m->forward_backward(b, 1024.0f);
  EXPECT_TRUE(finite());
}

// LoRA: B starts at zero (the model is unchanged), only adapters train and hold gradients, and the adapters'
// gradients equal the chain rule through the merged weight W' = W + s B A: dB = s G A^T, dA = s B^T G, where G is
// the plain model's weight gradient at W'.
TEST(TrainableLlama, LoraGradientsMatchMergedModel) {
  const LlamaConfig cfg = small_config();
  TrainBatch b = TrainBatch::causal(2, 10, seq_ids(20, cfg.vocab_size, 3), seq_ids(20, cfg.vocab_size, 4));
  b.labels[0] = -100;
  auto lm = TrainableLlama::random(cfg, TrainOptions{}, 11);
  Tensor base_logits = lm->forward_logits(b);
  LoraOptions lo;
  lo.rank = 3;
  lo.alpha = 6;
  lm->add_lora(lo);
  EXPECT_TRUE(lm->has_lora());
  EXPECT_EQ(rel_err(lm->forward_logits(b), base_logits), 0.0);
  const float s = float(lo.alpha / double(lo.rank));
  // A's initialisation: U(-1/sqrt(in), 1/sqrt(in))
  Parameter* a0 = lm->find("model.layers.0.self_attn.q_proj.lora_A.weight");
  ASSERT_NE(a0, nullptr);
  float amax = 0;
  for (int64_t i = 0; i < a0->value.numel(); i++) amax = std::max(amax, std::fabs(a0->value.data<float>()[i]));
  EXPECT_LE(amax, 1.0f / std::sqrt(float(cfg.hidden_size)));
  EXPECT_GT(amax, 0.5f / std::sqrt(float(cfg.hidden_size)));
  // give B values so that every gradient path is exercised
  int64_t adapters = 0;
  for (Parameter* p : lm->parameters()) {
    if (p->name.find("lora_B") != std::string::npos)
      for (int64_t i = 0; i < p->value.numel(); i++) p->value.data<float>()[i] = 0.05f * std::sin(float(i + 7 * adapters));
    if (p->trainable) adapters++;
    else EXPECT_FALSE(p->grad.defined()) << p->name;
  }
  EXPECT_EQ(adapters, 2 * 7 * cfg.num_hidden_layers);
  lm->zero_grad();
  const double l_lora = lm->forward_backward(b, 1.0f);

  // The merged model: same weights with W + s B A in every projection.
  auto merged = TrainableLlama::random(cfg, TrainOptions{}, 11);
  for (Parameter* p : merged->parameters()) {
    if (p->name.find("proj.weight") == std::string::npos) continue;
    Parameter* a = lm->find(p->name.substr(0, p->name.size() - 7) + ".lora_A.weight");
    Parameter* bb = lm->find(p->name.substr(0, p->name.size() - 7) + ".lora_B.weight");
    const int64_t out = p->value.dim(0), in = p->value.dim(1), r = lo.rank;
    for (int64_t o = 0; o < out; o++)
      for (int64_t i = 0; i < in; i++) {
        double d = 0;
        for (int64_t k = 0; k < r; k++) d += double(bb->value.data<float>()[o * r + k]) * a->value.data<float>()[k * in + i];
        p->value.data<float>()[o * in + i] += float(s * d);
      }
  }
  merged->zero_grad();
  const double l_merged = merged->forward_backward(b, 1.0f);
  EXPECT_NEAR(l_lora, l_merged, 1e-5 * l_merged);
  for (Parameter* p : merged->parameters()) {
    if (p->name.find("proj.weight") == std::string::npos) continue;
    const std::string stem = p->name.substr(0, p->name.size() - 7);
    Parameter* a = lm->find(stem + ".lora_A.weight");
    Parameter* bb = lm->find(stem + ".lora_B.weight");
    ASSERT_TRUE(a && bb) << stem;
    const int64_t out = p->value.dim(0), in = p->value.dim(1), r = lo.rank;
    Tensor dA = Tensor::empty({r, in}, DType::F32), dB = Tensor::empty({out, r}, DType::F32);
    const float* G = p->grad.data<float>();
    for (int64_t k = 0; k < r; k++)
      for (int64_t i = 0; i < in; i++) {
        double v = 0;
        for (int64_t o = 0; o < out; o++) v += double(bb->value.data<float>()[o * r + k]) * G[o * in + i];
        dA.data<float>()[k * in + i] = float(s * v);
      }
    for (int64_t o = 0; o < out; o++)
      for (int64_t k = 0; k < r; k++) {
        double v = 0;
        for (int64_t i = 0; i < in; i++) v += double(G[o * in + i]) * a->value.data<float>()[k * in + i];
        dB.data<float>()[o * r + k] = float(s * v);
      }
    EXPECT_LE(rel_err(a->grad, dA), 1e-4) << stem;
    EXPECT_LE(rel_err(bb->grad, dB), 1e-4) << stem;
  }
}

// Optional PEFT fixture (make_grad_fixtures.py --lora): the adapters' gradients from PEFT + transformers.
TEST(TrainableLlama, LoraGradientsMatchPeft) {
  const std::string base = fixtures() + "/grads/gqa_lora";
  if (!file_exists(base + ".safetensors")) GTEST_SKIP() << "no PEFT gradient fixture";
  auto m = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{});
  LoraOptions lo;
  lo.rank = 4;
  lo.alpha = 8;
  m->add_lora(lo);
  WeightStore ref = WeightStore::open_file(base + ".safetensors");
  for (Parameter* p : m->parameters()) {
    if (!p->trainable) continue;
    Tensor v = ref.get("value." + p->name);
    std::memcpy(p->value.raw(), v.raw(), v.nbytes());
  }
  TrainBatch b = fixture_batch(base + ".json");
  m->zero_grad();
  const double loss = m->forward_backward(b, 1.0f);
  EXPECT_NEAR(loss, ref.get("loss").item_f32(0), 1e-5 * loss);
  for (Parameter* p : m->parameters())
    if (p->trainable) EXPECT_LE(rel_err(p->grad, ref.get("grad." + p->name)), 1e-4) << p->name;
}

// Names and order follow Hugging Face's named_parameters(); random init follows HF's scheme.
TEST(TrainableLlama, ParametersNamesOrderAndInit) {
  LlamaConfig cfg = small_config();
  cfg.tie_word_embeddings = true;
  auto m = TrainableLlama::random(cfg, TrainOptions{}, 5);
  auto ps = m->parameters();
  ASSERT_EQ(ps.size(), size_t(1 + 9 * cfg.num_hidden_layers + 1));
  EXPECT_EQ(ps[0]->name, "model.embed_tokens.weight");
  EXPECT_EQ(ps[1]->name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(ps[8]->name, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(ps.back()->name, "model.norm.weight");
  EXPECT_EQ(m->find("lm_head.weight"), ps[0]);
  for (const auto& [name, t] : m->export_weights(false)) EXPECT_NE(name, "lm_head.weight");
  EXPECT_EQ(ps[8]->value.item_f32(3), 1.0f);
  double ss = 0;
  const Tensor& e = ps[0]->value;
  for (int64_t i = 0; i < e.numel(); i++) ss += double(e.item_f32(i)) * e.item_f32(i);
  EXPECT_NEAR(std::sqrt(ss / double(e.numel())), cfg.initializer_range, 0.02 * cfg.initializer_range * 5);
  // same seed, same weights
  auto m2 = TrainableLlama::random(cfg, TrainOptions{}, 5);
  EXPECT_TRUE(bitwise_equal(m2->parameters()[3]->value, ps[3]->value));
}

TEST(TrainableLlama, BadBatchesAreErrors) {
  auto m = TrainableLlama::random(small_config(), TrainOptions{}, 1);
  TrainBatch b = TrainBatch::causal(1, 4, {1, 2, 3, 4}, {2, 3, 4, -100});
  EXPECT_NO_THROW(m->forward_loss(b));
  TrainBatch bad_label = b;
  bad_label.labels[0] = 96;
  EXPECT_THROW(m->forward_backward(bad_label, 1.0f), Error);
  TrainBatch bad_id = b;
  bad_id.input_ids[1] = -1;
  EXPECT_THROW(m->forward_loss(bad_id), Error);
  TrainBatch bad_size = b;
  bad_size.labels.pop_back();
  EXPECT_THROW(m->forward_loss(bad_size), Error);
  TrainBatch bad_pos = b;
  bad_pos.position_ids[3] = 64;
  EXPECT_THROW(m->forward_loss(bad_pos), Error);
  EXPECT_THROW(TrainBatch::causal(2, 3, {1, 2}, {1, 2}), Error);
  m->options().compute = DType::I8;
  EXPECT_THROW(m->forward_loss(b), Error);
  m->options().compute = DType::F32;
  LoraOptions lo;
  lo.targets = {"qkv_proj"};
  EXPECT_THROW(m->add_lora(lo), Error);
  // nothing labelled: loss 0, no gradient
  m->zero_grad();
  TrainBatch none = TrainBatch::causal(1, 4, {1, 2, 3, 4}, {-100, -100, -100, -100});
  LossStats st;
  EXPECT_EQ(m->forward_backward(none, 1.0f, &st), 0.0);
  EXPECT_EQ(st.tokens, 0);
  for (Parameter* p : m->parameters())
    for (int64_t i = 0; i < p->grad.numel(); i++) ASSERT_EQ(p->grad.data<float>()[i], 0.0f);
}

// Parameters, gradients and the optimizer's moments are views of flat buffers, one per group, found by name:
// slots in order, 64-byte aligned, disjoint; LoRA adds a group and frees the frozen base's gradient buffer.
TEST(TrainableLlama, ParametersLiveInFlatBuffersAddressableByName) {
  auto m = TrainableLlama::from_pretrained(model_dir("gqa"), TrainOptions{});
  auto groups = m->flat_groups();
  ASSERT_EQ(groups.size(), 1u);
  int64_t end = 0;
  for (const FlatSlot& s : groups[0].layout->slots()) {
    Parameter* p = m->find(s.name);
    ASSERT_NE(p, nullptr) << s.name;
    EXPECT_EQ(p->value.storage(), groups[0].values.storage()) << s.name;
    EXPECT_EQ(p->grad.storage(), groups[0].grads.storage()) << s.name;
    EXPECT_EQ(static_cast<const char*>(p->value.raw()) - static_cast<const char*>(groups[0].values.raw()), s.offset * 4);
    EXPECT_EQ(s.offset % 16, 0) << s.name;
    EXPECT_GE(s.offset, end) << s.name;
    end = s.offset + s.numel;
  }
  EXPECT_EQ(groups[0].layout->slots().size(), m->parameters().size());
  EXPECT_EQ(groups[0].layout->find("model.norm.weight")->shape, (Shape{m->config().hidden_size}));
  LoraOptions lo;
  lo.rank = 2;
  lo.targets = {"q_proj", "v_proj"};
  m->add_lora(lo);
  groups = m->flat_groups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_FALSE(groups[0].grads.defined());
  EXPECT_EQ(groups[1].layout->slots().size(), size_t(2 * 2 * m->config().num_hidden_layers));
  Parameter* a = m->find("model.layers.1.self_attn.v_proj.lora_A.weight");
  EXPECT_EQ(a->grad.storage(), groups[1].grads.storage());
  AdamW adam(AdamWConfig{}, m->parameters());
  auto st = adam.state_tensors();
  ASSERT_EQ(st.size(), 2 * groups[1].layout->slots().size());
  EXPECT_EQ(st[0].second.storage(), st[2].second.storage());  // two parameters' exp_avg: one buffer
}
