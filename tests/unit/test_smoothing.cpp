// SmoothQuant for PTQ (infer/smoothing.h, observe_channels in infer/calibration.h): the per-channel statistics
// are the inputs' own, smoothing leaves the float model as it was (GQA's shared o_proj scales included), and on
// a model whose inputs have outlier channels it lowers a8w8's error.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "infer/calibration.h"
#include "infer/smoothing.h"
#include "io/model_source.h"
#include "kernels/backend.h"
#include "model/llama.h"
#include "test_model_util.h"

using namespace oar;

namespace {

std::string model_dir(const std::string& name) { return std::string(OAR_FIXTURES_DIR) + "/models/" + name; }

// A checkpoint with some tensors replaced.
class Overlay final : public WeightSource {
 public:
  Overlay(const WeightSource& base, std::map<std::string, Tensor> over) : base_(base), over_(std::move(over)) {}
  bool has(const std::string& n) const override { return base_.has(n); }
  Tensor get(const std::string& n) const override {
    auto it = over_.find(n);
    return it != over_.end() ? it->second : base_.get(n);
  }
  std::string where() const override { return "overlay"; }

 private:
  const WeightSource& base_;
  std::map<std::string, Tensor> over_;
};

const std::vector<std::vector<std::vector<int32_t>>> kBatches = {{{1, 5, 9, 2, 7, 13}, {3, 8, 4}}, {{11, 6, 10, 12, 14}}};

std::vector<int32_t> prompt(int64_t vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 17; i++) ids.push_back(int32_t((i * 29 + 3) % vocab));
  return ids;
}

double logit_error(const LlamaConfig& cfg, const WeightSource& w, std::optional<QuantSpec> q, const Tensor& ref) {
  auto m = LlamaModel::from_weights(cfg, w, DType::F32, cpu_backend(), q);
  return oar::test::rel_err(oar::test::prompt_logits(*m, prompt(cfg.vocab_size)), ref);
}

// A fixture, its float32 logits and the channel statistics smoothing starts from.
struct Start {
  ModelSource ms;
  Tensor ref;
  ChannelStats st;
  explicit Start(const char* fixture) : ms(open_model_source(model_dir(fixture))) {
    auto f32 = LlamaModel::from_weights(ms.config, *ms.weights, DType::F32);
    ref = oar::test::prompt_logits(*f32, prompt(ms.config.vocab_size));
    st = observe_channels(ms.config, *ms.weights, DType::F32, kBatches, 64);
  }
};

}  // namespace

TEST(Smoothing, ChannelStatsAreEachInputsPerChannelMaximaAndItsRows) {
  const ModelSource ms = open_model_source(model_dir("gqa"));
  const LlamaConfig& c = ms.config;
  // Layer 0's q/k/v input is rmsnorm(embedding): its per-channel maxima need no model.
  const Tensor emb = ms.weights->get("model.embed_tokens.weight").to(DType::F32);
  const Tensor nw = ms.weights->get("model.layers.0.input_layernorm.weight").to(DType::F32);
  const int64_t C = c.hidden_size;
  std::vector<double> want(static_cast<size_t>(C), 0.0);
  int64_t tokens = 0;
  for (const auto& batch : kBatches)
    for (const auto& seq : batch)
      for (int32_t id : seq) {
        double ss = 0;
        for (int64_t k = 0; k < C; k++) ss += std::pow(double(emb.data<float>()[id * C + k]), 2);
        const double inv = 1.0 / std::sqrt(ss / double(C) + c.rms_norm_eps);
        for (int64_t k = 0; k < C; k++)
          want[size_t(k)] = std::max(want[size_t(k)], std::fabs(emb.data<float>()[id * C + k] * inv * nw.data<float>()[k]));
        tokens++;
      }
  const ChannelStats all = observe_channels(c, *ms.weights, DType::F32, kBatches, 1000);
  ASSERT_EQ(int64_t(all.absmax[0][0].size()), C);
  for (int64_t k = 0; k < C; k++) EXPECT_NEAR(all.absmax[0][0][size_t(k)], want[size_t(k)], 1e-5 * want[size_t(k)]) << k;
  EXPECT_EQ(all.samples[0][0].dim(0), tokens);  // every row kept when there are fewer than asked for
  // Each batch's maxima too, whose largest is the whole data's.
  ASSERT_EQ(all.batch_absmax[0][0].size(), kBatches.size());
  for (int64_t k = 0; k < C; k++)
    EXPECT_EQ(std::max(all.batch_absmax[0][0][0][size_t(k)], all.batch_absmax[0][0][1][size_t(k)]),
              all.absmax[0][0][size_t(k)]);
  EXPECT_NE(all.batch_absmax[0][0][0], all.batch_absmax[0][0][1]);
  EXPECT_EQ(int64_t(all.absmax[0][1].size()), c.q_dim());
  EXPECT_EQ(int64_t(all.absmax[0][3].size()), c.intermediate_size);
  // A sample of 5 of the rows: 5 rows of the input (their maxima within the input's), the same ones every run.
  const ChannelStats some = observe_channels(c, *ms.weights, DType::F32, kBatches, 5);
  const ChannelStats again = observe_channels(c, *ms.weights, DType::F32, kBatches, 5);
  ASSERT_EQ(some.samples[1][3].dim(0), 5);
  const Tensor& s = some.samples[1][3];
  for (int64_t r = 0; r < 5; r++)
    for (int64_t k = 0; k < s.dim(1); k++) {
      EXPECT_LE(std::fabs(s.data<float>()[r * s.dim(1) + k]), some.absmax[1][3][size_t(k)]);
      EXPECT_EQ(s.data<float>()[r * s.dim(1) + k], again.samples[1][3].data<float>()[r * s.dim(1) + k]);
    }
}

