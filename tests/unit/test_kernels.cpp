// Kernels against plain reference loops: every ISA table against the scalar one, the GEMM path against the
// GEMV path, RoPE's two layouts against each other, and paged attention against a direct computation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "core/cpu_info.h"
#include "core/error.h"
#include "kernels/cpu/isa.h"
#include "kernels/kernels.h"
#include "model/kv_cache.h"
#include "test_isa_util.h"
#include "test_model_util.h"

using namespace oar;
using oar::test::max_rel;

namespace {

std::mt19937 rng(1234);

Tensor rand_tensor(const Shape& s, DType dt = DType::F32, float a = 1.0f) {
  Tensor t = Tensor::empty(s, dt);
  std::uniform_real_distribution<float> u(-a, a);
  for (int64_t i = 0; i < t.numel(); i++) {
    float v = u(rng);
    if (dt == DType::BF16) t.data<uint16_t>()[i] = f32_to_bf16(v);
    else if (dt == DType::F16) t.data<uint16_t>()[i] = f32_to_f16(v);
    else t.data<float>()[i] = v;
  }
  return t;
}

using oar::test::available_isas;

}  // namespace

TEST(Dtype, Bf16RoundsToNearestEvenAndKeepsNaN) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  float halfway;  // 1 + 2^-8: exactly between two bf16 values, rounds to the even one (1.0)
  uint32_t u = 0x3f808000;
  std::memcpy(&halfway, &u, 4);
  EXPECT_EQ(f32_to_bf16(halfway), 0x3f80);
  u = 0x3f818000;  // between 0x3f81 and 0x3f82: rounds to even 0x3f82
  std::memcpy(&halfway, &u, 4);
  EXPECT_EQ(f32_to_bf16(halfway), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  for (float v : {0.0f, -2.5f, 65504.0f, 1e-5f, -0.333f}) EXPECT_NEAR(f16_to_f32(f32_to_f16(v)), v, std::fabs(v) * 1e-3 + 1e-7);
}

TEST(Isa, EveryTableMatchesScalar) {
  const auto& ref = cpu::isa_scalar();
  for (const cpu::IsaOps* isa : available_isas()) {
    for (int64_t M : {1, 2, 3, 5, 8, 11}) {
      for (int64_t K : {1, 7, 16, 33, 64, 100}) {
        const int64_t N = 37;
        Tensor x = rand_tensor({M, K}), wf = rand_tensor({N, K}), wb = rand_tensor({N, K}, DType::BF16);
        Tensor y1 = Tensor::empty({M, N}, DType::F32), y2 = Tensor::empty({M, N}, DType::F32);
        ref.gemv_f32(x.data<float>(), M, K, wf.data<float>(), K, 0, N, y1.data<float>(), N);
        isa->gemv_f32(x.data<float>(), M, K, wf.data<float>(), K, 0, N, y2.data<float>(), N);
        EXPECT_LE(max_rel(y2.data<float>(), y1.data<float>(), M * N), 1e-5) << isa->name << " f32 M=" << M << " K=" << K;
        ref.gemv_bf16(x.data<float>(), M, K, wb.data<uint16_t>(), K, 0, N, y1.data<float>(), N);
        isa->gemv_bf16(x.data<float>(), M, K, wb.data<uint16_t>(), K, 0, N, y2.data<float>(), N);
        EXPECT_LE(max_rel(y2.data<float>(), y1.data<float>(), M * N), 1e-5) << isa->name << " bf16 M=" << M << " K=" << K;
        const Tensor wh = wf.to(DType::F16);
        ref.gemv_f16(x.data<float>(), M, K, wh.data<uint16_t>(), K, 0, N, y1.data<float>(), N);
        isa->gemv_f16(x.data<float>(), M, K, wh.data<uint16_t>(), K, 0, N, y2.data<float>(), N);
        EXPECT_LE(max_rel(y2.data<float>(), y1.data<float>(), M * N), 1e-5) << isa->name << " f16 M=" << M << " K=" << K;
      }
    }
    Tensor a = rand_tensor({77}), b = rand_tensor({77});
    EXPECT_NEAR(isa->dot(a.data<float>(), b.data<float>(), 77), ref.dot(a.data<float>(), b.data<float>(), 77), 1e-4);
    EXPECT_NEAR(isa->sum_squares(a.data<float>(), 77), ref.sum_squares(a.data<float>(), 77), 1e-4);
    std::vector<uint16_t> h1(77), h2(77);
    ref.f32_to_bf16(a.data<float>(), h1.data(), 77);
    isa->f32_to_bf16(a.data<float>(), h2.data(), 77);
    EXPECT_EQ(h1, h2) << isa->name;
    std::vector<float> f1(77), f2(77);
    ref.bf16_to_f32(h1.data(), f1.data(), 77);
    isa->bf16_to_f32(h1.data(), f2.data(), 77);
    EXPECT_EQ(f1, f2) << isa->name;
  }
}

