#include "tui/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

namespace nebula::tui {
namespace {

// What the gateway renders (src/gateway/metrics.cpp), trimmed to two deployments.
constexpr const char* kScrape = R"(# HELP nebula_requests_total Gateway requests by model, key and HTTP status.
# TYPE nebula_requests_total counter
nebula_requests_total{model="chat",key="anonymous",status="200"} 40
nebula_requests_total{model="chat",key="a9rkaj4n",status="429"} 2
nebula_requests_total{model="embed",key="anonymous",status="200"} 7
# TYPE nebula_time_to_first_token_seconds histogram
nebula_time_to_first_token_seconds_bucket{model="chat",le="0.01"} 0
nebula_time_to_first_token_seconds_bucket{model="chat",le="0.05"} 10
nebula_time_to_first_token_seconds_bucket{model="chat",le="0.1"} 30
nebula_time_to_first_token_seconds_bucket{model="chat",le="+Inf"} 40
nebula_time_to_first_token_seconds_sum{model="chat"} 3.1
nebula_time_to_first_token_seconds_count{model="chat"} 40
nebula_completion_tokens_total{model="chat"} 1200
nebula_prompt_tokens_total{model="chat"} 300
nebula_requests_in_flight{model="chat"} 3
nebula_queue_depth{model="chat"} 5
)";

TEST(TuiMetrics, ParsesSamplesWithLabels) {
  auto samples = parse_prometheus(kScrape);
  ASSERT_EQ(samples.size(), 13u);
  EXPECT_EQ(samples[0].name, "nebula_requests_total");
  EXPECT_EQ(samples[0].labels.at("model"), "chat");
  EXPECT_EQ(samples[0].labels.at("status"), "200");
  EXPECT_EQ(samples[0].value, 40);
  EXPECT_EQ(samples[6].labels.at("le"), "+Inf");
}

TEST(TuiMetrics, SkipsMalformedAndHostileLines) {
  auto samples = parse_prometheus(
      "no_value\n"
      "bad{model=\"x\" 1\n"
      "unterminated{model=\"x} 2\n"
      "{model=\"x\"} 3\n"
      "nan_value{model=\"x\"} NaN\n"
      "inf_value +Inf\n"
      "word{model=\"x\"} twelve\n"
      "escaped{model=\"a\\\"b\\\\c\\nd\"} 4 1700000000000\r\n"
      "plain 5");
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].labels.at("model"), "a\"b\\c\nd");
  EXPECT_EQ(samples[0].value, 4);
  EXPECT_EQ(samples[1].name, "plain");
  EXPECT_TRUE(parse_prometheus("").empty());
  EXPECT_TRUE(parse_prometheus(std::string(100000, '{')).empty());
}

TEST(TuiMetrics, GroupsCountersByDeployment) {
  auto counters = gateway_counters(parse_prometheus(kScrape));
  ASSERT_EQ(counters.size(), 2u);
  const auto& chat = counters.at("chat");
  EXPECT_EQ(chat.requests, 42);  // summed over keys and statuses
  EXPECT_EQ(chat.completion_tokens, 1200);
  EXPECT_EQ(chat.prompt_tokens, 300);
  EXPECT_EQ(chat.queue_depth, 5);
  EXPECT_EQ(chat.in_flight, 3);
  ASSERT_EQ(chat.ttft_buckets.size(), 4u);
  EXPECT_EQ(chat.ttft_buckets.front().first, 0.01);
  EXPECT_TRUE(std::isinf(chat.ttft_buckets.back().first));
  EXPECT_EQ(counters.at("embed").requests, 7);
  EXPECT_TRUE(counters.at("embed").ttft_buckets.empty());
}

TEST(TuiMetrics, QuantileInterpolatesInsideTheBucket) {
  std::vector<std::pair<double, double>> buckets = {{0.01, 0}, {0.05, 10}, {0.1, 30}, {INFINITY, 40}};
  // The 20th of 40 observations: halfway through the (0.05, 0.1] bucket's 20.
  EXPECT_NEAR(*histogram_quantile(0.5, buckets), 0.075, 1e-9);
  // The 4th: 0.01 + (0.05 - 0.01) * 4/10.
  EXPECT_NEAR(*histogram_quantile(0.1, buckets), 0.026, 1e-9);
  // In the +Inf bucket: the highest finite bound.
  EXPECT_NEAR(*histogram_quantile(0.99, buckets), 0.1, 1e-9);
  // The first bucket counts from 0.
  EXPECT_NEAR(*histogram_quantile(0.5, {{0.01, 4}, {INFINITY, 4}}), 0.005, 1e-9);
  EXPECT_FALSE(histogram_quantile(0.5, {{0.01, 0}, {INFINITY, 0}}));
  EXPECT_FALSE(histogram_quantile(0.5, {}));
}

TEST(TuiMetrics, RatesComeFromCounterDeltas) {
  GatewayCounters before, after;
  before.requests = 100;
  before.completion_tokens = 5000;
  after.requests = 130;
  after.completion_tokens = 6200;
  after.queue_depth = 2;
  auto result = figures(&before, after, 2.0);
  EXPECT_DOUBLE_EQ(result.requests_per_s, 15);
  EXPECT_DOUBLE_EQ(result.tokens_per_s, 600);
  EXPECT_EQ(result.queue_depth, 2);
  // The first scrape has nothing to compare with.
  EXPECT_EQ(figures(nullptr, after, 0).requests_per_s, 0);
  // A restarted server's counters start again from zero.
  GatewayCounters restarted;
  restarted.requests = 10;
  EXPECT_DOUBLE_EQ(figures(&after, restarted, 1.0).requests_per_s, 10);
  // No time between the scrapes: no rate rather than a division by zero.
  EXPECT_EQ(figures(&before, after, 0).requests_per_s, 0);
}

TEST(TuiMetrics, TtftIsTheIntervalsWhenItHasRequests) {
  GatewayCounters before, after;
  // Before: 10 fast requests. The interval adds 10 slow ones.
  before.ttft_buckets = {{0.01, 10}, {1, 10}, {INFINITY, 10}};
  after.ttft_buckets = {{0.01, 10}, {1, 20}, {INFINITY, 20}};
  auto interval = figures(&before, after, 1.0);
  ASSERT_TRUE(interval.ttft_p50_s);
  EXPECT_NEAR(*interval.ttft_p50_s, 0.505, 1e-9);  // the slow ones only
  // Nothing new streamed: everything since the start.
  auto quiet = figures(&after, after, 1.0);
  ASSERT_TRUE(quiet.ttft_p50_s);
  EXPECT_NEAR(*quiet.ttft_p50_s, 0.01, 1e-9);
  // Nothing ever streamed.
  EXPECT_FALSE(figures(nullptr, GatewayCounters{}, 0).ttft_p50_s);
}

}  // namespace
}  // namespace nebula::tui
