// Matrix products through oneDNN's matmul primitive (chosen over OpenBLAS by bench/bench_gemm: see BENCHMARKS.md).
// The one oneDNN wrapper: inference and training kernels share its engine and its primitive cache.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace oar::cpu {

// C[M,N] (row stride ldc) = alpha * op(A) op(B) (+ bias[N] on every row) + beta * C.
// A is [M,K] with row stride lda, or stored [K,M] when a_transposed; B is [K,N] with row stride ldb, or stored
// [N,K] when b_transposed (a Hugging Face weight). A and B share `dtype` (F32 or BF16); C is float32.
struct GemmDesc {
  int64_t M = 0, N = 0, K = 0;
  DType dtype = DType::F32;
  const void* A = nullptr;
  int64_t lda = 0;
  bool a_transposed = false;
  const void* B = nullptr;
  int64_t ldb = 0;
  bool b_transposed = false;
  float* C = nullptr;
  int64_t ldc = 0;
  float alpha = 1.0f, beta = 0.0f;
  const float* bias = nullptr;
};

// Returns false when oneDNN has no kernel for this combination on this CPU (the caller falls back). A primitive
// is created once per shape, layout and thread count (called inside a parallel region, a product is built for
// and runs on one thread); scratchpads are per thread, so one primitive may run on several threads at once.
bool onednn_gemm(const GemmDesc& g);

// C[M,N] (int32) = A[M,K] (uint8) · B[N,K]^T (int8), all densely packed: a8w8's integer product (VNNI where the
// CPU has it). False when oneDNN has no kernel for it on this CPU.
bool onednn_gemm_u8s8(int64_t M, int64_t N, int64_t K, const uint8_t* A, const int8_t* B, int32_t* C);

// The common form: C = A · B^T (+ bias), A [M,K], B [N,K], all densely packed but for the given row strides.
inline bool onednn_gemm(int64_t M, int64_t N, int64_t K, DType dt, const void* A, int64_t lda, const void* B,
                        int64_t ldb, bool b_transposed, float* C, int64_t ldc, const float* bias) {
  GemmDesc g;
  g.M = M, g.N = N, g.K = K, g.dtype = dt;
  g.A = A, g.lda = lda, g.B = B, g.ldb = ldb, g.b_transposed = b_transposed;
  g.C = C, g.ldc = ldc, g.bias = bias;
  return onednn_gemm(g);
}

}  // namespace oar::cpu
