// TrainableLlama: the decoder composed from the layers of layers.h, with the activations each layer keeps for its
// backward, LoRA adapters, and the compute-dtype and recompute options.
#include "train/trainable_llama.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>

#include "core/error.h"
#include "core/fs.h"
#include "io/model_source.h"
#include "io/safetensors.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"
#include "train/flat_params.h"
#include "train/layers.h"
#include "train/tensor_parallel.h"

namespace oar {

using layers::Ctx;
using layers::Linear;

namespace {

// The seven projections of a decoder layer, in Hugging Face's parameter order.
constexpr int kNumProj = 7;
enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown };
constexpr const auto& kProjPath = kLayerProjections;  // indexed by Proj
const char* const kProjName[kNumProj] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// Deterministic random numbers, independent of thread count and parameter order: element i of a tensor draws
// from a hash of (seed, i).
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
uint64_t name_seed(const std::string& name, uint64_t seed) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return mix64(h ^ mix64(seed));
}
double uniform01(uint64_t seed, uint64_t i) { return (double(mix64(seed + 0x9E3779B97F4A7C15ull * (i + 1)) >> 11) + 0.5) / 9007199254740992.0; }

void fill_normal(Tensor& t, double std, uint64_t seed) {
  float* p = t.data<float>();
  const int64_t n = t.numel(), pairs = (n + 1) / 2;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pairs; i++) {
    // Box-Muller: two uniforms of pair i give elements 2i and 2i+1.
    const double u1 = uniform01(seed, uint64_t(2 * i)), u2 = uniform01(seed, uint64_t(2 * i + 1));
    const double r = std * std::sqrt(-2.0 * std::log(u1)), a = 2.0 * M_PI * u2;
    p[2 * i] = float(r * std::cos(a));
    if (2 * i + 1 < n) p[2 * i + 1] = float(r * std::sin(a));
  }
}

void fill_uniform(Tensor& t, double bound, uint64_t seed) {
  float* p = t.data<float>();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) p[i] = float((2.0 * uniform01(seed, uint64_t(i)) - 1.0) * bound);
}

void fill_value(Tensor& t, float v) {
  float* p = t.data<float>();
  std::fill(p, p + t.numel(), v);
}

}  // namespace

// ---- the model's state ----

struct LayerParams {
  Parameter* input_norm = nullptr;
  Parameter* post_norm = nullptr;
  Linear proj[kNumProj];
};

// What one decoder layer keeps between its forward and its backward.
struct LayerActs {
  Tensor x_mid;         // [T, C] f32: residual stream after attention (input of the MLP norm)
  Tensor rstd1, rstd2;  // [T]
  Tensor h1, h2;        // [T, C] compute dtype: the norms' outputs (inputs of q/k/v and gate/up)
  Tensor q, k, v;       // [T, H*D], [T, G*D], [T, G*D] f32, after RoPE
  Tensor probs;         // [B, H, L, L] f32 attention probabilities
  Tensor att;           // [T, H*D] compute dtype: attention output (input of o_proj)
  Tensor gate, up;      // [T, F] f32
  Tensor act;           // [T, F] compute dtype: silu(gate) * up (input of down_proj)
  Tensor u[kNumProj];   // [T, r] compute dtype: LoRA x A^T of each adapted projection
};

// The batch as the layers want it.
struct BatchInfo {
  int64_t B = 0, L = 0, T = 0;
  std::vector<int32_t> ids, labels, positions, key_begin;
  AttentionLayout attn;
};

struct TrainableLlama::Impl {
  LlamaConfig cfg;
  TrainOptions opt;
  LoraOptions lora;
  bool lora_on = false;

  std::vector<std::unique_ptr<Parameter>> owned;
  struct ParamGroup {
    FlatLayout layout;
    Tensor values, grads;  // flat float32 buffers; a frozen group's parameters drop their grad views
  };
  std::deque<ParamGroup> groups;  // a deque: adding a group keeps the others' addresses (flat_groups() hands them out)
  std::vector<Parameter*> open_group;
  FlatLayout open_layout;
  std::vector<Parameter*> order;
  // The trainable parameters as the backward completes them: [0] the LM head and final norm, [1 + i] layer N-1-i,
  // [N + 1] the embedding (and a head tied to it, whose gradient is complete only then).
  std::vector<std::vector<Parameter*>> backward_groups;
  std::map<std::string, Parameter*> by_name;
  Parameter* embed = nullptr;
  Parameter* final_norm = nullptr;
  Parameter* lm_head = nullptr;  // the embedding when tied
  std::vector<LayerParams> layer;  // this stage's layers: layer[i] is the model's layer layer0 + i
  int64_t layer0 = 0;
  Linear head;  // on the last stage

  RopeTable rope;
  std::unique_ptr<TensorGroup> tgroup;  // tensor parallelism: this rank's group (set_tensor_group)
  Backend* be = &cpu_backend();  // where parameters, gradients, activations and scratch live
  layers::Workspace ws{*be};

  // Activations for training (one set per layer, or one shared set with recompute) and for evaluation (one set),
  // each allocated for one shape and reused while the shape stays.
  struct ActsKey {
    int64_t B = -1, L = -1, count = -1;
    DType cdt = DType::F32;
    int64_t rank = -1;
    bool operator==(const ActsKey&) const = default;
  };
  std::vector<LayerActs> train_acts, eval_acts;  // train_acts: the one set of every slot under recompute
  ActsKey train_key, eval_key;

  // One micro-batch between its forward and its backward (a pipeline keeps several in flight, one per slot).
  struct Pass {
    BatchInfo bi;
    Tensor resid;                 // [n+1, T, C]: each layer's input, then the last layer's output
    Tensor dres, dres_c;          // [T, C]: the gradient down the residual stream (dres_c: compute dtype)
    std::vector<LayerActs> acts;  // one set per layer (not used under recompute)
    ActsKey key;
    bool counted = false;         // the last stage saw counted tokens (one stage: else no backward)
  };
  std::deque<Pass> passes;  // a deque: a new slot keeps the others' addresses (bi.attn points into bi)

