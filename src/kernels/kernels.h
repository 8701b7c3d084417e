// The kernel interface. The model and the engine call these operations and nothing lower: no layer uses an
// intrinsic or a CUDA API. Each device has one implementation (CPU now; a CUDA one plugs in behind the same
// interface). Activations are float32; the linear ops take a Weight (kernels/weight.h: float32 or bfloat16 today,
// logically [out_features, in_features] as Hugging Face lays them out).
//
// Shapes use T for the number of tokens in a step (all sequences of a batch flattened), H query heads,
// G key/value heads, D head size.
#pragma once
#include <cstdint>
#include <vector>

#include "core/model_config.h"
#include "core/tensor.h"
#include "kernels/weight.h"

namespace oar {

// Cos/sin per position and frequency, precomputed once per model (includes llama3 frequency scaling).
struct RopeTable {
  int64_t max_positions = 0;
  int64_t half_dim = 0;  // D/2
  RopeLayout layout = RopeLayout::RotateHalf;
  std::vector<float> cos, sin;  // [max_positions, half_dim]
};
RopeTable make_rope_table(const LlamaConfig& cfg, int64_t max_positions);
std::vector<double> rope_inv_freq(const LlamaConfig& cfg);  // D/2 inverse frequencies after scaling

// How the paged KV cache holds K and V (--cachekv_int8): the one enum for it, from the command line through the
// engine's settings and the cache to the attention kernels. Int8 stores values with a float scale (value = q * scale).
enum class KVCacheDType {
  F32,
  Int8Dynamic,  // one absmax/127 scale per (token, kv head), computed as the values are written
  Int8Static,   // one calibrated absmax/127 scale per (layer, kv head), from PaddleNLP's cachekv_int8 scales
};
inline const char* kv_cache_dtype_name(KVCacheDType d) {
  return d == KVCacheDType::F32 ? "float32" : d == KVCacheDType::Int8Dynamic ? "int8 dynamic" : "int8 static";
}

// Paged key/value storage for one layer: K and V each [num_blocks, G, block_size, D].
// Attention reaches a sequence's tokens only through its block table (position p lives in block
// table[p / block_size], slot p % block_size), so the cache can be shared, grown and recycled by a block manager.
struct KVLayerView {
  float* k = nullptr;  // F32: the values
  float* v = nullptr;
  int64_t num_blocks = 0, block_size = 0, kv_heads = 0, head_dim = 0;
  // Int8: k8/v8 hold the values; kv_write quantizes, attention dequantizes on read.
  //   Int8Dynamic: k_scale/v_scale [num_blocks, G, block_size], one absmax/127 scale per (token, kv head),
  //     computed by kv_write and stored beside the block;
  //   Int8Static: k_scale/v_scale [G], this layer's calibrated absmax/127 per kv head
  //     (values beyond the calibrated range are clamped to +-127).
  KVCacheDType dtype = KVCacheDType::F32;
  int8_t* k8 = nullptr;
  int8_t* v8 = nullptr;
  float* k_scale = nullptr;
  float* v_scale = nullptr;
};

// One sequence's part of a step: rows [row0, row0 + n) of the step's tensors, its first new token at
// position pos0 (= tokens already cached), and its block table.
struct SeqSlice {
  int64_t row0 = 0;
  int64_t n = 0;
  int64_t pos0 = 0;
  const int32_t* block_table = nullptr;
  int64_t num_table_blocks = 0;
};

class Kernels {
 public:
  virtual ~Kernels() = default;
  virtual const char* name() const = 0;

  // y[T,N] = x[T,K] · w[N,K]^T (+ bias[N]), w in any format this device runs (kernels/weight.h). Small T runs as a
  // bandwidth-bound GEMV, large T as a GEMM.
  virtual void linear(const Tensor& x, const Weight& w, const Tensor* bias, Tensor& y) = 0;
  // Several products of one input (q/k/v, gate/up): ys[i] = x · ws[i]^T (+ biases[i], which may be null).
  // One thread team serves all of them, so a decode step pays one synchronisation instead of several.
  virtual void linear_multi(const Tensor& x, const std::vector<const Weight*>& ws,
                            const std::vector<const Tensor*>& biases, const std::vector<Tensor*>& ys) = 0;
  // y = x / rms(x) * w per row; y may alias x.
  virtual void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) = 0;
  // Rotates x [T, heads, D] in place; positions[T].
  virtual void rope(Tensor& x, const int32_t* positions, const RopeTable& table) = 0;
  // out[T,F] = silu(gate) * up; out may alias gate.
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // The MLP's first half: gate = silu(x · w_gate^T) * (x · w_up^T), with `up` [T,F] as scratch. At decode sizes
  // one thread team computes both products and the activation chunk by chunk: no serial pass and no extra
  // synchronisation between them (on a busy machine each synchronisation may wait for a descheduled thread).
  virtual void linear_swiglu(const Tensor& x, const Weight& w_gate, const Weight& w_up, Tensor& gate, Tensor& up) = 0;
  // In-place softmax over the last dimension of a [rows, n] float32 tensor.
  virtual void softmax(Tensor& x) = 0;
  // out[T,C] = table[ids[t]] (table f32/bf16/f16 [V,C]); ids checked against V.
  virtual void embedding(const Tensor& table, const int32_t* ids, int64_t n, Tensor& out) = 0;
  // x += y (residual)
  virtual void add_inplace(Tensor& x, const Tensor& y) = 0;
  // Writes k, v [T, G, D] of each sequence's new tokens into the paged cache at positions pos0 .. pos0+n-1
  // (quantizing them for an int8 cache).
  virtual void kv_write(const KVLayerView& cache, const Tensor& k, const Tensor& v, const std::vector<SeqSlice>& seqs) = 0;
  // Causal attention with GQA: out[T, H, D] for q[T, H, D]; token i of a sequence attends to cached positions
  // 0 .. pos0 + i. Softmax scale 1/sqrt(D).
  virtual void attention(const Tensor& q, const KVLayerView& cache, const std::vector<SeqSlice>& seqs, Tensor& out) = 0;
};

// The implementation for a device (throws oar::Error for a device this build cannot run).
Kernels& kernels_for(Device device);

// The CPU's dense GEMM, the one linear() runs for many tokens (oneDNN): C[M,N] (float32) = A[M,K] · B[N,K]^T, with
// A and B contiguous in `dt` (F32 or BF16). Returns false where this CPU has no kernel for dt. For code that times
// the GEMM itself (infer/roofline) without reaching into kernels/cpu.
bool cpu_gemm_nt(int64_t M, int64_t N, int64_t K, DType dt, const void* A, const void* B, float* C);
// The same for a8w8's integer product: C[M,N] (int32) = A[M,K] (uint8) · B[N,K]^T (int8).
bool cpu_gemm_nt_u8s8(int64_t M, int64_t N, int64_t K, const uint8_t* A, const int8_t* B, int32_t* C);
// Reads n bytes at p (64-byte aligned, n a multiple of 64) with the widest loads of the CPU's ISA table: the read
// bandwidth probe's inner loop. The result depends on every byte, so no load can be left out.
uint64_t cpu_read_bytes(const void* p, size_t n);
const char* cpu_isa_name();  // the ISA table the CPU kernels run ("avx2", ...)

}  // namespace oar
