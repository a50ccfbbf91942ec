#include "router/policies.h"

#include <gtest/gtest.h>

#include <map>

#include "router/test_candidates.h"

namespace nebula::router {
namespace {

using testing::candidates;
using testing::chosen;
using testing::route;

RouteContext session(const std::string& key) {
  RouteContext context;
  context.session_key = key;
  return context;
}

std::unique_ptr<Policy> session_policy(uint64_t seed = 1) {
  auto policy = make_policy("session", {.seed = seed});
  EXPECT_TRUE(policy.ok());
  return std::move(*policy);
}

TEST(RouterSession, KeysSpreadOverReplicasAndStayPut) {
  auto policy = session_policy();
  auto from = candidates({{"r0", 0}, {"r1", 0}, {"r2", 0}, {"r3", 0}, {"r4", 0}});
  std::map<std::string, int> per_replica;
  std::map<std::string, std::string> first;
  for (int key = 0; key < 1000; ++key) {
    first["user-" + std::to_string(key)] = route(*policy, session("user-" + std::to_string(key)), from);
    ++per_replica[first["user-" + std::to_string(key)]];
  }
  // 100 virtual nodes per replica: each gets its share give or take half.
  for (const auto& [replica, count] : per_replica) {
    EXPECT_GT(count, 100) << replica;
    EXPECT_LT(count, 300) << replica;
  }
  EXPECT_EQ(per_replica.size(), 5u);
  for (const auto& [key, replica] : first) EXPECT_EQ(route(*policy, session(key), from), replica) << key;
}

TEST(RouterSession, AReplicaLeavingMovesOnlyItsOwnSessions) {
  auto policy = session_policy();
  auto all = candidates({{"r0", 0}, {"r1", 0}, {"r2", 0}, {"r3", 0}, {"r4", 0}});
  std::map<std::string, std::string> before;
  for (int key = 0; key < 1000; ++key) {
    std::string name = "conversation-" + std::to_string(key);
    before[name] = route(*policy, session(name), all);
  }
  policy->removed("r2");
  auto left = candidates({{"r0", 0}, {"r1", 0}, {"r3", 0}, {"r4", 0}});
  int moved = 0, on_r2 = 0;
  std::map<std::string, int> r2_went_to;
  for (const auto& [name, replica] : before) {
    std::string after = route(*policy, session(name), left);
    if (replica == "r2") {
      ++on_r2;
      ++r2_went_to[after];
    } else {
      EXPECT_EQ(after, replica) << name;
    }
    moved += after != replica;
  }
  EXPECT_EQ(moved, on_r2);
  EXPECT_GT(on_r2, 100);
  // Its sessions spread over the others rather than all landing on one.
  EXPECT_GE(r2_went_to.size(), 3u);
}

TEST(RouterSession, TheRingAloneIsStableWhenAReplicaIsMissingFromTheCandidates) {
  // No memory of earlier routing (a new policy, as after a gateway restart): the ring alone maps
  // the keys, and without r1 only r1's keys land elsewhere.
  auto all = candidates({{"r0", 0}, {"r1", 0}, {"r2", 0}});
  auto without_r1 = candidates({{"r0", 0}, {"r2", 0}});
  int changed = 0, on_r1 = 0;
  for (int key = 0; key < 1000; ++key) {
    RouteContext context = session("k" + std::to_string(key));
    std::string with = chosen(*session_policy(9), context, all);
    std::string without = chosen(*session_policy(9), context, without_r1);
    on_r1 += with == "r1";
    changed += with != without;
    if (with != "r1") {
      EXPECT_EQ(with, without);
    }
  }
  EXPECT_EQ(changed, on_r1);
}

TEST(RouterSession, AnOverloadedReplicaTakesNoNewSession) {
  auto policy = session_policy();
  auto idle = candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}});
  std::string owner = chosen(*policy, session("alice"), idle);
  // The owner holds 10 of 10 requests in flight: the bound is ceil(1.25 x 11 / 4) = 4.
  auto busy = idle;
  for (auto& candidate : busy) candidate.outstanding = candidate.replica == owner ? 10 : 0;
  std::string elsewhere = chosen(*policy, session("alice"), busy);
  EXPECT_NE(elsewhere, owner);
  EXPECT_FALSE(elsewhere.empty());
  // At the bound exactly it still takes it: 3 in flight, the others 2 each: ceil(1.25 x 10 / 4) = 4.
  for (auto& candidate : busy) candidate.outstanding = candidate.replica == owner ? 3 : 2;
  EXPECT_EQ(chosen(*policy, session("alice"), busy), owner);
}

