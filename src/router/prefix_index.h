#pragma once
// What each replica probably holds in its prefix cache, learnt from where this gateway sent
// prompts: the prompt's chained block hashes (block_hashes()), per replica, least recently used
// first out. Approximate on purpose: the engine evicts on its own schedule and other gateways
// send it prompts too; a wrong guess costs a cache miss, never a wrong answer.
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>

#include "router/lru.h"

namespace nebula::router {

// A block is 64 characters of prompt, about 16 tokens.
inline constexpr int64_t kTokensPerBlock = 16;
// Blocks kept per replica at most, whatever its engine says it holds.
inline constexpr size_t kMaxIndexBlocks = size_t{1} << 20;

class PrefixIndex {
 public:
  // `default_blocks`: blocks kept per replica while its engine's KV capacity is unknown.
  explicit PrefixIndex(size_t default_blocks) : default_blocks_(default_blocks) {}

  // Keep as many blocks as the engine's KV cache holds tokens for (0 = unknown: the default).
  void set_capacity(const std::string& replica, int64_t kv_capacity_tokens);
  // The replica was sent a prompt with these hashes.
  void insert(const std::string& replica, std::span<const uint64_t> hashes);
  // How many leading blocks of the prompt the replica probably has cached.
  size_t match(const std::string& replica, std::span<const uint64_t> hashes) const;
  void remove(const std::string& replica) { replicas_.erase(replica); }

  size_t blocks(const std::string& replica) const;
  size_t capacity(const std::string& replica) const;

 private:
  size_t blocks_for(int64_t kv_capacity_tokens) const;
  Lru<uint64_t, char>& of(const std::string& replica);

  size_t default_blocks_;
  std::unordered_map<std::string, Lru<uint64_t, char>> replicas_;
};

}  // namespace nebula::router
