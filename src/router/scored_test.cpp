#include "router/policies.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>

#include "router/test_candidates.h"

namespace nebula::router {
namespace {

using namespace std::chrono_literals;
using testing::candidates;
using testing::chosen;
using testing::route;

// A fixed "now"; engine figures are read relative to it.
const SteadyClock::time_point kNow = SteadyClock::time_point{} + 1h;

RouteContext at_now(std::string prompt = "") {
  RouteContext context;
  context.now = kNow;
  context.prefix_hashes = block_hashes(prompt);
  context.prompt_tokens = 100;
  context.output_tokens = 100;
  return context;
}

void engine(Candidate& candidate, double waiting, double kv_usage, SteadyClock::duration age = 100ms,
            int64_t capacity = 0) {
  candidate.engine.waiting = waiting;
  candidate.engine.running = 1;
  candidate.engine.kv_usage = kv_usage;
  candidate.engine.kv_capacity_tokens = capacity;
  candidate.engine.at = kNow - age;
}

std::vector<double> scores_of(Scorer& scorer, const RouteContext& context, const std::vector<Candidate>& from) {
  std::vector<double> scores(from.size(), -1);
  scorer.score(context, from, scores);
  return scores;
}

std::unique_ptr<Policy> policy_of(std::string_view spec, uint64_t seed = 1) {
  auto policy = make_policy(spec, {.seed = seed, .load_freshness = 5000ms});
  EXPECT_TRUE(policy.ok()) << (policy ? "" : policy.error().message);
  return std::move(*policy);
}

TEST(RouterScorers, MinMaxScoresLowerValuesHigher) {
  std::vector<double> scores(3);
  min_max_scores(std::vector<double>{2, 4, 6}, scores);
  EXPECT_EQ(scores, (std::vector<double>{1, 0.5, 0}));
  min_max_scores(std::vector<double>{3, 3, 3}, scores);
  EXPECT_EQ(scores, (std::vector<double>{1, 1, 1}));
}

TEST(RouterScorers, FreshMeansReadAndYoungEnough) {
  EngineLoad load;
  EXPECT_FALSE(fresh(load, kNow, 5000ms));  // never read
  load.at = kNow - 5000ms;
  EXPECT_TRUE(fresh(load, kNow, 5000ms));
  load.at = kNow - 5001ms;
  EXPECT_FALSE(fresh(load, kNow, 5000ms));
}

TEST(RouterScorers, QueueUsesEngineWaitingWhileFreshElseOutstanding) {
  QueueScorer scorer(5000ms);
  auto from = candidates({{"a", 1}, {"b", 9}});
  engine(from[0], 8, 0.5);
  engine(from[1], 0, 0.5);
  EXPECT_EQ(scores_of(scorer, at_now(), from), (std::vector<double>{0, 1}));
  // One stale figure: the gateway's own counts for all, on one scale.
  engine(from[1], 0, 0.5, 6s);
  EXPECT_EQ(scores_of(scorer, at_now(), from), (std::vector<double>{1, 0}));
  // Not exported (-1): the same.
  engine(from[1], -1, 0.5);
  EXPECT_EQ(scores_of(scorer, at_now(), from), (std::vector<double>{1, 0}));
}

TEST(RouterScorers, QueueCountsRequestsSentSinceTheScrape) {
  QueueScorer scorer(5000ms);
  auto from = candidates({{"a", 0}, {"b", 0}});
  engine(from[0], 2, 0.1);
  engine(from[1], 3, 0.1);
  // Two sent to a after its figures were read: 4 against 3.
  scorer.routed(at_now(), "a");
  scorer.routed(at_now(), "a");
  EXPECT_EQ(scores_of(scorer, at_now(), from), (std::vector<double>{0, 1}));
  // A newer scrape includes them.
  from[0].engine.at = kNow;
  EXPECT_EQ(scores_of(scorer, at_now(), from), (std::vector<double>{1, 0}));
}

TEST(RouterScorers, KvUsesFreeCacheWhileFreshElseInflightTokens) {
  KvScorer scorer(5000ms);
  auto from = candidates({{"a", 0}, {"b", 0}});
  engine(from[0], 0, 0.75);
  engine(from[1], 0, 0.25);
  auto scores = scores_of(scorer, at_now(), from);
  EXPECT_DOUBLE_EQ(scores[0], 0.25);
  EXPECT_DOUBLE_EQ(scores[1], 0.75);
  // Stale, capacities known: the gateway's in-flight tokens over each capacity.
  engine(from[0], 0, 0.75, 1min, 1000);
  engine(from[1], 0, 0.25, 1min, 4000);
  from[0].inflight_tokens = 500;
  from[1].inflight_tokens = 1000;
  scores = scores_of(scorer, at_now(), from);
  EXPECT_DOUBLE_EQ(scores[0], 0.5);
  EXPECT_DOUBLE_EQ(scores[1], 0.75);
  // Stale and a capacity unknown: min-max over the tokens.
  from[1].engine.kv_capacity_tokens = 0;
  EXPECT_EQ(scores_of(scorer, at_now(), from), (std::vector<double>{1, 0}));
}

TEST(RouterScorers, KvAddsTokensSentSinceTheScrape) {
  KvScorer scorer(5000ms);
  auto from = candidates({{"a", 0}});
  engine(from[0], 0, 0.5, 100ms, 1000);
  scorer.routed(at_now(), "a");  // 200 tokens
  EXPECT_DOUBLE_EQ(scores_of(scorer, at_now(), from)[0], 0.3);
}

// The count and the token sum of what was sent since a scrape stay right as entries come (past
// the 4,096 remembered, the oldest go) and go (older than the scrape).
TEST(RouterScorers, SentSinceTheScrapeKeepsItsSumAsEntriesComeAndGo) {
  SentSinceScrape sent;
  for (int i = 0; i < 5000; ++i) {
    RouteContext context;
    context.now = kNow + std::chrono::milliseconds(i);
    context.prompt_tokens = i % 7;
    context.output_tokens = i % 2 == 0 ? -1 : 3;  // negative figures count as 0
    sent.routed(context, "a");
  }
  auto expected = [](int from) {
    int64_t tokens = 0;
    for (int i = from; i < 5000; ++i) tokens += i % 7 + (i % 2 == 0 ? 0 : 3);
    return tokens;
  };
  EXPECT_EQ(sent.after("a", kNow), std::make_pair(4096, expected(5000 - 4096)));
  EXPECT_EQ(sent.after("a", kNow + 4499ms), std::make_pair(500, expected(4500)));
  EXPECT_EQ(sent.after("a", kNow + 4499ms), std::make_pair(500, expected(4500)));  // asking again changes nothing
  EXPECT_EQ(sent.after("a", kNow + 1h), std::make_pair(0, int64_t{0}));
  EXPECT_EQ(sent.after("b", kNow), std::make_pair(0, int64_t{0}));
  sent.removed("a");
  EXPECT_EQ(sent.after("a", SteadyClock::time_point{}), std::make_pair(0, int64_t{0}));
}

TEST(RouterScorers, HostileEngineFiguresNeverPickNonsense) {
  auto policy = policy_of("kv-load");
  auto from = candidates({{"a", 0}, {"b", 0}});
  engine(from[0], std::numeric_limits<double>::infinity(), std::nan(""));
  engine(from[1], 1e300, -5);
  auto index = policy->choose(at_now(), from);
  ASSERT_TRUE(index);
  EXPECT_LT(*index, 2u);
}

TEST(RouterScorers, PrefixScoresTheShareOfBlocksCached) {
  PrefixScorer scorer(100);
  auto from = candidates({{"a", 0}, {"b", 0}});
  scorer.routed(at_now(std::string(4 * 64, 'x')), "a");
  auto scores = scores_of(scorer, at_now(std::string(4 * 64, 'x') + std::string(4 * 64, 'y')), from);
  EXPECT_DOUBLE_EQ(scores[0], 0.5);
  EXPECT_DOUBLE_EQ(scores[1], 0);
  EXPECT_EQ(scores_of(scorer, at_now("short"), from), (std::vector<double>{0, 0}));
}

TEST(RouterKvLoad, PrefersTheShortestQueueAndFreestCache) {
  auto policy = policy_of("kv-load");
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}});
  engine(from[0], 4, 0.9);
  engine(from[1], 0, 0.2);
  engine(from[2], 2, 0.5);
  EXPECT_EQ(chosen(*policy, at_now(), from), "b");
}