  int64_t C() const { return cfg.hidden_size; }
  // This rank's share under tensor parallelism (the whole with one rank): heads, key/value heads, MLP features.
  int64_t Hl() const { return cfg.num_attention_heads / opt.tensor_parallel; }
  int64_t Gl() const { return cfg.num_key_value_heads / opt.tensor_parallel; }
  int64_t Fl() const { return cfg.intermediate_size / opt.tensor_parallel; }
  int64_t QD() const { return Hl() * cfg.head_dim; }
  int64_t KVD() const { return Gl() * cfg.head_dim; }
  float eps() const { return float(cfg.rms_norm_eps); }

  // Parameters are declared into the open group, then allocate_group() gives them views of the group's flat
  // value and gradient buffers (the base model is one group, LoRA adapters another).
  Parameter* add_param(const std::string& name, const Shape& shape) {
    auto p = std::make_unique<Parameter>();
    p->name = name;
    Parameter* raw = p.get();
    by_name[name] = raw;
    owned.push_back(std::move(p));
    open_group.push_back(raw);
    open_layout.add(name, shape);
    return raw;
  }

  void allocate_group() {
    ParamGroup g;
    g.layout = std::move(open_layout);
    g.values = g.layout.allocate(*be);
    g.grads = g.layout.allocate(*be);
    for (Parameter* p : open_group) {
      const FlatSlot& s = *g.layout.find(p->name);
      p->value = FlatLayout::view(g.values, s);
      p->grad = FlatLayout::view(g.grads, s);
    }
    groups.push_back(std::move(g));
    open_group.clear();
    open_layout = FlatLayout();
  }

  // p's values from a host tensor of its shape (float32, contiguous).
  void set_value(Parameter& p, const Tensor& host) { be->copy(be->upload(host), p.value); }

  // Creates every parameter (zeros) on `backend` in Hugging Face's order and wires the layers.
  void build(Backend& backend) {
    be = &backend;
    ws = layers::Workspace(backend);
    check_tensor_split();
    const int64_t C = this->C(), F = Fl(), V = cfg.vocab_size / opt.tensor_parallel;
    const int64_t N = cfg.num_hidden_layers, S = opt.pipeline_stages;
    if (S < 1 || opt.pipeline_stage < 0 || opt.pipeline_stage >= S)
      throw Error("pipeline stage " + std::to_string(opt.pipeline_stage) + " of " + std::to_string(S) + ": no such stage");
    if (N % S != 0)
      throw Error(std::to_string(N) + " layers do not split evenly over " + std::to_string(S) + " pipeline stages");
    if (S > 1 && cfg.tie_word_embeddings)
      throw Error("tie_word_embeddings with pipeline parallelism is not built yet (the embedding and the LM head sit "
                  "on different stages)");
    layer0 = opt.pipeline_stage * (N / S);
    const bool first = opt.pipeline_stage == 0, last = opt.pipeline_stage == S - 1;
    if (first) embed = add_param("model.embed_tokens.weight", {V, C});
    layer.resize(size_t(N / S));
    for (int64_t l = 0; l < N / S; l++) {
      LayerParams& P = layer[size_t(l)];
      const std::string pre = "model.layers." + std::to_string(layer0 + l) + ".";
      const Shape shapes[kNumProj] = {{QD(), C}, {KVD(), C}, {KVD(), C}, {C, QD()}, {F, C}, {F, C}, {C, F}};
      for (int i = 0; i < kNumProj; i++) {
        Linear& lin = P.proj[i];
        lin.weight = add_param(pre + kProjPath[i] + ".weight", shapes[i]);
        const bool biased = (i <= kV && cfg.attention_bias) || (i == kO && cfg.o_proj_bias);
        if (biased) lin.bias = add_param(pre + kProjPath[i] + ".bias", {shapes[i][0]});
      }
      P.input_norm = add_param(pre + "input_layernorm.weight", {C});
      P.post_norm = add_param(pre + "post_attention_layernorm.weight", {C});
    }
    if (last) {
      final_norm = add_param("model.norm.weight", {C});
      lm_head = cfg.tie_word_embeddings ? embed : add_param("lm_head.weight", {V, C});
      head.weight = lm_head;
    }
    allocate_group();
    rebuild_order();
    rope = make_rope_table(cfg, cfg.max_position_embeddings);
  }

  // Hugging Face's named_parameters() order, LoRA A/B right after the weight they adapt; and the trainable ones
  // in the groups forward_backward reports them in (backward_groups).
  void rebuild_order() {
    order.clear();
    backward_groups.assign(layer.size() + 2, {});
    auto add = [&](Parameter* p, size_t group) {
      order.push_back(p);
      if (p->trainable && p->grad.defined()) backward_groups[group].push_back(p);
    };
    if (embed) add(embed, layer.size() + 1);
    for (size_t l = 0; l < layer.size(); l++) {
      LayerParams& P = layer[l];
      const size_t group = layer.size() - l;
      for (Linear& lin : P.proj)
        for (Parameter* p : {lin.weight, lin.bias, lin.lora_a, lin.lora_b})
          if (p) add(p, group);
      add(P.input_norm, group);
      add(P.post_norm, group);
    }
    if (final_norm) add(final_norm, 0);
    if (lm_head && !cfg.tie_word_embeddings) add(lm_head, 0);
  }

  Ctx ctx() {
    const DType cdt = opt.compute;
    if (cdt != DType::F32 && cdt != DType::BF16 && cdt != DType::F16)
      throw Error(std::string("training compute dtype ") + dtype_name(cdt) + " is not supported (float32, bfloat16, float16)");
    if (opt.tensor_parallel > 1 && !tgroup) throw Error("tensor parallelism: set_tensor_group() before a pass");
    return Ctx{*be, be->train_ops(), cdt, ws};
  }

