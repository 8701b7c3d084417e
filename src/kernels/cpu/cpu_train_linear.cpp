// The CPU's products, conversions and adds of the training kernels (cpu_train_layers.h): matmul, convert, add,
// the bias and the LoRA backward.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_train_common.h"
#include "kernels/cpu/cpu_train_gemm.h"
#include "kernels/cpu/cpu_train_layers.h"

namespace oar::cpu {

void matmul(const Tensor& a, const Tensor& b, Tensor& c, float alpha, float beta) {
  require(a.dtype() == b.dtype() && is_compute_dtype(a.dtype()), "matmul operands must share a dtype (float32, bfloat16, float16)");
  require(c.dtype() == DType::F32 && c.ndim() == 2 && (c.strides()[1] == 1 || c.dim(1) == 1), "matmul output must be float32 with contiguous rows");
  const int64_t M = a.dim(0), K = a.dim(1), N = b.dim(1);
  if (b.dim(0) != K || c.dim(0) != M || c.dim(1) != N)
    bad("matmul shapes " + shape_str(a.shape()) + " x " + shape_str(b.shape()) + " -> " + shape_str(c.shape()));
  Operand A = operand(a, "a"), B = operand(b, "b");
  const int64_t ldc = c.dim(0) == 1 ? std::max<int64_t>(N, 1) : std::max<int64_t>(c.strides()[0], N);
  gemm(A.trans, B.trans, M, N, K, alpha, A.p, A.ld, B.p, B.ld, beta, c.data<float>(), ldc, a.dtype());
}

void convert(const TrainIsa& ti, const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  require(dst.numel() == n && src.is_contiguous() && dst.is_contiguous(), "convert: sizes differ or not contiguous");
  if (src.dtype() == DType::F32) {
    require(is_compute_dtype(dst.dtype()), "convert: float32 converts to float32, bfloat16 or float16");
    const float* s = src.data<float>();
    parallel_ranges(n, [&](int64_t b, int64_t e) { store_row(s + b, dst, b, e - b, ti.isa); });
    return;
  }
  require(dst.dtype() == DType::F32 && (src.dtype() == DType::BF16 || src.dtype() == DType::F16), "convert: unsupported dtypes");
  const uint16_t* s = src.data<uint16_t>();
  float* d = dst.data<float>();
  if (src.dtype() == DType::BF16) {
    parallel_ranges(n, [&](int64_t b, int64_t e) { ti.isa.bf16_to_f32(s + b, d + b, e - b); });
  } else {
    parallel_ranges(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) d[i] = f16_to_f32(s[i]);
    });
  }
}

void add(Tensor& x, const Tensor& y) {
  require(x.dtype() == DType::F32 && y.dtype() == DType::F32 && x.numel() == y.numel(), "add: float32 tensors of one size");
  float* a = x.data<float>();
  const float* b = y.data<float>();
  parallel_ranges(x.numel(), [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; i++) a[i] += b[i];
  });
}

void add_bias(Tensor& y, const Tensor& bias) {
  const int64_t N = bias.numel(), R = y.numel() / N;
  float* yp = y.data<float>();
  const float* bp = bias.data<float>();
  parallel_ranges(R, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; r++)
      for (int64_t n = 0; n < N; n++) yp[r * N + n] += bp[n];
  }, N);
}

void bias_backward(const Tensor& dy, Tensor& dbias) {
  const int64_t N = dbias.numel(), R = dy.numel() / N;
  const float* d = dy.data<float>();
  const int parts = num_ranges(R, N);
  std::vector<float> partial(size_t(parts * N), 0.0f);
  parallel_ranges_indexed(R, parts, [&](int p, int64_t b, int64_t e) {
    float* acc = partial.data() + p * N;
    for (int64_t r = b; r < e; r++)
      for (int64_t n = 0; n < N; n++) acc[n] += d[r * N + n];
  });
  float* db = dbias.data<float>();
  for (int p = 0; p < parts; p++)
    for (int64_t n = 0; n < N; n++) db[n] += partial[size_t(p * N + n)];
}

