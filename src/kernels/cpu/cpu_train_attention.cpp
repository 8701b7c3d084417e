// The CPU's attention kernels of the training kernels (cpu_train_layers.h): causal attention with GQA and segment
// masks, forward and backward, one query block at a time over only the keys that block can see (causal and segment
// limits), so masked blocks cost nothing. The products run through gemm (cpu_train_gemm.h) in the layout's compute
// dtype; scores and softmax stay float32.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_train_common.h"
#include "kernels/cpu/cpu_train_gemm.h"
#include "kernels/cpu/cpu_train_layers.h"

namespace oar::cpu {
namespace {

void check_attention(const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs) {
  require(a.H > 0 && a.G > 0 && a.H % a.G == 0 && a.key_begin, "attention: bad head counts or no key_begin");
  require(q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32 && probs.dtype() == DType::F32,
          "attention: float32 q, k, v and probs");
  require(q.numel() == a.B * a.L * a.H * a.D && k.numel() == a.B * a.L * a.G * a.D && v.numel() == k.numel(),
          "attention: q, k, v sizes disagree with the layout");
  require(probs.numel() >= a.B * a.H * a.L * a.L, "attention: probs too small");
  for (int64_t t = 0; t < a.B * a.L; t++)
    if (a.key_begin[t] < 0 || a.key_begin[t] > t % a.L) bad("attention: key_begin out of range");
}

// A float32 tensor as the operand of attention products in dtype dt: itself, or converted into buf.
const char* attention_operand(const IsaOps& isa, const Tensor& t, DType dt, std::vector<uint16_t>& buf) {
  if (dt == DType::F32) return static_cast<const char*>(t.raw());
  require(dt == DType::BF16 || dt == DType::F16, "attention compute dtype must be float32, bfloat16 or float16");
  const int64_t n = t.numel();
  buf.resize(size_t(n));
  const float* s = t.data<float>();
  uint16_t* d = buf.data();
  parallel_ranges(n, [&](int64_t b, int64_t e) {
    if (dt == DType::BF16) {
      isa.f32_to_bf16(s + b, d + b, e - b);
    } else {
      for (int64_t i = b; i < e; i++) d[i] = f32_to_f16(s[i]);
    }
  });
  return reinterpret_cast<const char*>(buf.data());
}

// A [rows, cols] float32 block (row stride ld) as a product operand in dtype dt: the block itself, or a dense
// converted copy in buf (ld is then set to cols).
const void* block_operand(const IsaOps& isa, const float* src, int64_t rows, int64_t cols, int64_t ld_src, DType dt,
                          std::vector<uint16_t>& buf, int64_t& ld) {
  if (dt == DType::F32) {
    ld = ld_src;
    return src;
  }
  buf.resize(size_t(rows * cols));
  for (int64_t r = 0; r < rows; r++) {
    uint16_t* d = buf.data() + r * cols;
    const float* s = src + r * ld_src;
    if (dt == DType::BF16) {
      isa.f32_to_bf16(s, d, cols);
    } else {
      for (int64_t c = 0; c < cols; c++) d[c] = f32_to_f16(s[c]);
    }
  }
  ld = cols;
  return buf.data();
}

// One attention call: its layout, ISA and block size, and q, k, v (and the backward's dout) as rows of the
// compute dtype.
struct AttentionCall {
  const TrainIsa& ti;
  const AttentionLayout& a;
  int64_t query_block;
  DType dt;
  size_t es;  // bytes per element of dt
  const char *q, *k, *v, *dout;

