// AVX-512 inner loops. Weights are read once per call and reused for up to 8 activation rows, which is what
// makes decode bandwidth-bound (one pass over the weights per step, whatever the batch).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/isa.h"

namespace oar::cpu {
namespace {

inline __m512 load_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline __m512 load_bf16_mask(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
inline __m512 load_f32(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load_f32_mask(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

inline __m512 load_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 load_i8_mask(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

// Float16 weights: a tag type, so that load_w tells them from bfloat16 (both 2 bytes).
struct Half {
  uint16_t bits;
};

template <class W>
inline __m512 load_w(const W* w, __mmask16 m) {
  if constexpr (std::is_same_v<W, Half>) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w));
  else if constexpr (sizeof(W) == 2) return load_bf16_mask(reinterpret_cast<const uint16_t*>(w), m);
  else return load_f32_mask(reinterpret_cast<const float*>(w), m);
}
template <class W>
inline __m512 load_w(const W* w) {
  if constexpr (std::is_same_v<W, Half>) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  else if constexpr (sizeof(W) == 2) return load_bf16(reinterpret_cast<const uint16_t*>(w));
  else return load_f32(reinterpret_cast<const float*>(w));
}

// One weight row against M activation rows. Rows are walked one at a time: a single sequential stream per core
// is what the hardware prefetcher serves fastest (interleaving rows that lie 4 KiB apart halved the bandwidth
// in bench/bench_kernels). Two accumulator sets hide the FMA latency.
template <int M, class W>
inline void row(const float* x, int64_t ldx, const W* w, int64_t K, float* y, int64_t ldy) {
  __m512 acc0[M], acc1[M];
  for (int m = 0; m < M; m++) acc0[m] = acc1[m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    prefetch_ahead(w + k);
    if constexpr (sizeof(W) == 4) prefetch_ahead(w + k + 16);
    __m512 w0 = load_w(w + k), w1 = load_w(w + k + 16);
    for (int m = 0; m < M; m++) {
      acc0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + m * ldx + k), acc0[m]);
      acc1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + m * ldx + k + 16), acc1[m]);
    }
  }
  for (; k < K; k += 16) {
    __mmask16 mk = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
    __m512 w0 = load_w(w + k, mk);
    for (int m = 0; m < M; m++) acc0[m] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mk, x + m * ldx + k), acc0[m]);
  }
  for (int m = 0; m < M; m++) y[m * ldy] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[m], acc1[m]));
}

template <int M, class W>
void rows(const float* x, int64_t ldx, const W* w, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; n++) row<M>(x, ldx, w + n * K, K, y + n, ldy);
}

template <class W>
void gemv(const float* x, int64_t M, int64_t ldx, const W* w, int64_t K, int64_t n0, int64_t n1, float* y,
          int64_t ldy) {
  while (M > 0) {
    int64_t m = M >= 8 ? 8 : M;
    switch (m) {
      case 1: rows<1>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 2: rows<2>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 3: rows<3>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 4: rows<4>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 5: rows<5>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 6: rows<6>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 7: rows<7>(x, ldx, w, K, n0, n1, y, ldy); break;
      default: rows<8>(x, ldx, w, K, n0, n1, y, ldy); break;
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

// Activation rows per pass of the quantized GEMVs: 4 rows of 2048-4096 float inputs stay in a core's L1 while a
// weight row streams past them; 8 did not (a microbenchmark over 115M int4 or int8 weights on 2 threads: 114-122
// GFLOP/s with 4 rows, 70 with 8 or 16 in passes of 8). More rows take more passes over the weights.
constexpr int kQuantRows = 4;

// One int8 weight row against M activation rows: as row(), with four FMA chains for a single activation row
// (an int8 row brings 4 times the weights per byte: see the AVX2 version).
template <int M>
inline void row_i8(const float* x, int64_t ldx, const int8_t* w, int64_t K, float* y, int64_t ldy) {
  constexpr int C = M == 1 ? 4 : 2;
  __m512 acc[C][M];
  for (int c = 0; c < C; c++)
    for (int m = 0; m < M; m++) acc[c][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    prefetch_ahead(w + k);
    for (int j = 0; j < 4; j++) {
      const __m512 wv = load_i8(w + k + 16 * j);
      for (int m = 0; m < M; m++) acc[j % C][m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + m * ldx + k + 16 * j), acc[j % C][m]);
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 mk = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1);
    const __m512 wv = load_i8_mask(w + k, mk);
    for (int m = 0; m < M; m++) acc[0][m] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, x + m * ldx + k), acc[0][m]);
  }
  for (int m = 0; m < M; m++) {
    for (int c = 1; c < C; c++) acc[0][m] = _mm512_add_ps(acc[0][m], acc[c][m]);
    y[m * ldy] = _mm512_reduce_add_ps(acc[0][m]);
  }
}

