// The gateway's routing seam with real sockets: engines that serve /metrics, a gateway reading
// them, and requests through it.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "api/api.h"
#include "gateway/gateway.h"
#include "http/test_server.h"
#include "process_helpers.h"
#include "router/policy.h"
#include "store/memory_store.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;

// An engine answering chat completions and /metrics (after `metrics_delay`, with `metrics_text`
// and `metrics_status`); counts what it was sent and how many /metrics reads overlapped.
struct MetricsEngine {
  std::atomic<int> chats{0};
  std::atomic<bool> failing{false};  // chat completions answer 503
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
      if (failing) response.status = 503;
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
    return nebula::testing::eventually([&] { return metrics().find(line) != std::string::npos; }, 5s, 10ms);
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
  EXPECT_TRUE(metrics_show("nebula_router_engine_requests_waiting{deployment=\"m\",replica=\"m-0\"} 3\n"));
  EXPECT_TRUE(metrics_show("nebula_router_engine_kv_cache_usage_ratio{deployment=\"m\",replica=\"m-0\"} 0.5\n"));
  EXPECT_TRUE(metrics_show("nebula_router_engine_load_age_seconds{deployment=\"m\",replica=\"m-1\"}"))
      << "garbage is read as an engine that exports nothing";
  std::string text = metrics();
  EXPECT_EQ(text.find("nebula_router_engine_requests_waiting{deployment=\"m\",replica=\"m-1\"}"), std::string::npos);
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
  nebula::testing::eventually(idle, 5s, 1ms);
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
  ASSERT_TRUE(metrics_show("nebula_router_engine_requests_waiting{deployment=\"m\",replica=\"m-0\"} 3\n"));
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
  EXPECT_EQ(a.chats.load(), 5) << "the default, prefix+load: ties in turn";
  EXPECT_EQ(b.chats.load(), 5);
  deploy("least-outstanding", {&a, &b});
  for (int i = 0; i < 10; ++i) ASSERT_EQ(chat(), 200) << i;
  EXPECT_EQ(a.chats.load(), 10);
  EXPECT_EQ(b.chats.load(), 10);
}

// What the gateway asked of the policies a RecordingPolicy factory made.
struct PolicyLog {
  std::mutex mutex;
  std::vector<std::string> made;  // the specs policies were made for
  std::vector<uint64_t> seeds;
  std::vector<router::RouteContext> contexts;
  std::vector<std::string> candidates;  // per choice, the names joined: "m-0,m-1"
  std::vector<std::string> routed;
  std::vector<std::string> removed;
  std::optional<size_t> answer;  // what choose() returns; nullopt: the last candidate
};

// A fake at the Policy seam: records every call and chooses as PolicyLog::answer says.
class RecordingPolicy : public router::Policy {
 public:
  RecordingPolicy(std::shared_ptr<PolicyLog> log, std::string spec) : log_(std::move(log)), spec_(std::move(spec)) {}
  std::optional<size_t> choose(const router::RouteContext& context,
                               std::span<const router::Candidate> candidates) override {
    std::lock_guard lock(log_->mutex);
    log_->contexts.push_back(context);
    std::string names;
    for (const auto& candidate : candidates) names += (names.empty() ? "" : ",") + candidate.replica;
    log_->candidates.push_back(names);
    if (candidates.empty()) return std::nullopt;
    return log_->answer ? *log_->answer : candidates.size() - 1;
  }
  void routed(const router::RouteContext&, const std::string& replica) override {
    std::lock_guard lock(log_->mutex);
    log_->routed.push_back(replica);
  }
  void removed(const std::string& replica) override {
    std::lock_guard lock(log_->mutex);
    log_->removed.push_back(replica);
  }
  std::string describe() const override { return spec_; }

 private:
  std::shared_ptr<PolicyLog> log_;
  std::string spec_;
};

