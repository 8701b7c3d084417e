// AVX2 + FMA inner loops (8 lanes), for x86-64 CPUs without AVX-512.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/cpu/isa.h"

namespace oar::cpu {
namespace {

inline __m256 load_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
// Float16 weights: a tag type, so that the templates below tell them from bfloat16 (both 2 bytes).
struct Half {
  uint16_t bits;
};
inline __m256 load_f16(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

inline __m256 load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int M, int R, class W>
inline void block(const float* x, int64_t ldx, const W* w, int64_t K, int64_t n, float* y, int64_t ldy) {
  __m256 acc[R][M];
  for (int r = 0; r < R; r++)
    for (int m = 0; m < M; m++) acc[r][m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; r++) {
      if (k % int64_t(64 / sizeof(W)) == 0) prefetch_ahead(w + (n + r) * K + k);
      if constexpr (std::is_same_v<W, Half>) wv[r] = load_f16(w + (n + r) * K + k);
      else if constexpr (sizeof(W) == 2) wv[r] = load_bf16(reinterpret_cast<const uint16_t*>(w) + (n + r) * K + k);
      else wv[r] = _mm256_loadu_ps(reinterpret_cast<const float*>(w) + (n + r) * K + k);
    }
    for (int m = 0; m < M; m++) {
      __m256 xv = _mm256_loadu_ps(x + m * ldx + k);
      for (int r = 0; r < R; r++) acc[r][m] = _mm256_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int m = 0; m < M; m++) {
      float s = hsum(acc[r][m]);
      for (int64_t kk = k; kk < K; kk++) {
        float wk;
        if constexpr (std::is_same_v<W, Half>) wk = f16_to_f32(w[(n + r) * K + kk].bits);
        else if constexpr (sizeof(W) == 2) wk = bf16_to_f32(reinterpret_cast<const uint16_t*>(w)[(n + r) * K + kk]);
        else wk = reinterpret_cast<const float*>(w)[(n + r) * K + kk];
        s += wk * x[m * ldx + kk];
      }
      y[m * ldy + n + r] = s;
    }
}

template <int M, class W>
void rows(const float* x, int64_t ldx, const W* w, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  // one weight row at a time: a single sequential stream per core (see the AVX-512 version)
  for (int64_t n = n0; n < n1; n++) block<M, 1>(x, ldx, w, K, n, y, ldy);
}

template <class W>
void gemv(const float* x, int64_t M, int64_t ldx, const W* w, int64_t K, int64_t n0, int64_t n1, float* y,
          int64_t ldy) {
  while (M > 0) {
    int64_t m = M >= 4 ? 4 : M;
    switch (m) {
      case 1: rows<1>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 2: rows<2>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 3: rows<3>(x, ldx, w, K, n0, n1, y, ldy); break;
      default: rows<4>(x, ldx, w, K, n0, n1, y, ldy); break;
    }
    x += m * ldx;
    y += m * ldy;
    M -= m;
  }
}

void gemv_f32(const float* x, int64_t M, int64_t ldx, const float* w, int64_t K, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  gemv(x, M, ldx, w, K, n0, n1, y, ldy);
}
void gemv_bf16(const float* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  gemv(x, M, ldx, w, K, n0, n1, y, ldy);
}

void gemv_f16(const float* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* y,
              int64_t ldy) {
  gemv(x, M, ldx, reinterpret_cast<const Half*>(w), K, n0, n1, y, ldy);
}

// One int8 weight row against M activation rows. A float row's FMAs wait on memory; an int8 row brings 4 times
// the weights per byte, so one chain's FMA latency would be the limit (measured: 45% of the bandwidth roofline
// with one chain, TinyLlama shape, 2 AVX2 cores): with one activation row, four independent chains.
template <int M>
inline void row_i8(const float* x, int64_t ldx, const int8_t* w, int64_t K, float* y, int64_t ldy) {
  constexpr int C = M == 1 ? 4 : 2;
  __m256 acc[C][M];
  for (int c = 0; c < C; c++)
    for (int m = 0; m < M; m++) acc[c][m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if (k % 64 == 0) prefetch_ahead(w + k);
    for (int j = 0; j < 4; j++) {
      const __m256 wv = load_i8(w + k + 8 * j);
      for (int m = 0; m < M; m++) acc[j % C][m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k + 8 * j), acc[j % C][m]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 wv = load_i8(w + k);
    for (int m = 0; m < M; m++) acc[0][m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k), acc[0][m]);
  }
  for (int m = 0; m < M; m++) {
    for (int c = 1; c < C; c++) acc[0][m] = _mm256_add_ps(acc[0][m], acc[c][m]);
    float s = hsum(acc[0][m]);
    for (int64_t kk = k; kk < K; kk++) s += float(w[kk]) * x[m * ldx + kk];
    y[m * ldy] = s;
  }
}

void gemv_i8(const float* x, int64_t M, int64_t ldx, const int8_t* w, const float* scales, int64_t K, int64_t n0,
             int64_t n1, float* y, int64_t ldy) {
  for_row_blocks<4>(M, [&](auto rows, int64_t m0) {
    for (int64_t n = n0; n < n1; n++) row_i8<rows()>(x + m0 * ldx, ldx, w + n * K, K, y + m0 * ldy + n, ldy);
  });
  scale_columns(y, M, ldy, scales, n0, n1);
}

// One a8w8 weight row against M activation rows (u8, q + 128), 16 inputs at a time widened to 16 bits: vpmaddwd
// sums pairs of products into int32 exactly (vpmaddubsw's 16-bit sums would saturate at 255 * 127 * 2).
template <int M>
inline void row_a8w8(const uint8_t* x, int64_t ldx, const int8_t* w, int64_t K, int32_t* dots) {
  __m256i acc[M];
  for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (k % 64 == 0) prefetch_ahead(w + k);
    const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k)));
    for (int m = 0; m < M; m++) {
      const __m256i xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + m * ldx + k)));
      acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(xv, wv));
    }
  }
  for (int m = 0; m < M; m++) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[m]);
    int32_t s = 0;
    for (int i = 0; i < 8; i++) s += lanes[i];
    for (int64_t kk = k; kk < K; kk++) s += int32_t(x[m * ldx + kk]) * int32_t(w[kk]);
    dots[m] = s;
  }
}