namespace {

void check_lora_backward(const Tensor& dy, const Tensor& u, const Tensor& b, const Tensor& du, const Tensor* dB) {
  const int64_t T = dy.dim(0), O = dy.dim(1), r = u.dim(1);
  require(dy.is_contiguous() && u.is_contiguous() && b.is_contiguous() && u.dim(0) == T && b.dim(0) == O &&
              b.dim(1) == r && du.numel() == T * r && du.dtype() == DType::F32 && dy.dtype() == u.dtype() &&
              dy.dtype() == b.dtype() && is_compute_dtype(dy.dtype()) && (!dB || (dB->numel() == O * r && dB->dtype() == DType::F32)),
          "lora_backward shapes");
}

// The LoRA backward's two passes over dy [T, O], per thread (slices of O), before the sums: du_part holds each
// thread's part of du [T, r], dbt the whole of dB^T [r, O] (only when want_dB).
struct LoraPartials {
  int parts;
  std::vector<float> du_part, dbt;
};

// Each thread takes a slice of dy's columns for every row: it forms its part of each du dot product and the whole
// of dB for its columns; the parts of du are added in thread order afterwards.
LoraPartials lora_partials(const IsaOps& isa, const Tensor& dy, const Tensor& u, const Tensor& b, bool want_dB) {
  const int64_t T = dy.dim(0), O = dy.dim(1), r = u.dim(1);
  const DType dt = dy.dtype();
  // B's columns as float32 rows, u as float32
  const Mat bm{b.raw(), r, false, dt}, um{u.raw(), r, false, dt};
  std::vector<float> Bt(size_t(r * O)), uf(size_t(T * r));
  for (int64_t o = 0; o < O; o++)
    for (int64_t k = 0; k < r; k++) Bt[size_t(k * O + o)] = elem(bm, o, k);
  for (int64_t t = 0; t < T; t++)
    for (int64_t k = 0; k < r; k++) uf[size_t(t * r + k)] = elem(um, t, k);
  const int parts = num_ranges(O, T * r);
  LoraPartials lp{parts, std::vector<float>(size_t(parts * T * r), 0.0f), std::vector<float>(size_t(r * O), 0.0f)};
  parallel_ranges_indexed(O, parts, [&](int p, int64_t o0, int64_t o1) {
    thread_local std::vector<float> buf;
    const int64_t w = o1 - o0;
    float* dp = lp.du_part.data() + size_t(p) * size_t(T * r);
    for (int64_t t = 0; t < T; t++) {
      const float* x = fetch(dy.raw(), t * O + o0, w, dt, buf);
      for (int64_t k = 0; k < r; k++) {
        dp[t * r + k] = isa.dot(x, Bt.data() + k * O + o0, w);
        if (want_dB) isa.axpy(uf[size_t(t * r + k)], x, lp.dbt.data() + k * O + o0, w);
      }
    }
  });
  return lp;
}

}  // namespace

void lora_backward(const TrainIsa& ti, const Tensor& dy, const Tensor& u, const Tensor& b, float scaling, Tensor& du,
                   Tensor* dB) {
  check_lora_backward(dy, u, b, du, dB);
  const int64_t T = dy.dim(0), O = dy.dim(1), r = u.dim(1);
  const LoraPartials lp = lora_partials(ti.isa, dy, u, b, dB != nullptr);
  float* d = du.data<float>();
  for (int64_t i = 0; i < T * r; i++) {
    float s = 0;
    for (int p = 0; p < lp.parts; p++) s += lp.du_part[size_t(p) * size_t(T * r) + size_t(i)];
    d[i] = scaling * s;
  }
  if (dB) {
    float* g = dB->data<float>();
    for (int64_t o = 0; o < O; o++)
      for (int64_t k = 0; k < r; k++) g[o * r + k] += scaling * lp.dbt[size_t(k * O + o)];
  }
}

}  // namespace oar::cpu
