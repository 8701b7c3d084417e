// The row kernels (cpu_train_row_ops.h). Written as plain loops so that the compiler vectorises them (no library
// call inside: exp is computed inline).
#include "kernels/cpu/cpu_train_row_ops.h"

#include <bit>
#include <cmath>
#include <cstring>

// clang (the fuzzing build) may decline some `omp simd` requests (the max reductions); that only costs speed there.
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpass-failed"
#endif

namespace oar::cpu {
namespace {

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

}  // namespace

// The row kernels for the instruction set the ISA table chose.
const RowOps& row_ops_for(const IsaOps& isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (std::strncmp(isa.name, "avx512", 6) == 0) return avx512_row_ops;
  if (std::strcmp(isa.name, "avx2") == 0) return avx2_row_ops;
#endif
  return generic_row_ops;
}

}  // namespace oar::cpu
