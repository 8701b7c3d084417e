// Portable loops, the fallback on CPUs without AVX2 and the reference the vector versions are tested against.
#include <cmath>

#include "core/dtype.h"
#include "kernels/cpu/isa.h"

namespace oar::cpu {
namespace {

void gemv_f32(const float* x, int64_t M, int64_t ldx, const float* w, int64_t K, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      float s = 0;
      for (int64_t k = 0; k < K; k++) s += x[m * ldx + k] * w[n * K + k];
      y[m * ldy + n] = s;
    }
}

// The 16-bit float formats: each weight widened by `to_f32` (bfloat16 or IEEE half).
template <float (*to_f32)(uint16_t)>
void gemv_16(const float* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* y,
             int64_t ldy) {
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      float s = 0;
      for (int64_t k = 0; k < K; k++) s += x[m * ldx + k] * to_f32(w[n * K + k]);
      y[m * ldy + n] = s;
    }
}
constexpr auto gemv_bf16 = gemv_16<bf16_to_f32>;
constexpr auto gemv_f16 = gemv_16<f16_to_f32>;

void gemv_i8(const float* x, int64_t M, int64_t ldx, const int8_t* w, const float* scales, int64_t K, int64_t n0,
             int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      float s = 0;
      for (int64_t k = 0; k < K; k++) s += x[m * ldx + k] * float(w[n * K + k]);
      y[m * ldy + n] = s * scales[n];
    }
}

void gemv_i4(const float* x, int64_t M, int64_t ldx, const uint8_t* w, const float* scales, int64_t K, int64_t G,
             int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      float s = 0;
      for (int64_t g0 = 0; g0 < K; g0 += G) {
        float d = 0;
        for (int64_t k = g0; k < g0 + G; k++) {
          const uint8_t b = w[n * (K / 2) + k / 32 * 16 + k % 16];
          d += x[m * ldx + k] * float(int(k % 32 < 16 ? b & 15 : b >> 4) - 8);
        }
        s += d * scales[n * (K / G) + g0 / G];
      }
      y[m * ldy + n] = s;
    }
}

void gemv_a8w8(const uint8_t* xu, const float* x_steps, int64_t M, int64_t ldx, const int8_t* w,
               const int32_t* w_sums, const float* w_steps, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; k++) s += int32_t(xu[m * ldx + k]) * int32_t(w[n * K + k]);
      y[m * ldy + n] = a8w8_value(s, w_sums[n], x_steps[m], w_steps[n]);
    }
}

uint64_t read_bytes(const void* p, size_t n) {
  const uint64_t* q = static_cast<const uint64_t*>(p);
  uint64_t a = 0, b = 0, c = 0, d = 0;  // four independent chains
  for (size_t i = 0; i < n / 8; i += 4) {
    a ^= q[i];
    b ^= q[i + 1];
    c ^= q[i + 2];
    d ^= q[i + 3];
  }
  return a ^ b ^ c ^ d;
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

double sum_squares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += double(x[i]) * x[i];
  return s;
}

void dot_rows(const float* q, int64_t nq, int64_t ldq, const float* k, int64_t nk, int64_t D, float* out, int64_t ldo) {
  for (int64_t a = 0; a < nq; a++)
    for (int64_t j = 0; j < nk; j++) out[a * ldo + j] = dot(q + a * ldq, k + j * D, D);
}

void axpy_rows(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk, int64_t D, float* out, int64_t ldout) {
  for (int64_t a = 0; a < nq; a++)
    for (int64_t j = 0; j < nk; j++) axpy(p[a * ldp + j], v + j * D, out + a * ldout, D);
}

void to_f32(const uint16_t* s, float* d, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
}
void to_bf16(const float* s, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
}

}  // namespace

const IsaOps& isa_scalar() {
  static const IsaOps ops = [] {
    IsaOps o{"scalar", gemv_f32, gemv_bf16, dot, axpy, sum_squares, dot_rows, axpy_rows, to_f32, to_bf16};
    o.gemv_i8 = gemv_i8;
    o.gemv_i4 = gemv_i4;
    o.gemv_a8w8 = gemv_a8w8;
    o.gemv_f16 = gemv_f16;
    o.read_bytes = read_bytes;
    return o;
  }();
  return ops;
}

}  // namespace oar::cpu
