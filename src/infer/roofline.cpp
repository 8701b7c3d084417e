#include "infer/roofline.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/cpu_info.h"
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/kernels.h"

namespace oar {
namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

double measure_read_bandwidth(size_t bytes) {
  const uint64_t peak_before = peak_rss_bytes();
  double rate = 0;
  {
    const int nt = omp_get_max_threads();
    const size_t share = std::max<size_t>(4096, bytes / size_t(nt) / 4096 * 4096);  // page-aligned shares
    const size_t total = share * size_t(nt);
    std::unique_ptr<uint8_t, decltype(&std::free)> buf(static_cast<uint8_t*>(std::aligned_alloc(4096, total)), &std::free);
    if (!buf) throw Error("read-bandwidth probe: cannot allocate " + std::to_string(total >> 20) + " MiB");
    uint8_t* p = buf.get();
    (void)cpu_isa_name();  // picks the ISA table here: an error (a bad OAR_ISA) must not be thrown in a parallel region
    // Each thread touches (and so places) the pages it will read: not a measurement of page faults. A region may
    // get fewer threads than asked (OMP_DYNAMIC, thread limits): then each takes several shares.
#pragma omp parallel num_threads(nt)
    for (int s = omp_get_thread_num(); s < nt; s += omp_get_num_threads()) std::memset(p + size_t(s) * share, 1, share);
    // The median of several passes, not the best: decode is timed over many tokens, so its ceiling should be the
    // typical sustained rate too, not one lucky pass on a machine shared with other guests.
    std::vector<double> rates;
    uint64_t sink = 0;
    for (int rep = 0; rep < 7; rep++) {
      const double t = now_s();
      uint64_t x = 0;
#pragma omp parallel num_threads(nt) reduction(^ : x)
      for (int s = omp_get_thread_num(); s < nt; s += omp_get_num_threads()) x ^= cpu_read_bytes(p + size_t(s) * share, share);
      rates.push_back(double(total) / (now_s() - t));
      sink ^= x;
    }
    if (sink == 0x5eed) rates.push_back(0);  // keeps the reads observable; a buffer of ones never xors to this
    std::sort(rates.begin(), rates.end());
    rate = rates[rates.size() / 2];
  }
  forget_peak_rss_since(peak_before);  // the probe's buffer is not the program's memory
  return rate;
}

std::string roofline_percent(double fraction, const char* ceiling) {
  char buf[200];
  if (fraction > 1.0)
    std::snprintf(buf, sizeof buf, "%.1f%% (above 100%%: the %s probe under-reads this machine; not a result)",
                  100.0 * fraction, ceiling);
  else
    std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * fraction);
  return buf;
}

namespace {

// The best rate of 3 timed calls after a warm-up one, in 2*M*N*K operations per second; 0 when `gemm` says the
// CPU has no such GEMM.
template <class Gemm>
double best_gemm_rate(int64_t M, int64_t N, int64_t K, Gemm gemm) {
  double best = 0;
  for (int rep = 0; rep < 4; rep++) {
    double t = now_s();
    if (!gemm()) return 0;
    double dt_s = now_s() - t;
    if (rep > 0) best = std::max(best, 2.0 * double(M) * double(N) * double(K) / dt_s);
  }
  return best;
}

// a8w8's integer GEMM (u8 x s8 -> s32), in operations per second as the float GEMMs count theirs.
double measure_u8s8_gemm_ops(int64_t M, int64_t N, int64_t K) {
  std::vector<uint8_t> a(size_t(M * K), 130);
  std::vector<int8_t> b(size_t(N * K), 3);
  std::vector<int32_t> c(size_t(M * N));
  return best_gemm_rate(M, N, K, [&] { return cpu_gemm_nt_u8s8(M, N, K, a.data(), b.data(), c.data()); });
}

}  // namespace

double measure_gemm_flops(DType dt, int64_t M, int64_t N, int64_t K) {
  if (dt == DType::I8) return measure_u8s8_gemm_ops(M, N, K);
  Tensor a = Tensor::empty({M, K}, dt), b = Tensor::empty({N, K}, dt), c = Tensor::empty({M, N}, DType::F32);
  // Ordinary nonzero operands, as a model's, rather than the zeros of a fresh buffer.
  for (Tensor* t : {&a, &b}) {
    const int64_t n = t->numel();
    if (dt == DType::F32) std::fill_n(t->data<float>(), n, 0.01f);
    else if (dt == DType::BF16) std::fill_n(t->data<uint16_t>(), n, f32_to_bf16(0.01f));
    else if (dt == DType::F16) std::fill_n(t->data<uint16_t>(), n, f32_to_f16(0.01f));
  }
  return best_gemm_rate(M, N, K, [&] { return cpu_gemm_nt(M, N, K, dt, a.raw(), b.raw(), c.data<float>()); });
}

}  // namespace oar
