#include "infer/roofline.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/tensor.h"
#include "kernels/kernels.h"

namespace oar {
namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

double measure_read_bandwidth(size_t bytes) {
  const size_t n = bytes / sizeof(uint64_t);
  Tensor buf = Tensor::empty({int64_t(n)}, DType::I64);
  uint64_t* p = reinterpret_cast<uint64_t*>(buf.raw());
  // Touch every page first so the measurement is not of page faults.
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i += 512) p[i] = i;
  // The median of several passes, not the best: decode is timed over many tokens, so its ceiling should be
  // the typical sustained rate too, not one lucky pass on a machine shared with other guests.
  std::vector<double> rates;
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < 7; rep++) {
    double t = now_s();
    uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(^ : total)
    for (size_t i = 0; i < n; i += 8) {
      // eight independent loads per iteration; the xor keeps them live without a dependency chain on memory
      total ^= p[i] ^ p[i + 1] ^ p[i + 2] ^ p[i + 3] ^ p[i + 4] ^ p[i + 5] ^ p[i + 6] ^ p[i + 7];
    }
    sink = sink ^ total;
    rates.push_back(double(n * sizeof(uint64_t)) / (now_s() - t));
  }
  (void)sink;
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

double measure_gemm_flops(DType dt, int64_t M, int64_t N, int64_t K) {
  Tensor a = Tensor::empty({M, K}, dt), b = Tensor::empty({N, K}, dt), c = Tensor::empty({M, N}, DType::F32);
  // Ordinary nonzero operands, as a model's, rather than the zeros of a fresh buffer.
  for (Tensor* t : {&a, &b}) {
    const int64_t n = t->numel();
    if (dt == DType::F32) std::fill_n(t->data<float>(), n, 0.01f);
    else if (dt == DType::BF16) std::fill_n(t->data<uint16_t>(), n, f32_to_bf16(0.01f));
    else if (dt == DType::F16) std::fill_n(t->data<uint16_t>(), n, f32_to_f16(0.01f));
  }
  double best = 0;
  for (int rep = 0; rep < 4; rep++) {
    double t = now_s();
    if (!cpu_gemm_nt(M, N, K, dt, a.raw(), b.raw(), c.data<float>())) return 0;
    double dt_s = now_s() - t;
    if (rep > 0) best = std::max(best, 2.0 * double(M) * double(N) * double(K) / dt_s);
  }
  return best;
}

}  // namespace oar
