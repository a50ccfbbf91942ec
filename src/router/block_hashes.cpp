#include <algorithm>
#include <string_view>

#include "router/policy.h"

namespace nebula::router {

// FNV-1a over each block, chained through the previous block's hash: hash i depends on every
// byte up to the end of block i. Not a cryptographic hash: a collision costs a cache miss.
std::vector<uint64_t> block_hashes(std::string_view text, size_t block_chars, size_t max_blocks) {
  std::vector<uint64_t> hashes;
  if (block_chars == 0) return hashes;
  size_t blocks = std::min(text.size() / block_chars, max_blocks);
  hashes.reserve(blocks);
  uint64_t hash = 1469598103934665603ull;
  for (size_t block = 0; block < blocks; ++block) {
    for (char c : text.substr(block * block_chars, block_chars)) {
      hash ^= static_cast<unsigned char>(c);
      hash *= 1099511628211ull;
    }
    hashes.push_back(hash);
  }
  return hashes;
}

}  // namespace nebula::router
