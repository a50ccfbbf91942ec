#include "gateway/redis_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>

#include "common/json.h"
#include "redis_server.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;
using testing::RedisServer;

constexpr int64_t kSecond = 1'000'000;  // µs

api::ApiKey limited_key(const std::string& name, int64_t rpm, int64_t tpm, int64_t concurrency, int64_t budget) {
  api::ApiKey key;
  key.metadata.name = name;
  key.rpm = rpm;
  key.tpm = tpm;
  key.max_concurrency = concurrency;
  key.budget_tokens = budget;
  return key;
}

// Limiters on one real redis-server, on a clock the test moves (µs).
class RedisLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
    redis_ = std::make_unique<RedisServer>();
    ASSERT_TRUE(redis_->ready());
  }

  RedisLimiterOptions options() {
    RedisLimiterOptions options;
    EXPECT_TRUE(parse_redis_url(redis_->url(), options));
    options.clock_us = [this] { return now_us_.load(); };
    options.month = [] { return std::string("2026-12"); };
    options.lease = 2s;
    options.renew_interval = 1h;  // the test renews by hand
    return options;
  }

  std::unique_ptr<RedisLimiter> limiter(RedisLimiterOptions with) {
    auto made = std::make_unique<RedisLimiter>(std::move(with));
    auto started = made->start();
    EXPECT_TRUE(started) << (started ? "" : started.error().message);
    return made;
  }
  std::unique_ptr<RedisLimiter> limiter() { return limiter(options()); }

  Limiter::TimePoint now() const { return Limiter::TimePoint(std::chrono::microseconds(now_us_.load())); }

  std::unique_ptr<RedisServer> redis_;
  // Microseconds since the epoch, as Redis's TIME gives them: 16 digits, so any number written
  // with less precision on its way through the scripts would break the window's edges.
  std::atomic<int64_t> now_us_{1'796'000'000'123'457};
};

TEST_F(RedisLimits, RequestsLeaveTheWindowExactlyAMinuteAfterTheyCame) {
  auto limits = limiter();
  auto key = limited_key("k-rpm", 3, 0, 0, 0);
  int64_t start = now_us_;
  for (int64_t offset : {0L, 10L, 20L}) {
    now_us_ = start + offset * kSecond;
    auto admitted = limits->admit(key, 10, 0, now());
    ASSERT_TRUE(admitted.allowed) << offset;
    EXPECT_EQ(admitted.window.requests, offset / 10 + 1);
    limits->finish(key.metadata.name, admitted.ticket, 10, 10, now());
  }
  // One microsecond before the first request's minute is up: still three in the window.
  now_us_ = start + 60 * kSecond - 1;
  auto refused = limits->admit(key, 10, 0, now());
  ASSERT_FALSE(refused.allowed);
  EXPECT_EQ(refused.limit, LimitKind::Requests);
  EXPECT_EQ(refused.retry_after, 1ms);  // 1 µs, rounded up
  EXPECT_EQ(refused.window.requests, 3);
  auto response = Limiter::refusal(key, refused);
  EXPECT_EQ(response.status, 429);
  EXPECT_EQ(response.header("x-ratelimit-remaining-requests"), "0");
  EXPECT_EQ(response.header("retry-after"), "1");
  // At the minute exactly it has left, and only it.
  now_us_ = start + 60 * kSecond;
  auto admitted = limits->admit(key, 10, 0, now());
  ASSERT_TRUE(admitted.allowed);
  EXPECT_EQ(admitted.window.requests, 3);
  EXPECT_EQ(admitted.window.reset, 10s);  // the request of start + 10 s is now the oldest
  EXPECT_FALSE(limits->admit(key, 10, 0, now()).allowed);
}

TEST_F(RedisLimits, TokensAreChargedUpFrontCorrectedAndWaitForOldChargesToLeave) {
  auto limits = limiter();
  auto key = limited_key("k-tpm", 0, 1000, 0, 0);
  int64_t start = now_us_;
  auto first = limits->admit(key, 600, 0, now());
  ASSERT_TRUE(first.allowed);
  EXPECT_FALSE(limits->admit(key, 600, 0, now()).allowed);  // 1200 > 1000 while the estimate stands
  limits->finish(key.metadata.name, first.ticket, 600, 300, now());
  for (int64_t offset : {10L, 20L}) {
    now_us_ = start + offset * kSecond;
    auto admitted = limits->admit(key, 300, 0, now());
    ASSERT_TRUE(admitted.allowed) << offset;
    limits->finish(key.metadata.name, admitted.ticket, 300, 300, now());
  }
  // 900 used; 500 more fit once the first two charges (600) have left: at start + 70 s.
  now_us_ = start + 30 * kSecond;
  auto refused = limits->admit(key, 500, 0, now());
  ASSERT_FALSE(refused.allowed);
  EXPECT_EQ(refused.limit, LimitKind::Tokens);
  EXPECT_EQ(refused.retry_after, 40s);
  EXPECT_EQ(refused.window.tokens, 900);
  auto too_large = limits->admit(key, 1001, 0, now());
  EXPECT_FALSE(too_large.allowed);
  EXPECT_EQ(too_large.retry_after, 0ms);  // waiting cannot help
  now_us_ = start + 70 * kSecond - 1;
  EXPECT_FALSE(limits->admit(key, 500, 0, now()).allowed);
  now_us_ = start + 70 * kSecond;
  EXPECT_TRUE(limits->admit(key, 500, 0, now()).allowed);
}

