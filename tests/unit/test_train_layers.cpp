// The training kernels and layers, each backward against finite differences of a float64 reference of its
// forward (written here from the math, independently of the kernels), on tiny shapes.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <random>

#include "core/error.h"
#include "kernels/training_kernels.h"
#include "train/layers.h"

using namespace oar;

namespace {

TrainKernels& K() { return train_kernels_for(Device::CPU); }

std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

Tensor to_tensor(const std::vector<double>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F32);
  for (size_t i = 0; i < v.size(); i++) t.data<float>()[i] = float(v[i]);
  return t;
}

// The float32 values of v, back as doubles (so the reference sees exactly the kernel's inputs).
std::vector<double> as_f32(std::vector<double> v) {
  for (auto& x : v) x = double(float(x));
  return v;
}

// max |got - want| / max |want|
double rel_err(const Tensor& got, const std::vector<double>& want) {
  double mx = 0, d = 0;
  for (size_t i = 0; i < want.size(); i++) {
    mx = std::max(mx, std::fabs(want[i]));
    d = std::max(d, std::fabs(double(got.item_f32(int64_t(i))) - want[i]));
  }
  return d / std::max(mx, 1e-30);
}

// Central differences of f at x, for the coordinates `which` (all when empty).
std::vector<double> numeric_grad(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x,
                                 const std::vector<size_t>& which = {}, double eps = 1e-5) {
  std::vector<double> g(x.size(), 0.0);
  auto one = [&](size_t i) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double a = f(x);
    x[i] = x0 - eps;
    const double b = f(x);
    x[i] = x0;
    g[i] = (a - b) / (2 * eps);
  };
  if (which.empty())
    for (size_t i = 0; i < x.size(); i++) one(i);
  else
    for (size_t i : which) one(i);
  return g;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

// Max error over a subset of coordinates.
double rel_err_at(const Tensor& got, const std::vector<double>& want, const std::vector<size_t>& which) {
  double mx = 0, d = 0;
  for (size_t i : which) {
    mx = std::max(mx, std::fabs(want[i]));
    d = std::max(d, std::fabs(double(got.item_f32(int64_t(i))) - want[i]));
  }
  return d / std::max(mx, 1e-30);
}

}  // namespace

// Columns [0, n) of a row-major [rows, cols] tensor, as a strided view.
Tensor first_cols(const Tensor& t, int64_t n) { return t.transpose(0, 1).slice0(0, n).transpose(0, 1); }

// ---- matmul ----

