#include "kernels/cpu/onednn_gemm.h"

#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <tuple>

#include "kernels/kernels.h"

namespace oar::cpu {
namespace {

struct Key {
  int64_t M, N, K, lda, ldb, ldc;
  int dt;
  bool bt, bias;
  bool operator<(const Key& o) const {
    return std::tie(M, N, K, lda, ldb, ldc, dt, bt, bias) < std::tie(o.M, o.N, o.K, o.lda, o.ldb, o.ldc, o.dt, o.bt, o.bias);
  }
};

struct Cached {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, bias;
  bool ok = false;
};

struct Ctx {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::map<Key, Cached> cache;
  std::mutex mu;
};

Ctx& ctx() {
  static Ctx c;
  return c;
}

}  // namespace

bool onednn_gemm(int64_t M, int64_t N, int64_t K, DType dt, const void* A, int64_t lda, const void* B, int64_t ldb,
                 bool b_transposed, float* C, int64_t ldc, const float* bias) {
  using namespace dnnl;
  if (dt != DType::F32 && dt != DType::BF16) return false;
  Ctx& cx = ctx();
  Key key{M, N, K, lda, ldb, ldc, int(dt), b_transposed, bias != nullptr};
  std::unique_lock lock(cx.mu);
  auto it = cx.cache.find(key);
  if (it == cx.cache.end()) {
    Cached c;
    auto mdt = dt == DType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
    c.a = memory::desc({M, K}, mdt, memory::dims{lda, 1});
    c.b = b_transposed ? memory::desc({K, N}, mdt, memory::dims{1, ldb}) : memory::desc({K, N}, mdt, memory::dims{ldb, 1});
    c.c = memory::desc({M, N}, memory::data_type::f32, memory::dims{ldc, 1});
    try {
      if (bias) {
        c.bias = memory::desc({1, N}, memory::data_type::f32, memory::dims{N, 1});
        matmul::desc d(c.a, c.b, c.bias, c.c);
        c.prim = matmul(matmul::primitive_desc(d, cx.eng));
      } else {
        matmul::desc d(c.a, c.b, c.c);
        c.prim = matmul(matmul::primitive_desc(d, cx.eng));
      }
      c.ok = true;
    } catch (const dnnl::error&) {
      c.ok = false;
    }
    it = cx.cache.emplace(key, std::move(c)).first;
  }
  Cached& c = it->second;
  if (!c.ok) return false;
  memory ma(c.a, cx.eng, const_cast<void*>(A));
  memory mb(c.b, cx.eng, const_cast<void*>(B));
  memory mc(c.c, cx.eng, C);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(c.bias, cx.eng, const_cast<float*>(bias)));
  lock.unlock();  // primitives are safe to execute concurrently
  c.prim.execute(cx.strm, args);
  cx.strm.wait();
  return true;
}

}  // namespace oar::cpu

namespace oar {

bool cpu_gemm_nt(int64_t M, int64_t N, int64_t K, DType dt, const void* A, const void* B, float* C) {
  return cpu::onednn_gemm(M, N, K, dt, A, K, B, K, /*b_transposed=*/true, C, N, nullptr);
}

}  // namespace oar
