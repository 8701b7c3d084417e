// What the CPU training kernels' files (cpu_training_kernels.cpp and the cpu_train_*.cpp beside it) share: their
// errors, the static splits of work over the threads, and storing a float32 row in a compute dtype.
// Splits are static, so every result is the same from run to run.
#pragma once
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cpu/isa.h"

namespace oar::cpu {

[[noreturn]] inline void bad(const std::string& what) { throw Error("cpu training kernels: " + what); }
inline void require(bool ok, const char* what) {
  if (!ok) bad(what);
}

// Runs fn(begin, end) over [0, n) split into one contiguous range per thread. `cost` is the work per item: below
// ~16k in total, waking the other threads costs more than it saves.
template <class F>
void parallel_ranges(int64_t n, F fn, int64_t cost = 1) {
  const int nt = omp_get_max_threads();
  if (n <= 1 || nt == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 14)) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t b = n * t / T, e = n * (t + 1) / T;
    if (b < e) fn(b, e);
  }
}

// Like parallel_ranges, but each thread also gets its index, and the number of ranges is returned first by
// num_ranges(n, cost), so callers can size per-thread partial sums.
inline int num_ranges(int64_t n, int64_t cost) {
  const int nt = omp_get_max_threads();
  if (n <= 1 || nt == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 14)) return 1;
  return nt;
}
template <class F>
void parallel_ranges_indexed(int64_t n, int parts, F fn) {
  if (parts == 1) {
    fn(0, int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(parts)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    // A smaller team than asked for (nested or limited) still covers every range, in the same order.
    for (int p = t; p < parts; p += T) {
      const int64_t b = n * p / parts, e = n * (p + 1) / parts;
      fn(p, b, e);
    }
  }
}

// Runs fn(i) for i in [0, n) as tasks spread over the threads; the products inside a task run on its thread alone
// (the thread count is set to 1 inside the region, so oneDNN builds and runs them single-threaded). `cost`: work
// per task; small totals run in order on the calling thread.
template <class F>
void parallel_tasks(int64_t n, F fn, int64_t cost) {
  if (n <= 1 || omp_get_max_threads() == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 17)) {
    for (int64_t i = 0; i < n; i++) fn(i);
    return;
  }
#pragma omp parallel
  {
    omp_set_num_threads(1);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; i++) fn(i);
  }
}

// Writes n float32 values to dst (at element offset off) in dst's dtype.
inline void store_row(const float* src, Tensor& dst, int64_t off, int64_t n, const IsaOps& isa) {
  switch (dst.dtype()) {
    case DType::F32: std::memcpy(dst.data<float>() + off, src, size_t(n) * 4); break;
    case DType::BF16: isa.f32_to_bf16(src, dst.data<uint16_t>() + off, n); break;
    case DType::F16: {
      uint16_t* d = dst.data<uint16_t>() + off;
      for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(src[i]);
      break;
    }
    default: bad("compute tensors are float32, bfloat16 or float16");
  }
}

inline bool is_compute_dtype(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

}  // namespace oar::cpu