// Every transpose combination on strided views (leading dimension wider than the matrix), alpha and beta, float32
// and bfloat16 (operands rounded the same way in the reference) and emulated float16, against float64 products.
// Shapes: oneDNN's path, and each small-dimension path (LoRA's rank: small N, small M, small K).
TEST(TrainKernels, MatmulTransposesStridesAlphaBeta) {
  struct Dims { int64_t M, N, Kd; };
  for (Dims dims : {Dims{40, 36, 44}, Dims{33, 9, 21}, Dims{8, 30, 27}, Dims{25, 23, 7}})
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (float beta : {0.0f, 1.0f}) {
          const int64_t M = dims.M, N = dims.N, Kd = dims.Kd;
          auto av = randn(size_t(std::max(Kd * (M + 3), M * (Kd + 3))), 1 + ta);
          auto bv = randn(size_t(std::max(Kd * (N + 3), N * (Kd + 1))), 3 + tb);
          // round to the operand dtype so the reference multiplies the same values
          for (auto* v : {&av, &bv})
            for (auto& x : *v)
              x = dt == DType::BF16 ? double(bf16_to_f32(f32_to_bf16(float(x))))
                  : dt == DType::F16 ? double(f16_to_f32(f32_to_f16(float(x)))) : double(float(x));
          Tensor abuf = to_tensor(av, {int64_t(av.size())}).to(dt), bbuf = to_tensor(bv, {int64_t(bv.size())}).to(dt);
          Tensor a = ta ? abuf.slice0(0, Kd * (M + 2)).view({Kd, M + 2}).transpose(0, 1).slice0(0, M)
                        : first_cols(abuf.slice0(0, M * (Kd + 3)).view({M, Kd + 3}), Kd);
          Tensor b = tb ? bbuf.slice0(0, N * (Kd + 1)).view({N, Kd + 1}).transpose(0, 1).slice0(0, Kd)
                        : first_cols(bbuf.slice0(0, Kd * (N + 3)).view({Kd, N + 3}), N);
          auto ea = [&](int64_t m, int64_t k) { return ta ? av[size_t(k * (M + 2) + m)] : av[size_t(m * (Kd + 3) + k)]; };
          auto eb = [&](int64_t k, int64_t n) { return tb ? bv[size_t(n * (Kd + 1) + k)] : bv[size_t(k * (N + 3) + n)]; };
          auto cv = as_f32(randn(size_t(M * (N + 2)), 9));
          Tensor cbuf = to_tensor(cv, {M, N + 2});
          Tensor c = first_cols(cbuf, N);
          K().matmul(a, b, c, 0.5f, beta);
          double err = 0, mx = 0;
          for (int64_t m = 0; m < M; m++) {
            for (int64_t n = 0; n < N; n++) {
              double s = 0;
              for (int64_t k = 0; k < Kd; k++) s += ea(m, k) * eb(k, n);
              s = 0.5 * s + beta * cv[size_t(m * (N + 2) + n)];
              mx = std::max(mx, std::fabs(s));
              err = std::max(err, std::fabs(s - cbuf.item_f32(m * (N + 2) + n)));
            }
            // the padding columns are untouched
            EXPECT_EQ(cbuf.item_f32(m * (N + 2) + N), float(cv[size_t(m * (N + 2) + N)]));
          }
          EXPECT_LE(err / mx, 1e-5) << dtype_name(dt) << " " << M << "x" << N << "x" << Kd << " ta " << ta << " tb " << tb
                                    << " beta " << beta;
        }
}

// Products issued from inside a parallel region run on their own thread and give the same result.
TEST(TrainKernels, MatmulInsideParallelRegion) {
  const int64_t M = 64, N = 48, Kd = 80;
  Tensor a = to_tensor(randn(size_t(M * Kd), 5), {M, Kd}), b = to_tensor(randn(size_t(Kd * N), 6), {Kd, N});
  Tensor want = Tensor::empty({M, N}, DType::F32);
  K().matmul(a, b, want);
  std::vector<Tensor> got(4);
  for (auto& g : got) g = Tensor::empty({M, N}, DType::F32);
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 4; i++) K().matmul(a, b, got[size_t(i)]);
  for (auto& g : got)
    for (int64_t i = 0; i < M * N; i++) ASSERT_NEAR(g.item_f32(i), want.item_f32(i), 1e-4f);
}

TEST(TrainKernels, MatmulShapeErrors) {
  Tensor a = Tensor::empty({3, 4}, DType::F32), b = Tensor::empty({5, 2}, DType::F32), c = Tensor::empty({3, 2}, DType::F32);
  EXPECT_THROW(K().matmul(a, b, c), Error);
  Tensor bb = Tensor::empty({4, 2}, DType::BF16);
  EXPECT_THROW(K().matmul(a, bb, c), Error);
}

// ---- conversions ----

TEST(TrainKernels, ConvertRoundsAndFloat16Overflows) {
  Tensor x = to_tensor({1.0, 1.00390625, 3.0e5, -7.0e4, 65504.0, 1e-8}, {6});
  Tensor h = Tensor::empty({6}, DType::F16), bf = Tensor::empty({6}, DType::BF16);
  K().convert(x, h);
  K().convert(x, bf);
  EXPECT_TRUE(std::isinf(h.item_f32(2)) && h.item_f32(2) > 0);
  EXPECT_TRUE(std::isinf(h.item_f32(3)) && h.item_f32(3) < 0);
  EXPECT_EQ(h.item_f32(4), 65504.0f);
  EXPECT_EQ(bf.item_f32(1), 1.0f);  // 1 + 2^-8 rounds to even in bf16
  EXPECT_EQ(h.item_f32(1), 1.00390625f);
  Tensor back = Tensor::empty({6}, DType::F32);
  K().convert(bf, back);
  EXPECT_EQ(back.item_f32(0), 1.0f);
}

