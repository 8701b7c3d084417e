// Per-ISA inner loops. Each instruction set (AVX-512, AVX2+FMA, scalar) provides the same table; the CPU kernels
// pick one at start-up from what the processor reports (OAR_ISA=scalar|avx2|avx512 forces a choice, for tests).
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace oar::cpu {

struct IsaOps {
  const char* name;
  // y[m*ldy + n] = dot(x[m*ldx .. +K], w[n*K .. +K]) for m < M, n in [n0, n1). Weights streamed once for all M rows.
  void (*gemv_f32)(const float* x, int64_t M, int64_t ldx, const float* w, int64_t K, int64_t n0, int64_t n1,
                   float* y, int64_t ldy);
  void (*gemv_bf16)(const float* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1,
                    float* y, int64_t ldy);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a * x
  double (*sum_squares)(const float* x, int64_t n);
  // Attention over one block of keys/values (rows of D floats, contiguous):
  //   dot_rows:  out[a*ldo + j] = dot(q + a*ldq, k + j*D)             for a < nq, j < nk
  //   axpy_rows: out + a*ldout += sum_j p[a*ldp + j] * (v + j*D)      for a < nq
  void (*dot_rows)(const float* q, int64_t nq, int64_t ldq, const float* k, int64_t nk, int64_t D, float* out, int64_t ldo);
  void (*axpy_rows)(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk, int64_t D, float* out, int64_t ldout);
  void (*bf16_to_f32)(const uint16_t* src, float* dst, int64_t n);
  void (*f32_to_bf16)(const float* src, uint16_t* dst, int64_t n);
  // gemv_bf16 with the activations already rounded to bfloat16 (x: M rows of K bf16 values), for CPUs with a
  // bf16 dot-product instruction; nullptr where there is none (then gemv_bf16 is used).
  void (*gemv_bf16_bf16)(const uint16_t* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0,
                         int64_t n1, float* y, int64_t ldy) = nullptr;
  // weight_only_int8: y[m*ldy + n] = scales[n] * dot(x[m*ldx ..], w[n*K ..]) with int8 weights, float activations.
  void (*gemv_i8)(const float* x, int64_t M, int64_t ldx, const int8_t* w, const float* scales, int64_t K, int64_t n0,
                  int64_t n1, float* y, int64_t ldy) = nullptr;
  // weight_only_int4 (layout: WeightFormat::Int4): y[m*ldy + n] = sum over groups of scales[n*(K/G) + g] *
  // dot(x's group g, w's group g); K a multiple of 32 and of G, G a multiple of 32.
  void (*gemv_i4)(const float* x, int64_t M, int64_t ldx, const uint8_t* w, const float* scales, int64_t K, int64_t G,
                  int64_t n0, int64_t n1, float* y, int64_t ldy) = nullptr;
  // a8w8 (WeightFormat::A8W8): xu holds M rows of K activations quantized to int8 and stored as unsigned bytes
  // q + 128 (row stride ldx), x_steps their steps; y[m*ldy + n] = a8w8_value(dot(xu[m], w[n]), w_sums[n],
  // x_steps[m], w_steps[n]). The dot is exact in int32 (K <= 65536), so every table gives the same bits.
  void (*gemv_a8w8)(const uint8_t* xu, const float* x_steps, int64_t M, int64_t ldx, const int8_t* w,
                    const int32_t* w_sums, const float* w_steps, int64_t K, int64_t n0, int64_t n1, float* y,
                    int64_t ldy) = nullptr;
  // gemv_f32 with float16 weights (IEEE half, converted with F16C where the ISA has it).
  void (*gemv_f16)(const float* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1,
                   float* y, int64_t ldy) = nullptr;
  // Reads n bytes (a multiple of 64, 64-byte aligned) with the widest loads this ISA has, returning a value that
  // depends on every byte: the read-bandwidth probe's inner loop.
  uint64_t (*read_bytes)(const void* p, size_t n) = nullptr;
};

// src/kernels/cpu/avx512bf16: only call when the CPU has AVX512_BF16.
void gemv_bf16_dpbf16(const uint16_t* x, int64_t M, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1,
                      float* y, int64_t ldy);
// src/kernels/cpu/avx512vnni: gemv_a8w8 by VPDPBUSD; only call when the CPU has AVX512_VNNI.
void gemv_a8w8_vnni(const uint8_t* xu, const float* x_steps, int64_t M, int64_t ldx, const int8_t* w,
                    const int32_t* w_sums, const float* w_steps, int64_t K, int64_t n0, int64_t n1, float* y,
                    int64_t ldy);

// Calls f(std::integral_constant<int, m>{}, m0) for consecutive blocks [m0, m0 + m) of [0, M) with m <= MaxM, so
// that a row kernel can take its number of activation rows as a template argument. (Each ISA's file instantiates
// it with its own lambdas, so each gets its own code.)
template <int N, class F>
inline void dispatch_rows(int64_t m, int64_t m0, F& f) {
  if constexpr (N > 1) {
    if (m < N) return dispatch_rows<N - 1>(m, m0, f);
  }
  f(std::integral_constant<int, N>{}, m0);
}
template <int MaxM, class F>
inline void for_row_blocks(int64_t M, F&& f) {
  for (int64_t m0 = 0; m0 < M; m0 += MaxM) dispatch_rows<MaxM>(M - m0 < MaxM ? M - m0 : MaxM, m0, f);
}

// One a8w8 output from the integer dot of u8 activations (q + 128) and int8 weights: the +128 comes off as 128
// times the weight row's sum, then the two steps scale it. The one definition every table and the GEMM path use.
static inline float a8w8_value(int32_t dot_u8, int32_t w_sum, float x_step, float w_step) {
  // In 64 bits: a row sum read from a file (bounded by Weight::assemble) must not overflow it either.
  return float(int64_t(dot_u8) - 128 * int64_t(w_sum)) * (x_step * w_step);
}

// IsaOps::gemv_a8w8 around an ISA's row kernel: dot_rows(std::integral_constant<int, m>, x, ldx, w_row, K, dots)
// writes the m integer dots of one weight row with m activation rows. Passes of up to MaxRows rows.
template <int MaxRows, class DotRows>
static inline void gemv_a8w8_by_rows(const DotRows& dot_rows, const uint8_t* xu, const float* x_steps, int64_t M,
                                     int64_t ldx, const int8_t* w, const int32_t* w_sums, const float* w_steps,
                                     int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for_row_blocks<MaxRows>(M, [&](auto rows, int64_t m0) {
    int32_t dots[rows()];
    for (int64_t n = n0; n < n1; n++) {
      dot_rows(rows, xu + m0 * ldx, ldx, w + n * K, K, dots);
      for (int m = 0; m < rows(); m++)
        y[(m0 + m) * ldy + n] = a8w8_value(dots[m], w_sums[n], x_steps[m0 + m], w_steps[n]);
    }
  });
}

// The GEMVs prefetch their weight stream this far ahead, one cache line per line consumed. The hardware
// prefetcher alone kept them at 55-80% of the read bandwidth of a 2-core Xeon: in a microbenchmark over 0.9 GB
// of rows on 2 threads, int8 went from 15.7 to 23.9 GB/s, bfloat16 (VDPBF16PS) from 23.3 to 28.3 GB/s, against
// 29.7 GB/s for a plain read. (Session 5 measured no gain in the VDPBF16PS loop, on a machine where it already
// read at 86-90%.)
constexpr int64_t kPrefetchBytes = 4096;
static inline void prefetch_ahead(const void* p) { __builtin_prefetch(static_cast<const char*>(p) + kPrefetchBytes, 0, 3); }

// y[m*ldy + n] *= scales[n] for m < M, n in [n0, n1): the per-channel scale of a quantized GEMV, after its dots.
// static: each ISA's file compiles its own copy with its own instruction set (one shared inline copy could be
// the AVX-512 one, linked into the AVX2 path).
static inline void scale_columns(float* y, int64_t M, int64_t ldy, const float* scales, int64_t n0, int64_t n1) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = n0; n < n1; n++) y[m * ldy + n] *= scales[n];
}

const IsaOps& isa_scalar();
const IsaOps& isa_avx2();    // only call when the CPU has AVX2 and FMA
const IsaOps& isa_avx512();  // only call when the CPU has AVX-512 F/BW/DQ/VL
// isa_avx512 plus AVX512_VNNI's byte dot product (a8w8's GEMV): Cascade Lake, Ice Lake and later.
const IsaOps& isa_avx512_vnni();
// isa_avx512_vnni plus AVX512_BF16's dot product (the bf16 decode GEMV): every CPU with AVX512_BF16 (Cooper
// Lake, Sapphire Rapids, Zen 4) also has AVX512_VNNI.
const IsaOps& isa_avx512_bf16();
// The best table this CPU supports (or the one OAR_ISA names; an unsupported choice is an oar::Error).
const IsaOps& isa_best();

}  // namespace oar::cpu
