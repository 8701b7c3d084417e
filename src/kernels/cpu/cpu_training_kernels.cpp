// The CPU implementation of the training kernels. Matrix products go through oneDNN's matmul (transposed operands
// are expressed by strides, accumulation by its sum post-op); everything else is plain loops written so that the
// compiler vectorises them (no library call inside: exp is computed inline), split over the cores with OpenMP
// (oneDNN shares the same thread pool). Splits are static, so every result is the same from run to run; reductions
// over rows (weight gradients of norms and biases, the loss) add per-thread partial sums in thread order.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_tensor_ops.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/onednn_gemm.h"
#include "kernels/training_kernels.h"

// clang (the fuzzing build) may decline some `omp simd` requests (the max reductions); that only costs speed there.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpass-failed"
#endif

namespace oar {
namespace {

[[noreturn]] void bad(const std::string& what) { throw Error("cpu training kernels: " + what); }
void require(bool ok, const char* what) {
  if (!ok) bad(what);
}

// Runs fn(begin, end) over [0, n) split into one contiguous range per thread. `cost` is the work per item: below
// ~16k in total, waking the other threads costs more than it saves.
template <class F>
void parallel_ranges(int64_t n, F fn, int64_t cost = 1) {
  const int nt = omp_get_max_threads();
  if (n <= 1 || nt == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 14)) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t b = n * t / T, e = n * (t + 1) / T;
    if (b < e) fn(b, e);
  }
}

// Like parallel_ranges, but each thread also gets its index, and the number of ranges is returned first by
// `ranges(n, cost)` so callers can size per-thread partial sums.
int num_ranges(int64_t n, int64_t cost) {
  const int nt = omp_get_max_threads();
  if (n <= 1 || nt == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 14)) return 1;
  return nt;
}
template <class F>
void parallel_ranges_indexed(int64_t n, int parts, F fn) {
  if (parts == 1) {
    fn(0, int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(parts)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    // A smaller team than asked for (nested or limited) still covers every range, in the same order.
    for (int p = t; p < parts; p += T) {
      const int64_t b = n * p / parts, e = n * (p + 1) / parts;
      fn(p, b, e);
    }
  }
}

// ---- row kernels: the loops that exp() or reduce, compiled once per instruction set ----
// Written as plain loops; each is stamped out three times below, with AVX-512 and AVX2 code generation enabled by
// function attributes, and picked at start-up from the ISA table's choice (OAR_ISA honoured). Plain x86-64 code
// cannot vectorise them (no blend for the clamp in exp, no FMA), and these loops touch every score, logit and MLP
// activation of a step.
#define OAR_INLINE static inline __attribute__((always_inline))

// e^x in float32 without a library call, so that loops over it vectorise. x = n ln2 + f with |f| <= ln2 / 2;
// e^f from its Taylor polynomial to degree 7 (truncation < 1e-8, below float32 rounding); 2^n is built in the
// exponent bits. The rounding to n uses the 1.5 * 2^23 trick, whose bits also hold n (no float-to-int cast, so
// NaN and inf inputs stay defined and give NaN / a saturated value).
OAR_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float big = x * 1.44269504088896341f + magic;
  const uint32_t bits = std::bit_cast<uint32_t>(big);
  const float n = big - magic;
  const float f = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 split in two for an exact n * ln2_hi
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const uint32_t e = (bits - 0x4B400000u + 127u) << 23;
  return p * std::bit_cast<float>(e);
}

OAR_INLINE float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

// Row i of an attention score block holding keys [k0, i1): softmax over the visible keys [first, i], zero elsewhere.
OAR_INLINE void softmax_masked_body(float* row, int64_t k0, int64_t first, int64_t i, int64_t i1) {
  float mx = row[first];
#pragma omp simd reduction(max : mx)
  for (int64_t j = first; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = first; j <= i; j++) {
    row[j] = exp_approx(row[j] - mx);
    sum += row[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = first; j <= i; j++) row[j] *= inv;
  for (int64_t j = k0; j < first; j++) row[j] = 0.0f;
  for (int64_t j = i + 1; j < i1; j++) row[j] = 0.0f;
}

// Softmax backward on one row: ds = p * (ds - sum(p * ds)) * scale (ds holds dL/dp on entry).
OAR_INLINE void softmax_backward_body(const float* p, float* ds, int64_t n, float scale) {
  float dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < n; j++) dot += p[j] * ds[j];
#pragma omp simd
  for (int64_t j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - dot) * scale;
}

// Cross-entropy of one logit row against label y: loss, whether the argmax (first maximum) is y, and with want_grad
// the row replaced by (softmax - onehot(y)) * grad_scale.
OAR_INLINE void cross_entropy_body(float* row, int64_t V, int32_t y, float grad_scale, bool want_grad, double* loss,
                                   uint8_t* hit) {
  float mx = row[0];
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < V; j++) mx = row[j] > mx ? row[j] : mx;
  int64_t arg = 0;
  while (arg < V - 1 && !(row[arg] >= mx)) arg++;  // the first maximum (a NaN row ends at V - 1)
  const float target = row[y];
  float sum = 0;
  if (want_grad) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < V; j++) {
      row[j] = exp_approx(row[j] - mx);
      sum += row[j];
    }
    const float k = grad_scale / sum;
#pragma omp simd
    for (int64_t j = 0; j < V; j++) row[j] *= k;
    row[y] -= grad_scale;
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < V; j++) sum += exp_approx(row[j] - mx);
  }
  *loss = double(mx) + std::log(double(sum)) - double(target);
  *hit = arg == y;
}

OAR_INLINE void swiglu_forward_body(const float* g, const float* u, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) out[i] = g[i] * sigmoid(g[i]) * u[i];
}