  // The product operands of this pass in the compute dtype (converted from the masters, which the optimizer changed).
  void prepare_weights(Ctx& c) {
    for (LayerParams& P : layer)
      for (Linear& lin : P.proj) lin.prepare(c);
    if (head.weight) head.prepare(c);
  }

  BatchInfo batch_info(const TrainBatch& b) const {
    const int64_t n = b.B * b.L;
    auto bad = [](const std::string& what) { throw Error("train batch: " + what); };
    if (b.B <= 0 || b.L <= 0) bad("empty (B " + std::to_string(b.B) + ", L " + std::to_string(b.L) + ")");
    if (int64_t(b.input_ids.size()) != n) bad(std::to_string(b.input_ids.size()) + " input_ids for B*L = " + std::to_string(n));
    if (int64_t(b.labels.size()) != n) bad(std::to_string(b.labels.size()) + " labels for B*L = " + std::to_string(n));
    if (!b.position_ids.empty() && int64_t(b.position_ids.size()) != n) bad("position_ids size differs from B*L");
    if (!b.segment_ids.empty() && int64_t(b.segment_ids.size()) != n) bad("segment_ids size differs from B*L");
    BatchInfo bi;
    bi.B = b.B;
    bi.L = b.L;
    bi.T = n;
    bi.ids = b.input_ids;
    bi.labels = b.labels;
    bi.positions.resize(size_t(n));
    bi.key_begin.resize(size_t(n));
    for (int64_t t = 0; t < n; t++) {
      const int64_t i = t % b.L;
      bi.positions[size_t(t)] = b.position_ids.empty() ? int32_t(i) : b.position_ids[size_t(t)];
      const bool new_run = i == 0 || (!b.segment_ids.empty() && b.segment_ids[size_t(t)] != b.segment_ids[size_t(t - 1)]);
      bi.key_begin[size_t(t)] = new_run ? int32_t(i) : bi.key_begin[size_t(t - 1)];
    }
    bi.attn.B = b.B;
    bi.attn.L = b.L;
    bi.attn.H = Hl();
    bi.attn.G = Gl();
    bi.attn.D = cfg.head_dim;
    bi.attn.scale = 1.0f / std::sqrt(float(cfg.head_dim));
    bi.attn.compute = opt.compute;
    bi.attn.key_begin = nullptr;  // set by the caller once bi has its final address
    return bi;
  }

  void alloc_acts(std::vector<LayerActs>& acts, ActsKey& key, int64_t count, const BatchInfo& bi, DType cdt) {
    ActsKey want{bi.B, bi.L, count, cdt, lora_on ? lora.rank : 0};
    if (key == want) return;
    acts.clear();
    acts.resize(size_t(count));
    const int64_t T = bi.T, C = this->C(), F = Fl(), H = Hl();
    for (LayerActs& A : acts) {
      A.x_mid = be->empty({T, C}, DType::F32);
      A.rstd1 = be->empty({T}, DType::F32);
      A.rstd2 = be->empty({T}, DType::F32);
      A.h1 = be->empty({T, C}, cdt);
      A.h2 = be->empty({T, C}, cdt);
      A.q = be->empty({T, QD()}, DType::F32);
      A.k = be->empty({T, KVD()}, DType::F32);
      A.v = be->empty({T, KVD()}, DType::F32);
      A.probs = be->empty({bi.B, H, bi.L, bi.L}, DType::F32);
      A.att = be->empty({T, QD()}, cdt);
      A.gate = be->empty({T, F}, DType::F32);
      A.up = be->empty({T, F}, DType::F32);
      A.act = be->empty({T, F}, cdt);
      if (lora_on)
        for (int i = 0; i < kNumProj; i++) A.u[i] = be->empty({T, lora.rank}, cdt);
    }
    key = want;
  }

  Tensor* lora_u(LayerActs& A, const LayerParams& P, int i) { return P.proj[i].has_lora() ? &A.u[i] : nullptr; }

  // One decoder layer: x_out = x_mid + mlp(norm2(x_mid)), x_mid = x_in + attn(norm1(x_in)); A receives what the
  // backward needs.
  void layer_forward(Ctx& c, int64_t l, const BatchInfo& bi, const Tensor& x_in, Tensor& x_out, LayerActs& A) {
    LayerParams& P = layer[size_t(l)];
    const int64_t T = bi.T, H = Hl(), G = Gl(), D = cfg.head_dim;
    // attention block
    layers::rmsnorm_forward(c, *P.input_norm, eps(), x_in, A.h1, A.rstd1);
    layers::linear_forward(c, P.proj[kQ], A.h1, A.q, lora_u(A, P, kQ));
    layers::linear_forward(c, P.proj[kK], A.h1, A.k, lora_u(A, P, kK));
    layers::linear_forward(c, P.proj[kV], A.h1, A.v, lora_u(A, P, kV));
    Tensor q3 = A.q.view({T, H, D}), k3 = A.k.view({T, G, D});
    layers::rope_forward(c, q3, bi.positions, rope);
    layers::rope_forward(c, k3, bi.positions, rope);
    layers::attention_forward(c, bi.attn, A.q, A.k, A.v, A.att, A.probs);
    residual_linear(c, P.proj[kO], A.att, x_in, A.x_mid, lora_u(A, P, kO));  // x_mid = x_in + o_proj(att)
    // MLP block
    layers::rmsnorm_forward(c, *P.post_norm, eps(), A.x_mid, A.h2, A.rstd2);
    layers::linear_forward(c, P.proj[kGate], A.h2, A.gate, lora_u(A, P, kGate));
    layers::linear_forward(c, P.proj[kUp], A.h2, A.up, lora_u(A, P, kUp));
    layers::swiglu_forward(c, A.gate, A.up, A.act);
    residual_linear(c, P.proj[kDown], A.act, A.x_mid, x_out, lora_u(A, P, kDown));
  }

