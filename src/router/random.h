#pragma once
// Seeded, platform-independent randomness and hashing for the policies: the same seed and the
// same calls give the same choices on every standard library (std::uniform_int_distribution
// does not promise that).
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace nebula::router {

// SplitMix64's finaliser: spreads every input bit over the whole word.
constexpr uint64_t mix64(uint64_t value) {
  value += 0x9e3779b97f4a7c15ull;
  value = (value ^ (value >> 30)) * 0xbf58476d1ce4e5b9ull;
  value = (value ^ (value >> 27)) * 0x94d049bb133111ebull;
  return value ^ (value >> 31);
}

// FNV-1a over the text, mixed with the seed: ring positions and session keys.
constexpr uint64_t hash_text(std::string_view text, uint64_t seed) {
  uint64_t hash = 1469598103934665603ull;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return mix64(hash ^ mix64(seed));
}

// SplitMix64: a tiny generator whose sequence depends only on the seed.
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ull;
    return mix64(state_ - 0x9e3779b97f4a7c15ull);
  }
  // Uniform in [0, bound); bound > 0. Lemire's multiply-shift (its bias is below 2^-32 here).
  size_t below(size_t bound) { return static_cast<size_t>((static_cast<unsigned __int128>(next()) * bound) >> 64); }

 private:
  uint64_t state_;
};

}  // namespace nebula::router
