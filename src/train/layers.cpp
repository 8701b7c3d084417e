#include "train/layers.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/error.h"

namespace oar::layers {

namespace {
// OAR_TRAIN_PROFILE=1: wall time per layer function, printed to stderr at exit (for tuning).
struct Profile {
  bool on = std::getenv("OAR_TRAIN_PROFILE") != nullptr;
  std::map<std::string, std::pair<int64_t, double>> t;
  ~Profile() {
    if (!on) return;
    std::vector<std::pair<std::string, std::pair<int64_t, double>>> v(t.begin(), t.end());
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.second > b.second.second; });
    for (auto& [k, e] : v) std::fprintf(stderr, "layer %-22s calls %7lld  %8.3f s\n", k.c_str(), (long long)e.first, e.second);
  }
};
Profile& profile() {
  static Profile p;
  return p;
}
struct Timed {
  const char* name;
  double t0 = 0;
  explicit Timed(const char* n) : name(n) {
    if (profile().on) t0 = omp_get_wtime();
  }
  ~Timed() {
    if (!profile().on) return;
    auto& e = profile().t[name];
    e.first++;
    e.second += omp_get_wtime() - t0;
  }
};
}  // namespace

Tensor Workspace::get(const std::string& name, const Shape& shape, DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const size_t bytes = std::max<size_t>(size_t(n) * dtype_size(dtype), 64);
  auto& s = bufs_[name];
  if (!s || s->bytes() < bytes) s = be_->empty({int64_t(bytes)}, DType::U8).storage();
  return Tensor::from_storage(s, shape, dtype);
}

Tensor Ctx::compute_copy(const Tensor& x, const std::string& name) {
  if (cdt == DType::F32) return x;
  Timed t_("convert");
  Tensor t = ws.get(name, x.shape(), cdt);
  K.convert(x, t);
  return t;
}

// ---- embedding ----

void embedding_forward(Ctx& c, const Parameter& table, const std::vector<int32_t>& ids, Tensor& x) {
  Timed t_("embedding_forward");
  c.K.embedding_forward(table.value, ids.data(), int64_t(ids.size()), x);
}

void embedding_backward(Ctx& c, Parameter& table, const std::vector<int32_t>& ids, const Tensor& dx) {
  Timed t_("embedding_backward");
  if (table.trainable) c.K.embedding_backward(dx, ids.data(), int64_t(ids.size()), table.grad);
}

// ---- RMSNorm ----

void rmsnorm_forward(Ctx& c, const Parameter& w, float eps, const Tensor& x, Tensor& y, Tensor& rstd) {
  Timed t_("rmsnorm_forward");
  c.K.rmsnorm_forward(x, w.value, eps, y, rstd);
}

void rmsnorm_backward(Ctx& c, Parameter& w, const Tensor& x, const Tensor& rstd, const Tensor& dy, Tensor& dx,
                      Tensor* dx_c) {
  Timed t_("rmsnorm_backward");
  c.K.rmsnorm_backward(dy, x, w.value, rstd, dx, w.trainable ? &w.grad : nullptr, dx_c);
}

// ---- linear (+ LoRA) ----

void Linear::prepare(Ctx& c) {
  Timed t_("prepare_weights");
  auto to_compute = [&](const Tensor& src, Tensor& dst) {
    if (!dst.defined() || dst.dtype() != c.cdt || dst.shape() != src.shape()) dst = c.be.empty(src.shape(), c.cdt);
    c.K.convert(src, dst);
  };
  if (has_lora()) {
    // The products use the merged weight W + s B A: the forward then costs one product, as without the adapter,
    // and dy (W + s B A) is the whole input gradient (the adapter's part included). Only u = x A^T (for dB) and the
    // adapter's own gradients remain as extra work.
    if (!merged.defined() || merged.shape() != weight->value.shape()) merged = c.be.empty(weight->value.shape(), DType::F32);
    c.be.copy(weight->value, merged);
    c.K.matmul(lora_b->value, lora_a->value, merged, scaling, 1.0f);
  }
  const Tensor& base = has_lora() ? merged : weight->value;
  if (c.cdt == DType::F32) {
    w = base;
    if (has_lora()) {
      a = lora_a->value;
      b = lora_b->value;
    }
    return;
  }
  to_compute(base, w);
  if (has_lora()) {
    to_compute(lora_a->value, a);
    to_compute(lora_b->value, b);
  }
}

void linear_forward(Ctx& c, const Linear& lin, const Tensor& x, Tensor& y, Tensor* u, bool accumulate) {
  Timed t_("linear_forward");
  c.K.matmul(x, lin.w.transpose(0, 1), y, 1.0f, accumulate ? 1.0f : 0.0f);
  if (lin.bias) c.K.add_bias(y, lin.bias->value);
  if (!lin.has_lora()) return;
  if (!u) throw Error("linear_forward: a LoRA layer needs its u buffer");
  // The adapter's output is already in y (merged weight); keep u = x A^T, in the compute dtype, for dB.
  const int64_t T = x.dim(0), r = lin.rank();
  Tensor u32 = c.cdt == DType::F32 ? *u : c.ws.get("lora_u32", {T, r}, DType::F32);
  c.K.matmul(x, lin.a.transpose(0, 1), u32);
  if (c.cdt != DType::F32) c.K.convert(u32, *u);
}