  // Row t = b * L + i of q (or dout) at head h, and of k (or v) at kv head g.
  const char* q_row(const char* base, int64_t b, int64_t i, int64_t h) const {
    return base + size_t((b * a.L + i) * a.H + h) * a.D * es;
  }
  const char* kv_row(const char* base, int64_t b, int64_t i, int64_t g) const {
    return base + size_t((b * a.L + i) * a.G + g) * a.D * es;
  }
};

AttentionCall attention_call(const TrainIsa& ti, AttentionState& st, const AttentionLayout& a, const Tensor& q,
                             const Tensor& k, const Tensor& v, const Tensor* dout) {
  const DType dt = a.compute;
  const char* qp = attention_operand(ti.isa, q, dt, st.qc);
  const char* kp = attention_operand(ti.isa, k, dt, st.kc);
  const char* vp = attention_operand(ti.isa, v, dt, st.vc);
  const char* dop = dout ? attention_operand(ti.isa, *dout, dt, st.dc) : nullptr;
  return {ti, a, st.query_block, dt, dtype_size(dt), qp, kp, vp, dop};
}

// The queries [i0, i1) of a block and the keys [k0, i1) they can see (k0: the earliest key_begin among them).
struct QueryBlock {
  int64_t i0, i1, nq, k0, nk;
};
QueryBlock block_at(const AttentionCall& c, const int32_t* kb, int64_t i0) {
  const int64_t i1 = std::min(c.a.L, i0 + c.query_block), nq = i1 - i0;
  const int64_t k0 = *std::min_element(kb + i0, kb + i1), nk = i1 - k0;
  return {i0, i1, nq, k0, nk};
}

// The forward of one (row b, head h): per query block, S = scale Q K^T, the masked softmax into P (probs), then
// O = P V, straight into out, or through a float32 block when out is in a 16-bit dtype.
void forward_task(const AttentionCall& c, int64_t item, float* P, Tensor& out) {
  const int64_t L = c.a.L, H = c.a.H, G = c.a.G, D = c.a.D;
  const int64_t b = item / H, h = item % H, g = h / (H / G);
  const int32_t* kb = c.a.key_begin + b * L;
  const bool out32 = out.dtype() == DType::F32;
  float* Pbh = P + item * L * L;
  thread_local std::vector<uint16_t> pc;
  thread_local std::vector<float> ob;
  for (int64_t i0 = 0; i0 < L; i0 += c.query_block) {
    const QueryBlock blk = block_at(c, kb, i0);
    const int64_t nq = blk.nq, k0 = blk.k0, nk = blk.nk;
    float* S = Pbh + i0 * L + k0;
    gemm(false, true, nq, nk, D, c.a.scale, c.q_row(c.q, b, i0, h), H * D, c.kv_row(c.k, b, k0, g), G * D, 0.0f, S,
         L, c.dt);
    for (int64_t i = i0; i < blk.i1; i++) c.ti.rows.softmax_masked(Pbh + i * L, k0, kb[i], i, blk.i1);
    int64_t ldp = L;
    const void* Pop = block_operand(c.ti.isa, S, nq, nk, L, c.dt, pc, ldp);
    const int64_t o0 = ((b * L + i0) * H + h) * D;
    if (!out32) ob.resize(size_t(nq * D));
    gemm(false, false, nq, D, nk, 1.0f, Pop, ldp, c.kv_row(c.v, b, k0, g), G * D, 0.0f,
         out32 ? out.data<float>() + o0 : ob.data(), out32 ? H * D : D, c.dt);
    if (!out32)
      for (int64_t i = 0; i < nq; i++) store_row(ob.data() + i * D, out, o0 + i * H * D, D, c.ti.isa);
  }
}

// The float32 outputs of the backward.
struct AttentionGrads {
  float *dq, *dk, *dv;
};

// The backward of one query block of (row b, head h, its kv head g): dP = dO V^T, then the softmax backward
// dS = P * (dP - rowsum(P * dP)), times the score scale; dQ = dS K, dK += dS^T Q, dV += P^T dO.
void backward_block(const AttentionCall& c, int64_t b, int64_t h, int64_t g, const QueryBlock& blk, const float* Pbh,
                    const AttentionGrads& gr) {
  const int64_t L = c.a.L, H = c.a.H, G = c.a.G, D = c.a.D;
  const int64_t i0 = blk.i0, nq = blk.nq, k0 = blk.k0, nk = blk.nk;
  thread_local std::vector<float> dS;
  thread_local std::vector<uint16_t> dsc, pc;
  dS.resize(size_t(c.query_block * L));
  const char* dO = c.q_row(c.dout, b, i0, h);
  const char* Qb = c.q_row(c.q, b, i0, h);
  const char* Kr = c.kv_row(c.k, b, k0, g);
  const char* Vr = c.kv_row(c.v, b, k0, g);
  gemm(false, true, nq, nk, D, 1.0f, dO, H * D, Vr, G * D, 0.0f, dS.data(), nk, c.dt);
  for (int64_t i = 0; i < nq; i++) c.ti.rows.softmax_backward(Pbh + (i0 + i) * L + k0, dS.data() + i * nk, nk, c.a.scale);
  int64_t ldd = nk, ldp = L;
  const void* dSop = block_operand(c.ti.isa, dS.data(), nq, nk, nk, c.dt, dsc, ldd);
  const void* Pop = block_operand(c.ti.isa, Pbh + i0 * L + k0, nq, nk, L, c.dt, pc, ldp);
  gemm(false, false, nq, D, nk, 1.0f, dSop, ldd, Kr, G * D, 0.0f, gr.dq + ((b * L + i0) * H + h) * D, H * D, c.dt);
  gemm(true, false, nk, D, nq, 1.0f, dSop, ldd, Qb, H * D, 1.0f, gr.dk + ((b * L + k0) * G + g) * D, G * D, c.dt);
  gemm(true, false, nk, D, nq, 1.0f, Pop, ldp, dO, H * D, 1.0f, gr.dv + ((b * L + k0) * G + g) * D, G * D, c.dt);
}

// The backward of one (row b, kv head g): dk and dv of its rows zeroed, then every query block of each of the
// group's heads adds into them.
void backward_task(const AttentionCall& c, int64_t item, const float* P, const AttentionGrads& gr) {
  const int64_t L = c.a.L, H = c.a.H, G = c.a.G, D = c.a.D, rep = H / G;
  const int64_t b = item / G, g = item % G;
  const int32_t* kb = c.a.key_begin + b * L;
  for (int64_t t = 0; t < L; t++) {
    std::memset(gr.dk + ((b * L + t) * G + g) * D, 0, size_t(D) * 4);
    std::memset(gr.dv + ((b * L + t) * G + g) * D, 0, size_t(D) * 4);
  }
  for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
    const float* Pbh = P + (b * H + h) * L * L;
    for (int64_t i0 = 0; i0 < L; i0 += c.query_block) backward_block(c, b, h, g, block_at(c, kb, i0), Pbh, gr);
  }
}

}  // namespace