OAR_INLINE void swiglu_backward_body(const float* d, const float* g, const float* u, float* dg, float* du, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float s = sigmoid(g[i]);
    du[i] = d[i] * g[i] * s;
    dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
  }
}

// y = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps); returns rstd. Sum of squares in double, as the inference
// kernel does.
OAR_INLINE float rmsnorm_forward_body(const float* x, const float* w, float eps, float* y, int64_t C) {
  double ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < C; i++) ss += double(x[i]) * double(x[i]);
  const float inv = 1.0f / std::sqrt(float(ss / double(C)) + eps);
#pragma omp simd
  for (int64_t i = 0; i < C; i++) y[i] = w[i] * (x[i] * inv);
  return inv;
}

// y = w * n with n = x * rstd: dn = dy * w and dx += rstd * (dn - n * mean(dn * n)); dw_acc += dy * n.
OAR_INLINE void rmsnorm_backward_body(const float* dy, const float* x, const float* w, float rstd, float* dx,
                                      float* dw_acc, int64_t C) {
  float dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < C; i++) dot += dy[i] * w[i] * x[i];
  const float k = dot * rstd * rstd / float(C);
#pragma omp simd
  for (int64_t i = 0; i < C; i++) dx[i] += rstd * (dy[i] * w[i] - x[i] * k);
  if (dw_acc) {
#pragma omp simd
    for (int64_t i = 0; i < C; i++) dw_acc[i] += dy[i] * (x[i] * rstd);
  }
}

// Rotates the `heads` vectors of one token (each D = 2 * half long) by the angles whose cos/sin are c/s.
OAR_INLINE void rope_body(float* x, const float* c, const float* s, int64_t heads, int64_t half, float sign,
                          bool interleaved) {
  for (int64_t h = 0; h < heads; h++) {
    float* v = x + h * 2 * half;
    if (!interleaved) {
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half], si = sign * s[i];
        v[i] = a * c[i] - b * si;
        v[i + half] = b * c[i] + a * si;
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < half; i++) {
        const float a = v[2 * i], b = v[2 * i + 1], si = sign * s[i];
        v[2 * i] = a * c[i] - b * si;
        v[2 * i + 1] = a * si + b * c[i];
      }
    }
  }
}

struct RowOps {
  void (*softmax_masked)(float*, int64_t, int64_t, int64_t, int64_t);
  void (*softmax_backward)(const float*, float*, int64_t, float);
  void (*cross_entropy)(float*, int64_t, int32_t, float, bool, double*, uint8_t*);
  void (*swiglu_forward)(const float*, const float*, float*, int64_t);
  void (*swiglu_backward)(const float*, const float*, const float*, float*, float*, int64_t);
  float (*rmsnorm_forward)(const float*, const float*, float, float*, int64_t);
  void (*rmsnorm_backward)(const float*, const float*, const float*, float, float*, float*, int64_t);
  void (*rope)(float*, const float*, const float*, int64_t, int64_t, float, bool);
};

#define OAR_ROW_OPS(NAME, ATTR)                                                                                      \
  ATTR void NAME##_softmax_masked(float* r, int64_t k0, int64_t f, int64_t i, int64_t i1) {                          \
    softmax_masked_body(r, k0, f, i, i1);                                                                            \
  }                                                                                                                  \
  ATTR void NAME##_softmax_backward(const float* p, float* ds, int64_t n, float s) { softmax_backward_body(p, ds, n, s); } \
  ATTR void NAME##_cross_entropy(float* r, int64_t V, int32_t y, float gs, bool g, double* l, uint8_t* h) {        \
    cross_entropy_body(r, V, y, gs, g, l, h);                                                                        \
  }                                                                                                                  \
  ATTR void NAME##_swiglu_forward(const float* g, const float* u, float* o, int64_t n) { swiglu_forward_body(g, u, o, n); } \
  ATTR void NAME##_swiglu_backward(const float* d, const float* g, const float* u, float* dg, float* du, int64_t n) {  \
    swiglu_backward_body(d, g, u, dg, du, n);                                                                        \
  }                                                                                                                  \
  ATTR float NAME##_rmsnorm_forward(const float* x, const float* w, float eps, float* y, int64_t C) {               \
    return rmsnorm_forward_body(x, w, eps, y, C);                                                                    \
  }                                                                                                                  \
  ATTR void NAME##_rmsnorm_backward(const float* dy, const float* x, const float* w, float r, float* dx, float* dw,  \
                                    int64_t C) {                                                                     \
    rmsnorm_backward_body(dy, x, w, r, dx, dw, C);                                                                   \
  }                                                                                                                  \
  ATTR void NAME##_rope(float* x, const float* c, const float* s, int64_t heads, int64_t half, float sign, bool il) { \
    rope_body(x, c, s, heads, half, sign, il);                                                                       \
  }                                                                                                                  \
  const RowOps NAME##_row_ops = {NAME##_softmax_masked, NAME##_softmax_backward, NAME##_cross_entropy,               \
                                 NAME##_swiglu_forward, NAME##_swiglu_backward,  NAME##_rmsnorm_forward,             \
                                 NAME##_rmsnorm_backward, NAME##_rope};

#if defined(__x86_64__) && defined(__GNUC__)
#if defined(__clang__)
#define OAR_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#else
#define OAR_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,prefer-vector-width=512")))
#endif
#define OAR_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
OAR_ROW_OPS(avx512, OAR_TARGET_AVX512)
OAR_ROW_OPS(avx2, OAR_TARGET_AVX2)
#endif
OAR_ROW_OPS(generic, )

// The row kernels for the instruction set the ISA table chose.
const RowOps& row_ops_for(const cpu::IsaOps& isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (std::strncmp(isa.name, "avx512", 6) == 0) return avx512_row_ops;
  if (std::strcmp(isa.name, "avx2") == 0) return avx2_row_ops;
#endif
  return generic_row_ops;
}