// ---- RMSNorm ----

TEST(TrainLayers, RmsNormForwardBackward) {
  const int64_t R = 5, C = 24;
  const double eps = 1e-5;
  auto x = as_f32(randn(size_t(R * C), 11)), w = as_f32(randn(size_t(C), 12, 0.5)), r = randn(size_t(R * C), 13);
  for (auto& v : w) v = double(float(1.0 + v));
  auto ref = [&](const std::vector<double>& xx, const std::vector<double>& ww) {
    std::vector<double> y(xx.size());
    for (int64_t i = 0; i < R; i++) {
      double ss = 0;
      for (int64_t c = 0; c < C; c++) ss += xx[size_t(i * C + c)] * xx[size_t(i * C + c)];
      const double inv = 1.0 / std::sqrt(ss / double(C) + eps);
      for (int64_t c = 0; c < C; c++) y[size_t(i * C + c)] = ww[size_t(c)] * xx[size_t(i * C + c)] * inv;
    }
    return y;
  };
  Tensor X = to_tensor(x, {R, C}), W = to_tensor(w, {C}), Y = Tensor::empty({R, C}, DType::F32), rstd = Tensor::empty({R}, DType::F32);
  K().rmsnorm_forward(X, W, float(eps), Y, rstd);
  EXPECT_LE(rel_err(Y, ref(x, w)), 2e-6);
  // backward: dx accumulates onto what is there
  auto dx0 = as_f32(randn(size_t(R * C), 14));
  Tensor dX = to_tensor(dx0, {R, C}), dW = Tensor::empty({C}, DType::F32), dY = to_tensor(r, {R, C});
  Tensor dXc = Tensor::empty({R, C}, DType::BF16);
  K().rmsnorm_backward(dY, X, W, rstd, dX, &dW, &dXc);
  for (int64_t i = 0; i < R * C; i++) ASSERT_EQ(dXc.item_f32(i), bf16_to_f32(f32_to_bf16(dX.item_f32(i))));
  auto gx = numeric_grad([&](const std::vector<double>& v) { return dot(ref(v, w), as_f32(r)); }, x);
  auto gw = numeric_grad([&](const std::vector<double>& v) { return dot(ref(x, v), as_f32(r)); }, w);
  for (size_t i = 0; i < gx.size(); i++) gx[i] += dx0[i];
  EXPECT_LE(rel_err(dX, gx), 1e-5);
  EXPECT_LE(rel_err(dW, gw), 1e-5);
}

// ---- RoPE ----

TEST(TrainLayers, RopeBothLayoutsForwardBackward) {
  for (RopeLayout layout : {RopeLayout::RotateHalf, RopeLayout::Interleaved}) {
    LlamaConfig cfg;
    cfg.head_dim = 8;
    cfg.rope_theta = 100.0;
    cfg.rope_layout = layout;
    RopeTable tab = make_rope_table(cfg, 32);
    const int64_t T = 6, Hh = 3, D = 8, half = 4;
    std::vector<int32_t> pos = {0, 1, 2, 7, 0, 31};
    auto x = as_f32(randn(size_t(T * Hh * D), 21)), r = as_f32(randn(size_t(T * Hh * D), 22));
    auto ref = [&](const std::vector<double>& v) {
      std::vector<double> y(v.size());
      for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < Hh; h++)
          for (int64_t i = 0; i < half; i++) {
            const double c = tab.cos[size_t(pos[size_t(t)] * half + i)], s = tab.sin[size_t(pos[size_t(t)] * half + i)];
            const size_t base = size_t((t * Hh + h) * D);
            const size_t i0 = base + size_t(layout == RopeLayout::RotateHalf ? i : 2 * i);
            const size_t i1 = base + size_t(layout == RopeLayout::RotateHalf ? i + half : 2 * i + 1);
            y[i0] = v[i0] * c - v[i1] * s;
            y[i1] = v[i1] * c + v[i0] * s;
          }
      return y;
    };
    Tensor X = to_tensor(x, {T, Hh, D});
    K().rope(X, pos.data(), tab, false);
    EXPECT_LE(rel_err(X, ref(x)), 1e-6);
    Tensor dY = to_tensor(r, {T, Hh, D});
    K().rope(dY, pos.data(), tab, true);
    auto g = numeric_grad([&](const std::vector<double>& v) { return dot(ref(v), r); }, x);
    EXPECT_LE(rel_err(dY, g), 1e-6);
  }
  LlamaConfig cfg;
  cfg.head_dim = 8;
  RopeTable tab = make_rope_table(cfg, 4);
  Tensor X = Tensor::empty({1, 1, 8}, DType::F32);
  int32_t bad = 4;
  EXPECT_THROW(K().rope(X, &bad, tab, false), Error);
}