// The bf16 dot-product GEMV (AVX512_BF16) against the scalar loop on the same bf16-rounded activations.
TEST(Isa, Bf16DotProductGemvMatchesScalar) {
  const cpu::IsaOps& best = cpu::isa_best();
  if (!best.gemv_bf16_bf16) GTEST_SKIP() << "this CPU (or OAR_ISA) has no bf16 dot-product GEMV";
  const auto& ref = cpu::isa_scalar();
  for (int64_t M : {1, 2, 3, 5, 8, 11, 16, 19, 35}) {
    for (int64_t K : {1, 2, 7, 31, 32, 33, 64, 100, 130}) {
      const int64_t N = 37;
      Tensor x = rand_tensor({M, K}), wb = rand_tensor({N, K}, DType::BF16);
      std::vector<uint16_t> xb(size_t(M * K));
      ref.f32_to_bf16(x.data<float>(), xb.data(), M * K);
      Tensor xr = Tensor::empty({M, K}, DType::F32);
      ref.bf16_to_f32(xb.data(), xr.data<float>(), M * K);
      Tensor y1 = Tensor::empty({M, N}, DType::F32), y2 = Tensor::empty({M, N}, DType::F32);
      ref.gemv_bf16(xr.data<float>(), M, K, wb.data<uint16_t>(), K, 0, N, y1.data<float>(), N);
      best.gemv_bf16_bf16(xb.data(), M, K, wb.data<uint16_t>(), K, 0, N, y2.data<float>(), N);
      EXPECT_LE(max_rel(y2.data<float>(), y1.data<float>(), M * N), 1e-5) << "M=" << M << " K=" << K;
    }
  }
}

TEST(Kernels, LinearGemmPathEqualsGemvPath) {
  Kernels& k = kernels_for(Device::CPU);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const int64_t M = 40, K = 96, N = 72;
    Tensor x = rand_tensor({M, K}), bias = rand_tensor({N});
    const Weight w = Weight::dense(rand_tensor({N, K}, dt));
    Tensor y = Tensor::empty({M, N}, DType::F32);
    k.linear(x, w, &bias, y);  // M > 8: the GEMM library
    // reference: one row at a time (the GEMV path) plus the bias
    for (int64_t m = 0; m < M; m++) {
      Tensor xr = x.slice0(m, m + 1), yr = Tensor::empty({1, N}, DType::F32);
      k.linear(xr, w, &bias, yr);
      // bf16 GEMM rounds the activations to bf16 too: allow that rounding (2^-9 relative per term); f16 weights are
      // converted to float32 blocks for the GEMM, exactly
      EXPECT_LE(max_rel(y.data<float>() + m * N, yr.data<float>(), N), dt == DType::BF16 ? 2e-2 : 1e-5) << dtype_name(dt);
    }
  }
}