TEST_F(RedisLimits, TwoGatewaysShareOneWindow) {
  auto a = limiter();
  auto b = limiter();
  auto key = limited_key("k-shared", 60, 0, 0, 0);
  int passed = 0;
  for (int i = 0; i < 100; ++i) {
    auto& limits = i % 2 ? *a : *b;
    auto admitted = limits.admit(key, 1, 0, now());
    if (admitted.allowed) {
      ++passed;
      limits.finish(key.metadata.name, admitted.ticket, 1, 1, now());
    }
  }
  EXPECT_EQ(passed, 60);
}

TEST_F(RedisLimits, TheSlotsOfAGatewayThatStoppedRenewingComeBackAfterTheLease) {
  auto crashed = limiter();
  auto survivor = limiter();
  auto key = limited_key("k-conc", 0, 0, 2, 0);
  int64_t start = now_us_;
  ASSERT_TRUE(crashed->admit(key, 5, 0, now()).allowed);
  ASSERT_TRUE(crashed->admit(key, 5, 0, now()).allowed);
  auto busy = survivor->admit(key, 5, 0, now());
  ASSERT_FALSE(busy.allowed);
  EXPECT_EQ(busy.limit, LimitKind::Concurrency);
  // Renewed at half the lease, the slots outlive the first lease ...
  now_us_ = start + kSecond;
  ASSERT_TRUE(crashed->renew_leases());
  now_us_ = start + 2 * kSecond;
  EXPECT_FALSE(survivor->admit(key, 5, 0, now()).allowed);
  // ... and with no more renewals (the gateway died) they lapse at the end of the renewed one.
  crashed->stop();
  now_us_ = start + 3 * kSecond - 1;
  EXPECT_FALSE(survivor->admit(key, 5, 0, now()).allowed);
  now_us_ = start + 3 * kSecond;
  auto first = survivor->admit(key, 5, 0, now());
  auto second = survivor->admit(key, 5, 0, now());
  EXPECT_TRUE(first.allowed && second.allowed);
  EXPECT_FALSE(survivor->admit(key, 5, 0, now()).allowed);
  // A finish after the lapse does not free a slot twice.
  crashed->finish(key.metadata.name, 1, 5, 5, now());
  EXPECT_FALSE(survivor->admit(key, 5, 0, now()).allowed);
  survivor->finish(key.metadata.name, first.ticket, 5, 5, now());
  EXPECT_TRUE(survivor->admit(key, 5, 0, now()).allowed);
}

TEST_F(RedisLimits, TheMonthlyBudgetCountsEveryGatewaysSpendingAndWhatIsInFlight) {
  auto a = limiter();
  auto b = limiter();
  auto key = limited_key("k-budget", 0, 0, 0, 1000);
  auto first = a->admit(key, 400, 0, now());
  ASSERT_TRUE(first.allowed);
  // In flight on a: b sees it.
  auto over = b->admit(key, 700, 0, now());
  ASSERT_FALSE(over.allowed);
  EXPECT_EQ(over.limit, LimitKind::Budget);
  EXPECT_EQ(Limiter::refusal(key, over).header("x-should-retry"), "false");
  a->finish(key.metadata.name, first.ticket, 400, 350, now());
  a->flush();  // sent, not waited for: b sees it once Redis has run it
  // 350 spent (known to Redis though neither gateway's own usage says so yet).
  EXPECT_FALSE(b->admit(key, 651, 0, now()).allowed);
  auto fits = b->admit(key, 650, 0, now());
  EXPECT_TRUE(fits.allowed);
  b->finish(key.metadata.name, fits.ticket, 650, 650, now());
  // What a gateway knows from the store counts when it is more (Redis was emptied, say).
  redis_->command("FLUSHALL");
  EXPECT_FALSE(a->admit(key, 1, 1000, now()).allowed);
  EXPECT_TRUE(a->admit(key, 1, 999, now()).allowed);
}

