#include "router/policies.h"

#include <gtest/gtest.h>

#include "router/test_candidates.h"

namespace nebula::router {
namespace {

using testing::candidates;
using testing::chosen;
using testing::route;

RouteContext with_prompt(const std::string& text) {
  RouteContext context;
  context.prefix_hashes = block_hashes(text);
  return context;
}

std::unique_ptr<Policy> prefix_policy(std::string_view spec = "prefix") {
  auto policy = make_policy(spec, {.seed = 1});
  EXPECT_TRUE(policy.ok()) << (policy ? "" : policy.error().message);
  return std::move(*policy);
}

const std::string kSystem(10 * 64, 's');

TEST(RouterPrefix, FollowsTheLongestMatchWhileLoadIsBalanced) {
  auto policy = prefix_policy();
  auto idle = candidates({{"a", 0}, {"b", 0}, {"c", 0}});
  std::string home =
      route(*policy, with_prompt(kSystem + "first question, long enough to fill a block of text .."), idle);
  // Same system prompt, another question: 10 of 11 blocks match, above 0.5.
  auto busy = idle;
  for (auto& candidate : busy) candidate.outstanding = candidate.replica == home ? 20 : 0;
  EXPECT_EQ(chosen(*policy, with_prompt(kSystem + std::string(64, 'q')), busy), home);
}

TEST(RouterPrefix, LeavesTheMatchOnceLoadIsImbalanced) {
  auto policy = prefix_policy();
  auto from = candidates({{"a", 0}, {"b", 0}});
  std::string home = route(*policy, with_prompt(kSystem), from);
  std::string other = home == "a" ? "b" : "a";
  auto load = [&](int at_home, int at_other) {
    for (auto& candidate : from) candidate.outstanding = candidate.replica == home ? at_home : at_other;
    return chosen(*policy, with_prompt(kSystem), from);
  };
  EXPECT_EQ(load(32, 0), home);     // max - min = 32, not above 32
  EXPECT_EQ(load(33, 0), other);    // above 32 and above 1.5 x 0
  EXPECT_EQ(load(60, 40), home);    // 20 apart only
  EXPECT_EQ(load(100, 67), home);   // 33 apart, but 100 is not above 1.5 x 67 = 100.5
  EXPECT_EQ(load(110, 70), other);  // 40 apart and above 105
}

TEST(RouterPrefix, BelowTheThresholdTheLeastLoadedWins) {
  auto policy = prefix_policy();
  auto from = candidates({{"a", 0}, {"b", 0}});
  std::string home = route(*policy, with_prompt(std::string(2 * 64, 'p')), from);
  for (auto& candidate : from) candidate.outstanding = candidate.replica == home ? 5 : 1;
  // 2 of 4 blocks match: 0.5 is not above the threshold.
  EXPECT_NE(chosen(*policy, with_prompt(std::string(2 * 64, 'p') + std::string(2 * 64, 'z')), from), home);
  // A lower threshold follows it.
  auto eager = prefix_policy("prefix,threshold=0.4");
  for (auto& candidate : from) candidate.outstanding = 0;
  std::string eager_home = route(*eager, with_prompt(std::string(2 * 64, 'p')), from);
  for (auto& candidate : from) candidate.outstanding = candidate.replica == eager_home ? 5 : 1;
  EXPECT_EQ(chosen(*eager, with_prompt(std::string(2 * 64, 'p') + std::string(2 * 64, 'z')), from), eager_home);
}

TEST(RouterPrefix, ShortPromptsAndUnknownPrefixesGoToTheLeastLoaded) {
  auto policy = prefix_policy();
  auto from = candidates({{"a", 3}, {"b", 1}, {"c", 2}});
  EXPECT_EQ(chosen(*policy, with_prompt("hi"), from), "b");
  EXPECT_EQ(chosen(*policy, with_prompt(std::string(640, 'u')), from), "b");
}

TEST(RouterPrefix, ForgetsAReplicaThatLeft) {
  auto policy = prefix_policy();
  auto from = candidates({{"a", 0}, {"b", 0}});
  std::string home = route(*policy, with_prompt(kSystem), from);
  policy->removed(home);
  EXPECT_EQ(dynamic_cast<PrefixAware&>(*policy).index().blocks(home), 0u);
  for (auto& candidate : from) candidate.outstanding = candidate.replica == home ? 2 : 0;
  EXPECT_NE(chosen(*policy, with_prompt(kSystem), from), home);
}

TEST(RouterPrefix, TheIndexFollowsTheEnginesKvCapacity) {
  auto policy = prefix_policy("prefix,max-blocks=4");
  auto from = candidates({{"a", 0}});
  route(*policy, with_prompt(kSystem), from);
  const auto& index = dynamic_cast<PrefixAware&>(*policy).index();
  EXPECT_EQ(index.blocks("a"), 4u);  // the default bound while the capacity is unknown
  from[0].engine.kv_capacity_tokens = 16 * 100;
  route(*policy, with_prompt(kSystem), from);
  EXPECT_EQ(index.blocks("a"), 10u);
  from[0].engine.kv_capacity_tokens = 16 * 2;
  chosen(*policy, with_prompt(kSystem), from);
  EXPECT_EQ(index.blocks("a"), 2u);  // the engine shrank: evicted at once
}

TEST(RouterPrefix, ManyPromptsSpreadByPrefixAndStickPerPrefix) {
  auto policy = prefix_policy();
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}});
  std::map<char, std::string> home_of;
  for (char tenant : std::string("uvwxyz")) {
    std::string prompt = std::string(8 * 64, tenant);
    auto index = policy->choose(with_prompt(prompt), from);
    ASSERT_TRUE(index);
    home_of[tenant] = from[*index].replica;
    policy->routed(with_prompt(prompt), home_of[tenant]);
    ++from[*index].outstanding;
  }
  // Least-outstanding placed the six tenants two per replica.
  for (const auto& candidate : from) EXPECT_EQ(candidate.outstanding, 2) << candidate.replica;
  for (char tenant : std::string("uvwxyz")) {
    EXPECT_EQ(chosen(*policy, with_prompt(std::string(8 * 64, tenant) + std::string(64, '?')), from), home_of[tenant]);
  }
}

}  // namespace
}  // namespace nebula::router
