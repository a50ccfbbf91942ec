#include "router/policies.h"

#include <gtest/gtest.h>

#include <map>

#include "router/test_candidates.h"

namespace nebula::router {
namespace {

using testing::candidates;
using testing::chosen;

TEST(RouterSimplePolicies, EveryPolicyChoosesNothingFromNoCandidates) {
  RouteContext context;
  context.session_key = "s";
  context.prefix_hashes = block_hashes(std::string(640, 'x'));
  for (const char* spec :
       {"least-outstanding", "round-robin", "power-of-two", "session", "prefix", "kv-load", "prefix+load"}) {
    auto policy = make_policy(spec);
    ASSERT_TRUE(policy.ok());
    EXPECT_EQ((*policy)->choose(context, {}), std::nullopt) << spec;
  }
}

TEST(RouterSimplePolicies, EveryPolicyTakesTheOnlyCandidate) {
  RouteContext context;
  context.session_key = "s";
  auto one = candidates({{"a", 1000}});
  for (const char* spec :
       {"least-outstanding", "round-robin", "power-of-two", "session", "prefix", "kv-load", "prefix+load"}) {
    auto policy = make_policy(spec);
    ASSERT_TRUE(policy.ok());
    EXPECT_EQ((*policy)->choose(context, one), 0u) << spec;
  }
}

TEST(RouterSimplePolicies, RoundRobinTakesEachInTurnWhateverTheLoad) {
  RoundRobin policy;
  auto from = candidates({{"a", 100}, {"b", 0}, {"c", 5}});
  std::string order;
  for (int i = 0; i < 6; ++i) order += chosen(policy, {}, from);
  EXPECT_EQ(order, "abcabc");
}

TEST(RouterSimplePolicies, LeastOutstandingTakesTheFewestAndRotatesTies) {
  LeastOutstanding policy;
  EXPECT_EQ(chosen(policy, {}, candidates({{"a", 3}, {"b", 1}, {"c", 2}})), "b");
  auto tied = candidates({{"a", 1}, {"b", 4}, {"c", 1}});
  std::string order;
  for (int i = 0; i < 4; ++i) order += chosen(policy, {}, tied);
  EXPECT_EQ(order.find('b'), std::string::npos);
  EXPECT_NE(order.find('a'), std::string::npos);
  EXPECT_NE(order.find('c'), std::string::npos);
}

TEST(RouterSimplePolicies, PowerOfTwoNeverTakesTheMostLoadedOfTwoAndSpreadsTies) {
  PowerOfTwo policy(42);
  // With two candidates both are always drawn: the less loaded wins every time.
  auto two = candidates({{"a", 5}, {"b", 2}});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(chosen(policy, {}, two), "b");
  // The most loaded of several is never chosen: it loses against whichever other is drawn.
  auto four = candidates({{"a", 1}, {"b", 1}, {"c", 9}, {"d", 1}});
  std::map<std::string, int> counts;
  for (int i = 0; i < 3000; ++i) ++counts[chosen(policy, {}, four)];
  EXPECT_EQ(counts["c"], 0);
  for (const char* name : {"a", "b", "d"}) EXPECT_GT(counts[name], 800) << name;
  // Equal load: in-flight tokens decide.
  auto tokens = candidates({{"a", 1}, {"b", 1}});
  tokens[0].inflight_tokens = 500;
  tokens[1].inflight_tokens = 10;
  EXPECT_EQ(chosen(policy, {}, tokens), "b");
}

TEST(RouterSimplePolicies, PowerOfTwoIsDeterministicGivenTheSeed) {
  auto from = candidates({{"a", 1}, {"b", 1}, {"c", 1}, {"d", 1}, {"e", 1}});
  auto sequence = [&](uint64_t seed) {
    PowerOfTwo policy(seed);
    std::string picks;
    for (int i = 0; i < 64; ++i) picks += chosen(policy, {}, from);
    return picks;
  };
  EXPECT_EQ(sequence(1), sequence(1));
  EXPECT_NE(sequence(1), sequence(2));
}

}  // namespace
}  // namespace nebula::router