TEST_F(RedisLimits, ANegativeTokenCountFromAnEngineRefundsNothing) {
  auto limits = limiter();
  auto key = limited_key("k-refund", 0, 1000, 0, 1000);
  auto first = limits->admit(key, 600, 0, now());
  ASSERT_TRUE(first.allowed);
  limits->finish(key.metadata.name, first.ticket, 600, -5000, now());  // counted as 0
  auto full = limits->admit(key, 1000, 0, now());
  ASSERT_TRUE(full.allowed);
  EXPECT_EQ(full.window.tokens, 1000);
  EXPECT_FALSE(limits->admit(key, 1, 0, now()).allowed);
}

TEST_F(RedisLimits, AFlushedScriptCacheIsLoadedAgain) {
  auto limits = limiter();
  auto key = limited_key("k-noscript", 2, 0, 0, 0);
  ASSERT_TRUE(limits->admit(key, 1, 0, now()).allowed);
  ASSERT_EQ(redis_->command("SCRIPT FLUSH").rfind("+OK", 0), 0u);
  ASSERT_TRUE(limits->admit(key, 1, 0, now()).allowed);
  EXPECT_FALSE(limits->admit(key, 1, 0, now()).allowed);
  EXPECT_EQ(limits->failures(), 0u);
}

TEST_F(RedisLimits, HostileKeyNamesStayApart) {
  auto limits = limiter();
  auto braces = limited_key("a}:window{b", 1, 0, 0, 0);
  auto plain = limited_key("a", 1, 0, 0, 0);
  auto spaced = limited_key("a b\r\nFLUSHALL", 1, 0, 0, 0);
  for (const auto* key : {&braces, &plain, &spaced}) {
    EXPECT_TRUE(limits->admit(*key, 1, 0, now()).allowed) << key->metadata.name;
    EXPECT_FALSE(limits->admit(*key, 1, 0, now()).allowed) << key->metadata.name;
  }
  // Hostile token counts are charged as numbers, not as script text.
  auto tokens = limited_key("k-negative", 0, 100, 0, 0);
  EXPECT_FALSE(limits->admit(tokens, 101, 0, now()).allowed);
  EXPECT_TRUE(limits->admit(tokens, 100, 0, now()).allowed);
}

TEST_F(RedisLimits, UnreachableRedisFollowsThePolicyOfEachLimit) {
  auto with = options();
  with.retry_interval = 0ms;
  auto open = limiter(with);
  with.rate_policy = FailPolicy::Closed;
  with.budget_policy = FailPolicy::Open;
  auto closed = limiter(with);
  redis_->stop();
  auto rated = limited_key("k-down", 1, 0, 0, 0);
  auto budgeted = limited_key("k-down-budget", 0, 0, 0, 1000);
  // Defaults: requests per minute fail open (unlimited), budgets fail closed (503).
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(open->admit(rated, 1, 0, now()).allowed);
  auto refused = open->admit(budgeted, 1, 0, now());
  ASSERT_FALSE(refused.allowed);
  EXPECT_EQ(refused.limit, LimitKind::Unavailable);
  auto response = Limiter::refusal(budgeted, refused);
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.header("retry-after"), "1");
  // The other way round.
  EXPECT_EQ(closed->admit(rated, 1, 0, now()).limit, LimitKind::Unavailable);
  EXPECT_TRUE(closed->admit(budgeted, 1, 0, now()).allowed);
  EXPECT_FALSE(closed->admit(budgeted, 1, 1000, now()).allowed);  // what the gateway knows still holds
  EXPECT_GT(open->failures() + closed->failures(), 0u);
  // Back: counted in Redis again.
  redis_->start();
  EXPECT_TRUE(testing::eventually([&] { return open->admit(rated, 1, 0, now()).allowed; }, 10s));
  EXPECT_FALSE(open->admit(rated, 1, 0, now()).allowed);
}

// admit_async() calls answered in any order: counts them, and what passed.
struct Answers {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<Admission> admitted;
  int answered = 0;
  std::function<void(Admission)> collector() {
    return [this](Admission admission) {
      std::lock_guard lock(mutex);
      if (admission.allowed) admitted.push_back(std::move(admission));
      ++answered;
      changed.notify_all();
    };
  }
  bool wait_for(int count, std::chrono::seconds limit = 10s) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, limit, [&] { return answered >= count; });
  }
};

