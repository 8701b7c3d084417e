// The paged key/value cache: per layer, K and V blocks of `block_size` positions ([num_blocks, G, block_size, D]),
// handed out by a free-list allocator with reference counts. A sequence owns a block table (its blocks in order);
// the attention kernel reads through that table only. The serving engine's block manager builds on the same
// allocator (sharing, copy-on-write); the plain generation path simply reserves each sequence's blocks up front.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/tensor.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"

namespace oar {

// What the cache stores is a KVCacheDType (kernels/kernels.h; PaddleNLP's --cachekv_int8_type): F32; Int8Dynamic,
// a scale per (token, kv head) computed as K/V are written; Int8Static, calibrated scales per (layer, kv head).
// Per (token, kv head) of head size D: float32 takes 4D bytes, dynamic int8 D + 4, static int8 D.

// Static int8 calibration: the absolute maximum of K and of V per (layer, kv head), [layers * kv_heads] each.
struct KVStaticScales {
  std::vector<float> k_absmax, v_absmax;
};

// Reads PaddleNLP's PTQ output cachekv_scales.json: an object whose keys end in
// "layers.<i>.self_attn.cachek_matmul.activation_quanter" / "...cachev_matmul.activation_quanter" (any prefix,
// e.g. "llama." or "model."), each a list of absmax values, one per kv head or one per attention head (then,
// as PaddleNLP does, the first head of each group is used). "<key>.zero_point" entries must be all zero
// (asymmetric int8 is not supported); other keys are ignored. Every layer needs both keys.
// Throws oar::Error naming the file.
KVStaticScales load_cachekv_scales(const std::string& path, const LlamaConfig& cfg);

// The paged cache's geometry. Its one owner is the KVCache; the serving engine's block manager reads it from
// there (by reference), so the two can never disagree.
struct KVGeometry {
  int64_t num_blocks = 0;
  int64_t block_size = 0;  // positions per block
};

class KVCache {
 public:
  // static_scales is required for Int8Static (and ignored otherwise). The blocks live on `backend`, the model's.
  KVCache(const LlamaConfig& cfg, int64_t num_blocks, int64_t block_size, KVCacheDType quant = KVCacheDType::F32,
          const KVStaticScales* static_scales = nullptr, Backend& backend = cpu_backend());
  // Not copied or moved: the block manager holds a reference to the geometry.
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;
  KVLayerView layer(int64_t l);
  const KVGeometry& geometry() const { return geometry_; }
  int64_t num_blocks() const { return geometry_.num_blocks; }
  int64_t block_size() const { return geometry_.block_size; }
  KVCacheDType quant() const { return quant_; }
  Backend& backend() const { return be_; }
  size_t bytes() const;
  static size_t bytes_per_block(const LlamaConfig& cfg, int64_t block_size, KVCacheDType quant = KVCacheDType::F32);
  // Copies block src's K and V (and their scales) into block dst in every layer: copy-on-write of a shared block.
  void copy_block(int32_t src, int32_t dst);

 private:
  Backend& be_;
  KVGeometry geometry_;
  int64_t layers_, kv_heads_, head_dim_;
  KVCacheDType quant_ = KVCacheDType::F32;
  std::vector<Tensor> k_, v_;              // per layer: float32 or int8 values [num_blocks, G, block_size, D]
  std::vector<Tensor> k_scale_, v_scale_;  // int8: per layer [num_blocks, G, block_size] (dynamic) or [G] (static)
};

// Free list of block ids with reference counts (a block shared by two sequences is freed when both let go).
class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  int64_t num_free() const { return int64_t(free_.size()); }
  int64_t num_blocks() const { return int64_t(refs_.size()); }
  // Returns -1 when none is free.
  int32_t allocate();
  void retain(int32_t block);
  void release(int32_t block);
  int32_t ref_count(int32_t block) const { return refs_[size_t(block)]; }

 private:
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;
};

// A sequence's blocks, in position order.
struct BlockTable {
  std::vector<int32_t> blocks;
  // Makes room for `tokens` positions, taking blocks from the allocator; false when it runs out
  // (what was taken stays in the table).
  bool reserve(int64_t tokens, int64_t block_size, BlockAllocator& alloc);
  void release_all(BlockAllocator& alloc);
};

}  // namespace oar