  // The layer's backward: dres holds dL/dx_out on entry and dL/dx_in on return (unless need_dx is false, when the
  // input's gradient is not wanted and the first block's input-gradient products are skipped). dres_c is dres in
  // the compute dtype (dres itself in float32 mode), kept up to date by the norms' backwards.
  void layer_backward(Ctx& c, int64_t l, const BatchInfo& bi, const Tensor& x_in, LayerActs& A, Tensor& dres,
                      Tensor& dres_c, bool need_dx) {
    LayerParams& P = layer[size_t(l)];
    const int64_t T = bi.T, C = this->C(), F = Fl(), H = Hl(), G = Gl(), D = cfg.head_dim;
    Tensor* dres_copy = c.cdt == DType::F32 ? nullptr : &dres_c;
    // MLP block: x_out = x_mid + down(act)
    Tensor dact = c.ws.get("dact", {T, F}, DType::F32);
    layers::linear_backward(c, P.proj[kDown], A.act, lora_u(A, P, kDown), dres, dres_c, &dact, false);
    // dgate, dup straight in the compute dtype (over A.gate / A.up in float32 mode); the MLP has no bias, so the
    // compute-dtype gradients serve as dy too.
    Tensor dgate_c = c.cdt == DType::F32 ? A.gate : c.ws.get("dgate_c", {T, F}, c.cdt);
    Tensor dup_c = c.cdt == DType::F32 ? A.up : c.ws.get("dup_c", {T, F}, c.cdt);
    layers::swiglu_backward(c, dact, A.gate, A.up, dgate_c, dup_c);
    Tensor dh = c.ws.get("dh", {T, C}, DType::F32);
    layers::linear_backward(c, P.proj[kGate], A.h2, lora_u(A, P, kGate), dgate_c, dgate_c, &dh, false);
    layers::linear_backward(c, P.proj[kUp], A.h2, lora_u(A, P, kUp), dup_c, dup_c, &dh, true);
    tp_sum(dh);  // column-parallel gate/up: the ranks' parts of the input gradient
    layers::rmsnorm_backward(c, *P.post_norm, A.x_mid, A.rstd2, dh, dres, dres_copy);  // dres = dL/dx_mid
    // attention block: x_mid = x_in + o(att)
    Tensor datt = c.ws.get("datt", {T, QD()}, DType::F32);
    layers::linear_backward(c, P.proj[kO], A.att, lora_u(A, P, kO), dres, dres_c, &datt, false);
    Tensor dq = c.ws.get("dq", {T, QD()}, DType::F32);
    Tensor dk = c.ws.get("dk", {T, KVD()}, DType::F32);
    Tensor dv = c.ws.get("dv", {T, KVD()}, DType::F32);
    layers::attention_backward(c, bi.attn, datt, A.q, A.k, A.v, A.probs, dq, dk, dv);
    Tensor dq3 = dq.view({T, H, D}), dk3 = dk.view({T, G, D});
    // dq, dk rotated back and, in 16-bit modes, written in the compute dtype in the same pass
    Tensor dq_c = c.cdt == DType::F32 ? dq : c.ws.get("dq_c", {T, QD()}, c.cdt);
    Tensor dk_c = c.cdt == DType::F32 ? dk : c.ws.get("dk_c", {T, KVD()}, c.cdt);
    layers::rope_backward(c, dq3, bi.positions, rope, c.cdt == DType::F32 ? nullptr : &dq_c);
    layers::rope_backward(c, dk3, bi.positions, rope, c.cdt == DType::F32 ? nullptr : &dk_c);
    Tensor dv_c = c.compute_copy(dv, "dv_c");
    const bool want_dh = need_dx || P.input_norm->trainable;
    Tensor* dhp = want_dh ? &dh : nullptr;
    layers::linear_backward(c, P.proj[kQ], A.h1, lora_u(A, P, kQ), dq, dq_c, dhp, false);
    layers::linear_backward(c, P.proj[kK], A.h1, lora_u(A, P, kK), dk, dk_c, dhp, true);
    layers::linear_backward(c, P.proj[kV], A.h1, lora_u(A, P, kV), dv, dv_c, dhp, true);
    if (!want_dh) return;
    tp_sum(dh);  // column-parallel q/k/v
    layers::rmsnorm_backward(c, *P.input_norm, x_in, A.rstd1, dh, dres, dres_copy);  // dres = dL/dx_in
  }

  // The stage's layers over the batch, from the embedding (first stage) or `input` (the previous stage's output),
  // keeping the residual stream in `resid` ([n+1, T, C]: each layer's input, then the last layer's output).
  void forward_layers(Ctx& c, BatchInfo& bi, const Tensor& input, std::vector<LayerActs>& acts, bool per_layer,
                      Tensor& resid) {
    const int64_t n = int64_t(layer.size()), T = bi.T, C = this->C();
    bi.attn.key_begin = bi.key_begin.data();
    prepare_weights(c);
    Tensor x0 = resid.slice0(0, 1).view({T, C});
    if (embed) {
      embed_forward(c, bi, x0);
    } else {
      if (input.shape() != Shape{T, C} || input.dtype() != DType::F32)
        throw Error("pipeline stage " + std::to_string(opt.pipeline_stage) + ": input " + shape_str(input.shape()) +
                    ", expected float32 " + shape_str({T, C}));
      c.be.copy(input, x0);
    }
    for (int64_t l = 0; l < n; l++) {
      Tensor x_in = resid.slice0(l, l + 1).view({T, C}), x_out = resid.slice0(l + 1, l + 2).view({T, C});
      layer_forward(c, l, bi, x_in, x_out, acts[per_layer ? size_t(l) : 0]);
    }
  }