TEST_F(RedisLimits, ManyAdmissionsInFlightAtOnceStayExact) {
  auto a = limiter();
  auto b = limiter();
  auto rated = limited_key("k-many-rpm", 60, 0, 0, 0);
  auto slots = limited_key("k-many-conc", 0, 0, 10, 0);
  Answers rated_answers, slot_answers;
  // 200 admissions of each key queued at once on two limiters, none waited for: they leave in
  // pipelined batches, and Redis still counts each exactly once.
  for (int i = 0; i < 200; ++i) {
    auto& limits = i % 2 ? *a : *b;
    limits.admit_async(rated, 1, 0, now(), rated_answers.collector());
    limits.admit_async(slots, 1, 0, now(), slot_answers.collector());
  }
  ASSERT_TRUE(rated_answers.wait_for(200));
  ASSERT_TRUE(slot_answers.wait_for(200));
  EXPECT_EQ(rated_answers.admitted.size(), 60u);
  EXPECT_EQ(slot_answers.admitted.size(), 10u);
  EXPECT_LT(a->batches() + b->batches(), a->commands() + b->commands());  // some shared a round trip
  EXPECT_EQ(a->failures() + b->failures(), 0u);
  // Requests-per-minute alone leaves nothing to finish; slots are freed by their finish.
  for (const auto& admitted : rated_answers.admitted) EXPECT_EQ(admitted.ticket, 0u);
  EXPECT_EQ(a->in_flight() + b->in_flight(), 10u);
  for (const auto& admitted : slot_answers.admitted) {
    a->finish(slots.metadata.name, admitted.ticket, 1, 1, now());
    b->finish(slots.metadata.name, admitted.ticket, 1, 1, now());  // the one that did not issue it ignores it
  }
  EXPECT_EQ(a->in_flight() + b->in_flight(), 0u);
  b->flush();  // b's finishes have reached Redis (a's own go before a's next admissions)
  Answers again;
  for (int i = 0; i < 20; ++i) a->admit_async(slots, 1, 0, now(), again.collector());
  ASSERT_TRUE(again.wait_for(20));
  EXPECT_EQ(again.admitted.size(), 10u);
}

TEST_F(RedisLimits, FinishTalksToRedisOnlyWhenSomethingIsLeftToUndo) {
  auto limits = limiter();
  auto rated = limited_key("k-finish-rpm", 100, 0, 0, 0);
  auto tokens = limited_key("k-finish-tpm", 0, 1000, 0, 0);
  auto admitted = limits->admit(rated, 10, 0, now());
  ASSERT_TRUE(admitted.allowed);
  EXPECT_EQ(admitted.ticket, 0u);
  admitted = limits->admit(tokens, 600, 0, now());
  ASSERT_TRUE(admitted.allowed);
  ASSERT_NE(admitted.ticket, 0u);
  uint64_t sent = limits->commands();
  limits->finish(tokens.metadata.name, admitted.ticket, 600, 600, now());  // the estimate was right
  // The next admission is the next command: the finish sent none, and its charge stands.
  EXPECT_FALSE(limits->admit(tokens, 401, 0, now()).allowed);
  EXPECT_EQ(limits->commands(), sent + 1);
  auto second = limits->admit(tokens, 400, 0, now());
  ASSERT_TRUE(second.allowed);
  limits->finish(tokens.metadata.name, second.ticket, 400, 100, now());  // corrected: 700 charged
  EXPECT_TRUE(limits->admit(tokens, 300, 0, now()).allowed);
  EXPECT_FALSE(limits->admit(tokens, 1, 0, now()).allowed);
  EXPECT_EQ(limits->in_flight(), 1u);  // the last admission, not finished
}

TEST_F(RedisLimits, AFinishSentAlongWithTheNextAdmissionCountsBeforeIt) {
  auto with = options();
  with.timeout = 10s;
  auto limits = limiter(with);
  auto key = limited_key("k-ride", 0, 2000, 1, 1000);
  auto first = limits->admit(key, 600, 0, now());
  ASSERT_TRUE(first.allowed);
  // Redis stalls on another key's admission while the finish and the next admission queue up
  // behind it: they leave in one batch, the finish inside the admission's script run.
  redis_->pause();
  Answers stalled, next;
  limits->admit_async(limited_key("k-ride-other", 5, 0, 0, 0), 1, 0, now(), stalled.collector());
  ASSERT_TRUE(testing::eventually([&] { return redis_->unread_bytes() > 0; }, 10s));
  uint64_t sent = limits->commands();
  limits->finish(key.metadata.name, first.ticket, 600, 100, now());
  limits->admit_async(key, 800, 0, now(), next.collector());
  redis_->resume();
  ASSERT_TRUE(stalled.wait_for(1) && next.wait_for(1));
  EXPECT_EQ(limits->commands(), sent + 1);  // the admission alone: the finish rode along
  // The slot was freed and the charge corrected before the check: 100 + 800 tokens.
  ASSERT_EQ(next.admitted.size(), 1u);
  EXPECT_EQ(next.admitted[0].window.tokens, 900);
  limits->finish(key.metadata.name, next.admitted[0].ticket, 800, 800, now());
  // The month counted 100 + 800 of the budget's 1000.
  auto over = limits->admit(key, 101, 0, now());
  EXPECT_EQ(over.limit, LimitKind::Budget);
  EXPECT_TRUE(limits->admit(key, 100, 0, now()).allowed);
  EXPECT_EQ(limits->failures(), 0u);
}

