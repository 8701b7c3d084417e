// The CPU's norm, rotary, SwiGLU, embedding and loss kernels of the training kernels (cpu_train_layers.h): plain
// loops over rows, the row kernels (cpu_train_row_ops.h) inside, split over the cores; reductions over rows (the
// weight gradient of the norm, the loss) add per-thread partial sums in thread order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_train_common.h"
#include "kernels/cpu/cpu_train_layers.h"

namespace oar::cpu {
namespace {

void check_ids(const int32_t* ids, int64_t n, int64_t V) {
  for (int64_t t = 0; t < n; t++)
    if (ids[t] < 0 || ids[t] >= V)
      throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary (size " + std::to_string(V) + ")");
}

}  // namespace

void embedding_forward(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) {
  const int64_t V = table.dim(0), C = table.dim(1);
  require(table.dtype() == DType::F32 && out.dtype() == DType::F32 && out.numel() == n * C, "embedding: float32 table and output");
  check_ids(ids, n, V);
  const float* tp = table.data<float>();
  float* o = out.data<float>();
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) std::memcpy(o + t * C, tp + int64_t(ids[t]) * C, size_t(C) * 4);
  }, C);
}

void embedding_backward(const Tensor& dout, const int32_t* ids, int64_t n, Tensor& dtable) {
  const int64_t V = dtable.dim(0), C = dtable.dim(1);
  check_ids(ids, n, V);
  const float* d = dout.data<float>();
  float* g = dtable.data<float>();
  // Split by columns, not tokens: a repeated id then never has two threads adding to one row.
  parallel_ranges(C, [&](int64_t b, int64_t e) {
    for (int64_t t = 0; t < n; t++) {
      float* row = g + int64_t(ids[t]) * C;
      const float* src = d + t * C;
      for (int64_t c = b; c < e; c++) row[c] += src[c];
    }
  }, n);
}

void rmsnorm_forward(const TrainIsa& ti, const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const int64_t C = w.numel(), R = x.numel() / C;
  require(x.dtype() == DType::F32 && w.dtype() == DType::F32 && rstd.numel() >= R && y.numel() == R * C, "rmsnorm_forward shapes");
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* rp = rstd.data<float>();
  parallel_ranges(R, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> row;
    row.resize(size_t(C));
    for (int64_t r = b; r < e; r++) {
      if (y.dtype() == DType::F32) {
        rp[r] = ti.rows.rmsnorm_forward(xp + r * C, wp, eps, y.data<float>() + r * C, C);
      } else {
        rp[r] = ti.rows.rmsnorm_forward(xp + r * C, wp, eps, row.data(), C);
        store_row(row.data(), y, r * C, C, ti.isa);
      }
    }
  }, C);
}

void rmsnorm_backward(const TrainIsa& ti, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw, Tensor* dx_c) {
  const int64_t C = w.numel(), R = x.numel() / C;
  require(dy.dtype() == DType::F32 && dx.dtype() == DType::F32 && dy.numel() == R * C && dx.numel() == R * C, "rmsnorm_backward shapes");
  const float* g = dy.data<float>();
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const float* rp = rstd.data<float>();
  float* dxp = dx.data<float>();
  require(!dx_c || (dx_c->numel() == R * C && is_compute_dtype(dx_c->dtype())), "rmsnorm_backward: dx_c like dx");
  const int parts = num_ranges(R, C);
  std::vector<float> partial(dw ? size_t(parts * C) : 0, 0.0f);
  parallel_ranges_indexed(R, parts, [&](int p, int64_t b, int64_t e) {
    float* acc = dw ? partial.data() + p * C : nullptr;
    for (int64_t r = b; r < e; r++) {
      ti.rows.rmsnorm_backward(g + r * C, xp + r * C, wp, rp[r], dxp + r * C, acc, C);
      if (dx_c) store_row(dxp + r * C, *dx_c, r * C, C, ti.isa);
    }
  });
  if (dw) {
    float* d = dw->data<float>();
    for (int p = 0; p < parts; p++)
      for (int64_t i = 0; i < C; i++) d[i] += partial[size_t(p * C + i)];
  }
}