class PolicySeamTest : public RoutingTest {
 protected:
  void SetUp() override {
    for (auto* engine : {&a, &b}) engine->start();
    deploy("", {&a, &b});
    Options options;
    options.load_scrape_interval = 0ms;
    options.make_policy = [log = log](
                              std::string_view spec,
                              const router::PolicyOptions& policy_options) -> Result<std::unique_ptr<router::Policy>> {
      std::lock_guard lock(log->mutex);
      log->made.push_back(std::string(spec));
      log->seeds.push_back(policy_options.seed);
      if (spec == "refused") return make_error(ErrorCode::InvalidArgument, "refused here");
      return std::unique_ptr<router::Policy>(new RecordingPolicy(log, std::string(spec)));
    };
    start(options);
  }
  int post(const std::string& path, const std::string& body, http::Headers headers = {}) {
    auto response = client.request("POST", front.url() + path, body, std::move(headers));
    last_body = response ? response->body : "";
    return response ? response->status : -1;
  }
  router::RouteContext last_context() {
    std::lock_guard lock(log->mutex);
    return log->contexts.empty() ? router::RouteContext{} : log->contexts.back();
  }
  template <typename T>
  T read(T PolicyLog::*field) {
    std::lock_guard lock(log->mutex);
    return (*log).*field;
  }

  std::shared_ptr<PolicyLog> log = std::make_shared<PolicyLog>();
  MetricsEngine a, b;
  std::string last_body;
};

TEST_F(PolicySeamTest, ThePolicySeesTheRequestAndChoosesAmongTheCandidates) {
  std::string prompt(200, 'p');
  ASSERT_EQ(post("/v1/chat/completions",
                 R"({"model":"m","max_tokens":9,"messages":[{"role":"user","content":")" + prompt + R"("}]})",
                 {{"X-Session-Id", "session-7"}}),
            200);
  auto context = last_context();
  EXPECT_EQ(context.deployment, "m");
  EXPECT_EQ(context.session_key, "session-7");
  EXPECT_EQ(context.prefix_hashes, router::block_hashes(prompt));
  EXPECT_EQ(context.prompt_tokens, 200 / 4 + 1);
  EXPECT_EQ(context.output_tokens, 9);
  EXPECT_NE(context.now, router::SteadyClock::time_point{});
  EXPECT_EQ(read(&PolicyLog::candidates), std::vector<std::string>{"m-0,m-1"});
  EXPECT_EQ(read(&PolicyLog::routed), std::vector<std::string>{"m-1"});
  EXPECT_EQ(b.chats.load(), 1) << "the policy's choice is where the request went";
  EXPECT_EQ(a.chats.load(), 0);

  // The body's user is the session when no header names one.
  ASSERT_EQ(post("/v1/chat/completions", R"({"model":"m","user":"alice","messages":[{"role":"user","content":"hi"}]})"),
            200);
  EXPECT_EQ(last_context().session_key, "alice");
  EXPECT_EQ(last_context().output_tokens, 256) << "no max_tokens: the typical answer the limits charge";
  EXPECT_EQ(read(&PolicyLog::made), std::vector<std::string>{""}) << "one policy, made once, for no spec";
}

TEST_F(PolicySeamTest, EveryTurnOfAResponsesConversationHasTheFirstResponsesKey) {
  const std::string turn(70, 't');  // longer than a 64-byte block
  ASSERT_EQ(post("/v1/responses", R"({"model":"m","input":")" + turn + R"("})"), 200) << last_body;
  EXPECT_EQ(last_context().session_key, "");
  std::string first = json::parse(last_body)["id"];
  ASSERT_EQ(
      post("/v1/responses", R"({"model":"m","input":")" + turn + R"(","previous_response_id":")" + first + R"("})"),
      200)
      << last_body;
  EXPECT_EQ(last_context().session_key, first);
  std::string second = json::parse(last_body)["id"];
  ASSERT_EQ(
      post("/v1/responses", R"({"model":"m","input":")" + turn + R"(","previous_response_id":")" + second + R"("})"),
      200);
  EXPECT_EQ(last_context().session_key, first) << "the chain's first response, not the previous one";
  // The engine gets the whole conversation, and so do the hashes: every turn starts as the first.
  auto contexts = read(&PolicyLog::contexts);
  ASSERT_EQ(contexts.size(), 3u);
  ASSERT_EQ(contexts[0].prefix_hashes.size(), 1u);
  for (const auto& context : contexts) EXPECT_EQ(context.prefix_hashes[0], contexts[0].prefix_hashes[0]);
  EXPECT_GT(contexts[2].prefix_hashes.size(), contexts[1].prefix_hashes.size());
  EXPECT_GT(contexts[2].prompt_tokens, contexts[1].prompt_tokens) << "the conversation is charged too";
}