// Writes n float32 values to dst (at element offset off) in dst's dtype.
void store_row(const float* src, Tensor& dst, int64_t off, int64_t n, const cpu::IsaOps& isa) {
  switch (dst.dtype()) {
    case DType::F32: std::memcpy(dst.data<float>() + off, src, size_t(n) * 4); break;
    case DType::BF16: isa.f32_to_bf16(src, dst.data<uint16_t>() + off, n); break;
    case DType::F16: {
      uint16_t* d = dst.data<uint16_t>() + off;
      for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
      break;
    }
    default: bad("compute tensors are float32, bfloat16 or float16");
  }
}

bool is_compute_dtype(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// ---- matrix products through oneDNN ----

// The same product in plain loops: the fallback when oneDNN declines a shape (never expected on x86-64).
void naive_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) s += double(ta ? A[k * lda + m] : A[m * lda + k]) * double(tb ? B[n * ldb + k] : B[k * ldb + n]);
      float& c = C[m * ldc + n];
      c = float(alpha * s) + (beta != 0.0f ? beta * c : 0.0f);
    }
}

// ---- products with one small dimension (LoRA's rank): plain loops ----
// oneDNN runs these [T, r] x [r, N]-like shapes far below its speed elsewhere (measured: 1-4 GFLOP/s for r = 8),
// while they are memory-bound passes over the big operand. Each form below reads the big operand once, converts it
// to float32 row by row when it is bfloat16/float16, keeps the small one as float32 [small, K] in cache, and splits
// the work over the big dimension (static ranges: deterministic, no cross-thread sums).
constexpr int64_t kSmallDim = 16;

// A logical matrix [rows, cols]: element (i, j) at p[i * ld + j], or p[j * ld + i] when trans.
struct Mat {
  const void* p;
  int64_t ld;
  bool trans;
  DType dt;
};

float elem(const Mat& m, int64_t i, int64_t j) {
  const int64_t off = m.trans ? j * m.ld + i : i * m.ld + j;
  switch (m.dt) {
    case DType::F32: return static_cast<const float*>(m.p)[off];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(m.p)[off]);
    default: return f16_to_f32(static_cast<const uint16_t*>(m.p)[off]);
  }
}

// The ISA table's dot, axpy and bf16 conversion (AVX-512 / AVX2) for the inner loops of these forms.
const cpu::IsaOps& isa_ops() {
  static const cpu::IsaOps& t = cpu::isa_best();
  return t;
}

// n contiguous elements starting at element `off` of a buffer of dtype dt, as float32 (a view or a converted copy).
const float* fetch(const void* p, int64_t off, int64_t n, DType dt, std::vector<float>& buf) {
  if (dt == DType::F32) return static_cast<const float*>(p) + off;
  buf.resize(size_t(n));
  const uint16_t* s = static_cast<const uint16_t*>(p) + off;
  if (dt == DType::BF16) {
    isa_ops().bf16_to_f32(s, buf.data(), n);
  } else {
    for (int64_t i = 0; i < n; i++) buf[size_t(i)] = f16_to_f32(s[i]);
  }
  return buf.data();
}

// c[i] = alpha * acc[i] (+ beta * c[i]) for n contiguous elements; beta 0 never reads c.
void store_row_c(float* c, const float* acc, int64_t n, float alpha, float beta) {
  if (beta == 0.0f) {
    for (int64_t i = 0; i < n; i++) c[i] = alpha * acc[i];
  } else {
    for (int64_t i = 0; i < n; i++) c[i] = alpha * acc[i] + beta * c[i];
  }
}

// The small operand as float32 rows: out[j * K + k] = m(k, j) for a logical [K, n] matrix m (its columns become rows).
std::vector<float> small_rows(const Mat& m, int64_t K, int64_t n) {
  std::vector<float> out(size_t(n * K));
  for (int64_t j = 0; j < n; j++)
    for (int64_t k = 0; k < K; k++) out[size_t(j * K + k)] = elem(m, k, j);
  return out;
}

inline void store_c(float* c, float v, float alpha, float beta) { *c = alpha * v + (beta != 0.0f ? beta * *c : 0.0f); }

// C (element (i, j) at C[i * csi + j * csj]) = alpha * X[I, K] . S + beta * C, S small with n <= kSmallDim columns,
// given as rows Sr[j * K + k] = S(k, j).
void gemm_small_n(const Mat& X, int64_t I, int64_t K, const std::vector<float>& Sr, int64_t n, float alpha, float beta,
                  float* C, int64_t csi, int64_t csj) {
  if (!X.trans) {
    // X's rows run along k: one dot product per (row, column).
    parallel_ranges(I, [&](int64_t b, int64_t e) {
      thread_local std::vector<float> buf;
      const cpu::IsaOps& isa = isa_ops();
      for (int64_t i = b; i < e; i++) {
        const float* x = fetch(X.p, i * X.ld, K, X.dt, buf);
        for (int64_t j = 0; j < n; j++) store_c(C + i * csi + j * csj, isa.dot(x, Sr.data() + j * K, K), alpha, beta);
      }
    }, K * n);
    return;
  }
  // X stored [K, I]: each thread sums, over all k, the outer products of its slice of X's row k with S's row k.
  parallel_ranges(I, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> buf, acc;
    const cpu::IsaOps& isa = isa_ops();
    const int64_t w = e - b;
    acc.assign(size_t(n * w), 0.0f);
    for (int64_t k = 0; k < K; k++) {
      const float* x = fetch(X.p, k * X.ld + b, w, X.dt, buf);
      for (int64_t j = 0; j < n; j++) isa.axpy(Sr[size_t(j * K + k)], x, acc.data() + j * w, w);
    }
    for (int64_t j = 0; j < n; j++) {
      if (csi == 1) {
        store_row_c(C + b + j * csj, acc.data() + j * w, w, alpha, beta);
      } else {
        for (int64_t i = 0; i < w; i++) store_c(C + (b + i) * csi + j * csj, acc[size_t(j * w + i)], alpha, beta);
      }
    }
  }, K * n);
}