void rope(const TrainIsa& ti, Tensor& x, const int32_t* positions, const RopeTable& tab, bool inverse, Tensor* x_c) {
  const int64_t T = x.dim(0), heads = x.dim(1), D = x.dim(2), half = D / 2;
  require(x.dtype() == DType::F32 && half == tab.half_dim, "rope: float32 [T, heads, D] matching the table");
  for (int64_t t = 0; t < T; t++)
    if (positions[t] < 0 || positions[t] >= tab.max_positions)
      bad("position " + std::to_string(positions[t]) + " is outside the rotary table (max_position_embeddings " +
          std::to_string(tab.max_positions) + ")");
  float* xp = x.data<float>();
  require(!x_c || (x_c->numel() == x.numel() && is_compute_dtype(x_c->dtype())), "rope: x_c like x");
  const float sign = inverse ? -1.0f : 1.0f;
  const bool interleaved = tab.layout == RopeLayout::Interleaved;
  parallel_ranges(T, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      ti.rows.rope(xp + t * heads * D, tab.cos.data() + positions[t] * half, tab.sin.data() + positions[t] * half,
                   heads, half, sign, interleaved);
      if (x_c) store_row(xp + t * heads * D, *x_c, t * heads * D, heads * D, ti.isa);
    }
  }, heads * D);
}

void swiglu_forward(const TrainIsa& ti, const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  require(up.numel() == n && out.numel() == n && gate.dtype() == DType::F32 && up.dtype() == DType::F32, "swiglu_forward shapes");
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    constexpr int64_t chunk = 2048;
    float buf[chunk];
    for (int64_t s = b; s < e; s += chunk) {
      const int64_t m = std::min(chunk, e - s);
      if (out.dtype() == DType::F32) {
        ti.rows.swiglu_forward(g + s, u + s, out.data<float>() + s, m);
      } else {
        ti.rows.swiglu_forward(g + s, u + s, buf, m);
        store_row(buf, out, s, m, ti.isa);
      }
    }
  }, 16);
}

void swiglu_backward(const TrainIsa& ti, const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup) {
  const int64_t n = gate.numel();
  require(dout.numel() == n && up.numel() == n && dgate.numel() == n && dup.numel() == n, "swiglu_backward shapes");
  require(is_compute_dtype(dgate.dtype()) && is_compute_dtype(dup.dtype()), "swiglu_backward: compute-dtype outputs");
  const float* d = dout.data<float>();
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    constexpr int64_t chunk = 2048;
    float dg[chunk], du[chunk];
    for (int64_t s0 = b; s0 < e; s0 += chunk) {
      const int64_t m = std::min(chunk, e - s0);
      ti.rows.swiglu_backward(d + s0, g + s0, u + s0, dg, du, m);
      // whole chunk computed before storing, so outputs may alias the inputs
      store_row(dg, dgate, s0, m, ti.isa);
      store_row(du, dup, s0, m, ti.isa);
    }
  }, 16);
}

CrossEntropyResult cross_entropy(const TrainIsa& ti, Tensor& logits, const int32_t* labels, float grad_scale,
                                 bool want_grad) {
  require(logits.dtype() == DType::F32 && logits.ndim() == 2 && logits.is_contiguous(), "cross_entropy: float32 [R, V] logits");
  const int64_t R = logits.dim(0), V = logits.dim(1);
  for (int64_t r = 0; r < R; r++)
    if (labels[r] != -100 && (labels[r] < 0 || labels[r] >= V))
      bad("label " + std::to_string(labels[r]) + " is outside the vocabulary (size " + std::to_string(V) + ")");
  float* x = logits.data<float>();
  std::vector<double> loss(size_t(R), 0.0);
  std::vector<uint8_t> hit(size_t(R), 0);
  parallel_ranges(R, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      float* row = x + r * V;
      const int32_t y = labels[r];
      if (y == -100) {
        if (want_grad) std::memset(row, 0, size_t(V) * 4);
        continue;
      }
      ti.rows.cross_entropy(row, V, y, grad_scale, want_grad, &loss[size_t(r)], &hit[size_t(r)]);
    }
  }, V);
  CrossEntropyResult res;
  for (int64_t r = 0; r < R; r++) {
    if (labels[r] == -100) continue;
    res.loss_sum += loss[size_t(r)];
    res.counted++;
    res.correct += hit[size_t(r)];
  }
  return res;
}

