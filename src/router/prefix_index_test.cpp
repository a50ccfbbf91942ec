#include "router/prefix_index.h"

#include <gtest/gtest.h>

#include <vector>

#include "router/lru.h"
#include "router/policy.h"

namespace nebula::router {
namespace {

std::vector<uint64_t> prompt(char fill, size_t blocks) {
  return block_hashes(std::string(blocks * 64, fill));
}

TEST(RouterLru, DropsTheLeastRecentlyPutFirst) {
  Lru<int, int> lru(2);
  lru.put(1, 10);
  lru.put(2, 20);
  lru.put(1, 11);  // 1 is now the most recent
  lru.put(3, 30);
  EXPECT_FALSE(lru.contains(2));
  EXPECT_EQ(*lru.find(1), 11);
  EXPECT_EQ(*lru.find(3), 30);
  lru.set_capacity(1);
  EXPECT_EQ(lru.size(), 1u);
  EXPECT_TRUE(lru.contains(3));
  lru.erase_if([](int key, int) { return key == 3; });
  EXPECT_EQ(lru.size(), 0u);
  EXPECT_EQ(lru.find(3), nullptr);
}

TEST(RouterPrefixIndex, MatchesTheLeadingBlocksAReplicaWasSent) {
  PrefixIndex index(100);
  std::string shared(4 * 64, 's');
  auto first = block_hashes(shared + std::string(2 * 64, 'a'));
  auto second = block_hashes(shared + std::string(3 * 64, 'b'));
  index.insert("r1", first);
  EXPECT_EQ(index.match("r1", first), 6u);
  EXPECT_EQ(index.match("r1", second), 4u);  // the shared system prompt
  EXPECT_EQ(index.match("r2", second), 0u);
  EXPECT_EQ(index.match("r1", {}), 0u);
  index.remove("r1");
  EXPECT_EQ(index.match("r1", first), 0u);
  EXPECT_EQ(index.blocks("r1"), 0u);
}

TEST(RouterPrefixIndex, EvictsLeastRecentlyUsedBlocksAndKeepsPromptStartsLongest) {
  PrefixIndex index(8);
  auto old_prompt = prompt('o', 6);
  auto new_prompt = prompt('n', 4);
  index.insert("r", old_prompt);
  index.insert("r", new_prompt);
  EXPECT_EQ(index.blocks("r"), 8u);
  EXPECT_EQ(index.match("r", new_prompt), 4u);
  // Of the old prompt the first blocks survive (they were put last), the tail is gone.
  EXPECT_EQ(index.match("r", old_prompt), 4u);
  // Sending the old prompt again makes it recent and pushes out the new one's tail.
  index.insert("r", old_prompt);
  EXPECT_EQ(index.match("r", old_prompt), 6u);
  EXPECT_EQ(index.match("r", new_prompt), 2u);
}

TEST(RouterPrefixIndex, KeepsAsManyBlocksAsTheEnginesKvCacheHoldsTokens) {
  PrefixIndex index(1000);
  index.set_capacity("small", 16 * 5);  // 5 blocks of 16 tokens
  index.insert("small", prompt('x', 20));
  EXPECT_EQ(index.blocks("small"), 5u);
  EXPECT_EQ(index.capacity("small"), 5u);
  // The engine grew (restarted with more memory): the bound follows.
  index.set_capacity("small", 16 * 50);
  index.insert("small", prompt('x', 20));
  EXPECT_EQ(index.blocks("small"), 20u);
  // Unknown again: the default; absurd capacities are capped.
  index.set_capacity("small", 0);
  EXPECT_EQ(index.capacity("small"), 1000u);
  index.set_capacity("huge", int64_t{1} << 50);
  EXPECT_EQ(index.capacity("huge"), kMaxIndexBlocks);
  index.set_capacity("tiny", 3);
  EXPECT_EQ(index.capacity("tiny"), 1u);
}

}  // namespace
}  // namespace nebula::router
