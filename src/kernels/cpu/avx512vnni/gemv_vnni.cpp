// a8w8's decode GEMV on CPUs with AVX512_VNNI: VPDPBUSD multiplies 64 unsigned activation bytes (q + 128) by 64
// signed weight bytes and adds each group of four products into an int32 lane, in one instruction. A weight byte
// costs a 64th of an instruction per activation row, against weight_only_int8's widening and float FMA per 16.
#include <immintrin.h>

#include "kernels/cpu/isa.h"

namespace oar::cpu {
namespace {

// Activation rows per pass: 8 rows of up to 8 KiB bytes stay in L1/L2 while weight rows stream past them.
constexpr int kRows = 8;

// R weight rows (consecutive, K apart) against M activation rows: dots[r][m] = sum_k x[m][k] * w[r][k] in int32.
// Each activation load serves R instructions: with many rows the loads, not VPDPBUSD, were the limit. With few
// rows, several accumulators per pair hide VPDPBUSD's latency.
template <int M, int R>
inline void dot_rows(const uint8_t* x, int64_t ldx, const int8_t* w, int64_t K, int32_t (*dots)[M]) {
  constexpr int A = M * R <= 2 ? 4 : M * R <= 4 ? 2 : 1;
  __m512i acc[A][R][M];
  for (int a = 0; a < A; a++)
    for (int r = 0; r < R; r++)
      for (int m = 0; m < M; m++) acc[a][r][m] = _mm512_setzero_si512();
  auto step = [&](int64_t k, int a, __mmask64 mk) {
    __m512i wv[R];
    for (int r = 0; r < R; r++) {
      prefetch_ahead(w + r * K + k);
      wv[r] = _mm512_maskz_loadu_epi8(mk, w + r * K + k);
    }
    for (int m = 0; m < M; m++) {
      const __m512i xv = _mm512_maskz_loadu_epi8(mk, x + m * ldx + k);
      for (int r = 0; r < R; r++) acc[a][r][m] = _mm512_dpbusd_epi32(acc[a][r][m], xv, wv[r]);
    }
  };
  int64_t k = 0;
  for (; k + 64 * A <= K; k += 64 * A)
    for (int a = 0; a < A; a++) step(k + 64 * a, a, ~__mmask64(0));
  for (; k < K; k += 64)  // masked: the bytes past K are zeros in both operands
    step(k, 0, K - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - k)) - 1);
  for (int r = 0; r < R; r++)
    for (int m = 0; m < M; m++) {
      __m512i t = acc[0][r][m];
      for (int a = 1; a < A; a++) t = _mm512_add_epi32(t, acc[a][r][m]);
      dots[r][m] = _mm512_reduce_add_epi32(t);
    }
}

}  // namespace

void gemv_a8w8_vnni(const uint8_t* xu, const float* x_steps, int64_t M, int64_t ldx, const int8_t* w,
                    const int32_t* w_sums, const float* w_steps, int64_t K, int64_t n0, int64_t n1, float* y,
                    int64_t ldy) {
  for_row_blocks<kRows>(M, [&](auto rows, int64_t m0) {
    constexpr int Mr = rows();
    auto columns = [&](auto r, int64_t n) {  // weight rows n .. n + r - 1
      int32_t dots[r()][Mr];
      dot_rows<Mr, r()>(xu + m0 * ldx, ldx, w + n * K, K, dots);
      for (int i = 0; i < r(); i++)
        for (int m = 0; m < Mr; m++)
          y[(m0 + m) * ldy + n + i] = a8w8_value(dots[i][m], w_sums[n + i], x_steps[m0 + m], w_steps[n + i]);
    };
    int64_t n = n0;
    if constexpr (Mr >= 4)  // two weight rows at a time (2 x 8 accumulators at most)
      for (; n + 2 <= n1; n += 2) columns(std::integral_constant<int, 2>{}, n);
    for (; n < n1; n++) columns(std::integral_constant<int, 1>{}, n);
  });
}

}  // namespace oar::cpu
