#include "engine/block_manager.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/error.h"

namespace oar {
namespace {

uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint64_t kRootHash = 0x6F61722D6B762D31ull;  // the "parent" of a sequence's first block

}  // namespace

BlockManager::BlockManager(const KVGeometry& geometry, bool enable_prefix_caching)
    : geo_(geometry), prefix_caching_(enable_prefix_caching), alloc_(std::max<int64_t>(geometry.num_blocks, 0)),
      meta_(size_t(std::max<int64_t>(geometry.num_blocks, 0))) {
  if (geometry.num_blocks <= 0 || geometry.block_size <= 0)
    throw Error("block manager: need at least one block of at least one position");
}

uint64_t BlockManager::chain_hash(uint64_t parent, const int32_t* tokens, int64_t n) {
  uint64_t h = mix64(parent ^ 0x9E3779B97F4A7C15ull);
  for (int64_t i = 0; i < n; i++) h = mix64(h ^ (uint64_t(uint32_t(tokens[i])) + 0x9E3779B97F4A7C15ull + (h << 6)));
  return h;
}

int32_t BlockManager::lookup(uint64_t hash, uint64_t parent, const int32_t* tokens) const {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const BlockMeta& m = meta_[size_t(it->second)];
  if (m.parent_hash != parent || !std::equal(m.tokens.begin(), m.tokens.end(), tokens)) return -1;
  return it->second;
}

BlockManager::Seq& BlockManager::seq(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) throw Error("block manager: unknown sequence " + std::to_string(id));
  return it->second;
}

const BlockManager::Seq& BlockManager::seq(SeqId id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) throw Error("block manager: unknown sequence " + std::to_string(id));
  return it->second;
}

const std::vector<int32_t>& BlockManager::table(SeqId id) const { return seq(id).table; }
int64_t BlockManager::num_cached(SeqId id) const { return seq(id).cached; }

std::vector<BlockManager::SeqId> BlockManager::sequences() const {
  std::vector<SeqId> ids;
  for (const auto& kv : seqs_) ids.push_back(kv.first);
  return ids;
}

void BlockManager::retain(int32_t b) {
  BlockMeta& m = meta_[size_t(b)];
  if (m.in_lru) {
    lru_.erase(m.lru_pos);
    m.in_lru = false;
  }
  alloc_.retain(b);
}

void BlockManager::release(int32_t b) {
  alloc_.release(b);
  BlockMeta& m = meta_[size_t(b)];
  if (m.cached && alloc_.ref_count(b) == 1) {  // only the cache holds it now
    m.lru_pos = lru_.insert(lru_.end(), b);
    m.in_lru = true;
  }
}

int32_t BlockManager::allocate_block() {
  if (alloc_.num_free() == 0) {
    if (lru_.empty()) return -1;
    // Evict the least recently freed cached block: forget its hash, drop the cache's reference.
    int32_t b = lru_.front();
    lru_.pop_front();
    BlockMeta& m = meta_[size_t(b)];
    m.in_lru = false;
    m.cached = false;
    by_hash_.erase(m.hash);
    m.tokens.clear();
    alloc_.release(b);
  }
  return alloc_.allocate();
}

BlockManager::PrefixMatch BlockManager::match_prefix(const std::vector<int32_t>& tokens) const {
  PrefixMatch m;
  if (!prefix_caching_ || tokens.empty()) return m;
  const int64_t max_blocks = (int64_t(tokens.size()) - 1) / block_size();
  uint64_t parent = kRootHash;
  for (int64_t k = 0; k < max_blocks; k++) {
    const int32_t* t = tokens.data() + k * block_size();
    uint64_t h = chain_hash(parent, t, block_size());
    int32_t b = lookup(h, parent, t);
    if (b < 0) break;
    m.blocks.push_back(b);
    m.hashes.push_back(h);
    if (meta_[size_t(b)].in_lru) m.evictable++;
    parent = h;
  }
  m.num_tokens = int64_t(m.blocks.size()) * block_size();
  return m;
}

