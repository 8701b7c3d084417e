// Per-sequence block tables over the KV cache's BlockAllocator, with prefix caching and copy-on-write.
//
// Ownership: a block's reference count (BlockAllocator) is the number of sequence tables holding it plus one
// while the prefix cache holds it. Only FULL blocks enter the prefix cache, keyed by a hash chain of their
// tokens and of the blocks before them, so two sequences with the same first k*block_size tokens share those k
// blocks. A block held by the cache alone is "evictable": still found by hash, and handed out again (least
// recently freed first) only when no free block is left.
//
// A sequence never writes into a block another sequence holds: before a write into a shared partial block
// (after fork()), the block is replaced by a private copy; the copies to make are queued for the model runner
// (take_copies()), which performs them in the KV cache before the forward that writes.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model/kv_cache.h"

namespace oar {

class BlockManager {
 public:
  using SeqId = uint64_t;

  // The geometry is the KV cache's (KVCache::geometry()), read by reference: it must outlive the manager.
  BlockManager(const KVGeometry& geometry, bool enable_prefix_caching);
  BlockManager(KVGeometry&&, bool) = delete;  // a temporary would dangle
  BlockManager(const KVGeometry&&, bool) = delete;

  // The cached full blocks that the start of `tokens` can reuse. At most (tokens.size() - 1) / block_size
  // blocks: the last token is always computed again, so that its logits exist and no write lands in a
  // cached block.
  struct PrefixMatch {
    std::vector<int32_t> blocks;
    std::vector<uint64_t> hashes;
    int64_t num_tokens = 0;  // blocks.size() * block_size
    int64_t evictable = 0;   // matched blocks held by the cache alone (reusing them takes them off the free count)
  };
  PrefixMatch match_prefix(const std::vector<int32_t>& tokens) const;

  // Whether a new sequence reusing `match` can get blocks for its first `total_tokens` positions.
  bool can_admit(const PrefixMatch& match, int64_t total_tokens) const;
  // Creates the sequence's table: the matched blocks (shared), then fresh blocks up to total_tokens positions.
  // Counts the prefix-cache queries and hits. False (and no change) when blocks run short.
  bool admit(SeqId id, const std::vector<int32_t>& tokens, const PrefixMatch& match, int64_t total_tokens);

  // Makes the table cover `total_tokens` positions, replacing a shared block that the next write
  // (at position num_cached(id)) would touch by a private copy. False (and no change) when blocks run short.
  bool ensure_slots(SeqId id, int64_t total_tokens);
  // The first `total_tokens` of `tokens` are now in the cache: blocks that became full enter the prefix cache.
  void commit(SeqId id, const int32_t* tokens, int64_t total_tokens);
  // The child shares every block of the parent (and its cached-token count).
  void fork(SeqId parent, SeqId child);
  // Releases the sequence's blocks (tail first, so a prefix outlives its continuations in the cache).
  void free(SeqId id);

  bool has(SeqId id) const { return seqs_.count(id) != 0; }
  const std::vector<int32_t>& table(SeqId id) const;
  int64_t num_cached(SeqId id) const;  // positions committed

  // Copy-on-write copies (src, dst) made since the last call; they must happen before the next forward.
  std::vector<std::pair<int32_t, int32_t>> take_copies();

  int64_t block_size() const { return geo_.block_size; }
  int64_t num_blocks() const { return alloc_.num_blocks(); }
  // Blocks a sequence could get now: free ones plus evictable cached ones.
  int64_t num_free_blocks() const { return alloc_.num_free() + int64_t(lru_.size()); }
  int64_t num_evictable_blocks() const { return int64_t(lru_.size()); }
  int64_t blocks_needed(int64_t tokens) const { return (tokens + block_size() - 1) / block_size(); }
  bool is_cached(int32_t block) const { return meta_[size_t(block)].cached; }
  const BlockAllocator& allocator() const { return alloc_; }
  std::vector<SeqId> sequences() const;

  // Prefix-cache lookups and hits, in full blocks, counted at admission.
  int64_t prefix_queries() const { return queries_; }
  int64_t prefix_hits() const { return hits_; }

 private:
  struct Seq {
    std::vector<int32_t> table;
    std::vector<uint64_t> hashes;  // of the full blocks committed so far (table[0 .. hashes.size()))
    int64_t cached = 0;
  };
  struct BlockMeta {
    bool cached = false;     // in by_hash_ (and holding one reference)
    uint64_t hash = 0, parent_hash = 0;
    std::vector<int32_t> tokens;  // contents, checked on lookup so that a hash collision cannot share wrongly
    std::list<int32_t>::iterator lru_pos;
    bool in_lru = false;
  };

  static uint64_t chain_hash(uint64_t parent, const int32_t* tokens, int64_t n);
  int32_t lookup(uint64_t hash, uint64_t parent, const int32_t* tokens) const;
  int32_t allocate_block();  // evicts the least recently freed cached block when none is free; -1 if none
  void retain(int32_t b);
  void release(int32_t b);
  Seq& seq(SeqId id);
  const Seq& seq(SeqId id) const;

  const KVGeometry& geo_;
  bool prefix_caching_;
  BlockAllocator alloc_;
  std::vector<BlockMeta> meta_;
  std::unordered_map<uint64_t, int32_t> by_hash_;
  std::list<int32_t> lru_;  // evictable blocks, least recently freed first
  std::unordered_map<SeqId, Seq> seqs_;
  std::vector<std::pair<int32_t, int32_t>> copies_;
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace oar
