#include "sim/kv_cache.h"

#include <stdexcept>

namespace nebula::sim {
namespace {

uint64_t mix(uint64_t value) {  // splitmix64's finaliser
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ULL;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebULL;
  return value ^ (value >> 31);
}

}  // namespace

std::vector<uint64_t> prompt_block_hashes(const std::vector<uint32_t>& tokens, int block_size) {
  std::vector<uint64_t> hashes;
  size_t full_blocks = tokens.size() / static_cast<size_t>(block_size);
  hashes.reserve(full_blocks);
  uint64_t parent = 0x6e6562756c61ULL;  // any non-zero start
  for (size_t block = 0; block < full_blocks; ++block) {
    uint64_t hash = mix(parent);
    for (size_t i = block * block_size; i < (block + 1) * block_size; ++i) hash = mix(hash ^ tokens[i]);
    hashes.push_back(hash);
    parent = hash;
  }
  return hashes;
}

KvCache::KvCache(int num_blocks, int block_size) : block_size_(block_size) {
  if (num_blocks < 1) throw std::invalid_argument("the KV cache needs at least one block");
  if (block_size < 1) throw std::invalid_argument("the KV block size must be at least 1");
  blocks_.resize(static_cast<size_t>(num_blocks));
  for (int index = 0; index < num_blocks; ++index) push_back(index);
}

void KvCache::unlink(int index) {
  Block& block = blocks_[index];
  if (block.prev >= 0)
    blocks_[block.prev].next = block.next;
  else
    head_ = block.next;
  if (block.next >= 0)
    blocks_[block.next].prev = block.prev;
  else
    tail_ = block.prev;
  block.prev = block.next = -1;
  block.in_free_list = false;
  --free_count_;
}

void KvCache::push_back(int index) {
  Block& block = blocks_[index];
  block.prev = tail_;
  block.next = -1;
  if (tail_ >= 0)
    blocks_[tail_].next = index;
  else
    head_ = index;
  tail_ = index;
  block.in_free_list = true;
  ++free_count_;
}

void KvCache::push_front(int index) {
  Block& block = blocks_[index];
  block.prev = -1;
  block.next = head_;
  if (head_ >= 0)
    blocks_[head_].prev = index;
  else
    tail_ = index;
  head_ = index;
  block.in_free_list = true;
  ++free_count_;
}

std::vector<int> KvCache::find_prefix(const std::vector<uint64_t>& hashes, size_t max_blocks) const {
  std::vector<int> found;
  for (size_t i = 0; i < hashes.size() && i < max_blocks; ++i) {
    auto it = by_hash_.find(hashes[i]);
    if (it == by_hash_.end()) break;
    found.push_back(it->second);
  }
  return found;
}

bool KvCache::allocate(std::vector<int>& table, const std::vector<int>& prefix, int total_tokens) {
  int prefix_in_free_list = 0;
  for (int index : prefix) prefix_in_free_list += blocks_[index].in_free_list ? 1 : 0;
  int needed = blocks_for(total_tokens) - static_cast<int>(table.size()) - static_cast<int>(prefix.size());
  if (needed < 0) needed = 0;
  if (needed > free_count_ - prefix_in_free_list) return false;
  for (int index : prefix) {
    Block& block = blocks_[index];
    if (block.in_free_list) unlink(index);
    ++block.ref_count;
    table.push_back(index);
  }
  for (int i = 0; i < needed; ++i) {
    int index = head_;
    unlink(index);
    Block& block = blocks_[index];
    if (block.published) {
      by_hash_.erase(block.hash);
      block.published = false;
      ++evictions_;
    }
    block.ref_count = 1;
    table.push_back(index);
  }
  return true;
}

void KvCache::publish(const std::vector<int>& table, const std::vector<uint64_t>& hashes, size_t from, size_t to) {
  for (size_t i = from; i < to && i < table.size() && i < hashes.size(); ++i) {
    Block& block = blocks_[table[i]];
    if (block.published) continue;
    if (by_hash_.emplace(hashes[i], table[i]).second) {
      block.published = true;
      block.hash = hashes[i];
    }
  }
}

void KvCache::release(std::vector<int>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) {
    Block& block = blocks_[*it];
    if (--block.ref_count > 0) continue;
    if (block.published)
      push_back(*it);
    else
      push_front(*it);
  }
  table.clear();
}

bool KvCache::reset() {
  if (free_count_ != num_blocks()) return false;
  for (Block& block : blocks_) block.published = false;
  by_hash_.clear();
  return true;
}

}  // namespace nebula::sim