// The answers of one script run per key over a whole batch, against the same operations run
// one after another: every field of every admission is the same.
TEST_F(RedisLimits, OneScriptRunPerKeyAnswersAsOneAfterAnother) {
  auto batched_options = options();
  batched_options.timeout = 10s;
  batched_options.prefix = "batched:";
  auto batched = limiter(batched_options);
  auto serial_options = options();
  serial_options.prefix = "serial:";
  auto serial = limiter(serial_options);
  std::vector<api::ApiKey> keys = {limited_key("k-rpm", 5, 0, 0, 0), limited_key("k-tpm", 0, 100, 0, 0),
                                   limited_key("k-conc", 0, 0, 3, 0), limited_key("k-budget", 0, 0, 0, 300),
                                   limited_key("k-all", 8, 200, 2, 500)};
  // Two admissions of each key first, answered: the tickets the batch's finishes free.
  std::vector<std::pair<size_t, uint64_t>> batched_tickets, serial_tickets;  // (key, ticket)
  for (size_t key = 0; key < keys.size(); ++key) {
    for (int i = 0; i < 2; ++i) {
      auto a = batched->admit(keys[key], 20, 0, now());
      auto b = serial->admit(keys[key], 20, 0, now());
      ASSERT_TRUE(a.allowed && b.allowed) << keys[key].metadata.name;
      ASSERT_EQ(a.ticket, b.ticket);
      batched_tickets.emplace_back(key, a.ticket);
      serial_tickets.emplace_back(key, b.ticket);
    }
  }
  now_us_ += kSecond;
  // The operations: admissions of every key interleaved, the finishes of the first admissions
  // among them (engines reporting more and fewer tokens than estimated), admissions last.
  struct Step {
    bool admit = true;
    size_t key = 0;
    int64_t tokens = 0;  // estimate, or what the engine reported
    size_t earlier = 0;  // finish: which of the first admissions
  };
  std::vector<Step> steps;
  for (size_t i = 0; i < 60; ++i) {
    steps.push_back({true, i % keys.size(), 10 + static_cast<int64_t>((i * 7) % 40), 0});
    if (i % 6 == 5 && i / 6 < batched_tickets.size()) {
      size_t earlier = i / 6;
      steps.push_back({false, batched_tickets[earlier].first, earlier % 2 ? 5 : 45, earlier});
    }
  }
  for (size_t key = 0; key < keys.size(); ++key) steps.push_back({true, key, 1, 0});

  // Batched: Redis stalls on another key's admission while every step queues behind it, so they
  // all leave in one batch.
  redis_->pause();
  Answers plug;
  batched->admit_async(limited_key("k-plug", 5, 0, 0, 0), 1, 0, now(), plug.collector());
  ASSERT_TRUE(testing::eventually([&] { return redis_->unread_bytes() > 0; }, 10s));
  uint64_t runs_before = batched->commands();
  std::vector<Admission> batched_answers(steps.size());
  std::atomic<int> answered{0};
  int admissions = 0;
  for (size_t index = 0; index < steps.size(); ++index) {
    const auto& step = steps[index];
    if (step.admit) {
      ++admissions;
      batched->admit_async(keys[step.key], step.tokens, 0, now(), [&, index](Admission admission) {
        batched_answers[index] = std::move(admission);
        answered += 1;
      });
    } else {
      batched->finish(keys[step.key].metadata.name, batched_tickets[step.earlier].second, 20, step.tokens, now());
    }
  }
  redis_->resume();
  ASSERT_TRUE(plug.wait_for(1));
  ASSERT_TRUE(testing::eventually([&] { return answered.load() == admissions; }, 10s));
  EXPECT_EQ(batched->commands() - runs_before, keys.size());  // one run per key (the plug's had left)
  EXPECT_EQ(batched->failures(), 0u);

  for (size_t index = 0; index < steps.size(); ++index) {
    const auto& step = steps[index];
    if (!step.admit) {
      serial->finish(keys[step.key].metadata.name, serial_tickets[step.earlier].second, 20, step.tokens, now());
      serial->flush();
      continue;
    }
    auto expected = serial->admit(keys[step.key], step.tokens, 0, now());
    const auto& got = batched_answers[index];
    SCOPED_TRACE(::testing::Message() << "step " << index << ", key " << keys[step.key].metadata.name);
    EXPECT_EQ(got.allowed, expected.allowed);
    EXPECT_EQ(got.limit, expected.limit);
    EXPECT_EQ(got.ticket, expected.ticket);
    EXPECT_EQ(got.message, expected.message);
    EXPECT_EQ(got.retry_after, expected.retry_after);
    EXPECT_EQ(got.window.requests, expected.window.requests);
    EXPECT_EQ(got.window.tokens, expected.window.tokens);
    EXPECT_EQ(got.window.reset, expected.window.reset);
  }
  // Some of each kind, or the comparison proved little.
  std::set<LimitKind> seen;
  for (size_t index = 0; index < steps.size(); ++index) {
    if (steps[index].admit) seen.insert(batched_answers[index].limit);
  }
  for (auto kind :
       {LimitKind::None, LimitKind::Requests, LimitKind::Tokens, LimitKind::Concurrency, LimitKind::Budget}) {
    EXPECT_TRUE(seen.count(kind)) << static_cast<int>(kind);
  }
  EXPECT_EQ(batched->in_flight(), serial->in_flight());
}