TEST(Kernels, FusedLinearSwigluEqualsProductsThenActivation) {
  // The fused form (decode sizes: products and activation chunk by chunk; larger: GEMMs then swiglu) must give
  // exactly what the two products followed by swiglu give, for both weight dtypes and on both paths. F = 3000
  // is not a multiple of any chunk size, and big enough that the work is split over the threads.
  Kernels& k = kernels_for(Device::CPU);
  for (DType dt : {DType::F32, DType::BF16}) {
    for (int64_t M : {1, 2, 3, 12}) {
      const int64_t K = 64, F = 3000;
      Tensor x = rand_tensor({M, K});
      const Weight wg = Weight::dense(rand_tensor({F, K}, dt)), wu = Weight::dense(rand_tensor({F, K}, dt));
      Tensor g1 = Tensor::empty({M, F}, DType::F32), u1 = Tensor::empty({M, F}, DType::F32);
      Tensor g2 = Tensor::empty({M, F}, DType::F32), u2 = Tensor::empty({M, F}, DType::F32);
      k.linear_multi(x, {&wg, &wu}, {nullptr, nullptr}, {&g1, &u1});
      k.swiglu(g1, u1, g1);
      k.linear_swiglu(x, wg, wu, g2, u2);
      for (int64_t i = 0; i < M * F; i++)
        ASSERT_EQ(g2.data<float>()[i], g1.data<float>()[i]) << dtype_name(dt) << " M=" << M << " i=" << i;
      // and it is the activation of the products: silu(gate) * up (u2 holds up; gate from a plain linear)
      Tensor pg = Tensor::empty({M, F}, DType::F32);
      k.linear(x, wg, nullptr, pg);
      for (int64_t i = 0; i < M * F; i += 97) {
        const float gv = pg.data<float>()[i];
        EXPECT_FLOAT_EQ(g2.data<float>()[i], gv / (1.0f + std::exp(-gv)) * u2.data<float>()[i]) << i;
      }
    }
  }
}

TEST(Kernels, RopeInterleavedEqualsRotateHalfAfterPermutation) {
  // Interleaved RoPE on x equals rotate-half RoPE on x with each head's pairs (2i, 2i+1) moved to (i, i+D/2):
  // exactly the q/k permutation Hugging Face's conversion script applies to Meta checkpoints.
  LlamaConfig c;
  c.head_dim = 16;
  c.rope_theta = 10000;
  c.rope_layout = RopeLayout::Interleaved;
  RopeTable inter = make_rope_table(c, 64);
  c.rope_layout = RopeLayout::RotateHalf;
  RopeTable half = make_rope_table(c, 64);
  Kernels& k = kernels_for(Device::CPU);
  const int64_t T = 5, H = 3, D = 16;
  Tensor x = rand_tensor({T, H, D});
  Tensor p = Tensor::empty({T, H, D}, DType::F32);
  for (int64_t t = 0; t < T * H; t++)
    for (int64_t i = 0; i < D / 2; i++) {
      p.data<float>()[t * D + i] = x.data<float>()[t * D + 2 * i];
      p.data<float>()[t * D + i + D / 2] = x.data<float>()[t * D + 2 * i + 1];
    }
  std::vector<int32_t> pos{0, 3, 7, 31, 63};
  k.rope(x, pos.data(), inter);
  k.rope(p, pos.data(), half);
  for (int64_t t = 0; t < T * H; t++)
    for (int64_t i = 0; i < D / 2; i++) {
      EXPECT_NEAR(p.data<float>()[t * D + i], x.data<float>()[t * D + 2 * i], 1e-6);
      EXPECT_NEAR(p.data<float>()[t * D + i + D / 2], x.data<float>()[t * D + 2 * i + 1], 1e-6);
    }
  // position 0 is the identity
  Tensor y = rand_tensor({1, 1, D}), y0 = y.contiguous();
  int32_t zero = 0;
  k.rope(y, &zero, half);
  EXPECT_EQ(max_rel(y.data<float>(), y0.data<float>(), D), 0.0);
}

