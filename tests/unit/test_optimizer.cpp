// AdamW, clipping, learning-rate schedules and dynamic loss scaling against hand-computed and independently
// computed (double precision) references.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "train/loss_scaler.h"
#include "train/lr_schedule.h"
#include "train/optimizer.h"

namespace oar {
namespace {

Parameter make_param(const std::string& name, std::vector<float> v, bool trainable = true) {
  Parameter p;
  p.name = name;
  p.value = Tensor::empty({int64_t(v.size())}, DType::F32);
  p.grad = Tensor::empty({int64_t(v.size())}, DType::F32);
  std::copy(v.begin(), v.end(), p.value.data<float>());
  p.trainable = trainable;
  return p;
}

void set_grad(Parameter& p, std::vector<float> g) { std::copy(g.begin(), g.end(), p.grad.data<float>()); }

TEST(AdamW, DecayAppliesToWeightsNotToNormsOrBiases) {
  EXPECT_TRUE(decays_weight("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(decays_weight("model.embed_tokens.weight"));
  EXPECT_TRUE(decays_weight("lm_head.weight"));
  EXPECT_TRUE(decays_weight("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  EXPECT_FALSE(decays_weight("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(decays_weight("model.layers.3.post_attention_layernorm.weight"));
  EXPECT_FALSE(decays_weight("model.norm.weight"));
  EXPECT_FALSE(decays_weight("model.layers.0.self_attn.q_proj.bias"));
}

TEST(AdamW, FirstStepMovesEachWeightByLrTimesSignOfGradient) {
  // After one step m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps): lr * sign(g).
  Parameter w = make_param("w", {1.0f, -2.0f, 0.5f});
  set_grad(w, {0.3f, -4.0f, 1e-3f});
  AdamWConfig c;
  c.epsilon = 1e-8;
  AdamW opt(c, {&w});
  opt.step(0.01);
  EXPECT_NEAR(w.value.data<float>()[0], 1.0f - 0.01f, 1e-6);
  EXPECT_NEAR(w.value.data<float>()[1], -2.0f + 0.01f, 1e-6);
  EXPECT_NEAR(w.value.data<float>()[2], 0.5f - 0.01f * (1e-3f / (1e-3f + 1e-8f)), 1e-6);
  EXPECT_EQ(opt.steps(), 1);
}

TEST(AdamW, DecoupledDecayIsAppliedBeforeTheUpdateAndSkipsNorms) {
  Parameter w = make_param("layer.weight", {2.0f});
  Parameter n = make_param("layer.norm.weight", {2.0f});
  set_grad(w, {0.0f});
  set_grad(n, {0.0f});
  AdamWConfig c;
  c.weight_decay = 0.1;
  AdamW opt(c, {&w, &n});
  opt.step(0.5);
  // Zero gradient: only the decay moves w: 2 * (1 - 0.5 * 0.1).
  EXPECT_FLOAT_EQ(w.value.data<float>()[0], 2.0f * 0.95f);
  EXPECT_FLOAT_EQ(n.value.data<float>()[0], 2.0f);
}

TEST(AdamW, MatchesADoublePrecisionReferenceOverManySteps) {
  const int n = 64, steps = 25;
  std::vector<float> init(n);
  for (int i = 0; i < n; i++) init[size_t(i)] = std::sin(0.37f * float(i));
  Parameter w = make_param("proj.weight", init);
  AdamWConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.epsilon = 1e-6;
  c.weight_decay = 0.01;
  AdamW opt(c, {&w});
  std::vector<double> p(init.begin(), init.end()), m(size_t(n), 0), v(size_t(n), 0);
  for (int t = 1; t <= steps; t++) {
    const double lr = 1e-2 * (1.0 - 0.02 * t);
    std::vector<float> g(static_cast<size_t>(n));
    for (int i = 0; i < n; i++) g[size_t(i)] = std::cos(0.11f * float(i * t)) + 0.1f * float(i % 3);
    set_grad(w, g);
    opt.step(lr);
    for (int i = 0; i < n; i++) {
      const double gi = g[size_t(i)];
      p[size_t(i)] *= 1 - lr * c.weight_decay;
      m[size_t(i)] = c.beta1 * m[size_t(i)] + (1 - c.beta1) * gi;
      v[size_t(i)] = c.beta2 * v[size_t(i)] + (1 - c.beta2) * gi * gi;
      const double mh = m[size_t(i)] / (1 - std::pow(c.beta1, t)), vh = v[size_t(i)] / (1 - std::pow(c.beta2, t));
      p[size_t(i)] -= lr * mh / (std::sqrt(vh) + c.epsilon);
    }
  }
  for (int i = 0; i < n; i++) EXPECT_NEAR(w.value.data<float>()[i], p[size_t(i)], 2e-5) << i;
}

TEST(AdamW, FrozenParametersGetNoStateAndStateRoundTrips) {
  Parameter a = make_param("a.weight", {1, 2, 3});
  Parameter frozen = make_param("base.weight", {5, 5}, false);
  set_grad(a, {0.1f, 0.2f, -0.3f});
  AdamW opt({}, {&a, &frozen});
  opt.step(1e-3);
  auto st = opt.state_tensors();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].first, "a.weight.exp_avg");
  EXPECT_EQ(st[1].first, "a.weight.exp_avg_sq");
  EXPECT_EQ(opt.state_bytes(), 2 * 3 * 4);
  EXPECT_FLOAT_EQ(frozen.value.data<float>()[0], 5.0f);

  // A second optimizer restored from the state continues identically.
  Parameter b = make_param("a.weight", {a.value.data<float>()[0], a.value.data<float>()[1], a.value.data<float>()[2]});
  AdamW opt2({}, {&b});
  std::map<std::string, Tensor> m;
  for (auto& [k, t] : st) m[k] = t.contiguous();
  opt2.load_state(m, opt.steps(), "test");
  set_grad(a, {0.5f, -0.1f, 0.2f});
  set_grad(b, {0.5f, -0.1f, 0.2f});
  opt.step(1e-3);
  opt2.step(1e-3);
  for (int i = 0; i < 3; i++) EXPECT_EQ(a.value.data<float>()[i], b.value.data<float>()[i]);

  m.erase("a.weight.exp_avg_sq");
  EXPECT_THROW(opt2.load_state(m, 1, "optimizer.safetensors"), Error);
}

TEST(Clipping, GlobalNormScalesAllGradientsTogether) {
  Parameter a = make_param("a", {3, 0}), b = make_param("b", {0, 4});
  set_grad(a, {3, 0});
  set_grad(b, {0, 4});
  std::vector<Parameter*> ps{&a, &b};
  const double norm = std::sqrt(grad_sq_sum(ps));
  EXPECT_DOUBLE_EQ(norm, 5.0);
  EXPECT_DOUBLE_EQ(clip_grads(ps, norm, 10.0), 1.0);  // under the limit: untouched
  EXPECT_FLOAT_EQ(b.grad.data<float>()[1], 4.0f);
  EXPECT_DOUBLE_EQ(clip_grads(ps, norm, 1.0), 0.2);   // Paddle: c / max(norm, c)
  EXPECT_FLOAT_EQ(a.grad.data<float>()[0], 0.6f);
  EXPECT_FLOAT_EQ(b.grad.data<float>()[1], 0.8f);
  EXPECT_DOUBLE_EQ(clip_grads(ps, 1.0, 0.0), 1.0);    // max_grad_norm 0 disables
  EXPECT_TRUE(grads_finite(ps));
  b.grad.data<float>()[0] = NAN;
  EXPECT_FALSE(grads_finite(ps));
}

TEST(LrSchedule, HuggingFaceLinearWithWarmup) {
  LrScheduleConfig c;
  c.type = "linear";
  c.learning_rate = 1.0;
  c.warmup = 10;
  c.total_steps = 110;
  LrSchedule s(c);
  EXPECT_DOUBLE_EQ(s.at(0), 0.0);  // the first optimizer step uses lr 0, as transformers/PaddleNLP do
  EXPECT_DOUBLE_EQ(s.at(5), 0.5);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_DOUBLE_EQ(s.at(60), 0.5);
  EXPECT_DOUBLE_EQ(s.at(110), 0.0);
  EXPECT_DOUBLE_EQ(s.at(200), 0.0);
}

TEST(LrSchedule, HuggingFaceCosineConstantPolynomial) {
  LrScheduleConfig c;
  c.learning_rate = 2.0;
  c.warmup = 0;
  c.total_steps = 100;
  c.type = "cosine";
  EXPECT_DOUBLE_EQ(LrSchedule(c).at(0), 2.0);
  EXPECT_NEAR(LrSchedule(c).at(50), 1.0, 1e-12);
  EXPECT_NEAR(LrSchedule(c).at(100), 0.0, 1e-12);
  c.type = "constant_with_warmup";
  c.warmup = 4;
  EXPECT_DOUBLE_EQ(LrSchedule(c).at(1), 0.5);
  EXPECT_DOUBLE_EQ(LrSchedule(c).at(99), 2.0);
  c.type = "constant";
  EXPECT_DOUBLE_EQ(LrSchedule(c).at(1), 2.0);
  c.type = "polynomial";
  c.warmup = 0;
  c.lr_end = 0.0;
  c.power = 2.0;
  EXPECT_DOUBLE_EQ(LrSchedule(c).at(50), 2.0 * 0.25);
  EXPECT_DOUBLE_EQ(LrSchedule(c).at(150), 0.0);
}

TEST(LrSchedule, PaddleNLPWarmupDecayIsOneStepAhead) {
  // LinearAnnealingWithWarmupDecay(max 1, min 0, warmup 100, decay 1000) built with last_epoch=0: get_lr at
  // last_epoch e = 40 is 0.4; e = 325 is 0.75. Paddle's constructor steps once, so after n scheduler steps
  // e = n + 1.
  LrScheduleConfig c;
  c.type = "linear";
  c.pretrain_decay = true;
  c.learning_rate = 1.0;
  c.min_learning_rate = 0.0;
  c.warmup = 100;
  c.total_steps = 1000;
  LrSchedule s(c);
  EXPECT_NEAR(s.at(0), 0.01, 1e-12);  // the first optimizer step already uses lr * 1 / warmup
  EXPECT_NEAR(s.at(39), 0.40, 1e-12);
  EXPECT_NEAR(s.at(99), 1.0, 1e-12);
  EXPECT_NEAR(s.at(324), 0.75, 1e-12);
  EXPECT_NEAR(s.at(999), 0.0, 1e-12);
  c.min_learning_rate = 0.1;
  EXPECT_NEAR(LrSchedule(c).at(1000), 0.1, 1e-12);  // past decay_steps: min_lr
  c.type = "cosine";
  c.min_learning_rate = 0.0;
  EXPECT_NEAR(LrSchedule(c).at(549), 0.5, 1e-12);    // r = 0.5
  c.warmup = 0;                                      // no warmup branch: cosine from step 1
  EXPECT_NEAR(LrSchedule(c).at(249), 0.5 * (std::cos(M_PI * 0.25) + 1.0), 1e-12);
  c.warmup = 2.5;                                    // warmup_ratio x max_steps is not rounded
  EXPECT_NEAR(LrSchedule(c).at(1), 2.0 / 2.5, 1e-12);
}

TEST(LrSchedule, PaddleNLPWarmupAsLongAsTheDecayIsAllWarmup) {
  // Paddle's get_lr checks the warmup branch first (e <= W) and then e > D: with W >= D nothing divides by
  // D - W; the run warms up to max_lr at e = W and sits at min_lr past it.
  for (const char* type : {"linear", "cosine"}) {
    LrScheduleConfig c;
    c.type = type;
    c.pretrain_decay = true;
    c.learning_rate = 1.0;
    c.min_learning_rate = 0.1;
    c.warmup = 1000;
    c.total_steps = 1000;  // warmup_steps == max_steps
    LrSchedule s(c);
    EXPECT_NEAR(s.at(0), 0.001, 1e-12) << type;
    EXPECT_NEAR(s.at(499), 0.5, 1e-12) << type;
    EXPECT_NEAR(s.at(999), 1.0, 1e-12) << type;
    EXPECT_NEAR(s.at(1000), 0.1, 1e-12) << type;
    c.warmup = 20;
    c.total_steps = 10;  // warmup_steps > max_steps: the run ends mid-warmup
    EXPECT_NEAR(LrSchedule(c).at(9), 0.5, 1e-12) << type;
    EXPECT_NEAR(LrSchedule(c).at(19), 1.0, 1e-12) << type;
    EXPECT_NEAR(LrSchedule(c).at(20), 0.1, 1e-12) << type;
  }
}

TEST(LossScaler, PaddleDefaultsSkipThenHalveOnTheSecondOverflow) {
  LossScalerConfig c;
  c.enabled = true;
  DynamicLossScaler s(c);
  EXPECT_DOUBLE_EQ(s.scale(), 32768.0);
  EXPECT_FALSE(s.update(true));  // first overflow: step skipped, scale kept (decr_every_n_nan_or_inf = 2)
  EXPECT_DOUBLE_EQ(s.scale(), 32768.0);
  EXPECT_TRUE(s.update(true));   // second consecutive: halved
  EXPECT_DOUBLE_EQ(s.scale(), 16384.0);
  EXPECT_FALSE(s.update(true));
  EXPECT_FALSE(s.update(false));  // a clean step resets the overflow count
  EXPECT_FALSE(s.update(true));
  EXPECT_DOUBLE_EQ(s.scale(), 16384.0);
  for (int i = 0; i < 999; i++) EXPECT_FALSE(s.update(false));
  EXPECT_TRUE(s.update(false));  // 1000 clean steps in a row: doubled
  EXPECT_DOUBLE_EQ(s.scale(), 32768.0);

  c.init_scale = 1.0;
  c.decr_every_n_nan_or_inf = 1;
  DynamicLossScaler low(c);
  low.update(true);
  EXPECT_DOUBLE_EQ(low.scale(), 1.0);  // never below 1

  DynamicLossScaler off;
  EXPECT_DOUBLE_EQ(off.scale(), 1.0);
  EXPECT_FALSE(off.update(true));
}

}  // namespace
}  // namespace oar