TEST(Smoothing, LeavesTheFloatModelAsItWas) {
  for (const char* fixture : {"gqa", "mha"}) {
    SCOPED_TRACE(fixture);
    const Start start(fixture);
    const auto& [ms, ref, st] = start;
    SmoothOptions opt;
    opt.all_linears = true;
    opt.piecewise_search = true;
    opt.search_piece = true;
    int groups = 0;
    const auto smoothed = smooth_weights(ms.config, *ms.weights, st, opt, [&](const SmoothReport& r) {
      groups++;
      EXPECT_LE(r.error_after, r.error_before) << r.group;
    });
    EXPECT_EQ(groups, 4 * ms.config.num_hidden_layers);
    EXPECT_TRUE(smoothed.count("model.layers.0.input_layernorm.weight"));
    EXPECT_TRUE(smoothed.count("model.layers.0.self_attn.v_proj.weight"));  // o_proj's s divides v's rows
    const Overlay w(*ms.weights, smoothed);
    const double e = logit_error(ms.config, w, std::nullopt, ref);
    std::printf("  %s: smoothed float32 logits differ by %.2e of the largest\n", fixture, e);
    EXPECT_LT(e, 2e-5);
    // ... and the scales did move the weights (not all ones).
    const Tensor before = ms.weights->get("model.layers.0.mlp.gate_proj.weight").to(DType::F32);
    EXPECT_GT(oar::test::rel_err(smoothed.at("model.layers.0.mlp.gate_proj.weight"), before), 1e-3);
  }
}

// Every fold forced (alpha 0.5 kept even where it scores worse): GQA's shared o_proj scales through v_proj's rows
// and bias, down_proj's through up_proj's rows; the float model stays the same.
TEST(Smoothing, EveryFoldKeepsTheFloatModel) {
  for (const char* fixture : {"attn_bias", "gqa"}) {
    SCOPED_TRACE(fixture);
    const Start start(fixture);
    const auto& [ms, ref, st] = start;
    SmoothOptions opt;
    opt.all_linears = true;
    opt.never_worse = false;
    const auto smoothed = smooth_weights(ms.config, *ms.weights, st, opt);
    std::vector<std::string> changed = {"model.layers.1.self_attn.v_proj.weight", "model.layers.1.mlp.up_proj.weight",
                                        "model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight",
                                        "model.layers.1.input_layernorm.weight"};
    if (ms.config.attention_bias) changed.push_back("model.layers.1.self_attn.v_proj.bias");
    for (const std::string& n : changed) {
      ASSERT_TRUE(smoothed.count(n)) << n;
      EXPECT_GT(oar::test::rel_err(smoothed.at(n), ms.weights->get(n).to(DType::F32)), 1e-3) << n << " did not move";
    }
    const double e = logit_error(ms.config, Overlay(*ms.weights, smoothed), std::nullopt, ref);
    EXPECT_LT(e, 2e-5);
  }
}