TEST(RouterKvLoad, StaleFiguresFallBackToTheGatewaysCounts) {
  auto policy = policy_of("kv-load");
  auto from = candidates({{"a", 1}, {"b", 7}});
  // The engine said b was idle, a minute ago; the gateway knows b has 7 in flight now.
  engine(from[0], 5, 0.9, 1min);
  engine(from[1], 0, 0.0, 1min);
  from[0].inflight_tokens = 100;
  from[1].inflight_tokens = 5000;
  EXPECT_EQ(chosen(*policy, at_now(), from), "a");
}

TEST(RouterKvLoad, SpreadsRequestsBetweenScrapes) {
  // Equal figures and no scrape in between: the requests sent count, so they alternate rather
  // than all going to one replica.
  auto policy = policy_of("kv-load");
  auto from = candidates({{"a", 0}, {"b", 0}});
  engine(from[0], 0, 0.1, 100ms, 100'000);
  engine(from[1], 0, 0.1, 100ms, 100'000);
  std::map<std::string, int> counts;
  for (int i = 0; i < 10; ++i) ++counts[route(*policy, at_now(), from)];
  EXPECT_EQ(counts["a"], 5);
  EXPECT_EQ(counts["b"], 5);
}

TEST(RouterKvLoad, AFullCacheIsFilteredOutUnlessAllAreFull) {
  auto policy = policy_of("kv-load,queue=1,kv-max=0.95");
  auto from = candidates({{"a", 0}, {"b", 0}});
  engine(from[0], 0, 0.97);   // short queue, full cache
  engine(from[1], 10, 0.90);  // long queue
  EXPECT_EQ(chosen(*policy, at_now(), from), "b");
  engine(from[1], 10, 0.99);
  EXPECT_EQ(chosen(*policy, at_now(), from), "a");
}

TEST(RouterPrefixLoad, FollowsThePrefixUntilLoadOutweighsIt) {
  auto policy = policy_of("prefix+load,prefix=2,queue=1,kv=1");
  auto from = candidates({{"a", 0}, {"b", 0}});
  engine(from[0], 0, 0.1);
  engine(from[1], 0, 0.1);
  std::string system(8 * 64, 's');
  std::string home = route(*policy, at_now(system), from);
  std::string other = home == "a" ? "b" : "a";
  auto set = [&](const std::string& replica, double waiting, double kv) {
    for (auto& candidate : from) {
      if (candidate.replica == replica) engine(candidate, waiting, kv);
    }
  };
  // The engines' figures, read after that request was sent (it counts in home's queue: 3 + 1).
  set(home, 3, 0.5);
  set(other, 0, 0.1);
  // Full match 2 x 1 + queue 0 + kv 0.5 = 2.5, against 0 + 1 + 0.9 = 1.9.
  EXPECT_EQ(chosen(*policy, at_now(system), from), home);
  // Its cache nearly full: 2 + 0 + 0.05 = 2.05, still ahead.
  set(home, 3, 0.95);
  EXPECT_EQ(chosen(*policy, at_now(system), from), home);
  // Full: filtered out (kv-max=1) whatever the match.
  set(home, 3, 1.0);
  EXPECT_EQ(chosen(*policy, at_now(system), from), other);
  // With prefix=1 the load tips it: 1 + 0 + 0.5 = 1.5 against 1.9.
  auto lighter = policy_of("prefix+load,prefix=1,queue=1,kv=1");
  lighter->routed(at_now(system), home);
  set(home, 3, 0.5);
  EXPECT_EQ(chosen(*lighter, at_now(system), from), other);
  // A prompt cached nowhere: load alone decides.
  EXPECT_EQ(chosen(*policy, at_now(std::string(8 * 64, 'n')), from), other);
}

TEST(RouterPrefixLoad, TiesAreBrokenTheSameWayForTheSameSeed) {
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}});
  auto picks = [&](uint64_t seed) {
    auto policy = policy_of("prefix+load,prefix=1", seed);
    std::string sequence;
    for (int i = 0; i < 40; ++i) sequence += chosen(*policy, at_now(), from);
    return sequence;
  };
  EXPECT_EQ(picks(11), picks(11));
  EXPECT_NE(picks(11), picks(12));
  std::string sequence = picks(11);
  for (char replica : std::string("abcd")) EXPECT_NE(sequence.find(replica), std::string::npos) << replica;
}

