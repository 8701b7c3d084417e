// Products with one small dimension (LoRA's rank): plain loops.
// oneDNN runs these [T, r] x [r, N]-like shapes far below its speed elsewhere (measured: 1-4 GFLOP/s for r = 8),
// while they are memory-bound passes over the big operand. Each form below reads the big operand once, converts it
// to float32 row by row when it is bfloat16/float16, keeps the small one as float32 [small, K] in cache, and splits
// the work over the big dimension (static ranges: deterministic, no cross-thread sums).
#include <algorithm>
#include <vector>

#include "kernels/cpu/cpu_train_common.h"
#include "kernels/cpu/cpu_train_gemm.h"

namespace oar::cpu {
namespace {

// The ISA table's dot, axpy and bf16 conversion (AVX-512 / AVX2) for the inner loops of these forms.
const IsaOps& isa_ops() {
  static const IsaOps& t = isa_best();
  return t;
}

}  // namespace

// n contiguous elements starting at element `off` of a buffer of dtype dt, as float32 (a view or a converted copy).
const float* fetch(const void* p, int64_t off, int64_t n, DType dt, std::vector<float>& buf) {
  if (dt == DType::F32) return static_cast<const float*>(p) + off;
  buf.resize(size_t(n));
  const uint16_t* s = static_cast<const uint16_t*>(p) + off;
  if (dt == DType::BF16) {
    isa_ops().bf16_to_f32(s, buf.data(), n);
  } else {
    for (int64_t i = 0; i < n; i++) buf[size_t(i)] = f16_to_f32(s[i]);
  }
  return buf.data();
}

namespace {

// c[i] = alpha * acc[i] (+ beta * c[i]) for n contiguous elements; beta 0 never reads c.
void store_row_c(float* c, const float* acc, int64_t n, float alpha, float beta) {
  if (beta == 0.0f) {
    for (int64_t i = 0; i < n; i++) c[i] = alpha * acc[i];
  } else {
    for (int64_t i = 0; i < n; i++) c[i] = alpha * acc[i] + beta * c[i];
  }
}

// The small operand as float32 rows: out[j * K + k] = m(k, j) for a logical [K, n] matrix m (its columns become rows).
std::vector<float> small_rows(const Mat& m, int64_t K, int64_t n) {
  std::vector<float> out(size_t(n * K));
  for (int64_t j = 0; j < n; j++)
    for (int64_t k = 0; k < K; k++) out[size_t(j * K + k)] = elem(m, k, j);
  return out;
}

inline void store_c(float* c, float v, float alpha, float beta) { *c = alpha * v + (beta != 0.0f ? beta * *c : 0.0f); }

// C (element (i, j) at C[i * csi + j * csj]) = alpha * X[I, K] . S + beta * C, S small with n <= kSmallDim columns,
// given as rows Sr[j * K + k] = S(k, j).
void gemm_small_n(const Mat& X, int64_t I, int64_t K, const std::vector<float>& Sr, int64_t n, float alpha, float beta,
                  float* C, int64_t csi, int64_t csj) {
  if (!X.trans) {
    // X's rows run along k: one dot product per (row, column).
    parallel_ranges(I, [&](int64_t b, int64_t e) {
      thread_local std::vector<float> buf;
      const IsaOps& isa = isa_ops();
      for (int64_t i = b; i < e; i++) {
        const float* x = fetch(X.p, i * X.ld, K, X.dt, buf);
        for (int64_t j = 0; j < n; j++) store_c(C + i * csi + j * csj, isa.dot(x, Sr.data() + j * K, K), alpha, beta);
      }
    }, K * n);
    return;
  }
  // X stored [K, I]: each thread sums, over all k, the outer products of its slice of X's row k with S's row k.
  parallel_ranges(I, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> buf, acc;
    const IsaOps& isa = isa_ops();
    const int64_t w = e - b;
    acc.assign(size_t(n * w), 0.0f);
    for (int64_t k = 0; k < K; k++) {
      const float* x = fetch(X.p, k * X.ld + b, w, X.dt, buf);
      for (int64_t j = 0; j < n; j++) isa.axpy(Sr[size_t(j * K + k)], x, acc.data() + j * w, w);
    }
    for (int64_t j = 0; j < n; j++) {
      if (csi == 1) {
        store_row_c(C + b + j * csj, acc.data() + j * w, w, alpha, beta);
      } else {
        for (int64_t i = 0; i < w; i++) store_c(C + (b + i) * csi + j * csj, acc[size_t(j * w + i)], alpha, beta);
      }
    }
  }, K * n);
}

// C[M, N] = alpha * A[M, K] . B[K, N] + beta * C when K is small: a sum of K outer products, row by row of C.
void gemm_small_k(const Mat& A, const Mat& B, int64_t M, int64_t N, int64_t K, float alpha, float beta, float* C,
                  int64_t ldc) {
  std::vector<float> Bt(size_t(K * N));  // B's rows as float32
  for (int64_t k = 0; k < K; k++)
    for (int64_t n = 0; n < N; n++) Bt[size_t(k * N + n)] = elem(B, k, n);
  parallel_ranges(M, [&](int64_t b, int64_t e) {
    thread_local std::vector<float> acc;
    const IsaOps& isa = isa_ops();
    acc.resize(size_t(N));
    for (int64_t m = b; m < e; m++) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t k = 0; k < K; k++) isa.axpy(elem(A, m, k), Bt.data() + k * N, acc.data(), N);
      store_row_c(C + m * ldc, acc.data(), N, alpha, beta);
    }
  }, N * K);
}

}  // namespace

// Handles products with a dimension <= kSmallDim; false for the others.
bool gemm_small(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
                const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  const Mat a{A, lda, ta, dt}, b{B, ldb, tb, dt};
  if (K <= kSmallDim) {
    gemm_small_k(a, b, M, N, K, alpha, beta, C, ldc);
  } else if (N <= kSmallDim) {
    gemm_small_n(a, M, K, small_rows(b, K, N), N, alpha, beta, C, ldc, 1);
  } else if (M <= kSmallDim) {
    // C^T = B^T A^T: the same form with B^T as the big operand and C written transposed.
    const Mat bt{B, ldb, !tb, dt};
    const Mat at{A, lda, !ta, dt};
    gemm_small_n(bt, N, K, small_rows(at, K, M), M, alpha, beta, C, 1, ldc);
  } else {
    return false;
  }
  return true;
}

}  // namespace oar::cpu
