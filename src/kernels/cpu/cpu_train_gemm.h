// The matrix products of the CPU training kernels: oneDNN's matmul (transposed operands are expressed by strides,
// accumulation by its sum post-op; cpu_train_gemm.cpp), and plain loops for products with one small dimension
// (LoRA's rank; cpu_train_gemm_small.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace oar::cpu {

// The raw product: C[M,N] = alpha * op(A) op(B) + beta * C, with op = transpose when ta/tb.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda, const void* B,
          int64_t ldb, float beta, float* C, int64_t ldc, DType dt);

// A 2-D view as a GEMM operand: its data, leading dimension and whether it is stored transposed.
struct Operand {
  const void* p;
  int64_t ld;
  bool trans;
};
Operand operand(const Tensor& t, const char* which);

// ---- products with one small dimension (cpu_train_gemm_small.cpp) ----
constexpr int64_t kSmallDim = 16;

// A logical matrix [rows, cols]: element (i, j) at p[i * ld + j], or p[j * ld + i] when trans.
struct Mat {
  const void* p;
  int64_t ld;
  bool trans;
  DType dt;
};

inline float elem(const Mat& m, int64_t i, int64_t j) {
  const int64_t off = m.trans ? j * m.ld + i : i * m.ld + j;
  switch (m.dt) {
    case DType::F32: return static_cast<const float*>(m.p)[off];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(m.p)[off]);
    default: return f16_to_f32(static_cast<const uint16_t*>(m.p)[off]);
  }
}

// n contiguous elements starting at element `off` of a buffer of dtype dt, as float32 (a view or a converted copy).
const float* fetch(const void* p, int64_t off, int64_t n, DType dt, std::vector<float>& buf);

// Handles products with a dimension <= kSmallDim; false for the others.
bool gemm_small(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
                const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt);

}  // namespace oar::cpu