// C[M, N] = alpha * A[M, K] . B[K, N] + beta * C when K is small: a sum of K outer products, row by row of C.
void gemm_small_k(const Mat& A, const Mat& B, int64_t M, int64_t N, int64_t K, float alpha, float beta, float* C,
                  int64_t ldc) {
  std::vector<float> Bt(size_t(K * N));  // B's rows as float32
  for (int64_t k = 0; k < K; k++)
    for (int64_t n = 0; n < N; n++) Bt[size_t(k * N + n)] = elem(B, k, n);
  parallel_ranges(M, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> acc;
    const cpu::IsaOps& isa = isa_ops();
    acc.resize(size_t(N));
    for (int64_t m = b; m < e; m++) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k = 0; k < K; k++) isa.axpy(elem(A, m, k), Bt.data() + k * N, acc.data(), N);
      store_row_c(C + m * ldc, acc.data(), N, alpha, beta);
    }
  }, N * K);
}

// Handles products with a dimension <= kSmallDim; false for the others.
bool gemm_small(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
                const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  const Mat a{A, lda, ta, dt}, b{B, ldb, tb, dt};
  if (K <= kSmallDim) {
    gemm_small_k(a, b, M, N, K, alpha, beta, C, ldc);
  } else if (N <= kSmallDim) {
    gemm_small_n(a, M, K, small_rows(b, K, N), N, alpha, beta, C, ldc, 1);
  } else if (M <= kSmallDim) {
    // C^T = B^T A^T: the same form with B^T as the big operand and C written transposed.
    const Mat bt{B, ldb, !tb, dt};
    const Mat at{A, lda, !ta, dt};
    gemm_small_n(bt, N, K, small_rows(at, K, M), M, alpha, beta, C, 1, ldc);
  } else {
    return false;
  }
  return true;
}

// float16 operand -> float32 copy with the same layout (the span from the first to the last element).
const float* widen_f16(const uint16_t* src, int64_t span, std::vector<float>& buf) {
  buf.resize(size_t(span));
  for (int64_t i = 0; i < span; i++) buf[size_t(i)] = f16_to_f32(src[i]);
  return buf.data();
}

// OAR_GEMM_PROFILE=1: time every product by shape and layout, printed to stderr at exit (for tuning).
struct GemmProfile {
  struct Entry {
    int64_t calls = 0;
    double seconds = 0, flops = 0;
  };
  bool on = std::getenv("OAR_GEMM_PROFILE") != nullptr;
  std::mutex mu;
  std::map<std::string, Entry> by_shape;
  ~GemmProfile() {
    if (!on) return;
    std::vector<std::pair<std::string, Entry>> v(by_shape.begin(), by_shape.end());
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
    for (auto& [k, e] : v)
      std::fprintf(stderr, "gemm %-40s calls %7lld  %8.3f s  %7.1f GFLOP/s\n", k.c_str(), (long long)e.calls, e.seconds,
                   e.flops / e.seconds / 1e9);
  }
  void add(bool ta, bool tb, int64_t M, int64_t N, int64_t K, DType dt, double s) {
    char key[96];
    std::snprintf(key, sizeof key, "%s %c%c M%lld N%lld K%lld%s", dtype_name(dt), ta ? 'T' : 'N', tb ? 'T' : 'N',
                  (long long)M, (long long)N, (long long)K, omp_in_parallel() ? " (task)" : "");
    std::lock_guard lock(mu);
    Entry& e = by_shape[key];
    e.calls++;
    e.seconds += s;
    e.flops += 2.0 * double(M) * double(N) * double(K);
  }
};
GemmProfile& gemm_profile() {
  static GemmProfile p;
  return p;
}

void gemm_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
               const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt);

// The raw product: C[M,N] = alpha * op(A) op(B) + beta * C, with op = transpose when ta/tb.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda, const void* B,
          int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  GemmProfile& prof = gemm_profile();
  if (!prof.on) return gemm_impl(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt);
  const double t0 = omp_get_wtime();
  gemm_impl(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt);
  prof.add(ta, tb, M, N, K, dt, omp_get_wtime() - t0);
}