void gemv_a8w8(const uint8_t* xu, const float* x_steps, int64_t M, int64_t ldx, const int8_t* w,
               const int32_t* w_sums, const float* w_steps, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const auto dot_rows = [](auto rows, auto... a) { row_a8w8<rows()>(a...); };
  gemv_a8w8_by_rows<4>(dot_rows, xu, x_steps, M, ldx, w, w_sums, w_steps, K, n0, n1, y, ldy);
}

// One int4 weight row (WeightFormat::Int4) against M activation rows: each 16-byte block unpacks to 32 inputs,
// each group's dot is scaled once (AVX-512 scales a table instead: the two round differently, within 1e-5).
// Four FMA chains with one activation row, as row_i8.
template <int M>
inline void row_i4(const float* x, int64_t ldx, const uint8_t* w, const float* sc, int64_t K, int64_t G, float* y,
                   int64_t ldy) {
  constexpr int C = M == 1 ? 4 : 2;
  const __m128i mask = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
  __m256 total[M];
  for (int m = 0; m < M; m++) total[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < K / G; g++) {
    const int64_t g0 = g * G;
    if (g % 16 == 0) prefetch_ahead(sc + g);
    __m256 acc[C][M];
    for (int c = 0; c < C; c++)
      for (int m = 0; m < M; m++) acc[c][m] = _mm256_setzero_ps();
    for (int64_t k = g0; k < g0 + G; k += 32) {
      if (k % 128 == 0) prefetch_ahead(w + k / 2);
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2));
      const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, mask), eight);                       // inputs k .. k+15
      const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), mask), eight);    // inputs k+16 .. k+31
      const __m256 wv[4] = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
                            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
                            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
                            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))};
      for (int j = 0; j < 4; j++)
        for (int m = 0; m < M; m++)
          acc[j % C][m] = _mm256_fmadd_ps(wv[j], _mm256_loadu_ps(x + m * ldx + k + 8 * j), acc[j % C][m]);
    }
    const __m256 s = _mm256_set1_ps(sc[g]);
    for (int m = 0; m < M; m++) {
      for (int c = 1; c < C; c++) acc[0][m] = _mm256_add_ps(acc[0][m], acc[c][m]);
      total[m] = _mm256_fmadd_ps(acc[0][m], s, total[m]);
    }
  }
  for (int m = 0; m < M; m++) y[m * ldy] = hsum(total[m]);
}

void gemv_i4(const float* x, int64_t M, int64_t ldx, const uint8_t* w, const float* scales, int64_t K, int64_t G,
             int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for_row_blocks<4>(M, [&](auto rows, int64_t m0) {
    for (int64_t n = n0; n < n1; n++)
      row_i4<rows()>(x + m0 * ldx, ldx, w + n * (K / 2), scales + n * (K / G), K, G, y + m0 * ldy + n, ldy);
  });
}

uint64_t read_bytes(const void* p, size_t n) {
  const __m256i* q = static_cast<const __m256i*>(p);
  __m256i a = _mm256_setzero_si256(), b = a;  // two chains: xor's 1-cycle latency never limits two loads a cycle
  size_t i = 0;
  for (; i + 2 <= n / 32; i += 2) {
    prefetch_ahead(q + i);  // as the GEMVs do, or they would read faster than the ceiling
    a = _mm256_xor_si256(a, _mm256_load_si256(q + i));
    b = _mm256_xor_si256(b, _mm256_load_si256(q + i + 1));
  }
  if (i < n / 32) a = _mm256_xor_si256(a, _mm256_load_si256(q + i));
  a = _mm256_xor_si256(a, b);
  uint64_t r[4];
  std::memcpy(r, &a, sizeof(r));
  return r[0] ^ r[1] ^ r[2] ^ r[3];
}

float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

double sum_squares(const float* x, int64_t n) {
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    s = _mm256_fmadd_ps(v, v, s);
  }
  double r = hsum(s);
  for (; i < n; i++) r += double(x[i]) * x[i];
  return r;
}

void dot_rows(const float* q, int64_t nq, int64_t ldq, const float* k, int64_t nk, int64_t D, float* out, int64_t ldo) {
  for (int64_t j = 0; j < nk; j++)
    for (int64_t a = 0; a < nq; a++) out[a * ldo + j] = dot(q + a * ldq, k + j * D, D);
}

void axpy_rows(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk, int64_t D, float* out, int64_t ldout) {
  for (int64_t j = 0; j < nk; j++)
    for (int64_t a = 0; a < nq; a++) axpy(p[a * ldp + j], v + j * D, out + a * ldout, D);
}

void to_f32(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, load_bf16(s + i));
  for (; i < n; i++) d[i] = bf16_to_f32(s[i]);
}

void to_bf16(const float* s, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i]);
}

}  // namespace

const IsaOps& isa_avx2() {
  static const IsaOps ops = [] {
    IsaOps o{"avx2", gemv_f32, gemv_bf16, dot, axpy, sum_squares, dot_rows, axpy_rows, to_f32, to_bf16};
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
