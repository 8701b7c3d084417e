// Small stand-ins for the model and the data, so the trainer's loop, checkpoints and resume are tested on their
// own: a bigram language model (a V x V logits table plus a bias) with exact gradients, and a deterministic
// Markov-chain corpus addressed by (epoch, index).
#pragma once
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/fs.h"
#include "io/safetensors.h"
#include "train/trainer.h"

namespace oar::testing {

inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class FakeBigram : public TrainModel {
 public:
  explicit FakeBigram(int64_t V, uint64_t seed = 1) : V_(V) {
    W_.name = "model.embed_tokens.weight";  // decayed
    W_.value = Tensor::empty({V, V}, DType::F32);
    W_.grad = Tensor::empty({V, V}, DType::F32);
    b_.name = "model.norm.weight";  // not decayed (PaddleNLP skips "norm")
    b_.value = Tensor::empty({V}, DType::F32);
    b_.grad = Tensor::empty({V}, DType::F32);
    for (int64_t i = 0; i < V * V; i++)
      W_.value.data<float>()[i] = float(double(mix64(seed * 1000003 + uint64_t(i)) >> 11) / 9007199254740992.0 - 0.5) * 0.1f;
  }
  std::vector<Parameter*> parameters() override { return {&W_, &b_}; }

  double run(const TrainBatch& b, float grad_scale, LossStats* stats, bool backward) {
    calls_++;
    double loss = 0;
    int64_t n = 0, correct = 0;
    std::vector<double> p(static_cast<size_t>(V_));
    for (int64_t t = 0; t < b.B * b.L; t++) {
      if (b.labels[size_t(t)] < 0) continue;
      n++;
    }
    for (int64_t t = 0; t < b.B * b.L; t++) {
      const int32_t y = b.labels[size_t(t)];
      if (y < 0) continue;
      const int32_t x = b.input_ids[size_t(t)];
      const float* w = W_.value.data<float>() + int64_t(x) * V_;
      double mx = -1e300;
      int64_t arg = 0;
      for (int64_t v = 0; v < V_; v++) {
        p[size_t(v)] = double(w[v]) + double(b_.value.data<float>()[v]);
        if (p[size_t(v)] > mx) { mx = p[size_t(v)]; arg = v; }
      }
      double z = 0;
      for (int64_t v = 0; v < V_; v++) z += std::exp(p[size_t(v)] - mx);
      loss += mx + std::log(z) - p[size_t(y)];
      correct += arg == y;
      if (backward) {
        float* gw = W_.grad.data<float>() + int64_t(x) * V_;
        float* gb = b_.grad.data<float>();
        for (int64_t v = 0; v < V_; v++) {
          const double g = (std::exp(p[size_t(v)] - mx) / z - (v == y ? 1.0 : 0.0)) / double(n) * grad_scale;
          gw[v] += float(g);
          gb[v] += float(g);
        }
      }
    }
    if (backward && (inf_calls.count(calls_) || grad_scale > overflow_above)) W_.grad.data<float>()[0] = INFINITY;
    if (stats) { stats->loss_sum = loss; stats->tokens = n; stats->correct = correct; }
    return n ? loss / double(n) : 0.0;
  }
  double forward_backward(const TrainBatch& b, float grad_scale, LossStats* s, const GradsReady& ready) override {
    const double loss = run(b, grad_scale, s, true);
    if (ready) ready({&W_, &b_});
    return loss;
  }
  double forward_loss(const TrainBatch& b, LossStats* s) override { return run(b, 0, s, false); }
  void zero_grad() override {
    std::fill(W_.grad.data<float>(), W_.grad.data<float>() + W_.grad.numel(), 0.0f);
    std::fill(b_.grad.data<float>(), b_.grad.data<float>() + b_.grad.numel(), 0.0f);
  }
  double train_flops(const TrainBatch& b) const override { return 6.0 * double(V_) * double(b.B * b.L); }
  void save(const std::string& dir) const override {
    write_safetensors(join_path(dir, "model.safetensors"), {{W_.name, W_.value}, {b_.name, b_.value}});
    write_file_atomic(join_path(dir, "config.json"), "{\"model_type\": \"fake_bigram\", \"vocab_size\": " + std::to_string(V_) + "}\n");
  }
  void load(const std::string& dir) override {
    WeightStore ws = WeightStore::open_dir(dir);
    for (Parameter* p : {&W_, &b_}) {
      Tensor t = ws.get(p->name);
      std::copy(t.data<float>(), t.data<float>() + t.numel(), p->value.data<float>());
    }
  }
  std::set<int64_t> inf_calls;  // forward_backward call numbers (1-based) whose gradient gets an inf
  float overflow_above = INFINITY;  // an inf gradient whenever grad_scale exceeds this (fp16 overflow)
  int64_t calls_ = 0;
  int64_t V_;
  Parameter W_, b_;
};

// Token t+1 follows (3 t + 1) mod V most of the time: a bigram can learn it.
inline std::vector<int32_t> markov_tokens(uint64_t key, int64_t n, int64_t V) {
  std::vector<int32_t> out(static_cast<size_t>(n));
  uint64_t s = mix64(key);
  int32_t cur = int32_t(s % uint64_t(V));
  for (int64_t i = 0; i < n; i++) {
    out[size_t(i)] = cur;
    s = mix64(s);
    cur = (s % 10) < 8 ? int32_t((3 * cur + 1) % V) : int32_t((s >> 8) % uint64_t(V));
  }
  return out;
}

inline TrainBatch make_lm_batch(uint64_t key, int64_t B, int64_t L, int64_t V) {
  TrainBatch b;
  b.B = B;
  b.L = L;
  for (int64_t r = 0; r < B; r++) {
    auto t = markov_tokens(key * 7919 + uint64_t(r), L + 1, V);
    for (int64_t i = 0; i < L; i++) {
      b.input_ids.push_back(t[size_t(i)]);
      b.labels.push_back(t[size_t(i + 1)]);
      b.position_ids.push_back(int32_t(i));
      b.segment_ids.push_back(0);
    }
  }
  return b;
}

class FakeTrainData : public TrainData {
 public:
  FakeTrainData(int64_t n, int64_t B, int64_t L, int64_t V) : n_(n), B_(B), L_(L), V_(V) {}
  int64_t batches_per_epoch() const override { return n_; }
  TrainBatch batch(int64_t epoch, int64_t index) const override {
    // Each epoch visits the same micro-batches in another order.
    const int64_t j = (index * 7 + epoch * 3) % n_;
    return make_lm_batch(uint64_t(1000 + j), B_, L_, V_);
  }
  int64_t n_, B_, L_, V_;
};

class FakeEvalData : public EvalData {
 public:
  FakeEvalData(int64_t n, int64_t B, int64_t L, int64_t V) : n_(n), B_(B), L_(L), V_(V) {}
  int64_t num_batches() const override { return n_; }
  TrainBatch batch(int64_t index) const override { return make_lm_batch(uint64_t(900000 + index), B_, L_, V_); }
  int64_t n_, B_, L_, V_;
};

}  // namespace oar::testing