TEST(Kernels, NormSwigluSoftmaxEmbedding) {
  Kernels& k = kernels_for(Device::CPU);
  Tensor x = rand_tensor({3, 50}), w = rand_tensor({50}), y = Tensor::empty({3, 50}, DType::F32);
  k.rmsnorm(x, w, 1e-5f, y);
  for (int64_t r = 0; r < 3; r++) {
    double ss = 0;
    for (int i = 0; i < 50; i++) ss += double(x.data<float>()[r * 50 + i]) * x.data<float>()[r * 50 + i];
    double inv = 1.0 / std::sqrt(ss / 50 + 1e-5);
    for (int i = 0; i < 50; i++) EXPECT_NEAR(y.data<float>()[r * 50 + i], x.data<float>()[r * 50 + i] * inv * w.data<float>()[i], 1e-5);
  }
  Tensor g = rand_tensor({2, 9}, DType::F32, 6.0f), u = rand_tensor({2, 9}), o = Tensor::empty({2, 9}, DType::F32);
  k.swiglu(g, u, o);
  for (int i = 0; i < 18; i++) {
    float gv = g.data<float>()[i];
    EXPECT_NEAR(o.data<float>()[i], gv / (1 + std::exp(-gv)) * u.data<float>()[i], 1e-5);
  }
  Tensor s = rand_tensor({4, 33}, DType::F32, 30.0f);
  k.softmax(s);
  for (int r = 0; r < 4; r++) {
    double sum = 0;
    for (int i = 0; i < 33; i++) sum += s.data<float>()[r * 33 + i];
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  Tensor table = rand_tensor({10, 6}, DType::BF16), e = Tensor::empty({2, 6}, DType::F32);
  int32_t ids[2] = {9, 0};
  k.embedding(table, ids, 2, e);
  for (int i = 0; i < 6; i++) EXPECT_EQ(e.data<float>()[i], bf16_to_f32(table.data<uint16_t>()[9 * 6 + i]));
  int32_t bad = 10;
  EXPECT_THROW(k.embedding(table, &bad, 1, e), Error);
}

// Paged attention (blocks of 4, block table deliberately out of order) against softmax(q k^T / sqrt(D)) v.
TEST(Kernels, PagedAttentionMatchesDirect) {
  Kernels& k = kernels_for(Device::CPU);
  LlamaConfig c;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  const int64_t H = 4, G = 2, D = 8, B = 4;
  for (int64_t n_new : {1, 3, 20}) {  // decode, short chunk, long chunk (the GEMM path)
    const int64_t past = 9, L = past + n_new;
    const int64_t nb = (L + B - 1) / B;
    KVCache cache(c, nb + 3, B);
    std::vector<int32_t> table;
    for (int64_t i = 0; i < nb; i++) table.push_back(int32_t(nb + 2 - i));  // reversed, with gaps
    Tensor kk = rand_tensor({L, G, D}), vv = rand_tensor({L, G, D}), q = rand_tensor({n_new, H, D});
    SeqSlice all{0, L, 0, table.data(), nb};
    k.kv_write(cache.layer(0), kk, vv, {all});
    Tensor out = Tensor::empty({n_new, H, D}, DType::F32);
    SeqSlice s{0, n_new, past, table.data(), nb};
    k.attention(q, cache.layer(0), {s}, out);
    for (int64_t i = 0; i < n_new; i++)
      for (int64_t h = 0; h < H; h++) {
        int64_t g = h / (H / G), visible = past + i + 1;
        std::vector<double> sc(static_cast<size_t>(visible), 0.0);
        double mx = -1e30;
        for (int64_t j = 0; j < visible; j++) {
          double d = 0;
          for (int64_t t = 0; t < D; t++) d += double(q.data<float>()[(i * H + h) * D + t]) * kk.data<float>()[(j * G + g) * D + t];
          sc[size_t(j)] = d / std::sqrt(double(D));
          mx = std::max(mx, sc[size_t(j)]);
        }
        double sum = 0;
        for (auto& v : sc) sum += (v = std::exp(v - mx));
        for (int64_t t = 0; t < D; t++) {
          double o = 0;
          for (int64_t j = 0; j < visible; j++) o += sc[size_t(j)] / sum * vv.data<float>()[(j * G + g) * D + t];
          EXPECT_NEAR(out.data<float>()[(i * H + h) * D + t], o, 1e-5) << "n_new=" << n_new;
        }
      }
  }
}

TEST(KVCache, AllocatorCountsReferences) {
  BlockAllocator a(3);
  int32_t b0 = a.allocate(), b1 = a.allocate(), b2 = a.allocate();
  EXPECT_EQ(a.allocate(), -1);
  EXPECT_EQ(a.num_free(), 0);
  a.retain(b1);
  a.release(b1);
  EXPECT_EQ(a.num_free(), 0);  // still held once
  a.release(b1);
  EXPECT_EQ(a.num_free(), 1);
  EXPECT_THROW(a.release(b1), Error);  // double free
  BlockTable t;
  EXPECT_TRUE(t.reserve(3, 4, a));
  EXPECT_FALSE(t.reserve(9, 4, a));
  t.release_all(a);
  a.release(b0);
  a.release(b2);
  EXPECT_EQ(a.num_free(), 3);
}
