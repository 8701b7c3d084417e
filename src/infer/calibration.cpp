#include "infer/calibration.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "core/error.h"
#include "kernels/backend.h"
#include "model/llama.h"

namespace oar {
namespace {

// Per-channel maxima and a reservoir of rows of each observed input (observe_channels).
struct ChannelObserver {
  ChannelStats stats;
  std::vector<std::array<int64_t, 4>> seen;  // rows offered so far
  int64_t rows = 0;
  size_t batch = 0;  // the batch being observed
  std::mt19937_64 rng{20240611};

  void observe(const Tensor& x, int64_t layer, int j) {
    const int64_t T = x.dim(0), W = x.dim(1);
    std::vector<float>& amax = stats.absmax[size_t(layer)][size_t(j)];
    Tensor& kept = stats.samples[size_t(layer)][size_t(j)];
    if (amax.empty()) {
      amax.assign(size_t(W), 0.0f);
      kept = Tensor::empty({rows, W}, DType::F32);
    }
    auto& per_batch = stats.batch_absmax[size_t(layer)][size_t(j)];
    if (per_batch.size() <= batch) per_batch.resize(batch + 1, std::vector<float>(size_t(W), 0.0f));
    std::vector<float>& bmax = per_batch[batch];
    const float* px = x.data<float>();
    for (int64_t t = 0; t < T; t++) {
      for (int64_t c = 0; c < W; c++) {
        const float a = std::fabs(px[t * W + c]);
        amax[size_t(c)] = std::max(amax[size_t(c)], a);
        bmax[size_t(c)] = std::max(bmax[size_t(c)], a);
      }
      int64_t& n = seen[size_t(layer)][size_t(j)];
      const int64_t slot = n < rows ? n : int64_t(rng() % uint64_t(n + 1));
      n++;
      if (slot < rows) std::copy(px + t * W, px + (t + 1) * W, kept.data<float>() + slot * W);
    }
  }
};


// The CPU kernels, with a look at the inputs the observers watch: a projection's input is recognised by its
// weight's data (the map `inputs`), a layer's K and V by its cache memory (the map `caches`).
class ObservingKernels final : public Kernels {
 public:
  explicit ObservingKernels(Kernels& cpu) : cpu_(cpu) {}
  std::map<const void*, std::pair<int64_t, int>> inputs;  // weight data -> (layer, kCalibratedInputs index)
  std::map<const void*, int64_t> caches;                  // a layer's K memory -> layer
  std::vector<std::array<double, 4>> act;                 // this batch's maxima
  std::vector<std::vector<double>> k, v;
  int64_t nonfinite_layer = -1;  // a layer whose observed input held an inf or a NaN (the scales would be garbage)
  ChannelObserver* channels = nullptr;  // observe_channels only

  const char* name() const override { return cpu_.name(); }
  void linear(const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y) override {
    observe(x, w);
    cpu_.linear(x, w, bias, y);
  }
  void linear_multi(const Tensor& x, const std::vector<const Weight*>& ws, const std::vector<const Tensor*>& biases,
                    const std::vector<Tensor*>& ys) override {
    observe(x, *ws[0]);
    cpu_.linear_multi(x, ws, biases, ys);
  }
  void linear_swiglu(const Tensor& x, const Weight& w_gate, const Weight& w_up, Tensor& gate, Tensor& up) override {
    observe(x, w_gate);
    cpu_.linear_swiglu(x, w_gate, w_up, gate, up);
  }
  void kv_write(const KVLayerView& c, const Tensor& kt, const Tensor& vt, const std::vector<SeqSlice>& seqs) override {
    const auto it = caches.find(c.k);
    if (it != caches.end()) {
      const int64_t T = kt.dim(0), G = kt.dim(1), D = kt.dim(2);
      for (int64_t g = 0; g < G; g++)
        for (int64_t t = 0; t < T; t++) {
          double& km = k[size_t(it->second)][size_t(g)];
          double& vm = v[size_t(it->second)][size_t(g)];
          km = std::max(km, absmax(kt.data<float>() + (t * G + g) * D, D, it->second));
          vm = std::max(vm, absmax(vt.data<float>() + (t * G + g) * D, D, it->second));
        }
    }
    cpu_.kv_write(c, kt, vt, seqs);
  }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override { cpu_.rmsnorm(x, w, eps, y); }
  void rope(Tensor& x, const int32_t* positions, const RopeTable& table) override { cpu_.rope(x, positions, table); }
  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override { cpu_.swiglu(gate, up, out); }
  void softmax(Tensor& x) override { cpu_.softmax(x); }
  void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    cpu_.embedding(table, ids, n, out);
  }
  void add_inplace(Tensor& x, const Tensor& y) override { cpu_.add_inplace(x, y); }
  void attention(const Tensor& q, const KVLayerView& c, const std::vector<SeqSlice>& seqs, Tensor& out) override {
    cpu_.attention(q, c, seqs, out);
  }