void gemm_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
               const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) C[m * ldc + n] = beta != 0.0f ? beta * C[m * ldc + n] : 0.0f;
    return;
  }
  if (std::min({M, N, K}) <= kSmallDim && gemm_small(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt)) return;
  if (dt == DType::F16) {
    // Emulated float16: the operands' values are float16 (products of them are exact in float32), accumulated in
    // float32 by the float32 GEMM, as a float16 tensor core would with float32 accumulation.
    thread_local std::vector<float> wa, wb;
    const int64_t span_a = ta ? (K - 1) * lda + M : (M - 1) * lda + K;
    const int64_t span_b = tb ? (N - 1) * ldb + K : (K - 1) * ldb + N;
    const float* a32 = widen_f16(static_cast<const uint16_t*>(A), span_a, wa);
    const float* b32 = widen_f16(static_cast<const uint16_t*>(B), span_b, wb);
    gemm_impl(ta, tb, M, N, K, alpha, a32, lda, b32, ldb, beta, C, ldc, DType::F32);
    return;
  }
  // Small products run on one thread: waking the others would cost more than the product.
  const bool small = M * N * K < (int64_t(1) << 17) && !omp_in_parallel() && omp_get_max_threads() > 1;
  const int threads = omp_get_max_threads();
  if (small) omp_set_num_threads(1);
  cpu::GemmDesc g;
  g.M = M, g.N = N, g.K = K, g.dtype = dt, g.alpha = alpha, g.beta = beta;
  g.A = A, g.lda = lda, g.a_transposed = ta, g.B = B, g.ldb = ldb, g.b_transposed = tb, g.C = C, g.ldc = ldc;
  const bool done = cpu::onednn_gemm(g);
  if (small) omp_set_num_threads(threads);
  if (done) return;
  if (dt == DType::BF16) {
    thread_local std::vector<float> wa, wb;
    const int64_t span_a = ta ? (K - 1) * lda + M : (M - 1) * lda + K;
    const int64_t span_b = tb ? (N - 1) * ldb + K : (K - 1) * ldb + N;
    wa.resize(size_t(span_a));
    wb.resize(size_t(span_b));
    for (int64_t i = 0; i < span_a; i++) wa[size_t(i)] = bf16_to_f32(static_cast<const uint16_t*>(A)[i]);
    for (int64_t i = 0; i < span_b; i++) wb[size_t(i)] = bf16_to_f32(static_cast<const uint16_t*>(B)[i]);
    naive_gemm(ta, tb, M, N, K, alpha, wa.data(), lda, wb.data(), ldb, beta, C, ldc);
    return;
  }
  naive_gemm(ta, tb, M, N, K, alpha, static_cast<const float*>(A), lda, static_cast<const float*>(B), ldb, beta, C, ldc);
}

// A 2-D view as a GEMM operand: its data, leading dimension and whether it is stored transposed.
struct Operand {
  const void* p;
  int64_t ld;
  bool trans;
};
Operand operand(const Tensor& t, const char* which) {
  if (t.ndim() != 2) bad(std::string("matmul: ") + which + " must be 2-D, got " + shape_str(t.shape()));
  const int64_t r = t.dim(0), c = t.dim(1), s0 = t.strides()[0], s1 = t.strides()[1];
  // A stride along a dimension of size 1 is never used: give it the value a dense layout would have.
  if (s1 == 1 || c == 1) return {t.raw(), r == 1 ? std::max<int64_t>(c, 1) : s0, false};
  if (s0 == 1 || r == 1) return {t.raw(), c == 1 ? std::max<int64_t>(r, 1) : s1, true};
  bad(std::string("matmul: ") + which + " has neither contiguous rows nor contiguous columns");
}

// Runs fn(i) for i in [0, n) as tasks spread over the threads; the products inside a task run on its thread alone
// (the thread count is set to 1 inside the region, so oneDNN builds and runs them single-threaded). `cost`: work
// per task; small totals run in order on the calling thread.
template <class F>
void parallel_tasks(int64_t n, F fn, int64_t cost) {
  if (n <= 1 || omp_get_max_threads() == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 17)) {
    for (int64_t i = 0; i < n; i++) fn(i);
    return;
  }
#pragma omp parallel
  {
    omp_set_num_threads(1);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; i++) fn(i);
  }
}

// ---- the kernels ----

class CpuTrainKernels final : public TrainKernels {
 public:
  CpuTrainKernels() : isa_(cpu::isa_best()), rows_(row_ops_for(isa_)) {}
  const char* name() const override { return isa_.name; }

  void matmul(const Tensor& a, const Tensor& b, Tensor& c, float alpha, float beta) override {
    require(a.dtype() == b.dtype() && is_compute_dtype(a.dtype()), "matmul operands must share a dtype (float32, bfloat16, float16)");
    require(c.dtype() == DType::F32 && c.ndim() == 2 && (c.strides()[1] == 1 || c.dim(1) == 1), "matmul output must be float32 with contiguous rows");
    const int64_t M = a.dim(0), K = a.dim(1), N = b.dim(1);
    if (b.dim(0) != K || c.dim(0) != M || c.dim(1) != N)
      bad("matmul shapes " + shape_str(a.shape()) + " x " + shape_str(b.shape()) + " -> " + shape_str(c.shape()));
    Operand A = operand(a, "a"), B = operand(b, "b");
    const int64_t ldc = c.dim(0) == 1 ? std::max<int64_t>(N, 1) : std::max<int64_t>(c.strides()[0], N);
    gemm(A.trans, B.trans, M, N, K, alpha, A.p, A.ld, B.p, B.ld, beta, c.data<float>(), ldc, a.dtype());
  }