// ---- SwiGLU ----

TEST(TrainLayers, SwigluForwardBackward) {
  const int64_t n = 3000;  // above the parallel threshold's chunking
  auto g = as_f32(randn(size_t(n), 31, 3.0)), u = as_f32(randn(size_t(n), 32)), r = as_f32(randn(size_t(n), 33));
  g[0] = 95.0;  // exp overflow region
  g[1] = -95.0;
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  std::vector<double> y(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) y[size_t(i)] = silu(g[size_t(i)]) * u[size_t(i)];
  Tensor G = to_tensor(g, {n}), U = to_tensor(u, {n}), Y = Tensor::empty({n}, DType::F32);
  K().swiglu_forward(G, U, Y);
  EXPECT_LE(rel_err(Y, y), 2e-6);
  Tensor Yb = Tensor::empty({n}, DType::BF16);
  K().swiglu_forward(G, U, Yb);
  EXPECT_LE(rel_err(Yb, y), 1e-2);
  Tensor dY = to_tensor(r, {n});
  K().swiglu_backward(dY, G, U, G, U);  // in place, as the model uses it
  std::vector<double> dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; i++) {
    const double gi = g[size_t(i)], s = 1.0 / (1.0 + std::exp(-gi));
    du[size_t(i)] = r[size_t(i)] * silu(gi);
    dg[size_t(i)] = r[size_t(i)] * u[size_t(i)] * (s + gi * s * (1 - s));
  }
  EXPECT_LE(rel_err(G, dg), 2e-6);
  EXPECT_LE(rel_err(U, du), 2e-6);
  // and the derivative formula itself against finite differences on a few points
  auto f = [&](const std::vector<double>& v) { return silu(v[0]) * 0.7; };
  for (double v : {-3.0, -0.5, 0.0, 0.4, 2.5}) {
    auto ng = numeric_grad(f, {v});
    const double s = 1.0 / (1.0 + std::exp(-v));
    EXPECT_NEAR(ng[0], 0.7 * (s + v * s * (1 - s)), 1e-8);
  }
}

// ---- attention ----