int64_t attention_query_block() {
  const char* e = std::getenv("OAR_ATTN_BLOCK");  // for tuning
  return e ? std::max<int64_t>(8, std::atoll(e)) : int64_t(128);
}

void attention_forward(const TrainIsa& ti, AttentionState& st, const AttentionLayout& a, const Tensor& q,
                       const Tensor& k, const Tensor& v, Tensor& out, Tensor& probs) {
  check_attention(a, q, k, v, probs);
  require(out.numel() == q.numel() && is_compute_dtype(out.dtype()), "attention_forward: out like q");
  const AttentionCall c = attention_call(ti, st, a, q, k, v, nullptr);
  float* P = probs.data<float>();
  // One (row, head) per task; each task runs its products on its own thread.
  parallel_tasks(a.B * a.H, [&](int64_t item) { forward_task(c, item, P, out); }, a.L * a.L * a.D);
}

void attention_backward(const TrainIsa& ti, AttentionState& st, const AttentionLayout& a, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  check_attention(a, q, k, v, probs);
  require(dout.numel() == q.numel() && dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(),
          "attention_backward: gradient shapes");
  const AttentionCall c = attention_call(ti, st, a, q, k, v, &dout);
  const float* P = probs.data<float>();
  const AttentionGrads gr{dq.data<float>(), dk.data<float>(), dv.data<float>()};
  // One (row, kv head) per task: the heads of a group add into the same dk/dv rows, so they share a task.
  parallel_tasks(a.B * a.G, [&](int64_t item) { backward_task(c, item, P, gr); }, a.L * a.L * a.D * (a.H / a.G));
}

}  // namespace oar::cpu