  // The last stage's final norm: its output (compute dtype) of the residual stream's end x, rstd_f [T] saved.
  Tensor final_norm_forward(Ctx& c, const Tensor& x, Tensor& rstd_f) {
    const int64_t T = x.dim(0);
    Tensor hf = ws.get("final_h", {T, C()}, c.cdt);
    rstd_f = ws.get("final_rstd", {T}, DType::F32);
    layers::rmsnorm_forward(c, *final_norm, eps(), x, hf, rstd_f);
    return hf;
  }

  // ---- tensor parallelism (train/tensor_parallel.h) ----

  void check_tensor_split() const {
    const int64_t t = opt.tensor_parallel;
    if (t < 1) throw Error("tensor parallelism over " + std::to_string(t) + " ranks");
    auto need = [&](int64_t n, const char* what) {
      if (n % t != 0)
        throw Error("tensor parallelism over " + std::to_string(t) + " ranks: " + what + " " + std::to_string(n) +
                    " does not split evenly");
    };
    need(cfg.num_attention_heads, "num_attention_heads");
    need(cfg.num_key_value_heads, "num_key_value_heads");
    need(cfg.intermediate_size, "intermediate_size");
    need(cfg.vocab_size, "vocab_size");
    if (t > 1 && cfg.o_proj_bias) throw Error("tensor parallelism: an o_proj bias is not built yet");
    if (opt.tensor_rank < 0 || opt.tensor_rank >= t) throw Error("tensor parallelism: rank " + std::to_string(opt.tensor_rank));
  }

  // x summed over the tensor group (a float32 tensor in host memory), the same bits on every rank.
  void tp_sum(Tensor& x) {
    if (tgroup) tgroup->combine(x.data<float>(), x.numel(), ReduceOp::Sum);
  }

  layers::VocabSplit vocab_split() {
    layers::VocabSplit s;
    if (!tgroup) return s;
    s.begin = opt.tensor_rank * (cfg.vocab_size / opt.tensor_parallel);
    s.vocab_size = cfg.vocab_size;
    s.combine = [this](float* v, int64_t n, ReduceOp op) { tgroup->combine(v, n, op); };
    s.sum = [this](Tensor& t) { tp_sum(t); };
    return s;
  }

  // out = residual + lin(x) for o_proj and down_proj; row-parallel, the ranks' partial products summed first.
  void residual_linear(Ctx& c, Linear& lin, const Tensor& x, const Tensor& residual, Tensor& out, Tensor* u) {
    if (!tgroup) {  // the product adds straight into a copy of the residual
      c.be.copy(residual, out);
      layers::linear_forward(c, lin, x, out, u, true);
      return;
    }
    Tensor part = ws.get("row_parallel_out", out.shape(), DType::F32);
    layers::linear_forward(c, lin, x, part, u, false);
    tp_sum(part);
    c.be.copy(residual, out);
    c.K.add(out, part);
  }

  // The token ids this rank's rows of a vocab-parallel table hold (shifted to its rows), and where the others are.
  void vocab_rows(const std::vector<int32_t>& ids, std::vector<int32_t>& mine, std::vector<int64_t>& at,
                  std::vector<int64_t>& others) const {
    const int64_t rows = embed->value.dim(0), begin = opt.tensor_rank * rows;
    for (size_t t = 0; t < ids.size(); t++) {
      if (ids[t] < 0 || ids[t] >= cfg.vocab_size)  // every rank sees the same ids: all fail alike
        throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary (size " + std::to_string(cfg.vocab_size) + ")");
      if (ids[t] >= begin && ids[t] < begin + rows) {
        mine.push_back(int32_t(ids[t] - begin));
        at.push_back(int64_t(t));
      } else {
        others.push_back(int64_t(t));
      }
    }
  }

  // Vocab-parallel: each rank looks up the tokens in its rows, zeros the others', and the ranks add up.
  void embed_forward(Ctx& c, const BatchInfo& bi, Tensor& x0) {
    if (!tgroup) return layers::embedding_forward(c, *embed, bi.ids, x0);
    std::vector<int32_t> ids(bi.ids.size(), 0), mine;
    std::vector<int64_t> at, others;
    vocab_rows(bi.ids, mine, at, others);
    for (size_t i = 0; i < at.size(); i++) ids[size_t(at[i])] = mine[i];
    layers::embedding_forward(c, *embed, ids, x0);
    if (!others.empty()) {
      Tensor zeros = ws.get("embed_zeros", {int64_t(others.size()), C()}, DType::F32);
      c.K.zero(zeros);
      c.K.scatter_rows(zeros, others.data(), int64_t(others.size()), x0);
    }
    tp_sum(x0);
  }

  void embed_backward(Ctx& c, const BatchInfo& bi, const Tensor& dx) {
    if (!tgroup) return layers::embedding_backward(c, *embed, bi.ids, dx);
    std::vector<int32_t> mine;
    std::vector<int64_t> at, others;
    vocab_rows(bi.ids, mine, at, others);
    if (mine.empty()) return;
    Tensor rows = ws.get("embed_dx", {int64_t(mine.size()), C()}, DType::F32);
    c.K.gather_rows(dx, at.data(), int64_t(at.size()), rows);
    layers::embedding_backward(c, *embed, mine, rows);
  }

  // p's values from the whole model's tensor (host float32): this rank's part under tensor parallelism.
  void set_whole(Parameter& p, const Tensor& whole) {
    const int dim = opt.tensor_parallel > 1 ? tensor_split_dim(p.name) : -1;
    set_value(p, dim < 0 ? whole : take_part(whole, dim, opt.tensor_parallel, opt.tensor_rank));
  }
  Shape whole_shape(const Parameter& p) const {
    Shape s = p.value.shape();
    const int dim = opt.tensor_parallel > 1 ? tensor_split_dim(p.name) : -1;
    if (dim >= 0) s[size_t(dim)] *= opt.tensor_parallel;
    return s;
  }

