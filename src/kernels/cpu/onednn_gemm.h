// GEMM through oneDNN's matmul primitive (chosen over OpenBLAS by bench/bench_gemm: see BENCHMARKS.md).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace oar::cpu {

// C[M,N] (row stride ldc) = A[M,K] (row stride lda) · op(B) (+ bias[N]).
// b_transposed: B is stored [N,K] with row stride ldb (a Hugging Face weight); otherwise [K,N].
// A and B share a dtype (F32 or BF16); C is float32. Returns false when oneDNN has no kernel for this
// combination on this CPU (the caller falls back).
bool onednn_gemm(int64_t M, int64_t N, int64_t K, DType dt, const void* A, int64_t lda, const void* B, int64_t ldb,
                 bool b_transposed, float* C, int64_t ldc, const float* bias);

}  // namespace oar::cpu