namespace {
struct AttnCase {
  int64_t B, L, H, G, D;
  std::vector<int32_t> seg;  // [B*L]
};

std::vector<int32_t> key_begin_of(const AttnCase& c) {
  std::vector<int32_t> kb(size_t(c.B * c.L));
  for (int64_t t = 0; t < c.B * c.L; t++) {
    const int64_t i = t % c.L;
    kb[size_t(t)] = (i == 0 || c.seg[size_t(t)] != c.seg[size_t(t - 1)]) ? int32_t(i) : kb[size_t(t - 1)];
  }
  return kb;
}

// out[t, h] = sum_j softmax_j(q.k_j * scale) v_j over keys j of t's segment, j <= t.
std::vector<double> attention_ref(const AttnCase& c, const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v) {
  const int64_t rep = c.H / c.G;
  const double scale = 1.0 / std::sqrt(double(c.D));
  std::vector<double> out(q.size(), 0.0);
  for (int64_t b = 0; b < c.B; b++)
    for (int64_t i = 0; i < c.L; i++)
      for (int64_t h = 0; h < c.H; h++) {
        const int64_t t = b * c.L + i, g = h / rep;
        std::vector<double> s;
        std::vector<int64_t> js;
        for (int64_t j = 0; j <= i; j++) {
          bool same = true;
          for (int64_t m = j; m <= i; m++) same = same && c.seg[size_t(b * c.L + m)] == c.seg[size_t(t)];
          if (!same) continue;
          double d = 0;
          for (int64_t e = 0; e < c.D; e++) d += q[size_t((t * c.H + h) * c.D + e)] * k[size_t(((b * c.L + j) * c.G + g) * c.D + e)];
          s.push_back(d * scale);
          js.push_back(j);
        }
        double mx = *std::max_element(s.begin(), s.end()), z = 0;
        for (auto& x : s) z += (x = std::exp(x - mx));
        for (size_t n = 0; n < s.size(); n++)
          for (int64_t e = 0; e < c.D; e++)
            out[size_t((t * c.H + h) * c.D + e)] += s[n] / z * v[size_t(((b * c.L + js[n]) * c.G + g) * c.D + e)];
      }
  return out;
}

void check_attention(const AttnCase& c, size_t fd_samples) {
  const int64_t T = c.B * c.L;
  auto q = as_f32(randn(size_t(T * c.H * c.D), 41)), k = as_f32(randn(size_t(T * c.G * c.D), 42));
  auto v = as_f32(randn(size_t(T * c.G * c.D), 43)), r = as_f32(randn(size_t(T * c.H * c.D), 44));
  std::vector<int32_t> kb = key_begin_of(c);
  AttentionLayout a{c.B, c.L, c.H, c.G, c.D, kb.data(), float(1.0 / std::sqrt(double(c.D)))};
  Tensor Q = to_tensor(q, {T, c.H, c.D}), Kt = to_tensor(k, {T, c.G, c.D}), V = to_tensor(v, {T, c.G, c.D});
  Tensor O = Tensor::empty({T, c.H, c.D}, DType::F32), P = Tensor::empty({c.B, c.H, c.L, c.L}, DType::F32);
  K().attention_forward(a, Q, Kt, V, O, P);
  EXPECT_LE(rel_err(O, attention_ref(c, q, k, v)), 2e-6);
  Tensor dO = to_tensor(r, {T, c.H, c.D});
  Tensor dQ = Tensor::empty(Q.shape(), DType::F32), dK = Tensor::empty(Kt.shape(), DType::F32), dV = Tensor::empty(V.shape(), DType::F32);
  // stale values in the outputs must not leak in
  for (Tensor* t : {&dQ, &dK, &dV})
    for (int64_t i = 0; i < t->numel(); i++) t->data<float>()[i] = 7.0f;
  K().attention_backward(a, dO, Q, Kt, V, P, dQ, dK, dV);
  std::mt19937_64 gen(45);
  auto sample = [&](size_t n) {
    std::vector<size_t> w;
    if (fd_samples == 0 || fd_samples >= n) {
      for (size_t i = 0; i < n; i++) w.push_back(i);
    } else {
      for (size_t i = 0; i < fd_samples; i++) w.push_back(size_t(gen() % n));
    }
    return w;
  };
  auto wq = sample(q.size()), wk = sample(k.size()), wv = sample(v.size());
  auto gq = numeric_grad([&](const std::vector<double>& x) { return dot(attention_ref(c, x, k, v), r); }, q, wq);
  auto gk = numeric_grad([&](const std::vector<double>& x) { return dot(attention_ref(c, q, x, v), r); }, k, wk);
  auto gv = numeric_grad([&](const std::vector<double>& x) { return dot(attention_ref(c, q, k, x), r); }, v, wv);
  EXPECT_LE(rel_err_at(dQ, gq, wq), 1e-5);
  EXPECT_LE(rel_err_at(dK, gk, wk), 1e-5);
  EXPECT_LE(rel_err_at(dV, gv, wv), 1e-5);
}
}  // namespace

// GQA (4 query heads on 2 kv heads), two rows: one plain causal, one packing three examples.
TEST(TrainLayers, AttentionGqaSegmentsForwardBackward) {
  AttnCase c{2, 9, 4, 2, 8, {}};
  c.seg = {0, 0, 0, 0, 0, 0, 0, 0, 0, /* row 1 */ 3, 3, 3, 5, 5, 6, 6, 6, 6};
  check_attention(c, 0);
}