 private:
  void observe(const Tensor& x, const Weight& w) {
    const auto it = inputs.find(w.data.raw());
    if (it == inputs.end()) return;  // the LM head
    double& m = act[size_t(it->second.first)][size_t(it->second.second)];
    m = std::max(m, absmax(x.data<float>(), x.numel(), it->second.first));
    if (channels) channels->observe(x, it->second.first, it->second.second);
  }
  double absmax(const float* p, int64_t n, int64_t layer) {
    bool finite;
    const float a = row_absmax(p, n, &finite);
    if (!finite) nonfinite_layer = layer;
    return a;
  }
  Kernels& cpu_;
};

// The CPU backend with ObservingKernels as its op set.
class ObservingBackend final : public Backend {
 public:
  ObservingBackend() : cpu_(cpu_backend()), ops_(cpu_.ops()) {}
  ObservingKernels& observer() { return ops_; }
  const char* name() const override { return cpu_.name(); }
  Device device() const override { return cpu_.device(); }
  Tensor empty(const Shape& shape, DType dtype) override { return cpu_.empty(shape, dtype); }
  Tensor upload(const Tensor& host) override { return cpu_.upload(host); }
  Tensor download(const Tensor& t) override { return cpu_.download(t); }
  void copy(const Tensor& src, Tensor& dst) override { cpu_.copy(src, dst); }
  Weight pack_weight(const Tensor& host, const QuantSpec& spec) override { return cpu_.pack_weight(host, spec); }
  Kernels& ops() override { return ops_; }
  TrainKernels& train_ops() override { return cpu_.train_ops(); }
  Communicator& communicator() override { return cpu_.communicator(); }
  void synchronize() override { cpu_.synchronize(); }

 private:
  Backend& cpu_;
  ObservingKernels ops_;
};

// Prefills one sequence (its K and V in a cache of its own) while the observers watch.
void observe_sequence(LlamaModel& model, ObservingBackend& be, const std::vector<int32_t>& seq) {
  const LlamaConfig& cfg = model.config();
  const int64_t bs = 16, blocks = (int64_t(seq.size()) + bs - 1) / bs;
  KVCache cache(cfg, blocks, bs, KVCacheDType::F32, nullptr, be);
  ObservingKernels& obs = be.observer();
  obs.caches.clear();
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) obs.caches[cache.layer(l).k] = l;
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < blocks; i++) table[size_t(i)] = int32_t(i);
  StepBatch b;
  b.add_sequence(seq.data(), int64_t(seq.size()), 0, table);
  b.logit_rows.push_back(0);
  Tensor logits;
  model.forward(b, cache, logits);
}

// One batch: every sequence observed, then the batch's maxima folded into `st` (summed for Average).
void observe_batch(LlamaModel& model, ObservingBackend& be, const std::vector<std::vector<int32_t>>& batch,
                   ObserverReduce act, ObserverReduce kv, CalibrationStats& st) {
  ObservingKernels& obs = be.observer();
  const size_t L = st.act.size(), G = st.k[0].size();
  obs.act.assign(L, {0, 0, 0, 0});
  obs.k.assign(L, std::vector<double>(G, 0.0));
  obs.v = obs.k;
  bool any = false;
  for (const auto& seq : batch)
    if (!seq.empty()) {
      observe_sequence(model, be, seq);
      any = true;
    }
  if (!any) throw Error("calibration: a batch without tokens");
  if (obs.nonfinite_layer >= 0)
    throw Error("calibration: batch " + std::to_string(st.batches + 1) + " gave layer " +
                std::to_string(obs.nonfinite_layer) + " an input that is not finite (inf or NaN): no scale can be taken");
  auto fold = [](ObserverReduce how, double& into, double batch_max) {
    into = how == ObserverReduce::Average ? into + batch_max : std::max(into, batch_max);
  };
  for (size_t l = 0; l < L; l++) {
    for (size_t j = 0; j < 4; j++) fold(act, st.act[l][j], obs.act[l][j]);
    for (size_t g = 0; g < G; g++) {
      fold(kv, st.k[l][g], obs.k[l][g]);
      fold(kv, st.v[l][g], obs.v[l][g]);
    }
  }
  st.batches++;
}