bool BlockManager::can_admit(const PrefixMatch& match, int64_t total_tokens) const {
  int64_t fresh = std::max<int64_t>(0, blocks_needed(total_tokens) - int64_t(match.blocks.size()));
  return fresh + match.evictable <= num_free_blocks();
}

bool BlockManager::admit(SeqId id, const std::vector<int32_t>& tokens, const PrefixMatch& match, int64_t total_tokens) {
  if (seqs_.count(id)) throw Error("block manager: sequence " + std::to_string(id) + " already has blocks");
  if (!can_admit(match, total_tokens)) return false;
  Seq s;
  // Take the shared blocks first, so that allocating the fresh ones cannot evict them.
  for (int32_t b : match.blocks) retain(b);
  s.table = match.blocks;
  s.hashes = match.hashes;
  s.cached = match.num_tokens;
  while (int64_t(s.table.size()) < blocks_needed(total_tokens)) {
    int32_t b = allocate_block();
    if (b < 0) throw Error("block manager: free count out of step");  // can_admit said there was room
    s.table.push_back(b);
  }
  if (prefix_caching_) {
    queries_ += (int64_t(tokens.size()) - 1) / block_size();
    hits_ += int64_t(match.blocks.size());
  }
  seqs_.emplace(id, std::move(s));
  return true;
}

bool BlockManager::ensure_slots(SeqId id, int64_t total_tokens) {
  Seq& s = seq(id);
  // Blocks from the one holding the next position on will be written; those another sequence holds need a copy.
  std::vector<size_t> shared;
  for (size_t k = size_t(s.cached / block_size()); k < s.table.size(); k++) {
    int32_t b = s.table[k];
    if (alloc_.ref_count(b) - (meta_[size_t(b)].cached ? 1 : 0) > 1) shared.push_back(k);
  }
  int64_t fresh = std::max<int64_t>(0, blocks_needed(total_tokens) - int64_t(s.table.size()));
  if (int64_t(shared.size()) + fresh > num_free_blocks()) return false;
  for (size_t k : shared) {
    int32_t nb = allocate_block();
    copies_.emplace_back(s.table[k], nb);
    release(s.table[k]);
    s.table[k] = nb;
  }
  for (int64_t i = 0; i < fresh; i++) s.table.push_back(allocate_block());
  return true;
}

void BlockManager::commit(SeqId id, const int32_t* tokens, int64_t total_tokens) {
  Seq& s = seq(id);
  if (total_tokens > int64_t(s.table.size()) * block_size())
    throw Error("block manager: committed tokens beyond the sequence's blocks");
  s.cached = std::max(s.cached, total_tokens);
  for (int64_t k = int64_t(s.hashes.size()); (k + 1) * block_size() <= s.cached; k++) {
    uint64_t parent = k ? s.hashes[size_t(k - 1)] : kRootHash;
    const int32_t* t = tokens + k * block_size();
    uint64_t h = chain_hash(parent, t, block_size());
    s.hashes.push_back(h);
    int32_t b = s.table[size_t(k)];
    BlockMeta& m = meta_[size_t(b)];
    // The first block with these contents is the one the cache keeps; a duplicate stays private.
    if (!prefix_caching_ || m.cached || by_hash_.count(h)) continue;
    m.cached = true;
    m.hash = h;
    m.parent_hash = parent;
    m.tokens.assign(t, t + block_size());
    by_hash_[h] = b;
    alloc_.retain(b);  // the cache's reference
  }
}

void BlockManager::fork(SeqId parent, SeqId child) {
  if (seqs_.count(child)) throw Error("block manager: sequence " + std::to_string(child) + " already has blocks");
  Seq s = seq(parent);
  for (int32_t b : s.table) retain(b);
  seqs_.emplace(child, std::move(s));
}

void BlockManager::free(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  const std::vector<int32_t>& t = it->second.table;
  for (size_t k = t.size(); k-- > 0;) release(t[k]);
  seqs_.erase(it);
}

std::vector<std::pair<int32_t, int32_t>> BlockManager::take_copies() {
  std::vector<std::pair<int32_t, int32_t>> c;
  c.swap(copies_);
  return c;
}

}  // namespace oar