// Longer than one query block (128 rows), with a segment boundary inside the second block: checks the block
// bookkeeping (key ranges per block, masked scores, accumulation of dk/dv over blocks) on sampled coordinates.
TEST(TrainLayers, AttentionAcrossQueryBlocks) {
  AttnCase c{1, 150, 2, 1, 4, {}};
  c.seg.assign(150, 0);
  for (int i = 140; i < 150; i++) c.seg[size_t(i)] = 1;
  check_attention(c, 40);
}

// ---- cross-entropy ----

TEST(TrainLayers, CrossEntropyLossGradientIgnoreIndex) {
  const int64_t R = 5, V = 37;
  auto x = as_f32(randn(size_t(R * V), 51, 3.0));
  std::vector<int32_t> lab = {3, -100, 36, 0, 17};
  auto ref = [&](const std::vector<double>& v) {
    double s = 0;
    for (int64_t r = 0; r < R; r++) {
      if (lab[size_t(r)] == -100) continue;
      double mx = -1e300, z = 0;
      for (int64_t j = 0; j < V; j++) mx = std::max(mx, v[size_t(r * V + j)]);
      for (int64_t j = 0; j < V; j++) z += std::exp(v[size_t(r * V + j)] - mx);
      s += mx + std::log(z) - v[size_t(r * V + lab[size_t(r)])];
    }
    return s;
  };
  Tensor X = to_tensor(x, {R, V});
  CrossEntropyResult nog = K().cross_entropy(X, lab.data(), 1.0f, false);
  EXPECT_NEAR(nog.loss_sum, ref(x), 1e-5 * ref(x));
  EXPECT_EQ(nog.counted, 4);
  int64_t correct = 0;
  for (int64_t r = 0; r < R; r++) {
    if (lab[size_t(r)] == -100) continue;
    int64_t am = 0;
    for (int64_t j = 1; j < V; j++)
      if (x[size_t(r * V + j)] > x[size_t(r * V + am)]) am = j;
    correct += am == lab[size_t(r)];
  }
  EXPECT_EQ(nog.correct, correct);
  CrossEntropyResult res = K().cross_entropy(X, lab.data(), 0.25f, true);
  EXPECT_NEAR(res.loss_sum, nog.loss_sum, 1e-9);
  auto g = numeric_grad(ref, x);
  for (auto& v : g) v *= 0.25;
  EXPECT_LE(rel_err(X, g), 1e-5);
  for (int64_t j = 0; j < V; j++) EXPECT_EQ(X.item_f32(V + j), 0.0f);  // the ignored row
  // a logit row whose label is its maximum is counted as correct
  Tensor Y = to_tensor({0.0, 5.0, 1.0}, {1, 3});
  int32_t l1 = 1;
  EXPECT_EQ(K().cross_entropy(Y, &l1, 1.0f, false).correct, 1);
  int32_t bad = 3;
  EXPECT_THROW(K().cross_entropy(Y, &bad, 1.0f, false), Error);
}

// ---- embedding ----

TEST(TrainLayers, EmbeddingForwardBackwardRepeatedIds) {
  const int64_t V = 7, C = 5;
  auto tv = randn(size_t(V * C), 61);
  Tensor table = to_tensor(tv, {V, C});
  std::vector<int32_t> ids = {3, 1, 3, 6, 3};
  Tensor out = Tensor::empty({5, C}, DType::F32);
  K().embedding_forward(table, ids.data(), 5, out);
  for (int64_t t = 0; t < 5; t++)
    for (int64_t c = 0; c < C; c++) EXPECT_EQ(out.item_f32(t * C + c), float(tv[size_t(ids[size_t(t)] * C + c)]));
  auto dv = as_f32(randn(size_t(5 * C), 62));
  Tensor dout = to_tensor(dv, {5, C}), dtab = Tensor::empty({V, C}, DType::F32);
  K().embedding_backward(dout, ids.data(), 5, dtab);
  std::vector<double> want(size_t(V * C), 0.0);
  for (int64_t t = 0; t < 5; t++)
    for (int64_t c = 0; c < C; c++) want[size_t(ids[size_t(t)] * C + c)] += dv[size_t(t * C + c)];
  EXPECT_LE(rel_err(dtab, want), 1e-6);
  std::vector<int32_t> bad = {7};
  EXPECT_THROW(K().embedding_forward(table, bad.data(), 1, out), Error);
}