  // The residual stream of slot `slot` ([n+1, T, C]); slot 0's also serves evaluation, between steps.
  Tensor resid_of(int slot, int64_t T) {
    return ws.get("resid" + std::to_string(slot), {int64_t(layer.size()) + 1, T, C()}, DType::F32);
  }

  // Evaluation's pass through the stage's layers (no activations kept): the residual stream's end [T, C].
  Tensor eval_layers(Ctx& c, BatchInfo& bi, const Tensor& input) {
    alloc_acts(eval_acts, eval_key, 1, bi, c.cdt);
    const int64_t n = int64_t(layer.size());
    Tensor resid = resid_of(0, bi.T);
    forward_layers(c, bi, input, eval_acts, false, resid);
    return resid.slice0(n, n + 1).view({bi.T, C()});
  }

  // Slot `slot`'s pass for batch b, with buffers for its shape (grown, never shrunk: steps allocate nothing).
  Pass& pass_for(int slot, const TrainBatch& b, DType cdt) {
    while (passes.size() <= size_t(slot)) passes.emplace_back();
    Pass& p = passes[size_t(slot)];
    p.bi = batch_info(b);
    const int64_t n = int64_t(layer.size()), T = p.bi.T, C = this->C();
    const std::string s = std::to_string(slot);
    p.resid = resid_of(slot, T);
    p.dres = ws.get("dres" + s, {T, C}, DType::F32);
    p.dres_c = cdt == DType::F32 ? p.dres : ws.get("dres_c" + s, {T, C}, cdt);
    // Every stage knows whether the micro-batch counts a token (labels travel with the batch): without one, one
    // process skips the backward, and so does each stage (sending zeros on).
    p.counted = std::any_of(p.bi.labels.begin(), p.bi.labels.end(), [](int32_t l) { return l != -100; });
    if (opt.recompute) alloc_acts(train_acts, train_key, 1, p.bi, cdt);
    else alloc_acts(p.acts, p.key, n, p.bi, cdt);
    return p;
  }
};

// ---- construction ----

TrainableLlama::TrainableLlama() : impl_(std::make_unique<Impl>()) {}
TrainableLlama::~TrainableLlama() = default;

std::unique_ptr<TrainableLlama> TrainableLlama::random(const LlamaConfig& cfg, const TrainOptions& opt, uint64_t seed,
                                                       Backend& backend) {
  cfg.validate("config");
  std::unique_ptr<TrainableLlama> m(new TrainableLlama());
  Impl& M = *m->impl_;
  M.cfg = cfg;
  M.opt = opt;
  M.build(backend);
  for (Parameter* p : M.order) {
    const std::string& n = p->name;
    const bool norm = n.find("norm.weight") != std::string::npos;
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    if (bias) continue;  // zeros already
    Tensor host = Tensor::empty(M.whole_shape(*p), DType::F32);  // drawn whole: the same model on any layout
    if (norm) fill_value(host, 1.0f);
    else fill_normal(host, cfg.initializer_range, name_seed(n, seed));
    M.set_whole(*p, host);
  }
  return m;
}

std::unique_ptr<TrainableLlama> TrainableLlama::from_weights(const LlamaConfig& cfg, const WeightSource& src,
                                                             const TrainOptions& opt, Backend& backend) {
  cfg.validate(src.where());
  std::unique_ptr<TrainableLlama> m(new TrainableLlama());
  Impl& M = *m->impl_;
  M.cfg = cfg;
  M.opt = opt;
  M.build(backend);
  for (Parameter* p : M.order) {
    Tensor t = src.get(p->name);
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail(src.where(), "tensor '" + p->name + "' has dtype " + dtype_name(t.dtype()) + ", expected float32, bfloat16 or float16");
    if (t.shape() != M.whole_shape(*p))
      fail(src.where(), "tensor '" + p->name + "' has shape " + shape_str(t.shape()) + " but the config implies " +
                            shape_str(M.whole_shape(*p)));
    M.set_whole(*p, t.to(DType::F32));
  }
  return m;
}

std::unique_ptr<TrainableLlama> TrainableLlama::from_pretrained(const std::string& path, const TrainOptions& opt,
                                                                Backend& backend) {
  const ModelSource ms = open_model_source(path);
  return from_weights(ms.config, *ms.weights, opt, backend);
}

const LlamaConfig& TrainableLlama::config() const { return impl_->cfg; }
TrainOptions& TrainableLlama::options() { return impl_->opt; }
std::vector<Parameter*> TrainableLlama::parameters() { return impl_->order; }

Parameter* TrainableLlama::find(const std::string& name) {
  auto it = impl_->by_name.find(name);
  if (it != impl_->by_name.end()) return it->second;
  if (name == "lm_head.weight" && impl_->cfg.tie_word_embeddings) return impl_->embed;
  return nullptr;
}

// ---- LoRA ----

