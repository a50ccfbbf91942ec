#include "router/policies.h"

#include <gtest/gtest.h>

#include <limits>
#include <map>
#include <random>

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

namespace nebula::router {
namespace {

// Random candidates (duplicate names, negative counts, NaN and infinite engine figures, times in
// the future) and random calls, for every policy: a choice is always one of the candidates.
TEST(RouterSimplePolicies, HostileCandidatesNeverMakeAPolicyChooseOutsideTheList) {
  std::mt19937_64 random(99);
  const std::vector<double> figures = {-1,
                                       0,
                                       0.5,
                                       1,
                                       7,
                                       1e300,
                                       -1e300,
                                       std::numeric_limits<double>::infinity(),
                                       std::numeric_limits<double>::quiet_NaN()};
  const SteadyClock::time_point now = SteadyClock::time_point{} + std::chrono::hours(1);
  for (const char* spec :
       {"least-outstanding", "round-robin", "power-of-two", "session,vnodes=3", "prefix,max-blocks=4", "kv-load",
        "prefix+load,prefix=1,queue=1,kv=1,outstanding=1,max-blocks=4"}) {
    auto made = make_policy(spec, {.seed = 5});
    ASSERT_TRUE(made.ok());
    auto& policy = **made;
    for (int round = 0; round < 3000; ++round) {
      std::vector<Candidate> from(random() % 6);
      for (auto& candidate : from) {
        candidate.replica = "r" + std::to_string(random() % 4);
        candidate.outstanding = static_cast<int>(random() % 7) - 2;
        candidate.inflight_tokens = static_cast<int64_t>(random() % 5000) - 100;
        candidate.engine.waiting = figures[random() % figures.size()];
        candidate.engine.kv_usage = figures[random() % figures.size()];
        candidate.engine.kv_capacity_tokens = static_cast<int64_t>(random() % 3) * 1000 - 1000;
        candidate.engine.at = now - std::chrono::milliseconds(static_cast<int64_t>(random() % 20'000) - 5'000);
      }
      RouteContext context;
      context.now = now;
      context.session_key = random() % 3 ? "s" + std::to_string(random() % 10) : "";
      context.prefix_hashes = block_hashes(std::string(random() % 400, static_cast<char>('a' + random() % 3)));
      context.prompt_tokens = static_cast<int64_t>(random() % 1000) - 10;
      auto index = policy.choose(context, from);
      if (from.empty()) {
        EXPECT_FALSE(index) << spec;
        continue;
      }
      ASSERT_TRUE(index) << spec;
      ASSERT_LT(*index, from.size()) << spec;
      policy.routed(context, from[*index].replica);
      if (random() % 50 == 0) policy.removed("r" + std::to_string(random() % 4));
    }
  }
}

}  // namespace
}  // namespace nebula::router