// ---- linear with bias and LoRA, through the layer API ----

TEST(TrainLayers, LinearBiasLoraForwardBackward) {
  const int64_t T = 6, in = 10, out = 7, r = 3;
  const double s = 2.0;
  auto x = as_f32(randn(size_t(T * in), 71)), w = as_f32(randn(size_t(out * in), 72)), bias = as_f32(randn(size_t(out), 73));
  auto A = as_f32(randn(size_t(r * in), 74)), Bm = as_f32(randn(size_t(out * r), 75)), dy = as_f32(randn(size_t(T * out), 76));
  auto ref = [&](const std::vector<double>& xx, const std::vector<double>& ww, const std::vector<double>& bb,
                 const std::vector<double>& aa, const std::vector<double>& bm) {
    std::vector<double> y(size_t(T * out));
    for (int64_t t = 0; t < T; t++) {
      std::vector<double> u(size_t(r), 0.0);
      for (int64_t k = 0; k < r; k++)
        for (int64_t i = 0; i < in; i++) u[size_t(k)] += xx[size_t(t * in + i)] * aa[size_t(k * in + i)];
      for (int64_t o = 0; o < out; o++) {
        double v = bb[size_t(o)];
        for (int64_t i = 0; i < in; i++) v += xx[size_t(t * in + i)] * ww[size_t(o * in + i)];
        for (int64_t k = 0; k < r; k++) v += s * u[size_t(k)] * bm[size_t(o * r + k)];
        y[size_t(t * out + o)] = v;
      }
    }
    return y;
  };
  Parameter W{"w", to_tensor(w, {out, in}), Tensor::empty({out, in}, DType::F32), true};
  Parameter Bi{"b", to_tensor(bias, {out}), Tensor::empty({out}, DType::F32), true};
  Parameter PA{"a", to_tensor(A, {r, in}), Tensor::empty({r, in}, DType::F32), true};
  Parameter PB{"bb", to_tensor(Bm, {out, r}), Tensor::empty({out, r}, DType::F32), true};
  layers::Workspace ws(cpu_backend());
  layers::Ctx c{cpu_backend(), K(), DType::F32, ws};
  layers::Linear lin;
  lin.weight = &W;
  lin.bias = &Bi;
  lin.lora_a = &PA;
  lin.lora_b = &PB;
  lin.scaling = float(s);
  lin.prepare(c);
  Tensor X = to_tensor(x, {T, in}), Y = Tensor::empty({T, out}, DType::F32), U = Tensor::empty({T, r}, DType::F32);
  layers::linear_forward(c, lin, X, Y, &U);
  EXPECT_LE(rel_err(Y, ref(x, w, bias, A, Bm)), 2e-6);
  Tensor dY = to_tensor(dy, {T, out}), dX = Tensor::empty({T, in}, DType::F32);
  layers::linear_backward(c, lin, X, &U, dY, dY, &dX, false);
  auto L = [&](auto which) { return [&, which](const std::vector<double>& v) {
    switch (which) {
      case 0: return dot(ref(v, w, bias, A, Bm), dy);
      case 1: return dot(ref(x, v, bias, A, Bm), dy);
      case 2: return dot(ref(x, w, v, A, Bm), dy);
      case 3: return dot(ref(x, w, bias, v, Bm), dy);
      default: return dot(ref(x, w, bias, A, v), dy);
    }
  }; };
  EXPECT_LE(rel_err(dX, numeric_grad(L(0), x)), 1e-5);
  EXPECT_LE(rel_err(W.grad, numeric_grad(L(1), w)), 1e-5);
  EXPECT_LE(rel_err(Bi.grad, numeric_grad(L(2), bias)), 1e-5);
  EXPECT_LE(rel_err(PA.grad, numeric_grad(L(3), A)), 1e-5);
  EXPECT_LE(rel_err(PB.grad, numeric_grad(L(4), Bm)), 1e-5);
  // frozen base: no weight gradient is formed (its grad tensor may be absent)
  W.trainable = false;
  W.grad = Tensor();
  Tensor dX2 = Tensor::empty({T, in}, DType::F32);
  layers::linear_backward(c, lin, X, &U, dY, dY, &dX2, false);
  EXPECT_LE(rel_err(dX2, numeric_grad(L(0), x)), 1e-5);
}

