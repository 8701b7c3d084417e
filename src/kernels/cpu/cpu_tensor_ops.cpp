#include "kernels/cpu/cpu_tensor_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_train_common.h"

namespace oar::cpu {
namespace {

void require_f32(const Tensor& t, const char* op) {
  if (t.dtype() != DType::F32 || !t.is_contiguous()) bad(std::string(op) + " takes contiguous float32 tensors");
}

// Row copies between a [R, C] tensor and a [n, C] one.
size_t row_bytes_of(const Tensor& a, const Tensor& b, const char* op) {
  if (a.dtype() != b.dtype() || a.ndim() != 2 || b.ndim() != 2 || a.dim(1) != b.dim(1) || !a.is_contiguous() ||
      !b.is_contiguous())
    bad(std::string(op) + " takes contiguous [rows, C] tensors of one dtype and C");
  return size_t(a.dim(1)) * dtype_size(a.dtype());
}

}  // namespace

void zero(Tensor& x) {
  require(x.is_contiguous(), "zero: contiguous tensor expected");
  uint8_t* p = static_cast<uint8_t*>(x.raw());
  const int64_t n = int64_t(x.nbytes()), chunk = int64_t(1) << 20;
#pragma omp parallel for schedule(static) if (n > 4 * chunk)
  for (int64_t b = 0; b < n; b += chunk) std::memset(p + b, 0, size_t(std::min(chunk, n - b)));
}

void gather_rows(const Tensor& x, const int64_t* rows, int64_t n, Tensor& dst) {
  const size_t rb = row_bytes_of(x, dst, "gather_rows");
  require(dst.dim(0) >= n, "gather_rows: dst has fewer rows than asked for");
  const auto* src = static_cast<const uint8_t*>(x.raw());
  auto* d = static_cast<uint8_t*>(dst.raw());
  for (int64_t i = 0; i < n; i++) {
    require(rows[i] >= 0 && rows[i] < x.dim(0), "gather_rows: row out of range");
    std::memcpy(d + size_t(i) * rb, src + size_t(rows[i]) * rb, rb);
  }
}

void scatter_rows(const Tensor& src, const int64_t* rows, int64_t n, Tensor& dst) {
  const size_t rb = row_bytes_of(src, dst, "scatter_rows");
  require(src.dim(0) >= n, "scatter_rows: src has fewer rows than asked for");
  const auto* s = static_cast<const uint8_t*>(src.raw());
  auto* d = static_cast<uint8_t*>(dst.raw());
  for (int64_t i = 0; i < n; i++) {
    require(rows[i] >= 0 && rows[i] < dst.dim(0), "scatter_rows: row out of range");
    std::memcpy(d + size_t(rows[i]) * rb, s + size_t(i) * rb, rb);
  }
}

void adamw(Tensor& wt, const Tensor& gt, Tensor& mt, Tensor& vt, const AdamWUpdate& u) {
  for (const Tensor* t : {static_cast<const Tensor*>(&wt), &gt, static_cast<const Tensor*>(&mt), static_cast<const Tensor*>(&vt)})
    require_f32(*t, "adamw");
  const int64_t n = wt.numel();
  require(gt.numel() == n && mt.numel() == n && vt.numel() == n, "adamw: tensors of one size expected");
  float* w = wt.data<float>();
  const float* g = gt.data<float>();
  float* m = mt.data<float>();
  float* v = vt.data<float>();
  const float b1 = u.beta1, b2 = u.beta2;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t j = 0; j < n; j++) {
    const float gj = g[j];
    m[j] = b1 * m[j] + (1.0f - b1) * gj;
    v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
    const float denom = std::sqrt(v[j]) * u.inv_bc2_sqrt + u.eps;
    w[j] = w[j] * u.decay - u.step_size * m[j] / denom;
  }
}

double sum_squares(const Tensor& x, double total) {
  require_f32(x, "sum_squares");
  const float* g = x.data<float>();
  const int64_t n = x.numel();
  const int64_t chunk = 16384, nchunks = (n + chunk - 1) / chunk;
  std::vector<double> part(size_t(nchunks), 0.0);
#pragma omp parallel for schedule(static) if (nchunks > 2)
  for (int64_t c = 0; c < nchunks; c++) {
    double s = 0;
    for (int64_t j = c * chunk; j < std::min(n, (c + 1) * chunk); j++) s += double(g[j]) * double(g[j]);
    part[size_t(c)] = s;
  }
  for (double s : part) total += s;
  return total;
}

void scale(Tensor& x, float s) {
  require_f32(x, "scale");
  float* g = x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t j = 0; j < n; j++) g[j] *= s;
}

bool all_finite(const Tensor& x) {
  require_f32(x, "all_finite");
  const float* g = x.data<float>();
  const int64_t n = x.numel();
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (n > 32768)
  for (int64_t j = 0; j < n; j++) bad |= !std::isfinite(g[j]);
  return !bad;
}

}  // namespace oar::cpu