void linear_backward(Ctx& c, Linear& lin, const Tensor& x, const Tensor* u, const Tensor& dy, const Tensor& dy_c,
                     Tensor* dx, bool dx_accumulate) {
  Timed t_("linear_backward");
  // With LoRA, w is W + s B A, so this is also the adapter path's input gradient (s du A).
  if (dx) c.K.matmul(dy_c, lin.w, *dx, 1.0f, dx_accumulate ? 1.0f : 0.0f);
  // Frozen weights skip their gradient products: this is where LoRA saves a third of the work.
  if (lin.weight->trainable) c.K.matmul(dy_c.transpose(0, 1), x, lin.weight->grad, 1.0f, 1.0f);
  if (lin.bias && lin.bias->trainable) c.K.bias_backward(dy, lin.bias->grad);
  if (!lin.has_lora()) return;
  if (!u) throw Error("linear_backward: a LoRA layer needs its u buffer");
  // y = x W^T + s u B^T with u = x A^T:  dB = s dy^T u and du = s dy B (one pass over dy),  dA = du^T x.
  const int64_t T = x.dim(0), r = lin.rank();
  Tensor du = c.ws.get("lora_du", {T, r}, DType::F32);
  c.K.lora_backward(dy_c, *u, lin.b, lin.scaling, du, lin.lora_b->trainable ? &lin.lora_b->grad : nullptr);
  if (!lin.lora_a->trainable) return;
  Tensor du_c = c.compute_copy(du, "lora_du_c");
  c.K.matmul(du_c.transpose(0, 1), x, lin.lora_a->grad, 1.0f, 1.0f);
}

// ---- RoPE ----

void rope_forward(Ctx& c, Tensor& x, const std::vector<int32_t>& positions, const RopeTable& table) {
  Timed t_("rope_forward");
  c.K.rope(x, positions.data(), table, false);
}

void rope_backward(Ctx& c, Tensor& dx, const std::vector<int32_t>& positions, const RopeTable& table,
                   Tensor* dx_c) {
  Timed t_("rope_backward");
  c.K.rope(dx, positions.data(), table, true, dx_c);
}

// ---- attention ----

void attention_forward(Ctx& c, const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                       Tensor& probs) {
  Timed t_("attention_forward");
  c.K.attention_forward(a, q, k, v, out, probs);
}

void attention_backward(Ctx& c, const AttentionLayout& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& probs, Tensor& dq, Tensor& dk, Tensor& dv) {
  Timed t_("attention_backward");
  c.K.attention_backward(a, dout, q, k, v, probs, dq, dk, dv);
}

// ---- SwiGLU ----

void swiglu_forward(Ctx& c, const Tensor& gate, const Tensor& up, Tensor& act) {
  Timed t_("swiglu_forward");
  c.K.swiglu_forward(gate, up, act);
}

void swiglu_backward(Ctx& c, const Tensor& dact, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) {
  Timed t_("swiglu_backward");
  c.K.swiglu_backward(dact, gate, up, dgate, dup);
}

// ---- LM head + cross-entropy ----

namespace {
// Rows per chunk of the LM head: [chunk, V] float32 logits stay at a few tens of MB.
int64_t head_chunk() {
  static const int64_t n = [] {
    const char* e = std::getenv("OAR_HEAD_CHUNK");  // for tuning
    return e ? std::max<int64_t>(1, std::atoll(e)) : int64_t(512);
  }();
  return n;
}

}  // namespace

CrossEntropyResult lm_head_loss(Ctx& c, Linear& head, const Tensor& x, const std::vector<int32_t>& labels,
                                float grad_scale, Tensor* dx, const VocabSplit* split) {
  Timed t_("lm_head_loss");
  const int64_t T = x.dim(0), C = x.dim(1), V = head.out();
  if (int64_t(labels.size()) != T) throw Error("lm_head_loss: one label per row expected");
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < T; t++)
    if (labels[size_t(t)] != -100) rows.push_back(t);
  const int64_t counted = int64_t(rows.size());
  if (dx) c.K.zero(*dx);
  CrossEntropyResult total;
  if (counted == 0) return total;
  // d(mean loss)/dlogit = (softmax - onehot) / counted; the caller's scale (accumulation, loss scaling) rides along.
  const float scale = grad_scale / float(counted);
  std::vector<int32_t> lab;
  const int64_t chunk = head_chunk();
  for (int64_t r0 = 0; r0 < counted; r0 += chunk) {
    const int64_t n = std::min(chunk, counted - r0);
    Tensor xs = c.ws.get("head_x", {n, C}, x.dtype());
    c.K.gather_rows(x, rows.data() + r0, n, xs);
    lab.resize(size_t(n));
    for (int64_t i = 0; i < n; i++) lab[size_t(i)] = labels[size_t(rows[size_t(r0 + i)])];
    Tensor logits = c.ws.get("head_logits", {n, V}, DType::F32);
    c.K.matmul(xs, head.w.transpose(0, 1), logits);
    CrossEntropyResult r =
        split ? c.K.cross_entropy_split(logits, lab.data(), split->begin, split->vocab_size, scale, dx != nullptr, split->combine)
              : c.K.cross_entropy(logits, lab.data(), scale, dx != nullptr);
    total.loss_sum += r.loss_sum;
    total.counted += r.counted;
    total.correct += r.correct;
    if (!dx) continue;
    Tensor dl = c.compute_copy(logits, "head_dlogits_c");
    Tensor dxs = c.ws.get("head_dx", {n, C}, DType::F32);
    c.K.matmul(dl, head.w, dxs);
    if (split) split->sum(dxs);
    if (head.weight->trainable) c.K.matmul(dl.transpose(0, 1), xs, head.weight->grad, 1.0f, 1.0f);
    c.K.scatter_rows(dxs, rows.data() + r0, n, *dx);
  }
  return total;
}

void lm_head_logits(Ctx& c, const Linear& head, const Tensor& x, Tensor& logits) {
  c.K.matmul(x, head.w.transpose(0, 1), logits);
}

}  // namespace oar::layers
