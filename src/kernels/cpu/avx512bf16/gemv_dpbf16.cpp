// Decode GEMV for bfloat16 weights on CPUs with AVX512_BF16 (Zen 4, Sapphire Rapids): the activations are rounded
// to bfloat16 once per product (as bf16 compute does everywhere else, e.g. the oneDNN prefill path), then
// VDPBF16PS multiplies 32 weight/activation pairs and accumulates them in float32 in one instruction. The plain
// AVX-512 loop needs a widening shuffle, a shift and two FMAs for the same 32 weights, which is enough work per
// byte to keep a core from streaming bf16 weights at full memory bandwidth.
#include <immintrin.h>

#include "kernels/cpu/isa.h"

namespace oar::cpu {
namespace {

// One weight row against M activation rows. Up to 8 rows keep two accumulators per row to hide the latency of
// the dot product; more rows (up to 16, the serving engine's decode batch) have enough independent chains with
// one each, which keeps the accumulators within the 32 vector registers.
template <int M>
inline void row(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K, float* y, int64_t ldy) {
  constexpr int A = M <= 8 ? 2 : 1;
  __m512 acc[A][M];
  for (int a = 0; a < A; a++)
    for (int m = 0; m < M; m++) acc[a][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 * A <= K; k += 32 * A) {
    for (int a = 0; a < A; a++) prefetch_ahead(w + k + 32 * a);
    for (int a = 0; a < A; a++) {
      const __m512bh wa = (__m512bh)_mm512_loadu_si512(w + k + 32 * a);
      for (int m = 0; m < M; m++)
        acc[a][m] = _mm512_dpbf16_ps(acc[a][m], wa, (__m512bh)_mm512_loadu_si512(x + m * ldx + k + 32 * a));
    }
  }
  for (; k < K; k += 32) {
    const __mmask32 mk = K - k >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << (K - k)) - 1);
    const __m512bh w0 = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + k);
    for (int m = 0; m < M; m++)
      acc[0][m] = _mm512_dpbf16_ps(acc[0][m], w0, (__m512bh)_mm512_maskz_loadu_epi16(mk, x + m * ldx + k));
  }
  for (int m = 0; m < M; m++) {
    __m512 t = acc[0][m];
    for (int a = 1; a < A; a++) t = _mm512_add_ps(t, acc[a][m]);
    y[m * ldy] = _mm512_reduce_add_ps(t);
  }
}

template <int M>
void rows(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; n++) row<M>(x, ldx, w + n * K, K, y + n, ldy);
}

constexpr int64_t kMaxRows = 16;

}  // namespace

void gemv_bf16_dpbf16(const uint16_t* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1,
                      float* y, int64_t ldy) {
  while (M > 0) {
    const int64_t m = M >= kMaxRows ? kMaxRows : M;
    switch (m) {
      case 1: rows<1>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 2: rows<2>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 3: rows<3>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 4: rows<4>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 5: rows<5>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 6: rows<6>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 7: rows<7>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 8: rows<8>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 9: rows<9>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 10: rows<10>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 11: rows<11>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 12: rows<12>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 13: rows<13>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 14: rows<14>(x, ldx, w, K, n0, n1, y, ldy); break;
      case 15: rows<15>(x, ldx, w, K, n0, n1, y, ldy); break;
      default: rows<16>(x, ldx, w, K, n0, n1, y, ldy); break;
    }
    x += m * ldx;
    y += m * ldy;
    M -= m;
  }
}

}  // namespace oar::cpu
