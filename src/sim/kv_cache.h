#pragma once
// The simulated paged KV cache, shaped like vLLM v1's KVCacheManager: fixed-size blocks of
// block_size tokens, a block table per sequence, reference counts so sequences share cached
// prefix blocks, and one free list that doubles as the LRU of evictable cached blocks.
// Not thread-safe: the engine owns it and calls it from its step loop.
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace nebula::sim {

// The chained hashes of the full blocks of a prompt: hash i covers tokens [0, (i+1)*block_size),
// so two prompts share block i's hash only when they share everything up to its end.
std::vector<uint64_t> prompt_block_hashes(const std::vector<uint32_t>& tokens, int block_size);

class KvCache {
 public:
  // Throws std::invalid_argument unless num_blocks >= 1 and block_size >= 1.
  KvCache(int num_blocks, int block_size);

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int block_size() const { return block_size_; }
  // Blocks no sequence holds: empty ones and evictable cached ones.
  int free_blocks() const { return free_count_; }
  // Blocks whose content is published under a hash (held or evictable).
  int cached_blocks() const { return static_cast<int>(by_hash_.size()); }
  // vLLM's kv_cache_usage_perc: the share of blocks some sequence holds, 0..1.
  double usage() const { return 1.0 - static_cast<double>(free_count_) / static_cast<double>(blocks_.size()); }
  uint64_t evictions() const { return evictions_; }
  int blocks_for(int tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // The cached blocks holding the longest prefix of `hashes` (at most max_blocks), in order.
  std::vector<int> find_prefix(const std::vector<uint64_t>& hashes, size_t max_blocks) const;
  // Grows `table` (a sequence's blocks) to hold total_tokens: `prefix` (from find_prefix, only
  // when the table is empty) is taken first, then fresh blocks from the head of the free list,
  // evicting the cached content they held. Returns false and changes nothing when too few
  // blocks are free.
  bool allocate(std::vector<int>& table, const std::vector<int>& prefix, int total_tokens);
  // Publishes table[from, to) under hashes[from, to): their KV is computed and may be reused.
  // A hash already published by another block (two sequences computed it at once) stays with
  // the first block.
  void publish(const std::vector<int>& table, const std::vector<uint64_t>& hashes, size_t from, size_t to);
  // Drops the sequence's hold on its blocks and empties table. Blocks nobody holds any more join
  // the free list: unpublished ones at the head (reused first), published ones at the tail in
  // reverse order, so the least recently used are evicted first and a sequence's last blocks go
  // before its first ones, as in vLLM.
  void release(std::vector<int>& table);
  // Forgets every published block (vLLM's reset_prefix_cache, done when it sleeps). Returns false
  // and does nothing while any block is held.
  bool reset();

 private:
  struct Block {
    int ref_count = 0;
    bool published = false;
    uint64_t hash = 0;
    int prev = -1;  // free-list links; -1 = none
    int next = -1;
    bool in_free_list = false;
  };

  void unlink(int index);
  void push_back(int index);
  void push_front(int index);

  int block_size_;
  std::vector<Block> blocks_;
  std::unordered_map<uint64_t, int> by_hash_;
  int head_ = -1;
  int tail_ = -1;
  int free_count_ = 0;
  uint64_t evictions_ = 0;
};

}  // namespace nebula::sim
