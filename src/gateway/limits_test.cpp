#include "gateway/limits.h"

#include <gtest/gtest.h>

#include "common/json.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;

api::ApiKey limited_key(int64_t rpm, int64_t tpm, int64_t concurrency, int64_t budget) {
  api::ApiKey key;
  key.metadata.name = "limited";
  key.rpm = rpm;
  key.tpm = tpm;
  key.max_concurrency = concurrency;
  key.budget_tokens = budget;
  return key;
}

json error_of(const http::Response& response) {
  auto body = parse_json(response.body);
  return body ? (*body)["error"] : json();
}

TEST(RateLimitRefusal, RequestsSayWhenTheWindowFreesInBothHeaders) {
  MemoryLimiter limiter;
  auto key = limited_key(1, 0, 0, 0);
  auto start = std::chrono::steady_clock::now();
  auto first = limiter.admit(key, 10, 0, start);
  ASSERT_TRUE(first.allowed);
  limiter.finish(key.metadata.name, first.ticket, 10, 10, start);
  auto now = start + 12'345ms;
  auto refused = limiter.admit(key, 10, 0, now);
  ASSERT_FALSE(refused.allowed);
  EXPECT_EQ(refused.limit, LimitKind::Requests);
  EXPECT_EQ(refused.retry_after, 47'655ms);
  EXPECT_EQ(refused.retry_after_s, 48);
  auto response = Limiter::refusal(key, refused);
  EXPECT_EQ(response.status, 429);
  EXPECT_EQ(error_of(response)["type"], "requests");
  EXPECT_EQ(error_of(response)["code"], "rate_limit_exceeded");
  EXPECT_EQ(response.header("retry-after"), "48");
  EXPECT_EQ(response.header("retry-after-ms"), "47655");
  EXPECT_EQ(response.header("x-ratelimit-reset-requests"), "47.655s");
  EXPECT_EQ(response.header("x-ratelimit-remaining-requests"), "0");
  EXPECT_EQ(response.header("x-should-retry"), "");
}

TEST(RateLimitRefusal, TokensWaitForEnoughOldChargesToLeave) {
  MemoryLimiter limiter;
  auto key = limited_key(0, 1000, 0, 0);
  auto start = std::chrono::steady_clock::now();
  for (auto [offset, tokens] : {std::pair{0s, 300}, std::pair{10s, 300}, std::pair{20s, 300}}) {
    auto admitted = limiter.admit(key, tokens, 0, start + offset);
    ASSERT_TRUE(admitted.allowed);
    limiter.finish(key.metadata.name, admitted.ticket, tokens, tokens, start + offset);
  }
  // 900 used; 500 more fit once the first two charges (600) have left: at start + 70 s.
  auto now = start + 30s;
  auto refused = limiter.admit(key, 500, 0, now);
  ASSERT_FALSE(refused.allowed);
  EXPECT_EQ(refused.limit, LimitKind::Tokens);
  EXPECT_EQ(refused.retry_after, 40s);
  auto response = Limiter::refusal(key, refused);
  EXPECT_EQ(error_of(response)["type"], "tokens");
  EXPECT_EQ(response.header("retry-after"), "40");
  EXPECT_EQ(response.header("retry-after-ms"), "40000");
  EXPECT_EQ(response.header("x-ratelimit-reset-tokens"), "40s");  // agrees with retry-after
  EXPECT_TRUE(limiter.admit(key, 500, 0, start + 70s).allowed);
}

TEST(RateLimitRefusal, WhatNoWaitCanFixInvitesNoRetry) {
  MemoryLimiter limiter;
  auto now = std::chrono::steady_clock::now();
  auto small = limited_key(0, 100, 0, 0);
  auto too_large = limiter.admit(small, 101, 0, now);
  ASSERT_FALSE(too_large.allowed);
  EXPECT_EQ(too_large.retry_after, 0ms);
  auto response = Limiter::refusal(small, too_large);
  EXPECT_EQ(error_of(response)["type"], "tokens");
  EXPECT_EQ(response.header("x-should-retry"), "false");
  EXPECT_EQ(response.header("retry-after"), "");

  auto budgeted = limited_key(0, 0, 0, 1000);
  budgeted.metadata.name = "budgeted";
  auto spent = limiter.admit(budgeted, 100, 950, now);
  ASSERT_FALSE(spent.allowed);
  EXPECT_EQ(spent.limit, LimitKind::Budget);
  auto quota = Limiter::refusal(budgeted, spent);
  EXPECT_EQ(error_of(quota)["type"], "insufficient_quota");
  EXPECT_EQ(error_of(quota)["code"], "insufficient_quota");
  EXPECT_EQ(quota.header("retry-after"), "");
  EXPECT_EQ(quota.header("retry-after-ms"), "");
  EXPECT_EQ(quota.header("x-should-retry"), "false");
}

TEST(RateLimitRefusal, ConcurrencyAsksForASecond) {
  MemoryLimiter limiter;
  auto key = limited_key(0, 0, 1, 0);
  auto now = std::chrono::steady_clock::now();
  ASSERT_TRUE(limiter.admit(key, 1, 0, now).allowed);
  auto busy = limiter.admit(key, 1, 0, now);
  ASSERT_FALSE(busy.allowed);
  EXPECT_EQ(busy.limit, LimitKind::Concurrency);
  auto response = Limiter::refusal(key, busy);
  EXPECT_EQ(error_of(response)["type"], "requests");
  EXPECT_EQ(response.header("retry-after-ms"), "1000");
}

TEST(RateLimitRefusal, ResetsAreWrittenAsOpenAIDoes) {
  EXPECT_EQ(format_reset(0ms), "0ms");
  EXPECT_EQ(format_reset(20ms), "20ms");
  EXPECT_EQ(format_reset(1500ms), "1.5s");
  EXPECT_EQ(format_reset(60s), "1m0s");
  EXPECT_EQ(format_reset(361'250ms), "6m1.25s");
}

}  // namespace
}  // namespace nebula::gateway
