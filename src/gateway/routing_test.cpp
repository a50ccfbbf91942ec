// The gateway's routing seam with real sockets: engines that serve /metrics, a gateway reading
// them, and requests through it.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <thread>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "api/api.h"
#include "gateway/gateway.h"
#include "http/test_server.h"
#include "store/memory_store.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;

// An engine answering chat completions and /metrics (after `metrics_delay`, with `metrics_text`
// and `metrics_status`); counts what it was sent and how many /metrics reads overlapped.
struct MetricsEngine {
  std::atomic<int> chats{0};
  std::atomic<int> scrapes{0};
  std::atomic<int> scraping{0};
  std::atomic<int> most_scraping{0};
  std::chrono::milliseconds metrics_delay{0};
  std::string metrics_text = "vllm:num_requests_waiting{model_name=\"m\"} 3\nvllm:kv_cache_usage_perc 0.5\n";
  int metrics_status = 200;
  http::testing::ServerThread server;

  void start() {
    http::Router router;
    router.add("POST", "/v1/chat/completions", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
      chats++;
      http::Response response;
      response.headers.push_back({"Content-Type", "application/json"});
      response.body = R"({"choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}})";
      co_await writer.send(std::move(response));
    });
    router.add("GET", "/metrics", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
      scrapes++;
      int now = ++scraping;
      for (int seen = most_scraping; now > seen && !most_scraping.compare_exchange_weak(seen, now);) {
      }
      if (metrics_delay.count() > 0) {
        asio::steady_timer timer(server.io(), metrics_delay);
        boost::system::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      --scraping;
      co_await writer.send(http::Response::text(metrics_status, metrics_text, "text/plain; version=0.0.4"));
    });
    ASSERT_TRUE(server.start(std::move(router)));
  }
};

class RoutingTest : public ::testing::Test {
 protected:
  void deploy(const std::string& routing, std::vector<MetricsEngine*> engines) {
    api::Deployment deployment;
    deployment.metadata.name = "m";
    deployment.spec.model = "m";
    json document = api::to_json(deployment);
    if (!routing.empty()) document["spec"]["routing"] = routing;
    ASSERT_TRUE(store.put(api::store_key("deployments", "m"), document.dump()));
    int index = 0;
    for (auto* engine : engines) {
      api::Replica replica;
      replica.metadata.name = "m-" + std::to_string(index++);
      replica.spec.deployment = "m";
      replica.status.phase = api::phase::kReady;
      replica.status.endpoint = engine->server.url();
      ASSERT_TRUE(store.put(api::store_key("replicas", replica.metadata.name), api::to_json(replica).dump()));
    }
  }
  void start(Options options) {
    gateway = std::make_unique<Gateway>(store, front.io(), options);
    ASSERT_TRUE(gateway->start());
    http::Router router;
    gateway->add_routes(router);
    ASSERT_TRUE(front.start(std::move(router)));
  }
  void TearDown() override {
    if (gateway) gateway->stop();
    front.stop();
  }
  int chat() {
    auto response = client.request("POST", front.url() + "/v1/chat/completions",
                                   R"({"model":"m","messages":[{"role":"user","content":"hi"}]})", {});
    return response ? response->status : -1;
  }
  std::string metrics() {
    auto response = client.request("GET", front.url() + "/metrics");
    return response ? response->body : "";
  }
  // Polls /metrics until it holds `line` or 5 s pass.
  bool metrics_show(const std::string& line) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (metrics().find(line) != std::string::npos) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  store::MemoryStore store;
  http::testing::ServerThread front;
  std::unique_ptr<Gateway> gateway;
  http::BlockingClient client;
};

TEST_F(RoutingTest, TheScraperReadsEachEnginesLoad) {
  MetricsEngine busy, garbage, refusing;
  garbage.metrics_text = "\xff{{{ not prometheus\nvllm:num_requests_waiting{ 9\n";
  refusing.metrics_status = 404;
  for (auto* engine : {&busy, &garbage, &refusing}) engine->start();
  deploy("", {&busy, &garbage, &refusing});
  Options options;
  options.load_scrape_interval = 20ms;
  start(options);
  EXPECT_TRUE(metrics_show("nebula_router_engine_waiting{deployment=\"m\",replica=\"m-0\"} 3\n"));
  EXPECT_TRUE(metrics_show("nebula_router_engine_kv_usage{deployment=\"m\",replica=\"m-0\"} 0.5\n"));
  EXPECT_TRUE(metrics_show("nebula_router_engine_load_age_seconds{deployment=\"m\",replica=\"m-1\"}"))
      << "garbage is read as an engine that exports nothing";
  std::string text = metrics();
  EXPECT_EQ(text.find("nebula_router_engine_waiting{deployment=\"m\",replica=\"m-1\"}"), std::string::npos);
  EXPECT_EQ(text.find("replica=\"m-2\""), std::string::npos) << "a refused read gives no figures";
  EXPECT_GT(refusing.scrapes.load(), 0);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(chat(), 200);
  EXPECT_EQ(busy.chats + garbage.chats + refusing.chats, 6);
  // A slot is released just after its answer is sent: wait for the last one.
  auto idle = [&] {
    for (const auto& endpoint : gateway->table().endpoints()) {
      if (endpoint->outstanding != 0 || endpoint->inflight_tokens != 0) return false;
    }
    return true;
  };
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!idle() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(idle()) << "every request's slot and token estimate is given back";
}

TEST_F(RoutingTest, NeverMoreThanOneReadPerReplicaInFlight) {
  MetricsEngine slow;
  slow.metrics_delay = 60ms;  // three rounds of 20 ms, inside the read's 100 ms timeout
  slow.start();
  deploy("", {&slow});
  Options options;
  options.load_scrape_interval = 20ms;
  start(options);
  ASSERT_TRUE(metrics_show("nebula_router_engine_waiting{deployment=\"m\",replica=\"m-0\"} 3\n"));
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (slow.scrapes < 5 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_GE(slow.scrapes.load(), 5);
  EXPECT_EQ(slow.most_scraping.load(), 1);
}

TEST_F(RoutingTest, AnIntervalOfZeroNeverReads) {
  MetricsEngine engine;
  engine.start();
  deploy("", {&engine});
  Options options;
  options.load_scrape_interval = 0ms;
  start(options);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(chat(), 200);
  EXPECT_EQ(engine.scrapes.load(), 0);
  EXPECT_EQ(metrics().find("nebula_router_engine"), std::string::npos);
}

// A spec make_policy refuses is logged and the default routes; a valid one replaces it.
TEST_F(RoutingTest, ARefusedRoutingSpecRoutesWithTheDefault) {
  MetricsEngine a, b;
  a.start();
  b.start();
  deploy("no-such-policy,weight=-1", {&a, &b});
  Options options;
  options.load_scrape_interval = 0ms;
  start(options);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(chat(), 200) << i;
  EXPECT_EQ(a.chats.load(), 5) << "least-outstanding, ties in turn";
  EXPECT_EQ(b.chats.load(), 5);
  deploy("least-outstanding", {&a, &b});
  for (int i = 0; i < 10; ++i) ASSERT_EQ(chat(), 200) << i;
  EXPECT_EQ(a.chats.load(), 10);
  EXPECT_EQ(b.chats.load(), 10);
}

}  // namespace
}  // namespace nebula::gateway