void gemv_i8(const float* x, int64_t M, int64_t ldx, const int8_t* w, const float* scales, int64_t K, int64_t n0,
             int64_t n1, float* y, int64_t ldy) {
  for_row_blocks<kQuantRows>(M, [&](auto rows, int64_t m0) {
    for (int64_t n = n0; n < n1; n++) row_i8<rows()>(x + m0 * ldx, ldx, w + n * K, K, y + m0 * ldy + n, ldy);
  });
  scale_columns(y, M, ldy, scales, n0, n1);
}

// One a8w8 weight row against M activation rows (u8, q + 128) without VNNI: 32 inputs at a time widened to 16
// bits and summed in pairs into int32 by vpmaddwd (exact; vpmaddubsw's 16-bit sums would saturate).
template <int M>
inline void row_a8w8(const uint8_t* x, int64_t ldx, const int8_t* w, int64_t K, int32_t* dots) {
  __m512i acc[M];
  for (int m = 0; m < M; m++) acc[m] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 32) {
    if (k % 64 == 0) prefetch_ahead(w + k);
    const __mmask32 mk = K - k >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << (K - k)) - 1);
    const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mk, w + k));
    for (int m = 0; m < M; m++) {
      const __m512i xv = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mk, x + m * ldx + k));
      acc[m] = _mm512_add_epi32(acc[m], _mm512_madd_epi16(xv, wv));
    }
  }
  for (int m = 0; m < M; m++) dots[m] = _mm512_reduce_add_epi32(acc[m]);
}

void gemv_a8w8(const uint8_t* xu, const float* x_steps, int64_t M, int64_t ldx, const int8_t* w,
               const int32_t* w_sums, const float* w_steps, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const auto dot_rows = [](auto rows, auto... a) { row_a8w8<rows()>(a...); };
  gemv_a8w8_by_rows<kQuantRows>(dot_rows, xu, x_steps, M, ldx, w, w_sums, w_steps, K, n0, n1, y, ldy);
}

// int4 weights (WeightFormat::Int4) become floats by table lookup: vpermps picks from 16 floats by the low 4
// bits of each 32-bit index, so a byte zero-extended to 32 bits indexes by its low nibble, and the same shifted
// right by 4 by its high one. The table is {-8, ..., 7} times the group's scale: it undoes the +8 and
// dequantizes exactly as Weight::dequantize does, in two instructions per 16 weights. (Masking, subtracting
// and converting each nibble, then scaling each group's sum, took twice the instructions: int4 decode was
// compute-bound at 31% of the roofline.)
inline __m512 int4_table(float scale) {
  return _mm512_mul_ps(_mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_ps(scale));
}

// One int4 weight row against M activation rows, a block of 32 inputs (16 bytes) at a time: its low nibbles
// feed one FMA chain per row and its high nibbles another. With few rows, even and odd blocks use separate
// chains, so that a row has four FMAs in flight.
template <int M>
inline void row_i4(const float* x, int64_t ldx, const uint8_t* w, const float* sc, int64_t K, int64_t G, float* y,
                   int64_t ldy) {
  __m512 even[2][M], odd[2][M];
  for (int m = 0; m < M; m++) even[0][m] = even[1][m] = odd[0][m] = odd[1][m] = _mm512_setzero_ps();
  int64_t g = 0, group_end = G;
  __m512 table = int4_table(sc[0]);
  auto block = [&](int64_t k, __m512 (&acc)[2][M]) {
    if (k == group_end) {
      if (++g % 16 == 0) prefetch_ahead(sc + g);
      group_end += G;
      table = int4_table(sc[g]);
    }
    if (k % 128 == 0) prefetch_ahead(w + k / 2);
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2)));
    const __m512 lo = _mm512_permutexvar_ps(bytes, table);
    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
    for (int m = 0; m < M; m++) {
      acc[0][m] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + m * ldx + k), acc[0][m]);
      acc[1][m] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + m * ldx + k + 16), acc[1][m]);
    }
  };
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    block(k, even);
    if constexpr (M < 4) block(k + 32, odd);
    else block(k + 32, even);
  }
  if (k < K) block(k, even);
  for (int m = 0; m < M; m++)
    y[m * ldy] = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(even[0][m], even[1][m]), _mm512_add_ps(odd[0][m], odd[1][m])));
}

void gemv_i4(const float* x, int64_t M, int64_t ldx, const uint8_t* w, const float* scales, int64_t K, int64_t G,
             int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for_row_blocks<kQuantRows>(M, [&](auto rows, int64_t m0) {
    for (int64_t n = n0; n < n1; n++)
      row_i4<rows()>(x + m0 * ldx, ldx, w + n * (K / 2), scales + n * (K / G), K, G, y + m0 * ldy + n, ldy);
  });
}

