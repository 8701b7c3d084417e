// Which GEMM library: oneDNN's matmul (f32 and bf16) against OpenBLAS sgemm on the shapes of a Llama prefill
// (TinyLlama-1.1B: 512 tokens x hidden 2048 -> 2048 / 256 / 5632, and 5632 -> 2048), weights in Hugging Face's
// [out, in] layout (B transposed), 2 threads. Prints GFLOP/s and the ratio to OpenBLAS in the same run.
#include <cblas.h>

#include <cstdio>
#include <vector>

#include "bench/bench_common.h"
#include "kernels/cpu/onednn_gemm.h"

using namespace oar;

int main() {
  struct S { int64_t M, N, K; } shapes[] = {{512, 2048, 2048}, {512, 256, 2048}, {512, 5632, 2048}, {512, 2048, 5632}};
  std::printf("%-20s %12s %12s %12s %10s %10s\n", "M x N x K", "openblas f32", "onednn f32", "onednn bf16", "f32 ratio", "bf16 ratio");
  for (auto s : shapes) {
    std::vector<float> A(size_t(s.M * s.K), 0.01f), B(size_t(s.N * s.K), 0.01f), C(size_t(s.M * s.N));
    std::vector<uint16_t> Ab(A.size(), 0x3c00), Bb(B.size(), 0x3c00);
    auto best = [&](auto fn) {
      double b = 1e30;
      for (int r = 0; r < 5; r++) {
        double t = bench::now_s();
        fn();
        double d = bench::now_s() - t;
        if (r > 0 && d < b) b = d;
      }
      return 2.0 * double(s.M * s.N * s.K) / b / 1e9;
    };
    double ob = best([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(s.M), int(s.N), int(s.K), 1.f, A.data(), int(s.K), B.data(),
                  int(s.K), 0.f, C.data(), int(s.N));
    });
    double of = best([&] { cpu::onednn_gemm(s.M, s.N, s.K, DType::F32, A.data(), s.K, B.data(), s.K, true, C.data(), s.N, nullptr); });
    double obf = best([&] { cpu::onednn_gemm(s.M, s.N, s.K, DType::BF16, Ab.data(), s.K, Bb.data(), s.K, true, C.data(), s.N, nullptr); });
    char name[64];
    std::snprintf(name, sizeof name, "%lldx%lldx%lld", (long long)s.M, (long long)s.N, (long long)s.K);
    std::printf("%-20s %12.1f %12.1f %12.1f %10.2f %10.2f\n", name, ob, of, obf, of / ob, obf / ob);
  }
  return 0;
}