// Passes over the rows, the ranks combining between them: the row maxima; the first column holding it (as one
// process's argmax: the smallest global index, through a Max of its negation); each row's sum of exp(x - max) with
// the target's logit (from the rank holding it); then the gradient.
CrossEntropyResult cross_entropy_split(Tensor& logits, const int32_t* labels, int64_t vocab_begin, int64_t vocab_size,
                                       float grad_scale, bool want_grad, const TrainKernels::Combine& combine) {
  require(logits.dtype() == DType::F32 && logits.ndim() == 2 && logits.is_contiguous(),
          "cross_entropy_split: float32 [R, V] logits");
  const int64_t R = logits.dim(0), Vl = logits.dim(1);
  for (int64_t r = 0; r < R; r++)
    if (labels[r] != -100 && (labels[r] < 0 || labels[r] >= vocab_size))
      bad("label " + std::to_string(labels[r]) + " is outside the vocabulary (size " + std::to_string(vocab_size) + ")");
  float* x = logits.data<float>();
  auto local = [&](int64_t r) { return labels[r] - vocab_begin; };  // the target's column here, if in [0, Vl)
  auto here = [&](int64_t r) { return labels[r] != -100 && local(r) >= 0 && local(r) < Vl; };
  std::vector<float> mx(static_cast<size_t>(R)), first(static_cast<size_t>(R)), part(static_cast<size_t>(2 * R));
  parallel_ranges(R, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) mx[size_t(r)] = *std::max_element(x + r * Vl, x + (r + 1) * Vl);
  }, Vl);
  combine(mx.data(), R, ReduceOp::Max);
  parallel_ranges(R, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      const float* row = x + r * Vl;
      const int64_t j = std::find(row, row + Vl, mx[size_t(r)]) - row;  // exact below 2^24 columns
      first[size_t(r)] = j < Vl ? -float(vocab_begin + j) : -std::numeric_limits<float>::infinity();
      float sum = 0;
      for (int64_t k = 0; k < Vl; k++) sum += std::exp(row[k] - mx[size_t(r)]);
      part[size_t(2 * r)] = sum;
      part[size_t(2 * r + 1)] = here(r) ? row[local(r)] : 0.0f;
    }
  }, Vl);
  combine(first.data(), R, ReduceOp::Max);
  combine(part.data(), 2 * R, ReduceOp::Sum);
  CrossEntropyResult res;
  for (int64_t r = 0; r < R; r++) {
    if (labels[r] == -100) continue;
    res.loss_sum += double(mx[size_t(r)]) + std::log(double(part[size_t(2 * r)])) - double(part[size_t(2 * r + 1)]);
    res.counted++;
    res.correct += -first[size_t(r)] == float(labels[r]);
  }
  if (!want_grad) return res;
  parallel_ranges(R, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++) {
      float* row = x + r * Vl;
      if (labels[r] == -100) {
        std::memset(row, 0, size_t(Vl) * 4);
        continue;
      }
      const float k = grad_scale / part[size_t(2 * r)];
      for (int64_t j = 0; j < Vl; j++) row[j] = std::exp(row[j] - mx[size_t(r)]) * k;
      if (here(r)) row[local(r)] -= grad_scale;
    }
  }, Vl);
  return res;
}

}  // namespace oar::cpu
