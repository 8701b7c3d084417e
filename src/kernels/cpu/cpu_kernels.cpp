// The CPU implementation of the kernel interface. Work is split over the cores with OpenMP (the same runtime
// oneDNN uses, so the two share one thread pool). Inner loops come from the ISA table chosen at start-up.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/cpu_info.h"
#include "core/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/onednn_gemm.h"
#include "kernels/kernels.h"

namespace oar {
namespace {

using cpu::IsaOps;
using cpu::a8w8_value;

void require(bool ok, const char* what) {
  if (!ok) throw Error(std::string("cpu kernels: ") + what);
}

// Runs fn(begin, end) over [0, n) split into one contiguous range per thread, each range a multiple of `align`.
// `cost` is the work per item (in multiply-adds or so): below ~16k in total, waking other threads costs more
// than it saves.
template <class F>
void parallel_ranges(int64_t n, int64_t align, F fn, int64_t cost = 1) {
  int nt = omp_get_max_threads();
  if (n <= align || nt == 1 || omp_in_parallel() || n * cost < (int64_t(1) << 14)) {
    fn(int64_t(0), n);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num();
    int T = omp_get_num_threads();
    int64_t chunks = (n + align - 1) / align;
    int64_t b = chunks * t / T * align, e = std::min(n, chunks * (t + 1) / T * align);
    if (b < e) fn(b, e);
  }
}

class CpuKernels final : public Kernels {
 public:
  CpuKernels() : isa_(cpu::isa_best()) {}
  const char* name() const override { return isa_.name; }

  void linear(const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y) override {
    linear_weights(x, {&checked(w)}, {bias}, {&y});
  }

  void linear_multi(const Tensor& x, const std::vector<const Weight*>& ws, const std::vector<const Tensor*>& biases,
                    const std::vector<Tensor*>& ys) override {
    for (const Weight* w : ws) checked(*w);
    linear_weights(x, ws, biases, ys);
  }

  void linear_swiglu(const Tensor& x, const Weight& w_gate, const Weight& w_up, Tensor& gate, Tensor& up) override {
    const std::vector<const Weight*> ws = {&checked(w_gate), &checked(w_up)};
    const int64_t K = w_gate.in;
    const int64_t M = x.numel() / K;
    const std::vector<Tensor*> ys = {&gate, &up};
    if (M > gemv_row_limit(ws) || w_up.out != w_gate.out) {
      linear_weights(x, ws, {nullptr, nullptr}, ys);
      swiglu(gate, up, gate);
      return;
    }
    check_linear(x, ws, {nullptr, nullptr}, ys);
    gemv_all(x.data<float>(), M, K, ws, {nullptr, nullptr}, ys, /*swiglu_pairs=*/true);
  }

  // ys[i] = x · ws[i]^T (+ biases[i]) for checked weights.
  void linear_weights(const Tensor& x, const std::vector<const Weight*>& ws, const std::vector<const Tensor*>& biases,
                      const std::vector<Tensor*>& ys) {
    check_linear(x, ws, biases, ys);
    const int64_t K = ws[0]->in;
    const int64_t M = x.numel() / K;
    const float* xp = x.data<float>();
    // Prefill and larger batches: the GEMM library, one product at a time. Where the GEMV stops paying off was
    // measured with bench_engine (TinyLlama shape, 2 Zen 4 cores): with bf16 weights the GEMV's work per weight
    // grows with the rows until oneDNN's GEMM is faster from 4 rows (plain AVX-512: from 3; 8 rows: 150 ms per
    // step against 215 and 293 ms).
    if (M > gemv_row_limit(ws)) {
      bool converted = false;
      for (size_t i = 0; i < ws.size(); i++) {
        const Weight& w = *ws[i];
        float* yp = ys[i]->data<float>();
        const float* bp = biases[i] ? biases[i]->data<float>() : nullptr;
        bool done;
        if (w.format == WeightFormat::F32) {
          done = cpu::onednn_gemm(M, w.out, K, DType::F32, xp, K, w.data.data<float>(), K, true, yp, w.out, bp);
        } else if (w.format == WeightFormat::A8W8) {
          done = gemm_a8w8(xp, M, w, yp, bp);
        } else if (is_quantized(w.format) || w.format == WeightFormat::F16) {
          done = gemm_dequantized(xp, M, w, yp, bp);
        } else {
          // bf16 x bf16 -> f32 on the AVX512_BF16 units; activations are rounded to bf16 for this product only.
          if (!converted) {
            scratch_bf16_.resize(size_t(M * K));
            parallel_ranges(M, 1, [&](int64_t b, int64_t e) { isa_.f32_to_bf16(xp + b * K, scratch_bf16_.data() + b * K, (e - b) * K); }, K);
            converted = true;
          }
          done = cpu::onednn_gemm(M, w.out, K, DType::BF16, scratch_bf16_.data(), K, w.data.data<uint16_t>(), K, true,
                                  yp, w.out, bp);
        }
        if (!done) gemv_all(xp, M, K, {ws[i]}, {biases[i]}, {ys[i]});
      }
      return;
    }
    gemv_all(xp, M, K, ws, biases, ys);
  }