TEST(RouterSession, AnAssignedSessionStaysUntilItsReplicaIsOverloaded) {
  auto policy = session_policy();
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}});
  std::string owner = chosen(*policy, session("bob"), from);
  // Sent elsewhere once (say the owner was briefly overloaded): the session now lives there.
  std::string other = owner == "a" ? "b" : "a";
  policy->routed(session("bob"), other);
  EXPECT_EQ(dynamic_cast<SessionAffinity&>(*policy).assigned("bob"), other);
  EXPECT_EQ(chosen(*policy, session("bob"), from), other);
  // It stays while within the bound ...
  for (auto& candidate : from) candidate.outstanding = candidate.replica == other ? 3 : 2;
  EXPECT_EQ(chosen(*policy, session("bob"), from), other);
  // ... and leaves once above it: 5 of 11, ceil(1.25 x 12 / 4) = 4.
  for (auto& candidate : from) candidate.outstanding = candidate.replica == other ? 5 : 2;
  EXPECT_NE(chosen(*policy, session("bob"), from), other);
  // Not a candidate (draining, breaker open): the ring decides, and the memory is kept.
  std::vector<Candidate> without;
  for (const auto& candidate : candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}})) {
    if (candidate.replica != other) without.push_back(candidate);
  }
  EXPECT_NE(chosen(*policy, session("bob"), without), other);
  EXPECT_EQ(dynamic_cast<SessionAffinity&>(*policy).assigned("bob"), other);
}

TEST(RouterSession, BoundedLoadsKeepEveryReplicaNearTheMean) {
  // One point per replica makes very uneven arcs, so sessions would pile onto a few replicas;
  // the bound stops that. Each routed request stays in flight.
  auto made = make_policy("session,vnodes=1", {.seed = 3});
  ASSERT_TRUE(made.ok());
  auto& policy = *made;
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}});
  for (int key = 0; key < 400; ++key) {
    auto index = policy->choose(session("s" + std::to_string(key)), from);
    ASSERT_TRUE(index);
    ++from[*index].outstanding;
  }
  for (const auto& candidate : from) EXPECT_LE(candidate.outstanding, 125) << candidate.replica;  // 1.25 x 100
}

TEST(RouterSession, WithoutASessionKeyItIsLeastOutstanding) {
  auto policy = session_policy();
  EXPECT_EQ(chosen(*policy, {}, candidates({{"a", 4}, {"b", 1}, {"c", 3}})), "b");
}

TEST(RouterSession, TheSameSeedMapsKeysTheSameWayAnotherSeedDoesNot) {
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}, {"e", 0}});
  auto mapping = [&](uint64_t seed) {
    auto policy = session_policy(seed);
    std::string keys;
    for (int key = 0; key < 100; ++key) keys += chosen(*policy, session(std::to_string(key)), from);
    return keys;
  };
  EXPECT_EQ(mapping(5), mapping(5));
  EXPECT_NE(mapping(5), mapping(6));
}

TEST(RouterSession, RemovedReplicasFreeTheirSlotsForNewOnes) {
  auto policy = session_policy();
  // Replicas come and go (rollouts): the ring never holds more than the live ones.
  for (int generation = 0; generation < 50; ++generation) {
    auto from =
        candidates({{"g" + std::to_string(generation) + "-a", 0}, {"g" + std::to_string(generation) + "-b", 0}});
    std::string replica = route(*policy, session("user"), from);
    EXPECT_TRUE(replica == from[0].replica || replica == from[1].replica);
    policy->removed(from[0].replica);
    policy->removed(from[1].replica);
    EXPECT_EQ(dynamic_cast<SessionAffinity&>(*policy).assigned("user"), "");
  }
}

}  // namespace
}  // namespace nebula::router
