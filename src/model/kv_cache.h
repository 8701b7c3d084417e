// The paged key/value cache: per layer, K and V blocks of `block_size` positions ([num_blocks, G, block_size, D]),
// handed out by a free-list allocator with reference counts. A sequence owns a block table (its blocks in order);
// the attention kernel reads through that table only. The serving engine's block manager builds on the same
// allocator (sharing, copy-on-write); the plain generation path simply reserves each sequence's blocks up front.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "kernels/kernels.h"
#include "model/config.h"

namespace oar {

class KVCache {
 public:
  KVCache(const LlamaConfig& cfg, int64_t num_blocks, int64_t block_size);
  KVLayerView layer(int64_t l);
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  size_t bytes() const;
  static size_t bytes_per_block(const LlamaConfig& cfg, int64_t block_size);

 private:
  int64_t num_blocks_, block_size_, layers_, kv_heads_, head_dim_;
  std::vector<Tensor> k_, v_;
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