TEST_F(PolicySeamTest, ARetryOffersOnlyTheReplicasNotTriedYet) {
  b.failing = true;
  ASSERT_EQ(post("/v1/chat/completions", R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"), 200);
  EXPECT_EQ(read(&PolicyLog::candidates), (std::vector<std::string>{"m-0,m-1", "m-0"}));
  EXPECT_EQ(read(&PolicyLog::routed), (std::vector<std::string>{"m-1", "m-0"}));
}

TEST_F(PolicySeamTest, AnIndexOutOfRangeTakesTheFirstCandidate) {
  {
    std::lock_guard lock(log->mutex);
    log->answer = 7;
  }
  ASSERT_EQ(post("/v1/chat/completions", R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"), 200);
  EXPECT_EQ(a.chats.load(), 1);
  EXPECT_EQ(read(&PolicyLog::routed), std::vector<std::string>{"m-0"});
}

TEST_F(PolicySeamTest, AReplicaLeavingRoutingIsRemovedFromItsPolicy) {
  ASSERT_EQ(post("/v1/chat/completions", R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"), 200);
  api::Replica replica;
  replica.metadata.name = "m-1";
  replica.spec.deployment = "m";
  replica.status.phase = api::phase::kFailed;
  ASSERT_TRUE(store.put(api::store_key("replicas", "m-1"), api::to_json(replica).dump()));
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (read(&PolicyLog::removed).empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(read(&PolicyLog::removed), std::vector<std::string>{"m-1"});
  ASSERT_EQ(post("/v1/chat/completions", R"({"model":"m","messages":[{"role":"user","content":"hi"}]})"), 200);
  EXPECT_EQ(read(&PolicyLog::candidates).back(), "m-0");
}

TEST_F(PolicySeamTest, APolicyIsMadeAgainWhenItsSpecChangesAndARefusedSpecRoutesWithTheDefault) {
  auto chat = [&] {
    return post("/v1/chat/completions", R"({"model":"m","messages":[{"role":"user","content":"hi"}]})");
  };
  ASSERT_EQ(chat(), 200);
  deploy("first", {&a, &b});
  ASSERT_EQ(chat(), 200);
  ASSERT_EQ(chat(), 200);
  deploy("refused", {&a, &b});
  for (int i = 0; i < 4; ++i) ASSERT_EQ(chat(), 200) << "the default routes";
  deploy("second", {&a, &b});
  ASSERT_EQ(chat(), 200);
  EXPECT_EQ(read(&PolicyLog::made), (std::vector<std::string>{"", "first", "refused", "second"}))
      << "made once per spec, the refused one included";
  auto seeds = read(&PolicyLog::seeds);
  ASSERT_EQ(seeds.size(), 4u);
  for (uint64_t seed : seeds) EXPECT_EQ(seed, seeds[0]) << "the seed is the deployment's, whatever the spec";
  EXPECT_NE(seeds[0], 0u);
  EXPECT_EQ(read(&PolicyLog::contexts).size(), 1u + 2u + 1u) << "the default, not the fake, chose while refused";
}

}  // namespace
}  // namespace nebula::gateway