TEST_F(RedisLimits, HundredsOfAdmissionsOfOneKeyInOneBatchStayExact) {
  auto with = options();
  with.timeout = 10s;
  auto a = limiter(with);
  auto b = limiter(with);
  auto rated = limited_key("k-burst-rpm", 100, 0, 0, 0);
  auto slots = limited_key("k-burst-conc", 0, 0, 7, 0);
  redis_->pause();
  Answers plug, rated_answers, slot_answers;
  a->admit_async(limited_key("k-burst-plug", 5, 0, 0, 0), 1, 0, now(), plug.collector());
  b->admit_async(limited_key("k-burst-plug", 5, 0, 0, 0), 1, 0, now(), plug.collector());
  ASSERT_TRUE(testing::eventually([&] { return redis_->unread_bytes() > 0; }, 10s));
  uint64_t runs_before = a->commands();
  // 300 of each key on each limiter, interleaved: more than one script run holds (128 at most).
  for (int i = 0; i < 300; ++i) {
    for (auto* limits : {a.get(), b.get()}) {
      limits->admit_async(rated, 1, 0, now(), rated_answers.collector());
      limits->admit_async(slots, 1, 0, now(), slot_answers.collector());
    }
  }
  redis_->resume();
  ASSERT_TRUE(plug.wait_for(2));
  ASSERT_TRUE(rated_answers.wait_for(600));
  ASSERT_TRUE(slot_answers.wait_for(600));
  EXPECT_EQ(rated_answers.admitted.size(), 100u);
  EXPECT_EQ(slot_answers.admitted.size(), 7u);
  std::set<uint64_t> tickets;
  for (const auto& admitted : slot_answers.admitted) tickets.insert(admitted.ticket);
  EXPECT_EQ(tickets.size(), 7u);  // each slot its own ticket
  // a: 600 operations of two keys, in runs of at most 128 (the plug's run had left).
  EXPECT_GE(a->commands() - runs_before, 6u);
  EXPECT_LE(a->commands() - runs_before, 2 * 5u);
  EXPECT_EQ(a->failures() + b->failures(), 0u);
}

// The admissions of one script run share its time: they are one entry of the window, however
// many they are, and leave it together exactly a minute later.
TEST_F(RedisLimits, TheAdmissionsOfOneRunAreOneEntryAndLeaveTogether) {
  auto with = options();
  with.timeout = 10s;
  auto limits = limiter(with);
  auto key = limited_key("k-group", 50, 1000, 0, 0);
  int64_t start = now_us_;
  redis_->pause();
  Answers plug, burst;
  limits->admit_async(limited_key("k-group-plug", 5, 0, 0, 0), 1, 0, now(), plug.collector());
  ASSERT_TRUE(testing::eventually([&] { return redis_->unread_bytes() > 0; }, 10s));
  for (int i = 0; i < 40; ++i) limits->admit_async(key, 10, 0, now(), burst.collector());
  redis_->resume();
  ASSERT_TRUE(plug.wait_for(1) && burst.wait_for(40));
  ASSERT_EQ(burst.admitted.size(), 40u);
  EXPECT_EQ(redis_->command("ZCARD nebula:limits:{k-group}:v2:window"), ":1\r\n");
  // A correction is an entry of its own, at its charge's time.
  limits->finish(key.metadata.name, burst.admitted[0].ticket, 10, 4, now());
  now_us_ = start + 30 * kSecond;
  auto later = limits->admit(key, 10, 0, now());
  ASSERT_TRUE(later.allowed);
  EXPECT_EQ(later.window.requests, 41);
  EXPECT_EQ(later.window.tokens, 40 * 10 - 6 + 10);
  EXPECT_EQ(later.window.reset, 30s);
  EXPECT_EQ(redis_->command("ZCARD nebula:limits:{k-group}:v2:window"), ":3\r\n");
  now_us_ = start + 60 * kSecond - 1;
  EXPECT_EQ(limits->admit(key, 10, 0, now()).window.requests, 42);
  now_us_ = start + 60 * kSecond;  // the forty and the correction leave at once
  auto after = limits->admit(key, 10, 0, now());
  ASSERT_TRUE(after.allowed);
  EXPECT_EQ(after.window.requests, 3);
  EXPECT_EQ(after.window.tokens, 30);
}