// A 16-bit checkpoint's smoothed tensors come back in its own dtype, the model within bfloat16's rounding.
TEST(Smoothing, KeepsTheCheckpointsDtypes) {
  const ModelSource ms = open_model_source(model_dir("sharded_bf16"));
  auto f32 = LlamaModel::from_weights(ms.config, *ms.weights, DType::F32);
  const Tensor ref = oar::test::prompt_logits(*f32, prompt(ms.config.vocab_size));
  const ChannelStats st = observe_channels(ms.config, *ms.weights, DType::BF16, kBatches, 32);
  SmoothOptions opt;
  opt.never_worse = false;
  const auto smoothed = smooth_weights(ms.config, *ms.weights, st, opt);
  for (const auto& [name, t] : smoothed) EXPECT_EQ(t.dtype(), ms.weights->get(name).dtype()) << name;
  EXPECT_LT(logit_error(ms.config, Overlay(*ms.weights, smoothed), std::nullopt, ref), 0.05);
}

TEST(Smoothing, LowersA8W8ErrorWhereInputsHaveOutlierChannels) {
  const ModelSource ms = open_model_source(model_dir("mha"));
  const LlamaConfig& c = ms.config;
  // The same float model with outlier channels: each layer's norms scale channel 3 by 40 and the projections
  // that read it take it back, as trained Llamas' inputs have a few channels far larger than the rest.
  std::map<std::string, Tensor> over;
  for (int64_t l = 0; l < c.num_hidden_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::pair<const char*, std::vector<const char*>> pairs[2] = {
        {"input_layernorm.weight", {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}},
        {"post_attention_layernorm.weight", {"mlp.gate_proj.weight", "mlp.up_proj.weight"}}};
    for (const auto& [norm, readers] : pairs) {
      Tensor n = ms.weights->get(p + norm).to(DType::F32);
      n.data<float>()[3] *= 40.0f;
      over[p + norm] = n;
      for (const char* r : readers) {
        Tensor w = ms.weights->get(p + r).to(DType::F32);
        for (int64_t row = 0; row < w.dim(0); row++) w.data<float>()[row * w.dim(1) + 3] /= 40.0f;
        over[p + r] = w;
      }
    }
  }
  const Overlay outliers(*ms.weights, over);
  auto f32 = LlamaModel::from_weights(c, outliers, DType::F32);
  const Tensor ref = oar::test::prompt_logits(*f32, prompt(c.vocab_size));
  const ChannelStats st = observe_channels(c, outliers, DType::F32, kBatches, 64);
  SmoothOptions opt;
  opt.piecewise_search = true;
  std::map<std::string, double> gain;
  auto smoothed = smooth_weights(c, outliers, st, opt, [&](const SmoothReport& r) { gain[r.group] = r.error_before / r.error_after; });
  for (auto& [name, t] : smoothed) over[name] = t;
  const Overlay smooth(*ms.weights, over);
  const QuantSpec a8w8(WeightFormat::A8W8);
  const double plain = logit_error(c, outliers, a8w8, ref), after = logit_error(c, smooth, a8w8, ref);
  std::printf("  a8w8 logits with outlier channels: error %.4f unsmoothed, %.4f smoothed; layer 0 q/k/v input's "
              "sampled error %.1fx lower\n", plain, after, gain["model.layers.0.self_attn.q_proj"]);
  EXPECT_LT(after, 0.7 * plain);
  EXPECT_GT(gain["model.layers.0.self_attn.q_proj"], 2.0);
}

// The search scores with the step PTQ's observer will take: averaged batch maxima (avg) or their largest
// (abs_max) give different errors, and here different scales.
TEST(Smoothing, SearchScoresWithTheObserversStep) {
  const Start start("gqa");
  const auto& [ms, ref, st] = start;
  std::map<std::string, double> err[2];
  std::map<std::string, Tensor> out[2];
  for (int i = 0; i < 2; i++) {
    SmoothOptions opt;
    opt.piecewise_search = true;
    opt.act = i == 0 ? ObserverReduce::Average : ObserverReduce::Max;
    out[i] = smooth_weights(ms.config, *ms.weights, st, opt, [&](const SmoothReport& r) { err[i][r.group] = r.error_before; });
  }
  int differ = 0;
  for (const auto& [group, e] : err[0]) differ += e != err[1][group];
  EXPECT_GT(differ, 0) << "the observer's reduction did not reach the search's step";
  bool scales_differ = false;
  for (const auto& [name, t] : out[0]) scales_differ = scales_differ || oar::test::rel_err(t, out[1].at(name)) > 0;
  EXPECT_TRUE(scales_differ);
}