void TrainableLlama::add_lora(const LoraOptions& lo) {
  Impl& M = *impl_;
  if (M.lora_on) throw Error("add_lora: this model already has LoRA adapters");
  if (M.opt.tensor_parallel > 1) throw Error("add_lora: LoRA with tensor parallelism is not built yet");
  if (lo.rank <= 0) throw Error("lora_rank must be positive, got " + std::to_string(lo.rank));
  bool wanted[kNumProj] = {};
  for (const std::string& t : lo.targets) {
    auto it = std::find(std::begin(kProjName), std::end(kProjName), t);
    if (it == std::end(kProjName))
      throw Error("LoRA target '" + t + "' is not a projection of this model (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                  "up_proj, down_proj)");
    wanted[it - std::begin(kProjName)] = true;
  }
  for (int64_t l = 0; l < int64_t(M.layer.size()); l++) {
    const std::string pre = "model.layers." + std::to_string(M.layer0 + l) + ".";
    for (int i = 0; i < kNumProj; i++) {
      if (!wanted[i]) continue;
      Linear& lin = M.layer[size_t(l)].proj[i];
      const std::string base = pre + kProjPath[i];
      lin.lora_a = M.add_param(base + ".lora_A.weight", {lo.rank, lin.in()});
      lin.lora_b = M.add_param(base + ".lora_B.weight", {lin.out(), lo.rank});
      lin.scaling = float(lo.alpha / double(lo.rank));
    }
  }
  M.allocate_group();  // the adapters' flat buffers
  // PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0, so the adapter starts as a no-op.
  for (LayerParams& P : M.layer)
    for (Linear& lin : P.proj) {
      if (!lin.has_lora()) continue;
      Tensor a = Tensor::empty(lin.lora_a->value.shape(), DType::F32);
      fill_uniform(a, 1.0 / std::sqrt(double(lin.in())), name_seed(lin.lora_a->name, lo.seed));
      M.set_value(*lin.lora_a, a);
    }
  // Only the adapters train: the base holds no gradient memory and skips its weight-gradient products.
  for (auto& p : M.owned) {
    const bool adapter = p->name.find(".lora_A.") != std::string::npos || p->name.find(".lora_B.") != std::string::npos;
    p->trainable = adapter;
    if (!adapter) p->grad = Tensor();
  }
  M.groups.front().grads = Tensor();  // with its views gone, the base's gradient buffer is freed
  M.lora = lo;
  M.lora_on = true;
  M.rebuild_order();
  M.train_key = M.eval_key = Impl::ActsKey{};
  for (Impl::Pass& p : M.passes) p.key = Impl::ActsKey{};
}

bool TrainableLlama::has_lora() const { return impl_->lora_on; }
const LoraOptions& TrainableLlama::lora() const { return impl_->lora; }
Backend& TrainableLlama::backend() const { return *impl_->be; }
std::vector<TrainableLlama::FlatGroup> TrainableLlama::flat_groups() const {
  std::vector<FlatGroup> out;
  for (const auto& g : impl_->groups) out.push_back(FlatGroup{&g.layout, g.values, g.grads});
  return out;
}
void TrainableLlama::set_value(Parameter& p, const Tensor& host) {
  impl_->set_value(p, host.dtype() == DType::F32 ? host.contiguous() : host.to(DType::F32));
}
Shape TrainableLlama::whole_shape(const Parameter& p) const { return impl_->whole_shape(p); }
void TrainableLlama::set_whole_value(Parameter& p, const Tensor& whole) {
  if (whole.shape() != impl_->whole_shape(p))
    throw Error("tensor '" + p.name + "' has shape " + shape_str(whole.shape()) + ", the model " + shape_str(impl_->whole_shape(p)));
  impl_->set_whole(p, whole.dtype() == DType::F32 ? whole.contiguous() : whole.to(DType::F32));
}
void TrainableLlama::set_tensor_group(Communicator& group) {
  const TrainOptions& o = impl_->opt;
  if (group.size() != o.tensor_parallel || group.rank() != o.tensor_rank)
    throw Error("tensor parallelism: the model is part " + std::to_string(o.tensor_rank) + " of " +
                std::to_string(o.tensor_parallel) + " but this rank is " + std::to_string(group.rank()) + " of " +
                std::to_string(group.size()) + " in its tensor group");
  if (impl_->be->device() != Device::CPU)
    throw Error("tensor parallelism: the ranks combine host memory; the model is on " + std::string(device_name(impl_->be->device())));
  impl_->tgroup = std::make_unique<TensorGroup>(group);
}

// ---- passes ----

bool TrainableLlama::first_stage() const { return impl_->opt.pipeline_stage == 0; }
bool TrainableLlama::last_stage() const { return impl_->opt.pipeline_stage == impl_->opt.pipeline_stages - 1; }
bool TrainableLlama::on_this_stage(const std::string& name) const {
  const std::string layers = "model.layers.";
  if (name.rfind(layers, 0) == 0) {
    const int64_t l = std::atoll(name.c_str() + layers.size());
    if (l < 0 || l >= impl_->cfg.num_hidden_layers) return true;  // no stage's: "here", so that a lookup fails
    return l >= impl_->layer0 && l < impl_->layer0 + int64_t(impl_->layer.size());
  }
  if (name.rfind("model.embed_tokens.", 0) == 0) return first_stage();
  return last_stage();
}

StageOutput TrainableLlama::stage_forward(int slot, const TrainBatch& batch, const Tensor& input, float grad_scale) {
  Impl& M = *impl_;
  Ctx c = M.ctx();
  Impl::Pass& P = M.pass_for(slot, batch, c.cdt);
  const bool rc = M.opt.recompute;
  const int64_t n = int64_t(M.layer.size()), T = P.bi.T, C = M.C();
  M.forward_layers(c, P.bi, input, rc ? M.train_acts : P.acts, !rc, P.resid);
  StageOutput out;
  Tensor x_last = P.resid.slice0(n, n + 1).view({T, C});
  if (!last_stage()) {
    out.output = x_last;
    return out;
  }
  // The loss and its gradient down to the final norm's input, where the backward picks it up.
  Tensor rstd_f;
  Tensor hf = M.final_norm_forward(c, x_last, rstd_f);
  Tensor dhf = M.ws.get("final_dh", {T, C}, DType::F32);
  const layers::VocabSplit split = M.vocab_split();
  CrossEntropyResult r = layers::lm_head_loss(c, M.head, hf, P.bi.labels, grad_scale, &dhf, M.tgroup ? &split : nullptr);
  c.K.zero(P.dres);
  if (c.cdt != DType::F32) c.K.zero(P.dres_c);
  if (P.counted)
    layers::rmsnorm_backward(c, *M.final_norm, x_last, rstd_f, dhf, P.dres, c.cdt == DType::F32 ? nullptr : &P.dres_c);
  out.stats = LossStats{r.loss_sum, r.counted, r.correct};
  out.loss = r.counted > 0 ? r.loss_sum / double(r.counted) : 0.0;
  return out;
}

