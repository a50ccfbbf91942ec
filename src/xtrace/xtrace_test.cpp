#include "xtrace/xtrace.h"

#include <gtest/gtest.h>

#include "common/clock.h"
#include "process_helpers.h"
#include "xtrace_server.h"

namespace nebula::xtrace {
namespace {

using std::chrono::milliseconds;
using testing::eventually;
using testing::XtraceServer;

constexpr auto kWait = std::chrono::seconds(10);

Options options_for(const XtraceServer& server) {
  Options options;
  options.url = server.url();
  options.token = server.token();
  options.flush_interval = milliseconds(20);
  options.backoff_initial = milliseconds(50);
  options.backoff_max = milliseconds(200);
  options.seed = 7;
  options.shutdown_flush = milliseconds(200);
  return options;
}

Metric gpu_point(const std::string& name, double value, WallTime time = std::chrono::system_clock::now()) {
  return Metric{name, {{"node_id", "node-1"}, {"gpu_index", "0"}}, value, time};
}

Generation generation(const std::string& trace_id) {
  Generation g;
  g.trace_id = trace_id;
  g.name = "/v1/chat/completions";
  g.user_id = "alice";
  g.request_id = "req-1";
  g.model = "m";
  g.deployment = "m";
  g.replica = "m-0";
  g.status = 200;
  g.start = std::chrono::system_clock::now();
  g.end = g.start + milliseconds(120);
  g.ttft_s = 0.05;
  g.prompt_tokens = 12;
  g.completion_tokens = 34;
  return g;
}

TEST(XtraceTraceParent, AcceptsValidHeaders) {
  auto parent = TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  ASSERT_TRUE(parent);
  EXPECT_EQ(parent->trace_id, "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(parent->span_id, "b7ad6b7169203331");
  EXPECT_EQ(parent->flags, 1);
  EXPECT_EQ(parent->format(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  // A later version may carry more fields after its four.
  EXPECT_TRUE(TraceParent::parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra"));
}

TEST(XtraceTraceParent, RefusesMalformedHeaders) {
  for (std::string bad :
       std::vector<std::string>{"", "garbage", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
                                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  // upper case
                                "00-00000000000000000000000000000000-b7ad6b7169203331-01",  // zero trace id
                                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  // zero span id
                                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  // invalid version
                                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
                                "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
                                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
                                "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01", std::string(4096, 'a')}) {
    EXPECT_FALSE(TraceParent::parse(bad)) << bad;
  }
}

TEST(XtraceTraceParent, MadeAndChildHeadersAreValidAndKeepTheTrace) {
  auto made = TraceParent::make();
  ASSERT_TRUE(TraceParent::parse(made.format()));
  auto child = made.child();
  EXPECT_EQ(child.trace_id, made.trace_id);
  EXPECT_NE(child.span_id, made.span_id);
  EXPECT_NE(TraceParent::make().trace_id, made.trace_id);
  EXPECT_EQ(uuid_of(made.trace_id).size(), 36u);
}

TEST(XtraceRfc3339, ParsesOffsetsAndFractionsAndRefusesGarbage) {
  auto utc = parse_rfc3339("2026-12-06T12:00:00Z");
  ASSERT_TRUE(utc);
  EXPECT_EQ(to_unix_ms(*utc), 1796558400000);
  auto offset = parse_rfc3339("2026-12-06T13:00:00.250+01:00");
  ASSERT_TRUE(offset);
  EXPECT_EQ(to_unix_ms(*offset), 1796558400250);
  EXPECT_EQ(parse_rfc3339(format_rfc3339(*offset)), offset);
  for (std::string bad : {"", "2026-12-06", "2026-13-06T12:00:00Z", "2026-12-06T12:00:00", "2026-12-06T12:00:00Zjunk",
                          "2026-12-06T12:00:00.Z", "yyyy-12-06T12:00:00Z"}) {
    EXPECT_FALSE(parse_rfc3339(bad)) << bad;
  }
}

TEST(XtraceClient, SendsMetricBatchesWithTheSeedsNamesLabelsAndTimes) {
  XtraceServer server;
  Client client(options_for(server));
  auto time = *parse_rfc3339("2026-12-06T12:00:00.000Z");
  client.report_metrics(
      {gpu_point("gpu_utilization", 85, time), gpu_point("gpu_memory_total_mb", 81920, time),
       Metric{"kv_cache_usage", {{"model_uid", "m"}, {"replica_id", "m-0"}, {"node_id", "node-1"}}, 0.45, time}});
  ASSERT_TRUE(eventually([&] { return server.points().size() == 3; }, kWait));
  auto points = server.points();
  EXPECT_EQ(points[0].name, "gpu_utilization");
  EXPECT_EQ(points[0].value, 85);
  EXPECT_EQ(points[0].timestamp, "2026-12-06T12:00:00.000Z");
  EXPECT_EQ(points[2].labels.at("replica_id"), "m-0");
  EXPECT_TRUE(eventually([&] { return client.stats().metrics.sent == 3; }, kWait));
  EXPECT_TRUE(server.problems().empty());
}

TEST(XtraceClient, SendsOneTraceAndGenerationPerRequest) {
  XtraceServer server;
  Client client(options_for(server));
  client.report(generation("0af7651916cd43dd8448eb211c80319c"));
  ASSERT_TRUE(eventually([&] { return server.traces().size() == 1; }, kWait));
  json body = server.traces()[0];
  EXPECT_EQ(body["trace"]["id"], "0af76519-16cd-43dd-8448-eb211c80319c");
  EXPECT_EQ(body["trace"]["name"], "/v1/chat/completions");
  EXPECT_EQ(body["trace"]["userId"], "alice");
  const json& observation = body["observations"][0];
  EXPECT_EQ(observation["type"], "GENERATION");
  EXPECT_EQ(observation["model"], "m");
  EXPECT_EQ(observation["promptTokens"], 12);
  EXPECT_EQ(observation["completionTokens"], 34);
  EXPECT_EQ(observation["totalTokens"], 46);
  EXPECT_DOUBLE_EQ(observation["timeToFirstToken"].get<double>(), 0.05);
  EXPECT_DOUBLE_EQ(observation["latency"].get<double>(), 0.12);
  EXPECT_EQ(observation["metadata"]["deployment"], "m");
  EXPECT_EQ(observation["metadata"]["replica"], "m-0");
  EXPECT_EQ(observation["metadata"]["status"], 200);
  EXPECT_FALSE(observation.contains("input"));  // content only when asked for
}

TEST(XtraceClient, AWrongTokenIsNotRetriedAndCountsAsDropped) {
  XtraceServer server;
  Options options = options_for(server);
  options.token = "wrong";
  Client client(options);
  client.report(generation("1af7651916cd43dd8448eb211c80319c"));
  ASSERT_TRUE(eventually([&] { return client.stats().traces.dropped_failed == 1; }, kWait));
  EXPECT_EQ(server.refused(401), 1);
  EXPECT_EQ(client.stats().traces.retries, 0u);
  EXPECT_TRUE(server.traces().empty());
}

TEST(XtraceClient, RetriesAfter5xxAnd429HonouringRetryAfterWithoutDuplicates) {
  XtraceServer server;
  server.fail_next(1, {503, 0});
  server.fail_next(1, {429, 1});
  Client client(options_for(server));
  auto started = std::chrono::steady_clock::now();
  client.report(generation("2af7651916cd43dd8448eb211c80319c"));
  ASSERT_TRUE(eventually([&] { return server.traces().size() == 1; }, kWait));
  // The 429 said one second: the try after it waited at least that.
  EXPECT_GE(std::chrono::steady_clock::now() - started, milliseconds(1'000));
  EXPECT_EQ(server.refused(503), 1);
  EXPECT_EQ(server.refused(429), 1);
  EXPECT_EQ(server.trace_ids().at("2af76519-16cd-43dd-8448-eb211c80319c"), 1);
  EXPECT_EQ(client.stats().traces.retries, 2u);
  EXPECT_EQ(client.stats().traces.sent, 1u);
}

TEST(XtraceClient, ARateLimitedServerGetsEveryTraceExactlyOnce) {
  XtraceServer server;
  server.set_rate_limit(3, 1);
  Client client(options_for(server));
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) {
    auto id = TraceParent::make().trace_id;
    ids.push_back(uuid_of(id));
    client.report(generation(id));
  }
  ASSERT_TRUE(eventually([&] { return server.traces().size() == 8; }, std::chrono::seconds(20)));
  auto accepted = server.trace_ids();
  for (const auto& id : ids) EXPECT_EQ(accepted[id], 1) << id;
  EXPECT_GT(server.refused(429), 0);
  EXPECT_GT(client.stats().traces.retries, 0u);
}

TEST(XtraceClient, AFullQueueDropsTheOldestAndCountsIt) {
  XtraceServer server;
  server.fail_next(1, {0, -1, milliseconds(0), true});  // the first POST is never answered
  Options options = options_for(server);
  options.max_queue = 3;
  options.timeout = milliseconds(500);
  Client client(options);
  client.report_metrics({gpu_point("gpu_temperature", 0)});
  ASSERT_TRUE(eventually([&] { return server.requests() == 1; }, kWait));  // in flight, unanswered
  for (int i = 1; i <= 5; ++i) client.report_metrics({gpu_point("gpu_temperature", i)});
  EXPECT_EQ(client.stats().metrics.dropped_full, 2u);
  ASSERT_TRUE(eventually([&] { return server.points().size() == 4; }, kWait))
      << server.points().size() << " points, " << server.requests() << " requests, " << client.stats().metrics.retries
      << " retries";
  std::vector<double> values;
  for (const auto& point : server.points()) values.push_back(point.value);
  EXPECT_EQ(values, (std::vector<double>{0, 3, 4, 5}));  // the timed-out one retried; 1 and 2 dropped
  EXPECT_GE(client.stats().metrics.retries, 1u);
  std::string metrics = client.render_metrics();
  EXPECT_NE(metrics.find("nebula_xtrace_dropped_total{kind=\"metrics\",reason=\"queue_full\"} 2"), std::string::npos);
}

TEST(XtraceClient, ReportingNeverWaitsForABlackHole) {
  XtraceServer server;
  server.set_default_fault({0, -1, milliseconds(0), true});
  Options options = options_for(server);
  options.max_queue = 100;
  Client client(options);
  for (int i = 0; i < 1000; ++i) client.report(generation(TraceParent::make().trace_id));
  // Not a timing assertion on the caller (bench/xtrace_bench measures that): the queue stayed
  // bounded, and what is neither queued nor in flight (one per sender) was dropped and counted.
  EXPECT_LE(client.stats().traces.queued, 100u);
  EXPECT_GE(client.stats().traces.dropped_full, 1000u - 100u - static_cast<unsigned>(options.trace_senders));
}

// A stopping process sends what it still holds (for at most shutdown_flush), even when the send
// loops were asleep and xtrace answered the first tries with 503.
TEST(XtraceClient, WhatIsQueuedIsSentWhenTheClientStops) {
  XtraceServer server;
  server.fail_next(2, {503, 0});
  Options options = options_for(server);
  options.flush_interval = milliseconds(500);
  options.shutdown_flush = std::chrono::seconds(20);
  {
    Client client(options);
    for (int i = 0; i < 30; ++i) client.report(generation(TraceParent::make().trace_id));
    client.report_metrics({gpu_point("gpu_utilization", 50), gpu_point("gpu_memory_total_mb", 81920)});
  }
  EXPECT_EQ(server.traces().size(), 30u);
  EXPECT_EQ(server.points().size(), 2u);
}

TEST(XtraceClient, MetricsExportHasHelpTypeAndTotals) {
  XtraceServer server;
  Client client(options_for(server));
  std::string text = client.render_metrics();
  for (const char* family : {"nebula_xtrace_sent_total", "nebula_xtrace_retries_total", "nebula_xtrace_dropped_total",
                             "nebula_xtrace_queue_length", "nebula_xtrace_queries_total"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
    EXPECT_NE(text.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
}

Query pending_query() {
  return Query{"pending_requests", {{"model_uid", "m"}}, "replica_id"};
}

void add_pending(XtraceServer& server, const std::string& replica, double value, WallTime at) {
  server.add_point({"pending_requests",
                    {{"model_uid", "m"}, {"replica_id", replica}, {"node_id", "node-1"}},
                    value,
                    format_rfc3339(at)});
}

SignalLimits fast_limits() {
  SignalLimits limits = kRouterLimits;
  limits.refresh = milliseconds(50);
  return limits;
}

TEST(XtraceSignals, FreshValuesAreUsedAndStaleOnesAreNot) {
  XtraceServer server;
  auto now = std::chrono::system_clock::now();
  add_pending(server, "m-0", 7, now - std::chrono::seconds(2));
  add_pending(server, "m-1", 3, now - std::chrono::seconds(40));  // stale: 40 s > 15 s
  Client client(options_for(server), {{"router", fast_limits()}});
  client.watch("router", pending_query());
  ASSERT_TRUE(eventually([&] { return client.value("router", pending_query(), "m-0", now).has_value(); }, kWait));
  EXPECT_EQ(*client.value("router", pending_query(), "m-0", now), 7);
  EXPECT_FALSE(client.value("router", pending_query(), "m-1", now));  // its own point is stale
  EXPECT_FALSE(client.value("router", pending_query(), "m-2", now));  // missing
  // The same answer 20 s later is stale for the router.
  EXPECT_FALSE(client.value("router", pending_query(), "m-0", now + std::chrono::seconds(20)));
  // A query carries the contract's parameters and the bearer token.
  auto target = server.queries().at(0);
  EXPECT_NE(target.find("name=pending_requests"), std::string::npos);
  EXPECT_NE(target.find("agg=last"), std::string::npos);
  EXPECT_NE(target.find("group_by=replica_id"), std::string::npos);
  EXPECT_NE(target.find("labels=%7B%22model_uid%22%3A%22m%22%7D"), std::string::npos);
}

TEST(XtraceSignals, ThrottledQueriesBackOffAndTheQpsCapHolds) {
  XtraceServer server;
  auto now = std::chrono::system_clock::now();
  add_pending(server, "m-0", 5, now);
  server.fail_next(1, {429, 1});
  SignalLimits limits = fast_limits();
  limits.max_qps = 5;
  Client client(options_for(server), {{"scheduler", limits}});
  auto started = std::chrono::steady_clock::now();
  client.watch("scheduler", pending_query());
  ASSERT_TRUE(eventually([&] { return client.value("scheduler", pending_query(), "m-0", now).has_value(); }, kWait));
  EXPECT_GE(std::chrono::steady_clock::now() - started, milliseconds(1'000));  // Retry-After: 1
  EXPECT_EQ(client.stats().queries_throttled, 1u);
  // Refreshing every 50 ms is asked for, but never more than 5 queries a second.
  size_t before = server.queries().size();
  auto from = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually([&] { return server.queries().size() >= before + 6; }, kWait));
  EXPECT_GE(std::chrono::steady_clock::now() - from, milliseconds(1'000));
}

TEST(XtraceSignals, HostileAnswersGiveNoValue) {
  XtraceServer server;
  Options options = options_for(server);
  options.token = "wrong";  // every query refused with 401
  Client client(options, {{"router", fast_limits()}});
  client.watch("router", pending_query());
  ASSERT_TRUE(eventually([&] { return client.stats().queries_failed >= 2; }, kWait));
  EXPECT_FALSE(client.value("router", pending_query(), "m-0", std::chrono::system_clock::now()));
}

TEST(XtraceSignals, MalformedAnswersAreNotTrusted) {
  XtraceServer server;
  auto now = std::chrono::system_clock::now();
  Client client(options_for(server), {{"router", fast_limits()}});
  auto value_after_answer = [&](json answer) -> std::optional<double> {
    server.set_answer("pending_requests", std::move(answer));
    uint64_t asked = client.stats().queries_ok + client.stats().queries_failed;
    client.watch("router", pending_query());
    EXPECT_TRUE(
        eventually([&] { return client.stats().queries_ok + client.stats().queries_failed >= asked + 2; }, kWait));
    return client.value("router", pending_query(), "m-0", now);
  };
  std::string time = format_rfc3339(now);
  json good_meta = {{"latest_ts", time}};
  EXPECT_FALSE(value_after_answer("not an object"));
  EXPECT_FALSE(value_after_answer(json{{"data", "nope"}, {"meta", good_meta}}));
  // A value that is not a number, a time that is not RFC 3339, a series without its label.
  EXPECT_FALSE(value_after_answer(
      json{{"data", json::array({{{"labels", {{"replica_id", "m-0"}}},
                                  {"values", json::array({{{"timestamp", time}, {"value", "7"}}})}}})},
           {"meta", good_meta}}));
  EXPECT_FALSE(value_after_answer(
      json{{"data", json::array({{{"labels", {{"replica_id", "m-0"}}},
                                  {"values", json::array({{{"timestamp", "yesterday"}, {"value", 7}}})}}})},
           {"meta", good_meta}}));
  EXPECT_FALSE(value_after_answer(json{
      {"data",
       json::array({{{"labels", json::object()}, {"values", json::array({{{"timestamp", time}, {"value", 7}}})}}})},
      {"meta", good_meta}}));
  // Without meta.latest_ts nothing is fresh.
  EXPECT_FALSE(value_after_answer(
      json{{"data", json::array({{{"labels", {{"replica_id", "m-0"}}},
                                  {"values", json::array({{{"timestamp", time}, {"value", 7}}})}}})}}));
  // And a well-formed one is taken.
  EXPECT_EQ(
      value_after_answer(json{{"data", json::array({{{"labels", {{"replica_id", "m-0"}}},
                                                     {"values", json::array({{{"timestamp", time}, {"value", 7}}})}}})},
                              {"meta", good_meta}}),
      7);
}

}  // namespace
}  // namespace nebula::xtrace