// Sums become averages; a scale of 0 (a static step of 0 would mean "dynamic") is refused here, not later.
void finish(CalibrationStats& st, ObserverReduce act, ObserverReduce kv) {
  const double n = double(st.batches);
  for (size_t l = 0; l < st.act.size(); l++) {
    for (size_t j = 0; j < kCalibratedInputs.size(); j++) {
      if (act == ObserverReduce::Average) st.act[l][j] /= n;
      if (!(st.act[l][j] > 0))
        throw Error("calibration: layer " + std::to_string(l) + "'s " + kCalibratedInputs[j] +
                    " input was zero over all the calibration data: no scale can be taken");
    }
    for (size_t g = 0; g < st.k[l].size(); g++) {
      if (kv == ObserverReduce::Average) st.k[l][g] /= n, st.v[l][g] /= n;
      if (!(st.k[l][g] > 0) || !(st.v[l][g] > 0))
        throw Error("calibration: layer " + std::to_string(l) + "'s K or V of kv head " + std::to_string(g) +
                    " was zero over all the calibration data");
    }
  }
}

// The model of (cfg, weights) on `be`, each observed input known by the first weight that reads it.
std::unique_ptr<LlamaModel> observed_model(const LlamaConfig& cfg, const WeightSource& weights, DType dtype,
                                           ObservingBackend& be) {
  std::unique_ptr<LlamaModel> model = LlamaModel::from_weights(cfg, weights, dtype, be);
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    const LlamaLayerWeights& w = model->weights().layers[size_t(l)];
    const Weight* first[4] = {&w.q_proj, &w.o_proj, &w.gate_proj, &w.down_proj};
    for (int j = 0; j < 4; j++) be.observer().inputs[first[j]->data.raw()] = {l, j};
  }
  return model;
}

}  // namespace

CalibrationStats calibrate(const LlamaConfig& cfg, const WeightSource& weights, DType dtype,
                           const std::vector<std::vector<std::vector<int32_t>>>& batches, ObserverReduce act,
                           ObserverReduce kv, const std::function<void(int64_t, int64_t)>& progress) {
  if (batches.empty()) throw Error("calibration: no batches");
  ObservingBackend be;
  const std::unique_ptr<LlamaModel> model = observed_model(cfg, weights, dtype, be);
  const int64_t L = cfg.num_hidden_layers, G = cfg.num_key_value_heads;
  CalibrationStats st;
  st.act.assign(size_t(L), {0, 0, 0, 0});
  st.k.assign(size_t(L), std::vector<double>(size_t(G), 0.0));
  st.v = st.k;
  for (const std::vector<std::vector<int32_t>>& batch : batches) {
    observe_batch(*model, be, batch, act, kv, st);
    if (progress) progress(st.batches, int64_t(batches.size()));
  }
  finish(st, act, kv);
  return st;
}

ChannelStats observe_channels(const LlamaConfig& cfg, const WeightSource& weights, DType dtype,
                              const std::vector<std::vector<std::vector<int32_t>>>& batches, int64_t rows,
                              const std::function<void(int64_t, int64_t)>& progress) {
  if (batches.empty()) throw Error("calibration: no batches");
  if (rows <= 0) throw Error("calibration: no rows to keep");
  ObservingBackend be;
  const std::unique_ptr<LlamaModel> model = observed_model(cfg, weights, dtype, be);
  const size_t L = size_t(cfg.num_hidden_layers);
  ChannelObserver ch;
  ch.rows = rows;
  ch.stats.absmax.resize(L);
  ch.stats.samples.resize(L);
  ch.stats.batch_absmax.resize(L);
  ch.seen.assign(L, {0, 0, 0, 0});
  be.observer().channels = &ch;
  // The per-tensor maxima are kept but not used here (one observer records both).
  CalibrationStats unused;
  unused.act.assign(L, {0, 0, 0, 0});
  unused.k.assign(L, std::vector<double>(size_t(cfg.num_key_value_heads), 0.0));
  unused.v = unused.k;
  for (const auto& batch : batches) {
    ch.batch = size_t(unused.batches);
    observe_batch(*model, be, batch, ObserverReduce::Max, ObserverReduce::Max, unused);
    if (progress) progress(unused.batches, int64_t(batches.size()));
  }
  for (size_t l = 0; l < L; l++)  // fewer rows than asked for: keep those seen
    for (size_t j = 0; j < 4; j++) {
      Tensor& t = ch.stats.samples[l][j];
      const int64_t n = std::min(ch.seen[l][j], rows);
      if (n < rows) t = t.slice0(0, n).contiguous();
    }
  return std::move(ch.stats);
}

}  // namespace oar
