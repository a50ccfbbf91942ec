// The gateway with replicas whose circuit breakers open: requests that no replica can take get
// the engine's own error at once, and a waiter is sent to a replica the moment its cool-down ends.
#include "gateway/gateway.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/clock.h"
#include "http/test_server.h"
#include "process_helpers.h"
#include "store/memory_store.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;

// An engine that answers 503 with its own error body while `failing`, and holds each answer
// while `holding`.
struct Engine {
  std::atomic<bool> failing{false};
  std::atomic<bool> holding{false};
  std::atomic<int> hits{0};
  std::atomic<int> held{0};  // requests being held now
  http::testing::ServerThread server;

  void start() {
    http::Router router;
    router.add("POST", "/v1/chat/completions", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
      hits++;
      if (holding) {
        held++;
        asio::steady_timer timer(server.io());
        while (holding) {
          timer.expires_after(2ms);
          boost::system::error_code ec;
          co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
        held--;
      }
      http::Response response;
      response.status = failing ? 503 : 200;
      response.headers.push_back({"Content-Type", "application/json"});
      if (failing) response.headers.push_back({"Retry-After", "2"});
      response.body = failing ? std::string(R"({"error":{"message":"engine overloaded","type":"server_error"}})")
                              : std::string(R"({"choices":[{"message":{"content":"ok"}}],)"
                                            R"("usage":{"prompt_tokens":1,"completion_tokens":1}})");
      co_await writer.send(std::move(response));
    });
    ASSERT_TRUE(server.start(std::move(router)));
  }
};

class BreakerFallback : public ::testing::Test {
 protected:
  // A deployment "m" whose replicas are `engines`, each taking `max_seqs` requests at once.
  void start(std::vector<Engine*> engines, int max_seqs) {
    api::Deployment deployment;
    deployment.metadata.name = "m";
    deployment.spec.model = "m";
    deployment.spec.max_seqs = max_seqs;
    ASSERT_TRUE(store_.put(api::store_key("deployments", "m"), api::to_json(deployment).dump()));
    int index = 0;
    for (auto* engine : engines) {
      api::Replica replica;
      replica.metadata.name = "m-" + std::to_string(index++);
      replica.spec.deployment = "m";
      replica.status.phase = api::phase::kReady;
      replica.status.endpoint = engine->server.url();
      ASSERT_TRUE(store_.put(api::store_key("replicas", replica.metadata.name), api::to_json(replica).dump()));
    }
    Options options;
    options.breaker_failures = 3;
    options.breaker_cooldown = 300ms;
    options.queue_timeout = 60s;  // longer than any test here: a request that waits for it fails the test
    gateway_ = std::make_unique<Gateway>(store_, front_.io(), options);
    ASSERT_TRUE(gateway_->start());
    http::Router router;
    gateway_->add_routes(router);
    ASSERT_TRUE(front_.start(std::move(router)));
  }
  void TearDown() override {
    if (gateway_) gateway_->stop();
    front_.stop();
  }
  Result<http::Response> chat() {
    http::BlockingClient client;
    return client.request("POST", front_.url() + "/v1/chat/completions",
                          R"({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":1})", {});
  }

  FakeClock clock_;
  store::MemoryStore store_{clock_};
  http::testing::ServerThread front_;
  std::unique_ptr<Gateway> gateway_;
};

TEST_F(BreakerFallback, EveryBreakerOpenAnswersAtOnceWithTheEnginesError) {
  Engine engine;
  engine.start();
  engine.failing = true;
  start({&engine}, 0);
  for (int i = 0; i < 3; ++i) {
    auto answer = chat();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 503) << i;
  }
  ASSERT_EQ(engine.hits, 3);
  // The breaker is open: the request is not sent, not queued, but answered with the engine's error.
  auto refused = chat();
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_NE(refused->body.find("engine overloaded"), std::string::npos) << refused->body;
  EXPECT_EQ(refused->header("retry-after"), "2");
  EXPECT_FALSE(refused->header("x-request-id").empty());
  EXPECT_EQ(engine.hits, 3);

  // After the cool-down, a probe reaches the engine; recovered, it serves again.
  engine.failing = false;
  int status = 0;
  bool answered = true;
  EXPECT_TRUE(nebula::testing::eventually(
      [&] {
        auto answer = chat();
        answered = answered && answer.ok();
        status = answer ? answer->status : -1;
        return status == 200 || !answered;
      },
      10s, 10ms));
  ASSERT_TRUE(answered) << "every request got an HTTP answer";
  EXPECT_EQ(status, 200);
  EXPECT_EQ(engine.hits, 4) << "one probe after the cool-down";
}

TEST_F(BreakerFallback, AWaiterIsSentToAReplicaWhoseCoolDownEnded) {
  Engine flaky, busy;
  flaky.start();
  busy.start();
  flaky.failing = true;
  start({&flaky, &busy}, 1);
  // flaky fails until its breaker opens; each of its failures is retried on busy, which answers.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (flaky.hits < 3 && std::chrono::steady_clock::now() < deadline) {
    auto answer = chat();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 200);
  }
  ASSERT_EQ(flaky.hits, 3);
  // busy takes one request and holds it: with flaky open, nothing else can be served now.
  busy.holding = true;
  auto held = std::async(std::launch::async, [this] { return chat(); });
  nebula::testing::eventually([&] { return busy.held > 0; }, 10s, 1ms);
  ASSERT_EQ(busy.held, 1);
  // This request waits in the queue (busy may free up) and is sent to flaky, recovered, once
  // flaky's cool-down ends, while busy still holds its request. (A timer at the end of the
  // cool-down offers the queue the replica; without it the next change to the deployment's
  // document, written once a second while requests come, would: this test cannot tell them apart.)
  flaky.failing = false;
  auto answer = chat();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200) << answer->body;
  EXPECT_EQ(flaky.hits, 4);
  EXPECT_EQ(busy.held, 1) << "served by the replica whose breaker closed, not by the busy one";
  busy.holding = false;
  auto first = held.get();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 200);
}

}  // namespace
}  // namespace nebula::gateway
