#include "kernels/cpu/onednn_gemm.h"

#include <omp.h>

#include <map>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "kernels/kernels.h"

namespace oar::cpu {
namespace {

struct Key {
  int64_t M, N, K, lda, ldb, ldc;
  int dt, nthr;
  bool ta, tb, bias;
  float alpha, beta;
  bool operator<(const Key& o) const {
    return std::tie(M, N, K, lda, ldb, ldc, dt, nthr, ta, tb, bias, alpha, beta) <
           std::tie(o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.dt, o.nthr, o.ta, o.tb, o.bias, o.alpha, o.beta);
  }
};

constexpr int kU8S8 = 255;  // Key::dt of the u8 x s8 -> s32 product (other keys hold a DType)

struct Prim {
  bool ok = false;
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, bias, scratch;
};

class OneDnn {
 public:
  std::shared_ptr<Prim> get(const Key& k) {
    std::lock_guard lock(mu_);
    auto it = cache_.find(k);
    if (it == cache_.end()) it = cache_.emplace(k, create(k)).first;
    return it->second;
  }
  const dnnl::engine& engine() const { return eng_; }

 private:
  std::shared_ptr<Prim> create(const Key& k) const {
    using namespace dnnl;
    auto p = std::make_shared<Prim>();
    const bool u8s8 = k.dt == kU8S8;
    const auto mdt = k.dt == int(DType::BF16) ? memory::data_type::bf16 : memory::data_type::f32;
    const auto adt = u8s8 ? memory::data_type::u8 : mdt, bdt = u8s8 ? memory::data_type::s8 : mdt;
    p->a = k.ta ? memory::desc({k.M, k.K}, adt, memory::dims{1, k.lda}) : memory::desc({k.M, k.K}, adt, memory::dims{k.lda, 1});
    p->b = k.tb ? memory::desc({k.K, k.N}, bdt, memory::dims{1, k.ldb}) : memory::desc({k.K, k.N}, bdt, memory::dims{k.ldb, 1});
    p->c = memory::desc({k.M, k.N}, u8s8 ? memory::data_type::s32 : memory::data_type::f32, memory::dims{k.ldc, 1});
    try {
      primitive_attr attr;
      attr.set_scratchpad_mode(scratchpad_mode::user);
      if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
      if (k.beta != 0.0f) {
        post_ops po;
        po.append_sum(k.beta);
        attr.set_post_ops(po);
      }
      if (k.bias) p->bias = memory::desc({1, k.N}, memory::data_type::f32, memory::dims{k.N, 1});
      matmul::desc d = k.bias ? matmul::desc(p->a, p->b, p->bias, p->c) : matmul::desc(p->a, p->b, p->c);
      matmul::primitive_desc pd(d, attr, eng_);
      p->scratch = pd.scratchpad_desc();
      p->prim = matmul(pd);
      p->ok = true;
    } catch (const dnnl::error&) {
      p->ok = false;
    }
    return p;
  }

  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  std::map<Key, std::shared_ptr<Prim>> cache_;
  std::mutex mu_;
};

OneDnn& onednn() {
  static OneDnn o;
  return o;
}

}  // namespace

namespace {

bool run(const Key& key, const void* A, const void* B, void* C, const float* bias) {
  using namespace dnnl;
  OneDnn& o = onednn();
  std::shared_ptr<Prim> p = o.get(key);
  if (!p->ok) return false;
  thread_local stream strm(o.engine());
  thread_local std::vector<uint8_t> scratch;
  std::unordered_map<int, memory> args;
  args.emplace(DNNL_ARG_SRC, memory(p->a, o.engine(), const_cast<void*>(A)));
  args.emplace(DNNL_ARG_WEIGHTS, memory(p->b, o.engine(), const_cast<void*>(B)));
  args.emplace(DNNL_ARG_DST, memory(p->c, o.engine(), C));
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(p->bias, o.engine(), const_cast<float*>(bias)));
  if (size_t need = p->scratch.get_size()) {
    if (scratch.size() < need) scratch.resize(need);
    args.emplace(DNNL_ARG_SCRATCHPAD, memory(p->scratch, o.engine(), scratch.data()));
  }
  p->prim.execute(strm, args);
  strm.wait();
  return true;
}

}  // namespace

bool onednn_gemm(const GemmDesc& g) {
  if (g.dtype != DType::F32 && g.dtype != DType::BF16) return false;
  const Key key{g.M, g.N, g.K, g.lda, g.ldb, g.ldc, int(g.dtype), omp_get_max_threads(), g.a_transposed,
                g.b_transposed, g.bias != nullptr, g.alpha, g.beta};
  return run(key, g.A, g.B, g.C, g.bias);
}

bool onednn_gemm_u8s8(int64_t M, int64_t N, int64_t K, const uint8_t* A, const int8_t* B, int32_t* C) {
  const Key key{M, N, K, K, K, N, kU8S8, omp_get_max_threads(), false, true, false, 1.0f, 0.0f};
  return run(key, A, B, C, nullptr);
}

}  // namespace oar::cpu

namespace oar {

bool cpu_gemm_nt(int64_t M, int64_t N, int64_t K, DType dt, const void* A, const void* B, float* C) {
  return cpu::onednn_gemm(M, N, K, dt, A, K, B, K, /*b_transposed=*/true, C, N, nullptr);
}

bool cpu_gemm_nt_u8s8(int64_t M, int64_t N, int64_t K, const uint8_t* A, const int8_t* B, int32_t* C) {
  return cpu::onednn_gemm_u8s8(M, N, K, A, B, C);
}

}  // namespace oar
