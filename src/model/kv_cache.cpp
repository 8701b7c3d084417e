#include "model/kv_cache.h"

#include "core/error.h"

namespace oar {

KVCache::KVCache(const LlamaConfig& cfg, int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size), layers_(cfg.num_hidden_layers),
      kv_heads_(cfg.num_key_value_heads), head_dim_(cfg.head_dim) {
  if (num_blocks <= 0 || block_size <= 0) throw Error("kv cache: need at least one block of at least one position");
  for (int64_t l = 0; l < layers_; l++) {
    k_.push_back(Tensor::empty({num_blocks, kv_heads_, block_size, head_dim_}, DType::F32));
    v_.push_back(Tensor::empty({num_blocks, kv_heads_, block_size, head_dim_}, DType::F32));
  }
}

KVLayerView KVCache::layer(int64_t l) {
  KVLayerView v;
  v.k = k_[size_t(l)].data<float>();
  v.v = v_[size_t(l)].data<float>();
  v.num_blocks = num_blocks_;
  v.block_size = block_size_;
  v.kv_heads = kv_heads_;
  v.head_dim = head_dim_;
  return v;
}

size_t KVCache::bytes_per_block(const LlamaConfig& cfg, int64_t block_size) {
  return size_t(2 * cfg.num_hidden_layers * cfg.num_key_value_heads * block_size * cfg.head_dim) * sizeof(float);
}

size_t KVCache::bytes() const {
  return size_t(2 * layers_ * num_blocks_ * kv_heads_ * block_size_ * head_dim_) * sizeof(float);
}

BlockAllocator::BlockAllocator(int64_t num_blocks) : refs_(size_t(num_blocks), 0) {
  // Low ids first: pop from the back of a descending list.
  for (int64_t b = num_blocks; b-- > 0;) free_.push_back(int32_t(b));
}

int32_t BlockAllocator::allocate() {
  if (free_.empty()) return -1;
  int32_t b = free_.back();
  free_.pop_back();
  refs_[size_t(b)] = 1;
  return b;
}

void BlockAllocator::retain(int32_t b) {
  if (b < 0 || size_t(b) >= refs_.size() || refs_[size_t(b)] <= 0) throw Error("block allocator: retain of a free block");
  refs_[size_t(b)]++;
}

void BlockAllocator::release(int32_t b) {
  if (b < 0 || size_t(b) >= refs_.size() || refs_[size_t(b)] <= 0) throw Error("block allocator: double free");
  if (--refs_[size_t(b)] == 0) free_.push_back(b);
}

bool BlockTable::reserve(int64_t tokens, int64_t block_size, BlockAllocator& alloc) {
  int64_t need = (tokens + block_size - 1) / block_size;
  while (int64_t(blocks.size()) < need) {
    int32_t b = alloc.allocate();
    if (b < 0) return false;
    blocks.push_back(b);
  }
  return true;
}

void BlockTable::release_all(BlockAllocator& alloc) {
  for (int32_t b : blocks) alloc.release(b);
  blocks.clear();
}

}  // namespace oar