// A request that outlives its charge (it ran longer than the window) corrects nothing: the
// charge already left, with or without an admission in the same run.
TEST_F(RedisLimits, AFinishAfterItsChargeLeftTheWindowCorrectsNothing) {
  auto limits = limiter();
  auto key = limited_key("k-long", 0, 1000, 0, 0);
  int64_t start = now_us_;
  auto first = limits->admit(key, 600, 0, now());
  auto second = limits->admit(key, 300, 0, now());
  ASSERT_TRUE(first.allowed && second.allowed);
  now_us_ = start + 61 * kSecond;
  limits->finish(key.metadata.name, first.ticket, 600, 50, now());
  limits->flush();  // a run of its own: it cannot know the window's time
  auto fresh = limits->admit(key, 100, 0, now());
  ASSERT_TRUE(fresh.allowed);
  EXPECT_EQ(fresh.window.tokens, 100);
  EXPECT_EQ(fresh.window.requests, 1);
  // In the run of an admission that already swept the window.
  limits->finish(key.metadata.name, second.ticket, 300, 1000, now());
  auto next = limits->admit(key, 100, 0, now());
  EXPECT_EQ(next.window.tokens, 200);
  EXPECT_EQ(limits->admit(key, 800, 0, now()).window.tokens, 1000);
}