  // Prefill with quantized or float16 weights (the GEMM library's f16 path needs AVX512_FP16): blocks of weight
  // rows converted to float32 (a few MiB, cache-sized) and each multiplied by the GEMM library into its columns
  // of y. False when the library cannot (then the GEMV runs).
  bool gemm_dequantized(const float* xp, int64_t M, const Weight& w, float* yp, const float* bp) {
    const int64_t K = w.in, N = w.out;
    const int64_t rows = std::max<int64_t>(16, (int64_t(4) << 20) / (K * int64_t(sizeof(float))));
    scratch_f32_.resize(size_t(std::min(rows, N) * K));
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
      const int64_t nb = std::min(rows, N - n0);
      float* d = scratch_f32_.data();
      parallel_ranges(nb, 1, [&](int64_t b, int64_t e) { w.dequantize_rows(n0 + b, n0 + e, d + b * K); }, K);
      if (!cpu::onednn_gemm(M, nb, K, DType::F32, xp, K, d, K, true, yp + n0, N, bp ? bp + n0 : nullptr)) return false;
    }
    return true;
  }

  // a8w8's activations: rows of x as unsigned bytes q + 128, q = round(x / step) clamped to +-127 (PaddleNLP's
  // quant_int8 bounds), with the weight's static step or, where that is 0, each row's max|x| / 127.
  struct A8Activations {
    float act_step = 0;
    std::vector<uint8_t> q;
    std::vector<float> steps;
  };
  static const A8Activations* find_activations(const std::vector<A8Activations>& acts, float act_step) {
    for (const A8Activations& a : acts)
      if (a.act_step == act_step) return &a;
    return nullptr;
  }
  static void quantize_activations(const float* xp, int64_t M, int64_t K, float act_step, A8Activations& a) {
    a.act_step = act_step;
    a.q.resize(size_t(M * K));
    a.steps.resize(size_t(M));
    parallel_ranges(M, 1, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; m++) {
        const float* x = xp + m * K;
        bool finite;
        const float amax = row_absmax(x, K, &finite);
        const float step = act_step > 0 ? act_step : amax / 127.0f;
        const float inv = step > 0 ? 1.0f / step : 0.0f;
        // A row holding inf or NaN gets a NaN step, so its outputs are NaN as a float product's would be.
        a.steps[size_t(m)] = finite ? step : NAN;
        uint8_t* q = a.q.data() + m * K;
        // Clamped first (std::max(-127, NaN) is -127: no float-to-int conversion of a NaN), then rounded to
        // nearest even by adding and subtracting 1.5 * 2^23, which leaves no fraction bits: what nearbyint does
        // in the default rounding mode, but inline and vectorizable (a libm call per input cost ~2% of decode).
        for (int64_t k = 0; k < K; k++) {
          const float v = std::min(127.0f, std::max(-127.0f, x[k] * inv));
          q[k] = uint8_t(int((v + 12582912.0f) - 12582912.0f) + 128);
        }
      }
    }, K);
  }

  // a8w8 prefill: the activations quantized, the integer product u8 x s8 -> s32 by the GEMM library into y's own
  // memory, then a8w8_value per output in place, as the GEMV computes it (the same bits). Only with VNNI: without
  // it oneDNN multiplies u8 by s8 with VPMADDUBSW, whose 16-bit pair sums saturate for activations stored as
  // q + 128 (oneDNN's documented int8 caveat); there the exact GEMV runs. False when the library cannot.
  bool gemm_a8w8(const float* xp, int64_t M, const Weight& w, float* yp, const float* bp) {
    if (!cpu_info().avx512_vnni) return false;
    const int64_t K = w.in, N = w.out;
    quantize_activations(xp, M, K, w.act_step, scratch_a8_);
    static_assert(sizeof(int32_t) == sizeof(float));
    if (!cpu::onednn_gemm_u8s8(M, N, K, scratch_a8_.q.data(), w.data.data<int8_t>(), reinterpret_cast<int32_t*>(yp)))
      return false;
    const int32_t* sums = w.row_sums.data<int32_t>();
    const float* ws = w.scales.data<float>();
    const float* xs = scratch_a8_.steps.data();
    parallel_ranges(M, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b * N; i < e * N; i++) {
        int32_t dot;
        std::memcpy(&dot, yp + i, sizeof dot);  // the int32 the GEMM wrote, read without aliasing it as float
        yp[i] = a8w8_value(dot, sums[i % N], xs[i / N], ws[i % N]) + (bp ? bp[i % N] : 0.0f);
      }
    }, N);
    return true;
  }

  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    const int64_t C = w.numel();
    const int64_t R = x.numel() / C;
    require(w.dtype() == DType::F32, "rmsnorm weight must be float32");
    const float* xp = x.data<float>();
    const float* wp = w.data<float>();
    float* yp = y.data<float>();
    parallel_ranges(R, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) {
        const float* xr = xp + r * C;
        float* yr = yp + r * C;
        // Same order of operations as Hugging Face: x * rsqrt(mean(x^2) + eps), then * weight.
        float inv = 1.0f / std::sqrt(float(isa_.sum_squares(xr, C) / double(C)) + eps);
        for (int64_t i = 0; i < C; i++) yr[i] = wp[i] * (xr[i] * inv);
      }
    }, C);
  }

  void rope(Tensor& x, const int32_t* positions, const RopeTable& tab) override {
    const int64_t T = x.dim(0), heads = x.dim(1), D = x.dim(2), half = D / 2;
    require(half == tab.half_dim, "rope head size does not match its table");
    float* xp = x.data<float>();
    for (int64_t t = 0; t < T; t++)
      require(positions[t] >= 0 && positions[t] < tab.max_positions, "rope position beyond the table (context too long)");
    parallel_ranges(T, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) {
        const float* c = tab.cos.data() + positions[t] * half;
        const float* s = tab.sin.data() + positions[t] * half;
        for (int64_t h = 0; h < heads; h++) {
          float* v = xp + (t * heads + h) * D;
          if (tab.layout == RopeLayout::RotateHalf) {
            for (int64_t i = 0; i < half; i++) {
              float a = v[i], bb = v[i + half];
              v[i] = a * c[i] - bb * s[i];
              v[i + half] = bb * c[i] + a * s[i];
            }
          } else {
            for (int64_t i = 0; i < half; i++) {
              float a = v[2 * i], bb = v[2 * i + 1];
              v[2 * i] = a * c[i] - bb * s[i];
              v[2 * i + 1] = a * s[i] + bb * c[i];
            }
          }
        }
      }
    }, heads * D);
  }

  static float silu_times(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }

  void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) override {
    const int64_t n = gate.numel();
    const float* g = gate.data<float>();
    const float* u = up.data<float>();
    float* o = out.data<float>();
    // An exp costs some 16 multiply-adds: serial, a decode step's 2,048 of them (110M model) took ~35 us, long
    // enough for the other threads to fall asleep between the GEMVs around it (GOMP_SPINCOUNT=10000).
    parallel_ranges(n, 1024, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) o[i] = silu_times(g[i], u[i]);
    }, 16);
  }

  void softmax(Tensor& x) override {
    const int64_t C = x.dim(-1), R = x.numel() / C;
    float* p = x.data<float>();
    parallel_ranges(R, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) softmax_row(p + r * C, C);
    }, C);
  }

  void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) override {
    const int64_t V = table.dim(0), C = table.dim(1);
    float* o = out.data<float>();
    for (int64_t t = 0; t < n; t++) {
      if (ids[t] < 0 || ids[t] >= V)
        throw Error("token id " + std::to_string(ids[t]) + " is outside the vocabulary (size " + std::to_string(V) + ")");
      float* row = o + t * C;
      switch (table.dtype()) {
        case DType::F32: std::memcpy(row, table.data<float>() + ids[t] * C, size_t(C) * 4); break;
        case DType::BF16: isa_.bf16_to_f32(table.data<uint16_t>() + ids[t] * C, row, C); break;
        case DType::F16:
          for (int64_t i = 0; i < C; i++) row[i] = f16_to_f32(table.data<uint16_t>()[ids[t] * C + i]);
          break;
        default: throw Error("embedding table dtype not supported");
      }
    }
  }

  void add_inplace(Tensor& x, const Tensor& y) override {
    const int64_t n = x.numel();
    float* a = x.data<float>();
    const float* b = y.data<float>();
    parallel_ranges(n, 1024, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; i++) a[i] += b[i];
    });
  }

  void kv_write(const KVLayerView& c, const Tensor& k, const Tensor& v, const std::vector<SeqSlice>& seqs) override {
    if (c.dtype != KVCacheDType::F32) return kv_write_int8(c, k, v, seqs);
    const int64_t G = c.kv_heads, D = c.head_dim, B = c.block_size;
    const float* kp = k.data<float>();
    const float* vp = v.data<float>();
    for (const SeqSlice& s : seqs) {
      for (int64_t i = 0; i < s.n; i++) {
        int64_t pos = s.pos0 + i;
        int64_t bi = pos / B;
        require(bi < s.num_table_blocks, "kv cache: sequence is longer than its block table");
        int64_t block = s.block_table[bi];
        require(block >= 0 && block < c.num_blocks, "kv cache: block id out of range");
        for (int64_t g = 0; g < G; g++) {
          size_t dst = size_t(((block * G + g) * B + pos % B) * D);
          size_t src = size_t(((s.row0 + i) * G + g) * D);
          std::memcpy(c.k + dst, kp + src, size_t(D) * 4);
          std::memcpy(c.v + dst, vp + src, size_t(D) * 4);
        }
      }
    }
  }

  void attention(const Tensor& q, const KVLayerView& c, const std::vector<SeqSlice>& seqs, Tensor& out) override {
    const int64_t H = q.dim(1), D = q.dim(2), G = c.kv_heads;
    require(H % G == 0 && D == c.head_dim, "attention: head counts or sizes disagree with the cache");
    const float scale = 1.0f / std::sqrt(float(D));
    for (const SeqSlice& s : seqs) {
      if (s.n >= 16) attention_gemm(q, c, s, out, scale);
      else if (c.dtype != KVCacheDType::F32) attention_rows_int8(q, c, s, out, scale);
      else attention_rows(q, c, s, out, scale);
    }
  }

 private:
  const IsaOps& isa_;
  static constexpr int64_t kGemvRows = 8;  // up to this many rows, stream the weights once through the GEMV
  static constexpr int64_t kGemvRowsBf16Dot = 3;  // bf16 weights through gemv_bf16_bf16
  static constexpr int64_t kGemvRowsBf16 = 2;     // bf16 weights through gemv_bf16
  // int8/int4 weights: the GEMM path dequantizes every weight for each product, which costs more than the
  // GEMV's extra FMAs up to the serving engine's 16 decodes per step (oar serve, 16 clients, TinyLlama Q4_0:
  // 17.3 output tok/s with the GEMV up to 8 rows, 35.1 up to 16, 35.0 up to 32).
  static constexpr int64_t kGemvRowsQuantized = 16;

  // A weight in a format these kernels run, its data matching its format and shape.
  static const Weight& checked(const Weight& w) {
    const bool i4 = w.format == WeightFormat::Int4;
    const bool i8 = w.format == WeightFormat::Int8 || w.format == WeightFormat::A8W8;
    const DType want = i8 ? DType::I8 : i4 ? DType::U8 : dense_dtype(w.format);
    require(w.data.ndim() == 2 && w.data.dim(0) == w.out && w.data.dim(1) == (i4 ? w.in / 2 : w.in) &&
                w.data.is_contiguous() && w.data.dtype() == want, "linear: a weight's data does not match its format and shape");
    if (i8)
      require(w.scales.dtype() == DType::F32 && w.scales.numel() == w.out, "linear: an int8 weight needs one float32 scale per output row");
    if (w.format == WeightFormat::A8W8)  // 255 * 127 * 65536 still fits the int32 dot
      require(w.row_sums.dtype() == DType::I32 && w.row_sums.numel() == w.out && w.in <= 65536 && w.act_step >= 0,
              "linear: an a8w8 weight needs int32 row sums, at most 65536 inputs and a static step >= 0");
    if (i4)
      require(w.in % 32 == 0 && w.group_size > 0 && w.group_size % 32 == 0 && w.in % w.group_size == 0 &&
                  w.scales.dtype() == DType::F32 && w.scales.numel() == w.out * (w.in / w.group_size),
              "linear: an int4 weight needs groups of a multiple of 32 inputs and one float32 scale per group");
    return w;
  }

  static void check_linear(const Tensor& x, const std::vector<const Weight*>& ws,
                           const std::vector<const Tensor*>& biases, const std::vector<Tensor*>& ys) {
    require(x.dtype() == DType::F32 && x.is_contiguous(), "linear expects contiguous float32 activations");
    require(ws.size() == ys.size() && biases.size() == ws.size(), "linear_multi: one output and bias slot per weight");
    const int64_t K = ws[0]->in;
    const int64_t M = x.numel() / K;
    for (size_t i = 0; i < ws.size(); i++) {
      require(ws[i]->in == K, "linear_multi: every weight takes the same input width");
      require(ys[i]->dtype() == DType::F32 && ys[i]->is_contiguous() && ys[i]->numel() == M * ws[i]->out, "linear output shape mismatch");
    }
    require(x.numel() == M * K, "linear input shape mismatch");
  }

  // The most rows a product runs as a GEMV before the GEMM library is faster.
  int64_t gemv_row_limit(const std::vector<const Weight*>& ws) const {
    const bool all_bf16 = std::all_of(ws.begin(), ws.end(), [](const Weight* w) { return w->format == WeightFormat::BF16; });
    const bool all_quantized = std::all_of(ws.begin(), ws.end(), [](const Weight* w) { return is_quantized(w->format); });
    if (all_quantized) return kGemvRowsQuantized;
    return !all_bf16 ? kGemvRows : isa_.gemv_bf16_bf16 ? kGemvRowsBf16Dot : kGemvRowsBf16;
  }

  // Decode: every weight row of every matrix streamed once for all M rows, in chunks of about 128 KiB handed out
  // dynamically (see gemv_all). History: with libgomp's default spin (300,000) a static schedule, one contiguous
  // share per thread, read about 5% more than dynamic on a quiet AVX-512 machine (bench_llama, bf16 decode:
  // 89.0-90.0% against 83.7-87.1% of the roofline). With oar's 10,000 spins the static shares' imbalance made
  // threads sleep and wake in every GEMV; dynamic was measured equal or faster for float32 decode on AVX2, quiet
  // and busy (BENCHMARKS.md), but bf16 decode on AVX-512 has not been re-measured under it.
  // ys[i] = x · ws[i]^T (+ biases[i]) as GEMVs in 128 KiB chunks of weight rows. swiglu_pairs: ws = {gate, up}
  // of one shape; each chunk covers the same rows of both and ends with ys[0] = silu(ys[0]) * ys[1] on them.
  void gemv_all(const float* xp, int64_t M, int64_t K, const std::vector<const Weight*>& ws,
                const std::vector<const Tensor*>& biases, const std::vector<Tensor*>& ys, bool swiglu_pairs = false) {
    struct Chunk { int32_t mat; int64_t n0, n1; };
    std::vector<Chunk> chunks;
    int64_t total = 0;
    for (size_t i = 0; i < (swiglu_pairs ? 1 : ws.size()); i++) {
      const int64_t N = ws[i]->out;
      const int64_t rows = std::max<int64_t>(16, (int64_t(128) << 10) / (K * int64_t(dtype_size(ws[i]->data.dtype()))));
      for (int64_t n = 0; n < N; n += rows) chunks.push_back({int32_t(i), n, std::min(N, n + rows)});
      total += N * K * M * (swiglu_pairs ? 2 : 1);
    }
    // With a bf16 dot-product instruction, the activations are rounded to bf16 once here, not per weight row.
    thread_local std::vector<uint16_t> xb;
    const bool dp = isa_.gemv_bf16_bf16 != nullptr &&
                    std::any_of(ws.begin(), ws.end(), [](const Weight* w) { return w->format == WeightFormat::BF16; });
    if (dp) {
      xb.resize(size_t(M * K));
      isa_.f32_to_bf16(xp, xb.data(), M * K);
    }
    const uint16_t* xbp = xb.data();  // a pointer: inside the parallel loop, `xb` would name each thread's own copy
    // a8w8: the activations quantized once per distinct static step (q/k/v share one) before the products.
    thread_local std::vector<A8Activations> acts;
    acts.clear();
    for (const Weight* w : ws)
      if (w->format == WeightFormat::A8W8 && !find_activations(acts, w->act_step)) {
        acts.emplace_back();
        quantize_activations(xp, M, K, w->act_step, acts.back());
      }
    const std::vector<A8Activations>* actsp = &acts;
    auto product = [&](size_t mat, int64_t n0, int64_t n1) {
      const Weight& w = *ws[mat];
      float* yp = ys[mat]->data<float>();
      const int64_t N = w.out;
      if (w.format == WeightFormat::F32) isa_.gemv_f32(xp, M, K, w.data.data<float>(), K, n0, n1, yp, N);
      else if (w.format == WeightFormat::Int8)
        isa_.gemv_i8(xp, M, K, w.data.data<int8_t>(), w.scales.data<float>(), K, n0, n1, yp, N);
      else if (w.format == WeightFormat::Int4)
        isa_.gemv_i4(xp, M, K, w.data.data<uint8_t>(), w.scales.data<float>(), K, w.group_size, n0, n1, yp, N);
      else if (w.format == WeightFormat::A8W8) {
        const A8Activations& a = *find_activations(*actsp, w.act_step);
        isa_.gemv_a8w8(a.q.data(), a.steps.data(), M, K, w.data.data<int8_t>(), w.row_sums.data<int32_t>(),
                       w.scales.data<float>(), K, n0, n1, yp, N);
      } else if (w.format == WeightFormat::F16) isa_.gemv_f16(xp, M, K, w.data.data<uint16_t>(), K, n0, n1, yp, N);
      else if (dp) isa_.gemv_bf16_bf16(xbp, M, K, w.data.data<uint16_t>(), K, n0, n1, yp, N);
      else isa_.gemv_bf16(xp, M, K, w.data.data<uint16_t>(), K, n0, n1, yp, N);
      if (const Tensor* b = biases[mat])
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = n0; n < n1; n++) yp[m * N + n] += b->data<float>()[n];
    };
    auto run = [&](const Chunk& c) {
      if (!swiglu_pairs) return product(size_t(c.mat), c.n0, c.n1);
      product(0, c.n0, c.n1);
      product(1, c.n0, c.n1);
      const int64_t N = ws[0]->out;
      float* g = ys[0]->data<float>();
      const float* u = ys[1]->data<float>();
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = c.n0; n < c.n1; n++) g[m * N + n] = silu_times(g[m * N + n], u[m * N + n]);
    };
    const int64_t nc = int64_t(chunks.size());
    if (total < (int64_t(1) << 15) || omp_get_max_threads() == 1 || omp_in_parallel()) {
      for (const Chunk& c : chunks) run(c);
      return;
    }
    // Dynamic: threads take 128 KiB chunks as they go, so they finish within one chunk of each other (~5 us)
    // instead of one waiting out the other's static share. On a quiet machine that wait outlasted libgomp's spin
    // (GOMP_SPINCOUNT=10000 is ~30 us here) and cost a sleep and a wake per GEMV; on a busy one, a descheduled
    // thread's share is taken over by the others. Each chunk writes whole rows, so results do not change.
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < nc; i++) run(chunks[size_t(i)]);
  }
  std::vector<uint16_t> scratch_bf16_;
  std::vector<float> scratch_f32_;  // gemm_dequantized's dequantized block
  A8Activations scratch_a8_;        // gemm_a8w8's quantized activations

  static void softmax_row(float* p, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::max(mx, p[i]);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
      p[i] = std::exp(p[i] - mx);
      sum += p[i];
    }
    float inv = float(1.0 / sum);
    for (int64_t i = 0; i < n; i++) p[i] *= inv;
  }

  const float* key_at(const KVLayerView& c, const SeqSlice& s, int64_t g, int64_t pos, bool value) const {
    int64_t block = s.block_table[pos / c.block_size];
    size_t off = size_t(((block * c.kv_heads + g) * c.block_size + pos % c.block_size) * c.head_dim);
    return (value ? c.v : c.k) + off;
  }

  // Few queries (decode): one score row per (query, head), keys read through the block table in place.
  void attention_rows(const Tensor& q, const KVLayerView& c, const SeqSlice& s, Tensor& out, float scale) {
    const int64_t H = q.dim(1), D = q.dim(2), G = c.kv_heads, rep = H / G, B = c.block_size;
    const float* qp = q.data<float>();
    float* op = out.data<float>();
    // One work item per (query row, kv head): the group's `rep` query heads are consecutive rows of q, so each
    // key and value row is read once for all of them, block by block through the block table.
    const int64_t work = s.n * G;
    parallel_ranges(work, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scores;
      for (int64_t w = b; w < e; w++) {
        const int64_t i = w / G, g = w % G;
        const int64_t L = s.pos0 + i + 1;  // causal: keys 0 .. pos0+i
        scores.resize(size_t(rep * L));
        const float* qg = qp + ((s.row0 + i) * H + g * rep) * D;
        float* og = op + ((s.row0 + i) * H + g * rep) * D;
        for (int64_t j0 = 0; j0 < L; j0 += B) {
          const int64_t nk = std::min(B, L - j0);
          const int64_t block = s.block_table[j0 / B];
          isa_.dot_rows(qg, rep, D, c.k + ((block * G + g) * B) * D, nk, D, scores.data() + j0, L);
        }
        for (int64_t a = 0; a < rep; a++) {
          float* row = scores.data() + a * L;
          for (int64_t j = 0; j < L; j++) row[j] *= scale;
          softmax_row(row, L);
        }
        std::fill(og, og + rep * D, 0.0f);
        for (int64_t j0 = 0; j0 < L; j0 += B) {
          const int64_t nk = std::min(B, L - j0);
          const int64_t block = s.block_table[j0 / B];
          isa_.axpy_rows(scores.data() + j0, rep, L, c.v + ((block * G + g) * B) * D, nk, D, og, D);
        }
      }
    }, (s.pos0 + s.n) * D * rep);
  }

  // Many queries (prefill): gather the group's keys and values, then two GEMMs per head (scores, weighted sum).
  void attention_gemm(const Tensor& q, const KVLayerView& c, const SeqSlice& s, Tensor& out, float scale) {
    const int64_t H = q.dim(1), D = q.dim(2), G = c.kv_heads, rep = H / G;
    const int64_t L = s.pos0 + s.n;
    const float* qp = q.data<float>();
    float* op = out.data<float>();
    kbuf_.resize(size_t(L * D));
    vbuf_.resize(size_t(L * D));
    sbuf_.resize(size_t(s.n * L));
    for (int64_t g = 0; g < G; g++) {
      if (c.dtype != KVCacheDType::F32) {
        for (int64_t j = 0; j < L; j++) {
          int64_t cell = cell_of(c, s, g, j);
          dequantize_row(c.k8 + cell * D, int8_scale(c, c.k_scale, cell, g), kbuf_.data() + j * D, D);
          dequantize_row(c.v8 + cell * D, int8_scale(c, c.v_scale, cell, g), vbuf_.data() + j * D, D);
        }
      } else {
        for (int64_t j = 0; j < L; j++) {
          std::memcpy(kbuf_.data() + j * D, key_at(c, s, g, j, false), size_t(D) * 4);
          std::memcpy(vbuf_.data() + j * D, key_at(c, s, g, j, true), size_t(D) * 4);
        }
      }
      for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
        const float* qh = qp + (s.row0 * H + h) * D;
        // S[n, L] = Q_h[n, D] · K^T
        if (!cpu::onednn_gemm(s.n, L, D, DType::F32, qh, H * D, kbuf_.data(), D, true, sbuf_.data(), L, nullptr)) {
          if (c.dtype != KVCacheDType::F32) attention_rows_int8(q, c, s, out, scale);
          else attention_rows(q, c, s, out, scale);
          return;
        }
        float* S = sbuf_.data();
        parallel_ranges(s.n, 1, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; i++) {
            float* row = S + i * L;
            int64_t valid = s.pos0 + i + 1;
            for (int64_t j = 0; j < valid; j++) row[j] *= scale;
            softmax_row(row, valid);
            std::fill(row + valid, row + L, 0.0f);  // causal mask
          }
        }, L);
        // O_h[n, D] = P[n, L] · V[L, D]
        float* oh = op + (s.row0 * H + h) * D;
        cpu::onednn_gemm(s.n, D, L, DType::F32, S, L, vbuf_.data(), D, false, oh, H * D, nullptr);
      }
    }
  }

  std::vector<float> kbuf_, vbuf_, sbuf_;

  // ---- int8 KV cache: int8 values and a float step (absmax / 127) per (token, kv head), or per kv head ----

  // Index of position pos of sequence s, kv head g, in [num_blocks, G, block_size].
  static int64_t cell_of(const KVLayerView& c, const SeqSlice& s, int64_t g, int64_t pos) {
    return (int64_t(s.block_table[pos / c.block_size]) * c.kv_heads + g) * c.block_size + pos % c.block_size;
  }
  static float int8_scale(const KVLayerView& c, const float* scales, int64_t cell, int64_t g) {
    return c.dtype == KVCacheDType::Int8Static ? scales[g] : scales[cell];
  }
  static void dequantize_row(const int8_t* q, float step, float* out, int64_t D) {
    for (int64_t i = 0; i < D; i++) out[i] = float(q[i]) * step;
  }
  // Symmetric int8: round to nearest, clamp to +-127 (static scales may be exceeded; NaN becomes 127).
  static void quantize_row(const float* x, int64_t D, bool dynamic, float* step_io, int8_t* q) {
    float step = *step_io;
    if (dynamic) {
      float amax = 0;
      for (int64_t i = 0; i < D; i++) amax = std::max(amax, std::fabs(x[i]));
      step = amax / 127.0f;
      *step_io = step;
    }
    const float inv = step > 0 ? 1.0f / step : 0.0f;
    for (int64_t i = 0; i < D; i++) q[i] = int8_t(std::max(-127.0f, std::min(127.0f, std::nearbyint(x[i] * inv))));
  }

  void kv_write_int8(const KVLayerView& c, const Tensor& k, const Tensor& v, const std::vector<SeqSlice>& seqs) {
    const int64_t G = c.kv_heads, D = c.head_dim, B = c.block_size;
    require(c.k8 && c.v8 && c.k_scale && c.v_scale, "kv cache: int8 view without values or scales");
    const float* kp = k.data<float>();
    const float* vp = v.data<float>();
    const bool dyn = c.dtype == KVCacheDType::Int8Dynamic;
    for (const SeqSlice& s : seqs) {
      for (int64_t i = 0; i < s.n; i++) {
        int64_t pos = s.pos0 + i;
        require(pos / B < s.num_table_blocks, "kv cache: sequence is longer than its block table");
        int64_t block = s.block_table[pos / B];
        require(block >= 0 && block < c.num_blocks, "kv cache: block id out of range");
        for (int64_t g = 0; g < G; g++) {
          int64_t cell = (block * G + g) * B + pos % B;
          size_t src = size_t(((s.row0 + i) * G + g) * D);
          float* ks = dyn ? c.k_scale + cell : c.k_scale + g;
          float* vs = dyn ? c.v_scale + cell : c.v_scale + g;
          quantize_row(kp + src, D, dyn, ks, c.k8 + cell * D);
          quantize_row(vp + src, D, dyn, vs, c.v8 + cell * D);
        }
      }
    }
  }

  // Few queries over an int8 cache, shaped like attention_rows: one work item per (query row, kv head) serves
  // the group's query heads; each block's keys (then values) are dequantized once into a float buffer and go
  // through the same block-wise dot/axpy as the float32 path.
  void attention_rows_int8(const Tensor& q, const KVLayerView& c, const SeqSlice& s, Tensor& out, float scale) {
    const int64_t H = q.dim(1), D = q.dim(2), G = c.kv_heads, rep = H / G, B = c.block_size;
    const float* qp = q.data<float>();
    float* op = out.data<float>();
    parallel_ranges(s.n * G, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scores, blk(static_cast<size_t>(B * D));
      // Dequantizes the first nk rows of kv head g in `block` (values v8/k8 with their scales) into blk.
      auto load = [&](const int8_t* vals, const float* scales, int64_t block, int64_t g, int64_t nk) {
        for (int64_t j = 0; j < nk; j++) {
          const int64_t cell = (block * G + g) * B + j;
          dequantize_row(vals + cell * D, int8_scale(c, scales, cell, g), blk.data() + j * D, D);
        }
      };
      for (int64_t w = b; w < e; w++) {
        const int64_t i = w / G, g = w % G;
        const int64_t L = s.pos0 + i + 1;  // causal: keys 0 .. pos0+i
        scores.resize(size_t(rep * L));
        const float* qg = qp + ((s.row0 + i) * H + g * rep) * D;
        float* og = op + ((s.row0 + i) * H + g * rep) * D;
        for (int64_t j0 = 0; j0 < L; j0 += B) {
          const int64_t nk = std::min(B, L - j0);
          load(c.k8, c.k_scale, s.block_table[j0 / B], g, nk);
          isa_.dot_rows(qg, rep, D, blk.data(), nk, D, scores.data() + j0, L);
        }
        for (int64_t a = 0; a < rep; a++) {
          float* row = scores.data() + a * L;
          for (int64_t j = 0; j < L; j++) row[j] *= scale;
          softmax_row(row, L);
        }
        std::fill(og, og + rep * D, 0.0f);
        for (int64_t j0 = 0; j0 < L; j0 += B) {
          const int64_t nk = std::min(B, L - j0);
          load(c.v8, c.v_scale, s.block_table[j0 / B], g, nk);
          isa_.axpy_rows(scores.data() + j0, rep, L, blk.data(), nk, D, og, D);
        }
      }
    }, (s.pos0 + s.n) * D * rep);
  }
};

}  // namespace

std::unique_ptr<Kernels> make_cpu_kernels() { return std::make_unique<CpuKernels>(); }

}  // namespace oar