uint64_t read_bytes(const void* p, size_t n) {
  const __m512i* q = static_cast<const __m512i*>(p);
  __m512i a = _mm512_setzero_si512(), b = a;
  size_t i = 0;
  for (; i + 2 <= n / 64; i += 2) {
    prefetch_ahead(q + i);  // as the GEMVs do, or they would read faster than the ceiling
    prefetch_ahead(q + i + 1);
    a = _mm512_xor_si512(a, _mm512_load_si512(q + i));
    b = _mm512_xor_si512(b, _mm512_load_si512(q + i + 1));
  }
  if (i < n / 64) a = _mm512_xor_si512(a, _mm512_load_si512(q + i));
  a = _mm512_xor_si512(a, b);
  uint64_t r[8];
  std::memcpy(r, &a, sizeof(r));
  return r[0] ^ r[1] ^ r[2] ^ r[3] ^ r[4] ^ r[5] ^ r[6] ^ r[7];
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

void axpy(float a, const float* x, float* y, int64_t n) {
  __m512 av = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

double sum_squares(const float* x, int64_t n) {
  // float32 lanes, double at the end: the rows are at most a few thousand elements
  __m512 s = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    s = _mm512_fmadd_ps(v, v, s);
  }
  if (i < n) {
    __m512 v = _mm512_maskz_loadu_ps(__mmask16((1u << (n - i)) - 1), x + i);
    s = _mm512_fmadd_ps(v, v, s);
  }
  return double(_mm512_reduce_add_ps(s));
}

// One key row is loaded once (up to 8 registers for D <= 128) and used for every query of the group (GQA).
void dot_rows(const float* q, int64_t nq, int64_t ldq, const float* k, int64_t nk, int64_t D, float* out, int64_t ldo) {
  if (D > 128) {
    for (int64_t j = 0; j < nk; j++)
      for (int64_t a = 0; a < nq; a++) out[a * ldo + j] = dot(q + a * ldq, k + j * D, D);
    return;
  }
  const int64_t chunks = (D + 15) / 16;
  const __mmask16 tail = (D % 16) ? __mmask16((1u << (D % 16)) - 1) : __mmask16(0xffff);
  for (int64_t j = 0; j < nk; j++) {
    __m512 kv[8];
    for (int64_t c = 0; c < chunks; c++)
      kv[c] = _mm512_maskz_loadu_ps(c == chunks - 1 ? tail : __mmask16(0xffff), k + j * D + c * 16);
    for (int64_t a = 0; a < nq; a++) {
      const float* qa = q + a * ldq;
      __m512 s = _mm512_mul_ps(kv[0], _mm512_maskz_loadu_ps(chunks == 1 ? tail : __mmask16(0xffff), qa));
      for (int64_t c = 1; c < chunks; c++)
        s = _mm512_fmadd_ps(kv[c], _mm512_maskz_loadu_ps(c == chunks - 1 ? tail : __mmask16(0xffff), qa + c * 16), s);
      out[a * ldo + j] = _mm512_reduce_add_ps(s);
    }
  }
}

void axpy_rows(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk, int64_t D, float* out, int64_t ldout) {
  for (int64_t j = 0; j < nk; j++)
    for (int64_t a = 0; a < nq; a++) axpy(p[a * ldp + j], v + j * D, out + a * ldout, D);
}

void to_f32(const uint16_t* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, load_bf16(s + i));
  for (; i < n; i++) {
    uint32_t u = uint32_t(s[i]) << 16;
    std::memcpy(d + i, &u, 4);
  }
}

// Round to nearest even with quiet NaNs, in integer arithmetic so that AVX-512F is enough (no AVX512_BF16).
inline __m256i round_bf16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

void to_bf16(const float* s, uint16_t* d, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i*)(d + i), round_bf16(_mm512_loadu_ps(s + i)));
  if (i < n) {
    __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(d + i, m, round_bf16(_mm512_maskz_loadu_ps(m, s + i)));
  }
}

}  // namespace

const IsaOps& isa_avx512() {
  static const IsaOps ops = [] {
    IsaOps o{"avx512", gemv_f32, gemv_bf16, dot, axpy, sum_squares, dot_rows, axpy_rows, to_f32, to_bf16};
    o.gemv_i8 = gemv_i8;
    o.gemv_i4 = gemv_i4;
    o.gemv_a8w8 = gemv_a8w8;
    o.gemv_f16 = gemv_f16;
    o.read_bytes = read_bytes;
    return o;
  }();
  return ops;
}

const IsaOps& isa_avx512_vnni() {
  static const IsaOps ops = [] {
    IsaOps o = isa_avx512();
    o.name = "avx512_vnni";
    o.gemv_a8w8 = gemv_a8w8_vnni;
    return o;
  }();
  return ops;
}

const IsaOps& isa_avx512_bf16() {
  static const IsaOps ops = [] {
    IsaOps o = isa_avx512_vnni();
    o.name = "avx512_bf16";
    o.gemv_bf16_bf16 = gemv_bf16_dpbf16;
    return o;
  }();
  return ops;
}

}  // namespace oar::cpu
