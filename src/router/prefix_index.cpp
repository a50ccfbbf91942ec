#include "router/prefix_index.h"

#include <algorithm>

namespace nebula::router {

size_t PrefixIndex::blocks_for(int64_t kv_capacity_tokens) const {
  if (kv_capacity_tokens <= 0) return default_blocks_;
  return static_cast<size_t>(std::clamp<int64_t>(kv_capacity_tokens / kTokensPerBlock, 1, kMaxIndexBlocks));
}

Lru<uint64_t, char>& PrefixIndex::of(const std::string& replica) {
  auto it = replicas_.find(replica);
  if (it == replicas_.end()) it = replicas_.emplace(replica, Lru<uint64_t, char>(default_blocks_)).first;
  return it->second;
}

void PrefixIndex::set_capacity(const std::string& replica, int64_t kv_capacity_tokens) {
  size_t wanted = blocks_for(kv_capacity_tokens);
  auto it = replicas_.find(replica);
  if (it == replicas_.end()) {
    if (wanted != default_blocks_) replicas_.emplace(replica, Lru<uint64_t, char>(wanted));
    return;
  }
  if (it->second.capacity() != wanted) it->second.set_capacity(wanted);
}

void PrefixIndex::insert(const std::string& replica, std::span<const uint64_t> hashes) {
  if (hashes.empty()) return;
  auto& blocks = of(replica);
  // Deepest block first, so the prompt's first blocks are the most recent and the last to go:
  // a block is only useful while every block before it is cached too.
  for (auto it = hashes.rbegin(); it != hashes.rend(); ++it) blocks.put(*it, 0);
}

size_t PrefixIndex::match(const std::string& replica, std::span<const uint64_t> hashes) const {
  auto it = replicas_.find(replica);
  if (it == replicas_.end()) return 0;
  size_t matched = 0;
  while (matched < hashes.size() && it->second.contains(hashes[matched])) ++matched;
  return matched;
}

size_t PrefixIndex::blocks(const std::string& replica) const {
  auto it = replicas_.find(replica);
  return it == replicas_.end() ? 0 : it->second.size();
}

size_t PrefixIndex::capacity(const std::string& replica) const {
  auto it = replicas_.find(replica);
  return it == replicas_.end() ? default_blocks_ : it->second.capacity();
}

}  // namespace nebula::router