TEST(RouterPrefixLoad, ForgetsWhatItLearntAboutARemovedReplica) {
  auto policy = policy_of("prefix+load,prefix=1");
  auto from = candidates({{"a", 0}, {"b", 0}});
  std::string prompt(8 * 64, 'p');
  std::string home = route(*policy, at_now(prompt), from);
  EXPECT_EQ(chosen(*policy, at_now(prompt), from), home);
  policy->removed(home);
  // Nothing cached anywhere now: a tie, broken by the generator; both are seen.
  std::map<std::string, int> counts;
  for (int i = 0; i < 40; ++i) ++counts[chosen(*policy, at_now(prompt), from)];
  EXPECT_GT(counts["a"], 0);
  EXPECT_GT(counts["b"], 0);
}

TEST(RouterPrefixLoad, ALoadBoundSpillsAHotPrefixOntoAnotherReplica) {
  auto policy = policy_of("prefix+load");
  EXPECT_EQ(policy->describe(), "prefix+load,prefix=2,queue=1,kv=1") << "bound at 1.25 by default";
  EXPECT_EQ(policy_of("prefix+load,load-bound=1.25")->describe(), policy->describe());
  auto from = candidates({{"a", 0}, {"b", 0}, {"c", 0}, {"d", 0}});
  std::string system(8 * 64, 's');
  std::string home = route(*policy, at_now(system), from);
  // The prefix keeps its replica while it is within the bound: 3 in flight over 4 replicas
  // allow ceil(1.25 x 4 / 4) = 2 each.
  int others = 0;
  for (auto& candidate : from) {
    if (candidate.replica == home) {
      candidate.outstanding = 1;
    } else {
      candidate.outstanding = others++ < 2 ? 1 : 0;
    }
  }
  EXPECT_EQ(chosen(*policy, at_now(system), from), home);
  // At the bound it takes no more: the request goes elsewhere, whatever its cache.
  for (auto& candidate : from) {
    if (candidate.replica == home) candidate.outstanding = 2;
  }
  std::string spilled = chosen(*policy, at_now(system), from);
  EXPECT_NE(spilled, home);
  EXPECT_FALSE(spilled.empty());
  // Without a bound, the cached prefix wins over the same loads.
  auto unbounded = policy_of("prefix+load,load-bound=0");
  route(*unbounded, at_now(system), from);
  std::string first = route(*unbounded, at_now(system), from);
  EXPECT_EQ(route(*unbounded, at_now(system), from), first);
}

TEST(RouterPrefixLoad, ALoadBoundIsNeverLeftWithNoCandidate) {
  auto policy = policy_of("kv-load,load-bound=1");
  auto from = candidates({{"a", 5}, {"b", 5}});
  EXPECT_FALSE(chosen(*policy, at_now(), from).empty());
  EXPECT_FALSE(make_policy("prefix+load,load-bound=-1"));
  EXPECT_FALSE(make_policy("prefix+load,load-bound=x"));
}

}  // namespace
}  // namespace nebula::router