// bf16 / f16 operands in the attention products: close to the float32 kernel (8 and 11 significant bits).
TEST(TrainLayers, AttentionHalfPrecisionOperands) {
  AttnCase c{2, 140, 4, 2, 8, {}};
  c.seg.assign(280, 0);
  for (int i = 200; i < 280; i++) c.seg[size_t(i)] = 1;
  const int64_t T = c.B * c.L;
  std::vector<int32_t> kb = key_begin_of(c);
  Tensor Q = to_tensor(randn(size_t(T * c.H * c.D), 81), {T, c.H, c.D}), Kt = to_tensor(randn(size_t(T * c.G * c.D), 82), {T, c.G, c.D});
  Tensor V = to_tensor(randn(size_t(T * c.G * c.D), 83), {T, c.G, c.D}), dO = to_tensor(randn(size_t(T * c.H * c.D), 84), Q.shape());
  auto run = [&](DType dt) {
    AttentionLayout a{c.B, c.L, c.H, c.G, c.D, kb.data(), float(1.0 / std::sqrt(double(c.D))), dt};
    std::vector<Tensor> r = {Tensor::empty(Q.shape(), DType::F32), Tensor::empty(Q.shape(), DType::F32),
                             Tensor::empty(Kt.shape(), DType::F32), Tensor::empty(V.shape(), DType::F32)};
    Tensor P = Tensor::empty({c.B, c.H, c.L, c.L}, DType::F32);
    K().attention_forward(a, Q, Kt, V, r[0], P);
    K().attention_backward(a, dO, Q, Kt, V, P, r[1], r[2], r[3]);
    return r;
  };
  auto ref = run(DType::F32);
  for (DType dt : {DType::BF16, DType::F16}) {
    auto got = run(dt);
    for (size_t i = 0; i < ref.size(); i++) {
      std::vector<double> want(size_t(ref[i].numel()));
      for (size_t j = 0; j < want.size(); j++) want[j] = ref[i].item_f32(int64_t(j));
      EXPECT_LE(rel_err(got[i], want), dt == DType::BF16 ? 3e-2 : 4e-3) << dtype_name(dt) << " output " << i;
    }
  }
}

// The fused LoRA backward (du and dB from one pass over dy) against the two products it replaces.
TEST(TrainKernels, LoraBackwardMatchesProducts) {
  const int64_t T = 300, O = 200, r = 6;
  for (DType dt : {DType::F32, DType::BF16}) {
    Tensor dy = to_tensor(randn(size_t(T * O), 91), {T, O}).to(dt), u = to_tensor(randn(size_t(T * r), 92), {T, r}).to(dt);
    Tensor b = to_tensor(randn(size_t(O * r), 93), {O, r}).to(dt);
    Tensor du = Tensor::empty({T, r}, DType::F32), dB = to_tensor(randn(size_t(O * r), 94), {O, r});
    Tensor du_ref = Tensor::empty({T, r}, DType::F32), dB_ref = dB.contiguous();
    K().matmul(dy, b, du_ref, 2.0f, 0.0f);
    K().matmul(dy.transpose(0, 1), u, dB_ref, 2.0f, 1.0f);
    K().lora_backward(dy, u, b, 2.0f, du, &dB);
    std::vector<double> w1(size_t(T * r)), w2(size_t(O * r));
    for (size_t i = 0; i < w1.size(); i++) w1[i] = du_ref.item_f32(int64_t(i));
    for (size_t i = 0; i < w2.size(); i++) w2[i] = dB_ref.item_f32(int64_t(i));
    EXPECT_LE(rel_err(du, w1), 1e-5) << dtype_name(dt);
    EXPECT_LE(rel_err(dB, w2), 1e-5) << dtype_name(dt);
  }
}
