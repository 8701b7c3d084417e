// The training kernels' matrix products (cpu_train_gemm.h) through oneDNN, with their float16 emulation, the
// plain-loop fallback, and the OAR_GEMM_PROFILE timing.
#include "kernels/cpu/cpu_train_gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_train_common.h"
#include "kernels/cpu/onednn_gemm.h"

namespace oar::cpu {
namespace {

// The same product in plain loops: the fallback when oneDNN declines a shape (never expected on x86-64).
void naive_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double s = 0;
      for (int64_t k = 0; k < K; k++) s += double(ta ? A[k * lda + m] : A[m * lda + k]) * double(tb ? B[n * ldb + k] : B[k * ldb + n]);
      float& c = C[m * ldc + n];
      c = float(alpha * s) + (beta != 0.0f ? beta * c : 0.0f);
    }
}

// Elements from the first to the last of a logical [rows, cols] operand with leading dimension ld (stored
// [cols, rows] when trans).
int64_t operand_span(bool trans, int64_t rows, int64_t cols, int64_t ld) {
  return trans ? (cols - 1) * ld + rows : (rows - 1) * ld + cols;
}

// float16 operand -> float32 copy with the same layout (the span from the first to the last element).
const float* widen_f16(const uint16_t* src, int64_t span, std::vector<float>& buf) {
  buf.resize(size_t(span));
  for (int64_t i = 0; i < span; i++) buf[size_t(i)] = f16_to_f32(src[i]);
  return buf.data();
}

// The same for a bfloat16 operand.
const float* widen_bf16(const uint16_t* src, int64_t span, std::vector<float>& buf) {
  buf.resize(size_t(span));
  for (int64_t i = 0; i < span; i++) buf[size_t(i)] = bf16_to_f32(src[i]);
  return buf.data();
}

// OAR_GEMM_PROFILE=1: time every product by shape and layout, printed to stderr at exit (for tuning).
struct GemmProfile {
  struct Entry {
    int64_t calls = 0;
    double seconds = 0, flops = 0;
  };
  bool on = std::getenv("OAR_GEMM_PROFILE") != nullptr;
  std::mutex mu;
  std::map<std::string, Entry> by_shape;
  ~GemmProfile() {
    if (!on) return;
    std::vector<std::pair<std::string, Entry>> v(by_shape.begin(), by_shape.end());
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
    for (auto& [k, e] : v)
      std::fprintf(stderr, "gemm %-40s calls %7lld  %8.3f s  %7.1f GFLOP/s\n", k.c_str(), (long long)e.calls, e.seconds,
                   e.flops / e.seconds / 1e9);
  }
  void add(bool ta, bool tb, int64_t M, int64_t N, int64_t K, DType dt, double s) {
    char key[96];
    std::snprintf(key, sizeof key, "%s %c%c M%lld N%lld K%lld%s", dtype_name(dt), ta ? 'T' : 'N', tb ? 'T' : 'N',
                  (long long)M, (long long)N, (long long)K, omp_in_parallel() ? " (task)" : "");
    std::lock_guard lock(mu);
    Entry& e = by_shape[key];
    e.calls++;
    e.seconds += s;
    e.flops += 2.0 * double(M) * double(N) * double(K);
  }
};
GemmProfile& gemm_profile() {
  static GemmProfile p;
  return p;
}

void gemm_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
               const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt);

// Emulated float16: the operands' values are float16 (products of them are exact in float32), accumulated in
// float32 by the float32 GEMM, as a float16 tensor core would with float32 accumulation.
void gemm_f16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
              const void* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  thread_local std::vector<float> wa, wb;
  const float* a32 = widen_f16(static_cast<const uint16_t*>(A), operand_span(ta, M, K, lda), wa);
  const float* b32 = widen_f16(static_cast<const uint16_t*>(B), operand_span(tb, K, N, ldb), wb);
  gemm_impl(ta, tb, M, N, K, alpha, a32, lda, b32, ldb, beta, C, ldc, DType::F32);
}

// The product through oneDNN; false when it declines the shape. Small products run on one thread: waking the
// others would cost more than the product.
bool gemm_onednn(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
                 const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  const bool small = M * N * K < (int64_t(1) << 17) && !omp_in_parallel() && omp_get_max_threads() > 1;
  const int threads = omp_get_max_threads();
  if (small) omp_set_num_threads(1);
  GemmDesc g;
  g.M = M, g.N = N, g.K = K, g.dtype = dt, g.alpha = alpha, g.beta = beta;
  g.A = A, g.lda = lda, g.a_transposed = ta, g.B = B, g.ldb = ldb, g.b_transposed = tb, g.C = C, g.ldc = ldc;
  const bool done = onednn_gemm(g);
  if (small) omp_set_num_threads(threads);
  return done;
}

// The plain-loop product for what oneDNN declined (bfloat16 operands widened to float32 first).
void gemm_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
                   const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  if (dt == DType::BF16) {
    thread_local std::vector<float> wa, wb;
    const float* a32 = widen_bf16(static_cast<const uint16_t*>(A), operand_span(ta, M, K, lda), wa);
    const float* b32 = widen_bf16(static_cast<const uint16_t*>(B), operand_span(tb, K, N, ldb), wb);
    naive_gemm(ta, tb, M, N, K, alpha, a32, lda, b32, ldb, beta, C, ldc);
    return;
  }
  naive_gemm(ta, tb, M, N, K, alpha, static_cast<const float*>(A), lda, static_cast<const float*>(B), ldb, beta, C, ldc);
}

void gemm_impl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
               const void* B, int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) C[m * ldc + n] = beta != 0.0f ? beta * C[m * ldc + n] : 0.0f;
    return;
  }
  if (std::min({M, N, K}) <= kSmallDim && gemm_small(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt)) return;
  if (dt == DType::F16) return gemm_f16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (gemm_onednn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt)) return;
  gemm_fallback(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt);
}

}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda, const void* B,
          int64_t ldb, float beta, float* C, int64_t ldc, DType dt) {
  GemmProfile& prof = gemm_profile();
  if (!prof.on) return gemm_impl(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt);
  const double t0 = omp_get_wtime();
  gemm_impl(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, dt);
  prof.add(ta, tb, M, N, K, dt, omp_get_wtime() - t0);
}

Operand operand(const Tensor& t, const char* which) {
  if (t.ndim() != 2) bad(std::string("matmul: ") + which + " must be 2-D, got " + shape_str(t.shape()));
  const int64_t r = t.dim(0), c = t.dim(1), s0 = t.strides()[0], s1 = t.strides()[1];
  // A stride along a dimension of size 1 is never used: give it the value a dense layout would have.
  if (s1 == 1 || c == 1) return {t.raw(), r == 1 ? std::max<int64_t>(c, 1) : s0, false};
  if (s0 == 1 || r == 1) return {t.raw(), c == 1 ? std::max<int64_t>(r, 1) : s1, true};
  bad(std::string("matmul: ") + which + " has neither contiguous rows nor contiguous columns");
}

}  // namespace oar::cpu