  void convert(const Tensor& src, Tensor& dst) override {
    const int64_t n = src.numel();
    require(dst.numel() == n && src.is_contiguous() && dst.is_contiguous(), "convert: sizes differ or not contiguous");
    if (src.dtype() == DType::F32) {
      require(is_compute_dtype(dst.dtype()), "convert: float32 converts to float32, bfloat16 or float16");
      const float* s = src.data<float>();
      parallel_ranges(n, [&](int64_t b, int64_t e) { store_row(s + b, dst, b, e - b, isa_); });
      return;
    }
    require(dst.dtype() == DType::F32 && (src.dtype() == DType::BF16 || src.dtype() == DType::F16), "convert: unsupported dtypes");
    const uint16_t* s = src.data<uint16_t>();
    float* d = dst.data<float>();
    if (src.dtype() == DType::BF16) {
      parallel_ranges(n, [&](int64_t b, int64_t e) { isa_.bf16_to_f32(s + b, d + b, e - b); });
    } else {
      parallel_ranges(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; i++) d[i] = f16_to_f32(s[i]);
      });
    }
  }

  void add(Tensor& x, const Tensor& y) override {
    require(x.dtype() == DType::F32 && y.dtype() == DType::F32 && x.numel() == y.numel(), "add: float32 tensors of one size");
    float* a = x.data<float>();
    const float* b = y.data<float>();
    parallel_ranges(x.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; i++) a[i] += b[i];
    });
  }

  void add_bias(Tensor& y, const Tensor& bias) override {
    const int64_t N = bias.numel(), R = y.numel() / N;
    float* yp = y.data<float>();
    const float* bp = bias.data<float>();
    parallel_ranges(R, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++)
        for (int64_t n = 0; n < N; n++) yp[r * N + n] += bp[n];
    }, N);
  }

  void bias_backward(const Tensor& dy, Tensor& dbias) override {
    const int64_t N = dbias.numel(), R = dy.numel() / N;
    const float* d = dy.data<float>();
    const int parts = num_ranges(R, N);
    std::vector<float> partial(size_t(parts * N), 0.0f);
    parallel_ranges_indexed(R, parts, [&](int p, int64_t b, int64_t e) {
      float* acc = partial.data() + p * N;
      for (int64_t r = b; r < e; r++)
        for (int64_t n = 0; n < N; n++) acc[n] += d[r * N + n];
    });
    float* db = dbias.data<float>();
    for (int p = 0; p < parts; p++)
      for (int64_t n = 0; n < N; n++) db[n] += partial[size_t(p * N + n)];
  }

  void embedding_forward(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    const int64_t V = table.dim(0), C = table.dim(1);
    require(table.dtype() == DType::F32 && out.dtype() == DType::F32 && out.numel() == n * C, "embedding: float32 table and output");
    check_ids(ids, n, V);
    const float* tp = table.data<float>();
    float* o = out.data<float>();
    parallel_ranges(n, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) std::memcpy(o + t * C, tp + int64_t(ids[t]) * C, size_t(C) * 4);
    }, C);
  }

  void embedding_backward(const Tensor& dout, const int32_t* ids, int64_t n, Tensor& dtable) override {
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

  void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) override {
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
          rp[r] = rows_.rmsnorm_forward(xp + r * C, wp, eps, y.data<float>() + r * C, C);
        } else {
          rp[r] = rows_.rmsnorm_forward(xp + r * C, wp, eps, row.data(), C);
          store_row(row.data(), y, r * C, C, isa_);
        }
      }
    }, C);
  }

  void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx, Tensor* dw,
                        Tensor* dx_c) override {
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
        rows_.rmsnorm_backward(g + r * C, xp + r * C, wp, rp[r], dxp + r * C, acc, C);
        if (dx_c) store_row(dxp + r * C, *dx_c, r * C, C, isa_);
      }
    });
    if (dw) {
      float* d = dw->data<float>();
      for (int p = 0; p < parts; p++)
        for (int64_t i = 0; i < C; i++) d[i] += partial[size_t(p * C + i)];
    }
  }

  void rope(Tensor& x, const int32_t* positions, const RopeTable& tab, bool inverse, Tensor* x_c) override {
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
        rows_.rope(xp + t * heads * D, tab.cos.data() + positions[t] * half, tab.sin.data() + positions[t] * half, heads,
                   half, sign, interleaved);
        if (x_c) store_row(xp + t * heads * D, *x_c, t * heads * D, heads * D, isa_);
      }
    }, heads * D);
  }

  void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out) override {
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
          rows_.swiglu_forward(g + s, u + s, out.data<float>() + s, m);
        } else {
          rows_.swiglu_forward(g + s, u + s, buf, m);
          store_row(buf, out, s, m, isa_);
        }
      }
    }, 16);
  }

  void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup) override {
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
        rows_.swiglu_backward(d + s0, g + s0, u + s0, dg, du, m);
        // whole chunk computed before storing, so outputs may alias the inputs
        store_row(dg, dgate, s0, m, isa_);
        store_row(du, dup, s0, m, isa_);
      }
    }, 16);
  }

  void attention_forward(const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out,
                         Tensor& probs) override {
    check_attention(a, q, k, v, probs);
    require(out.numel() == q.numel() && is_compute_dtype(out.dtype()), "attention_forward: out like q");
    const int64_t B = a.B, L = a.L, H = a.H, G = a.G, D = a.D, rep = H / G;
    const DType dt = a.compute;
    const size_t es = dtype_size(dt);
    const char* qp = attention_operand(q, dt, qc_);
    const char* kp = attention_operand(k, dt, kc_);
    const char* vp = attention_operand(v, dt, vc_);
    const bool out32 = out.dtype() == DType::F32;
    float* P = probs.data<float>();
    // One (row, head) per task; each task runs its products on its own thread, one query block at a time, over only
    // the keys that block can see (causal and segment limits), so masked blocks cost nothing.
    parallel_tasks(B * H, [&](int64_t item) {
      const int64_t b = item / H, h = item % H, g = h / rep;
      const int32_t* kb = a.key_begin + b * L;
      float* Pbh = P + item * L * L;
      thread_local std::vector<uint16_t> pc;
      thread_local std::vector<float> ob;
      for (int64_t i0 = 0; i0 < L; i0 += kQueryBlock) {
        const int64_t i1 = std::min(L, i0 + kQueryBlock), nq = i1 - i0;
        const int64_t k0 = *std::min_element(kb + i0, kb + i1), nk = i1 - k0;
        float* S = Pbh + i0 * L + k0;
        gemm(false, true, nq, nk, D, a.scale, qp + size_t((b * L + i0) * H + h) * D * es, H * D,
             kp + size_t((b * L + k0) * G + g) * D * es, G * D, 0.0f, S, L, dt);
        for (int64_t i = i0; i < i1; i++) rows_.softmax_masked(Pbh + i * L, k0, kb[i], i, i1);
        int64_t ldp = L;
        const void* Pop = block_operand(S, nq, nk, L, dt, pc, ldp);
        // O = P V, straight into out, or through a float32 block when out is in a 16-bit dtype
        const int64_t o0 = ((b * L + i0) * H + h) * D;
        if (!out32) ob.resize(size_t(nq * D));
        gemm(false, false, nq, D, nk, 1.0f, Pop, ldp, vp + size_t((b * L + k0) * G + g) * D * es, G * D, 0.0f,
             out32 ? out.data<float>() + o0 : ob.data(), out32 ? H * D : D, dt);
        if (!out32)
          for (int64_t i = 0; i < nq; i++) store_row(ob.data() + i * D, out, o0 + i * H * D, D, isa_);
      }
    }, L * L * D);
  }

  void attention_backward(const AttentionLayout& a, const Tensor& dout, const Tensor& q, const Tensor& k,
                          const Tensor& v, const Tensor& probs, Tensor& dq, Tensor& dk, Tensor& dv) override {
    check_attention(a, q, k, v, probs);
    require(dout.numel() == q.numel() && dq.numel() == q.numel() && dk.numel() == k.numel() && dv.numel() == v.numel(),
            "attention_backward: gradient shapes");
    const int64_t B = a.B, L = a.L, H = a.H, G = a.G, D = a.D, rep = H / G;
    const DType dt = a.compute;
    const size_t es = dtype_size(dt);
    const char* qp = attention_operand(q, dt, qc_);
    const char* kp = attention_operand(k, dt, kc_);
    const char* vp = attention_operand(v, dt, vc_);
    const char* dop = attention_operand(dout, dt, dc_);
    const float* P = probs.data<float>();
    float* dqp = dq.data<float>();
    float* dkp = dk.data<float>();
    float* dvp = dv.data<float>();
    // One (row, kv head) per task: the heads of a group add into the same dk/dv rows, so they share a task.
    parallel_tasks(B * G, [&](int64_t item) {
      const int64_t b = item / G, g = item % G;
      const int32_t* kb = a.key_begin + b * L;
      for (int64_t t = 0; t < L; t++) {
        std::memset(dkp + ((b * L + t) * G + g) * D, 0, size_t(D) * 4);
        std::memset(dvp + ((b * L + t) * G + g) * D, 0, size_t(D) * 4);
      }
      thread_local std::vector<float> dS;
      thread_local std::vector<uint16_t> dsc, pc;
      dS.resize(size_t(kQueryBlock * L));
      for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
        const float* Pbh = P + (b * H + h) * L * L;
        for (int64_t i0 = 0; i0 < L; i0 += kQueryBlock) {
          const int64_t i1 = std::min(L, i0 + kQueryBlock), nq = i1 - i0;
          const int64_t k0 = *std::min_element(kb + i0, kb + i1), nk = i1 - k0;
          const char* dO = dop + size_t((b * L + i0) * H + h) * D * es;
          const char* Qb = qp + size_t((b * L + i0) * H + h) * D * es;
          const char* Kr = kp + size_t((b * L + k0) * G + g) * D * es;
          const char* Vr = vp + size_t((b * L + k0) * G + g) * D * es;
          // dP = dO V^T, then the softmax backward dS = P * (dP - rowsum(P * dP)), times the score scale.
          gemm(false, true, nq, nk, D, 1.0f, dO, H * D, Vr, G * D, 0.0f, dS.data(), nk, dt);
          for (int64_t i = 0; i < nq; i++) rows_.softmax_backward(Pbh + (i0 + i) * L + k0, dS.data() + i * nk, nk, a.scale);
          int64_t ldd = nk, ldp = L;
          const void* dSop = block_operand(dS.data(), nq, nk, nk, dt, dsc, ldd);
          const void* Pop = block_operand(Pbh + i0 * L + k0, nq, nk, L, dt, pc, ldp);
          gemm(false, false, nq, D, nk, 1.0f, dSop, ldd, Kr, G * D, 0.0f, dqp + ((b * L + i0) * H + h) * D, H * D, dt);
          gemm(true, false, nk, D, nq, 1.0f, dSop, ldd, Qb, H * D, 1.0f, dkp + ((b * L + k0) * G + g) * D, G * D, dt);
          gemm(true, false, nk, D, nq, 1.0f, Pop, ldp, dO, H * D, 1.0f, dvp + ((b * L + k0) * G + g) * D, G * D, dt);
        }
      }
    }, L * L * D * (H / G));
  }

  void lora_backward(const Tensor& dy, const Tensor& u, const Tensor& b, float scaling, Tensor& du, Tensor* dB) override {
    const int64_t T = dy.dim(0), O = dy.dim(1), r = u.dim(1);
    require(dy.is_contiguous() && u.is_contiguous() && b.is_contiguous() && u.dim(0) == T && b.dim(0) == O &&
                b.dim(1) == r && du.numel() == T * r && du.dtype() == DType::F32 && dy.dtype() == u.dtype() &&
                dy.dtype() == b.dtype() && is_compute_dtype(dy.dtype()) && (!dB || (dB->numel() == O * r && dB->dtype() == DType::F32)),
            "lora_backward shapes");
    const DType dt = dy.dtype();
    // B's columns as float32 rows, u as float32
    const Mat bm{b.raw(), r, false, dt}, um{u.raw(), r, false, dt};
    std::vector<float> Bt(size_t(r * O)), uf(size_t(T * r));
    for (int64_t o = 0; o < O; o++)
      for (int64_t k = 0; k < r; k++) Bt[size_t(k * O + o)] = elem(bm, o, k);
    for (int64_t t = 0; t < T; t++)
      for (int64_t k = 0; k < r; k++) uf[size_t(t * r + k)] = elem(um, t, k);
    // Each thread takes a slice of dy's columns for every row: it forms its part of each du dot product and the
    // whole of dB for its columns; the parts of du are added in thread order afterwards.
    const int parts = num_ranges(O, T * r);
    std::vector<float> du_part(size_t(parts * T * r), 0.0f), dbt(size_t(r * O), 0.0f);
    parallel_ranges_indexed(O, parts, [&](int p, int64_t o0, int64_t o1) {
      thread_local std::vector<float> buf;
      const int64_t w = o1 - o0;
      float* dp = du_part.data() + size_t(p) * size_t(T * r);
      for (int64_t t = 0; t < T; t++) {
        const float* x = fetch(dy.raw(), t * O + o0, w, dt, buf);
        for (int64_t k = 0; k < r; k++) {
          dp[t * r + k] = isa_.dot(x, Bt.data() + k * O + o0, w);
          if (dB) isa_.axpy(uf[size_t(t * r + k)], x, dbt.data() + k * O + o0, w);
        }
      }
    });
    float* d = du.data<float>();
    for (int64_t i = 0; i < T * r; i++) {
      float s = 0;
      for (int p = 0; p < parts; p++) s += du_part[size_t(p) * size_t(T * r) + size_t(i)];
      d[i] = scaling * s;
    }
    if (dB) {
      float* g = dB->data<float>();
      for (int64_t o = 0; o < O; o++)
        for (int64_t k = 0; k < r; k++) g[o * r + k] += scaling * dbt[size_t(k * O + o)];
    }
  }

  void zero(Tensor& x) override { cpu::zero(x); }
  void gather_rows(const Tensor& x, const int64_t* rows, int64_t n, Tensor& dst) override {
    cpu::gather_rows(x, rows, n, dst);
  }
  void scatter_rows(const Tensor& src, const int64_t* rows, int64_t n, Tensor& dst) override {
    cpu::scatter_rows(src, rows, n, dst);
  }
  void adamw(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamWUpdate& u) override { cpu::adamw(w, g, m, v, u); }
  double sum_squares(const Tensor& x, double total) override { return cpu::sum_squares(x, total); }
  void scale(Tensor& x, float s) override { cpu::scale(x, s); }
  bool all_finite(const Tensor& x) override { return cpu::all_finite(x); }

  CrossEntropyResult cross_entropy(Tensor& logits, const int32_t* labels, float grad_scale, bool want_grad) override {
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
        rows_.cross_entropy(row, V, y, grad_scale, want_grad, &loss[size_t(r)], &hit[size_t(r)]);
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

 private:
  // Query rows per attention block: big enough for efficient products, small enough that the causal triangle
  // wastes little (the last block of each row computes at most this many masked scores per query).
  const int64_t kQueryBlock = [] {
    const char* e = std::getenv("OAR_ATTN_BLOCK");  // for tuning
    return e ? std::max<int64_t>(8, std::atoll(e)) : int64_t(128);
  }();

  static void check_ids(const int32_t* ids, int64_t n, int64_t V) {
    for (int64_t t = 0; t < n; t++)
      if (ids[t] < 0 || ids[t] >= V)
        throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary (size " + std::to_string(V) + ")");
  }

  // A float32 tensor as the operand of attention products in dtype dt: itself, or converted into buf.
  const char* attention_operand(const Tensor& t, DType dt, std::vector<uint16_t>& buf) {
    if (dt == DType::F32) return static_cast<const char*>(t.raw());
    require(dt == DType::BF16 || dt == DType::F16, "attention compute dtype must be float32, bfloat16 or float16");
    const int64_t n = t.numel();
    buf.resize(size_t(n));
    const float* s = t.data<float>();
    uint16_t* d = buf.data();
    parallel_ranges(n, [&](int64_t b, int64_t e) {
      if (dt == DType::BF16) {
        isa_.f32_to_bf16(s + b, d + b, e - b);
      } else {
        for (int64_t i = b; i < e; i++) d[i] = f32_to_f16(s[i]);
      }
    });
    return reinterpret_cast<const char*>(buf.data());
  }

  // A [rows, cols] float32 block (row stride ld) as a product operand in dtype dt: the block itself, or a dense
  // converted copy in buf (ld is then set to cols).
  const void* block_operand(const float* src, int64_t rows, int64_t cols, int64_t ld_src, DType dt,
                            std::vector<uint16_t>& buf, int64_t& ld) const {
    if (dt == DType::F32) {
      ld = ld_src;
      return src;
    }
    buf.resize(size_t(rows * cols));
    for (int64_t r = 0; r < rows; r++) {
      uint16_t* d = buf.data() + r * cols;
      const float* s = src + r * ld_src;
      if (dt == DType::BF16) {
        isa_.f32_to_bf16(s, d, cols);
      } else {
        for (int64_t c = 0; c < cols; c++) d[c] = f32_to_f16(s[c]);
      }
    }
    ld = cols;
    return buf.data();
  }

  static void check_attention(const AttentionLayout& a, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& probs) {
    require(a.H > 0 && a.G > 0 && a.H % a.G == 0 && a.key_begin, "attention: bad head counts or no key_begin");
    require(q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32 && probs.dtype() == DType::F32,
            "attention: float32 q, k, v and probs");
    require(q.numel() == a.B * a.L * a.H * a.D && k.numel() == a.B * a.L * a.G * a.D && v.numel() == k.numel(),
            "attention: q, k, v sizes disagree with the layout");
    require(probs.numel() >= a.B * a.H * a.L * a.L, "attention: probs too small");
    for (int64_t t = 0; t < a.B * a.L; t++)
      if (a.key_begin[t] < 0 || a.key_begin[t] > t % a.L) bad("attention: key_begin out of range");
  }

  const cpu::IsaOps& isa_;
  const RowOps& rows_;
  std::vector<uint16_t> qc_, kc_, vc_, dc_;  // q, k, v, dout in a 16-bit compute dtype
};

}  // namespace

std::unique_ptr<TrainKernels> make_cpu_train_kernels() { return std::make_unique<CpuTrainKernels>(); }

}  // namespace oar