Tensor TrainableLlama::stage_backward(int slot, const Tensor& output_grad, const GradsReady& ready) {
  Impl& M = *impl_;
  Ctx c = M.ctx();
  Impl::Pass& P = M.passes.at(size_t(slot));
  BatchInfo& bi = P.bi;
  bi.attn.key_begin = bi.key_begin.data();
  const int64_t n = int64_t(M.layer.size()), T = bi.T, C = M.C();
  const bool rc = M.opt.recompute;
  if (rc) M.alloc_acts(M.train_acts, M.train_key, 1, bi, c.cdt);  // another slot's forward may have had another shape
  // The CPU backends compute synchronously: a gradient is in memory when its op returns.
  const std::vector<std::vector<Parameter*>>& groups = M.backward_groups;
  size_t reported = 0;
  auto report_through = [&](size_t last) {
    if (!ready) return;
    for (; reported <= last && reported < groups.size(); reported++)
      if (!groups[reported].empty()) ready(groups[reported]);
  };
  if (!last_stage()) {
    if (output_grad.shape() != Shape{T, C} || output_grad.dtype() != DType::F32)
      throw Error("pipeline stage " + std::to_string(M.opt.pipeline_stage) + ": output gradient " +
                  shape_str(output_grad.shape()) + ", expected float32 " + shape_str({T, C}));
    c.be.copy(output_grad, P.dres);
    if (c.cdt != DType::F32) c.K.convert(P.dres, P.dres_c);
  }
  if (!P.counted) c.K.zero(P.dres);  // no counted token: no backward, a zero gradient for the previous stage
  if (P.counted) {
    report_through(0);
    for (int64_t l = n - 1; l >= 0; l--) {
      Tensor x_in = P.resid.slice0(l, l + 1).view({T, C});
      LayerActs& A = rc ? M.train_acts[0] : P.acts[size_t(l)];
      if (rc) {
        // Activation checkpointing: rerun this layer's forward from its saved input, then its backward.
        Tensor x_out = M.ws.get("recompute_out", {T, C}, DType::F32);
        M.layer_forward(c, l, bi, x_in, x_out, A);
      }
      M.layer_backward(c, l, bi, x_in, A, P.dres, P.dres_c, M.layer0 + l > 0 || (M.embed && M.embed->trainable));
      report_through(size_t(n - l));
    }
    if (M.embed) M.embed_backward(c, bi, P.dres);
  }
  report_through(groups.size());  // all of them (no counted token: no backward ran)
  return first_stage() ? Tensor() : P.dres;
}

double TrainableLlama::forward_backward(const TrainBatch& batch, float grad_scale, LossStats* stats,
                                        const GradsReady& ready) {
  if (!first_stage() || !last_stage())
    throw Error("forward_backward: a pipeline stage runs stage_forward and stage_backward");
  StageOutput o = stage_forward(0, batch, Tensor(), grad_scale);
  stage_backward(0, Tensor(), ready);
  if (stats) *stats = o.stats;
  return o.loss;
}

StageOutput TrainableLlama::stage_eval(const TrainBatch& batch, const Tensor& input) {
  Impl& M = *impl_;
  Ctx c = M.ctx();
  BatchInfo bi = M.batch_info(batch);
  Tensor x_last = M.eval_layers(c, bi, input);
  StageOutput out;
  if (!last_stage()) {
    out.output = x_last;
    return out;
  }
  Tensor rstd_f;
  Tensor hf = M.final_norm_forward(c, x_last, rstd_f);
  const layers::VocabSplit split = M.vocab_split();
  CrossEntropyResult r = layers::lm_head_loss(c, M.head, hf, bi.labels, 1.0f, nullptr, M.tgroup ? &split : nullptr);
  out.stats = LossStats{r.loss_sum, r.counted, r.correct};
  out.loss = r.counted > 0 ? r.loss_sum / double(r.counted) : 0.0;
  return out;
}

double TrainableLlama::forward_loss(const TrainBatch& batch, LossStats* stats) {
  if (!first_stage() || !last_stage()) throw Error("forward_loss: a pipeline stage runs stage_eval");
  StageOutput o = stage_eval(batch, Tensor());
  if (stats) *stats = o.stats;
  return o.loss;
}

Tensor TrainableLlama::forward_logits(const TrainBatch& batch) {
  Impl& M = *impl_;
  if (!first_stage() || !last_stage() || M.opt.tensor_parallel > 1)
    throw Error("forward_logits: needs the whole model, not a pipeline stage or a tensor-parallel part");
  Ctx c = M.ctx();
  BatchInfo bi = M.batch_info(batch);
  Tensor rstd_f;
  Tensor hf = M.final_norm_forward(c, M.eval_layers(c, bi, Tensor()), rstd_f);
  Tensor logits = M.be->empty({bi.T, M.cfg.vocab_size}, DType::F32);
  layers::lm_head_logits(c, M.head, hf, logits);
  return M.be->download(logits);
}

void TrainableLlama::zero_grad() {
  for (Parameter* p : impl_->order)
    if (p->grad.defined()) impl_->be->train_ops().zero(p->grad);
}

std::vector<std::pair<std::string, Tensor>> TrainableLlama::export_weights(bool include_lora) const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (Parameter* p : impl_->order) {
    const bool adapter = p->name.find(".lora_A.") != std::string::npos || p->name.find(".lora_B.") != std::string::npos;
    if (adapter && !include_lora) continue;
    out.emplace_back(p->name, impl_->be->download(p->value));
  }
  return out;
}

}  // namespace oar