// A gateway that stalled past its lease (alive, not renewing) loses the lease: its slots went to
// others, its late finishes free nothing, and its next admission opens a new lease.
TEST_F(RedisLimits, AGatewayWhoseLeaseLapsedStartsANewOneAndItsOldFinishesFreeNothing) {
  auto stalled = limiter();
  auto other = limiter();
  auto key = limited_key("k-stall", 0, 0, 2, 10'000);
  int64_t start = now_us_;
  auto a1 = stalled->admit(key, 100, 0, now());
  auto a2 = stalled->admit(key, 200, 0, now());
  ASSERT_TRUE(a1.allowed && a2.allowed);
  EXPECT_FALSE(other->admit(key, 1, 0, now()).allowed);
  now_us_ = start + 2 * kSecond;  // the lease (2 s) ran out unrenewed
  auto b1 = other->admit(key, 10, 0, now());
  auto b2 = other->admit(key, 20, 0, now());
  ASSERT_TRUE(b1.allowed && b2.allowed);
  stalled->finish(key.metadata.name, a1.ticket, 100, 100, now());
  stalled->finish(key.metadata.name, a2.ticket, 200, 200, now());
  stalled->flush();
  auto busy = stalled->admit(key, 1, 0, now());
  ASSERT_FALSE(busy.allowed);
  EXPECT_EQ(busy.limit, LimitKind::Concurrency);
  other->finish(key.metadata.name, b1.ticket, 10, 10, now());
  other->flush();
  auto again = stalled->admit(key, 5, 0, now());
  ASSERT_TRUE(again.allowed);
  EXPECT_FALSE(other->admit(key, 1, 0, now()).allowed);
  stalled->finish(key.metadata.name, again.ticket, 5, 5, now());
  stalled->flush();
  // The month counted every finish, the lapsed lease's too (300 + 10 + 5), and b2's 20 is in
  // flight: 9,665 are left.
  auto budget = other->admit(key, 9'666, 0, now());
  ASSERT_FALSE(budget.allowed);
  EXPECT_EQ(budget.limit, LimitKind::Budget);
  auto last = other->admit(key, 9'665, 0, now());
  ASSERT_TRUE(last.allowed);
  other->finish(key.metadata.name, last.ticket, 9'665, 0, now());
  other->flush();
  // Renewing keeps the new lease alive past the end of the one it was opened with.
  auto held = stalled->admit(key, 1, 0, now());
  ASSERT_TRUE(held.allowed);
  now_us_ = start + 3 * kSecond;
  ASSERT_TRUE(stalled->renew_leases());
  now_us_ = start + 4 * kSecond;
  ASSERT_TRUE(other->renew_leases());
  now_us_ = start + 4 * kSecond + kSecond / 2;
  EXPECT_FALSE(other->admit(key, 1, 0, now()).allowed);  // b2 and held
  now_us_ = start + 5 * kSecond;
  EXPECT_TRUE(other->admit(key, 1, 0, now()).allowed);  // held's lease ran out
  EXPECT_EQ(stalled->failures() + other->failures(), 0u);
}

// What an earlier build left in Redis (one member per request, under the old key names), or
// anything else found there, neither stops the checks nor resets them; the month carries over.
TEST_F(RedisLimits, EarlierOrForeignDataInRedisNeitherStopsNorResetsTheLimits) {
  int64_t now_s = now_us_ / kSecond;
  for (const std::string& line :
       {"ZADD nebula:limits:{k-old}:window " + std::to_string(now_s * kSecond) + " 7:600",
        std::string("HSET nebula:limits:{k-old}:state seq 7 tokens 600 flight 600 refresh 1"),
        "ZADD nebula:limits:{k-old}:flight " + std::to_string((now_s + 60) * kSecond) + " 7:600",
        std::string("HSET nebula:limits:{k-old}:month 2026-12 900"),
        "ZADD nebula:limits:{k-old}:v2:window " + std::to_string(now_s * kSecond) + " junk",
        std::string("HSET nebula:limits:{k-old}:v2:state l:nobody:1 junk")}) {
    ASSERT_EQ(redis_->command(line).find("-ERR"), std::string::npos) << line;
  }
  auto limits = limiter();
  auto key = limited_key("k-old", 2, 1000, 1, 1000);
  // The month's 900 still count: 101 more do not fit the budget, 100 do.
  auto over = limits->admit(key, 101, 0, now());
  EXPECT_EQ(over.limit, LimitKind::Budget) << over.message;
  auto fits = limits->admit(key, 100, 0, now());
  ASSERT_TRUE(fits.allowed) << fits.message;
  EXPECT_EQ(fits.window.requests, 1);
  EXPECT_EQ(limits->admit(key, 1, 0, now()).limit, LimitKind::Concurrency);
  limits->finish(key.metadata.name, fits.ticket, 100, 100, now());
  EXPECT_EQ(limits->admit(key, 1, 0, now()).limit, LimitKind::Budget);  // 1,000 spent
  EXPECT_EQ(limits->failures(), 0u);
}

TEST_F(RedisLimits, AStalledRedisNeverBlocksTheCallerAndTimesOutIntoThePolicy) {
  auto with = options();
  with.timeout = 2s;  // far longer than admit_async() takes to return
  auto limits = limiter(with);
  auto rated = limited_key("k-stall", 1, 0, 0, 0);
  redis_->pause();
  Answers answers;
  limits->admit_async(rated, 1, 0, now(), answers.collector());
  // Returned at once; the answer waits on Redis, whose socket holds the command unread.
  {
    std::lock_guard lock(answers.mutex);
    EXPECT_EQ(answers.answered, 0);
  }
  EXPECT_TRUE(testing::eventually([&] { return redis_->unread_bytes() > 0; }, 10s));
  // Queued behind the stalled batch: answered when it times out (Redis is then down for
  // retry_interval, so nothing waits on it again).
  limits->admit_async(rated, 1, 0, now(), answers.collector());
  ASSERT_TRUE(answers.wait_for(2));
  EXPECT_EQ(answers.admitted.size(), 2u);  // rate limits fail open
  EXPECT_GE(limits->failures(), 2u);
  redis_->resume();
  // Back: counted again (the stalled command may have run when Redis woke).
  EXPECT_TRUE(testing::eventually([&] { return !limits->admit(rated, 1, 0, now()).allowed; }, 10s));
}

TEST_F(RedisLimits, StartFailsWhenRedisIsAbsent) {
  auto with = options();
  with.port = testing::free_port();
  RedisLimiter absent(with);
  EXPECT_FALSE(absent.start());
}

TEST(RedisUrl, HostAndPortOrARefusal) {
  RedisLimiterOptions options;
  ASSERT_TRUE(parse_redis_url("redis://10.0.0.5:6380", options));
  EXPECT_EQ(options.host, "10.0.0.5");
  EXPECT_EQ(options.port, 6380);
  ASSERT_TRUE(parse_redis_url("redis://cache.local", options));
  EXPECT_EQ(options.host, "cache.local");
  EXPECT_EQ(options.port, 6379);
  for (const char* bad : {"", "http://h:1", "redis://", "redis://:6379", "redis://h:0", "redis://h:99999",
                          "redis://h:12x", "redis://user@h:1", "redis://h:-1"}) {
    EXPECT_FALSE(parse_redis_url(bad, options)) << bad;
  }
  EXPECT_TRUE(parse_fail_policy("open"));
  EXPECT_FALSE(parse_fail_policy("Open "));
}

}  // namespace
}  // namespace nebula::gateway
