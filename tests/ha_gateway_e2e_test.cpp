// Stateless gateways against real processes: `nebula up --auth keys` with engine-sim replicas,
// `nebula gateway` processes following it, and a real redis-server sharing their limits.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "nebula_fixture.h"
#include "redis_server.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::Child;
using testing::eventually;
using testing::RedisServer;

const std::string kChat = R"({"model":"chat","max_tokens":4,"messages":[{"role":"user","content":"hello there"}]})";

// A stream that runs for a while: 400 tokens at 10 ms each.
const std::string kLongStream =
    R"({"model":"chat","max_tokens":400,"stream":true,"messages":[{"role":"user","content":"tell me a story"}]})";

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

class HaGatewayE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new testing::NebulaUp({"--auth", "keys"});
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    admin_ = up_->admin_key();
    auto deployed =
        up_->cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--replicas", "1", "--max-seqs", "64",
                  "--engine-arg=--step-base-ms", "--engine-arg=10", "--wait", "--timeout", "60s"},
                 admin_);
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
  }

  void SetUp() override {
    if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
  }

  std::string create_key(std::vector<std::string> flags) {
    flags.insert(flags.begin(), {"keys", "create", "ha-key", "-o", "json"});
    auto created = up_->cli(flags, admin_);
    EXPECT_EQ(created.exit_code, 0) << created.out;
    auto parsed = parse_json(created.out);
    return parsed ? (*parsed).value("secret", "") : "";
  }

  // A `nebula gateway` following the server on `port`, with more flags; waits until it follows.
  std::unique_ptr<Child> start_gateway(int port, std::vector<std::string> extra = {}) {
    std::string log = temp_.path() + "/gateway-" + std::to_string(gateways_started_++) + ".log";
    return testing::start_gateway(up_->server(), admin_, port, extra, log);
  }

  bool knows_key(const std::string& url, const std::string& key) { return testing::gateway_knows_key(url, key); }

  Result<http::Response> chat(const std::string& url, const std::string& key, const std::string& body = kChat) {
    http::BlockingClient client;
    return client.request("POST", url + "/v1/chat/completions", body, bearer(key), 30s);
  }

  static std::string url_of(int port) { return testing::local_url(port); }

  testing::TempDir temp_;
  int gateways_started_ = 0;
  static testing::NebulaUp* up_;
  static std::string admin_;
};

testing::NebulaUp* HaGatewayE2E::up_ = nullptr;
std::string HaGatewayE2E::admin_;

TEST_F(HaGatewayE2E, TwoGatewaysOnOnePortLetExactlyTheKeysRpmThrough) {
  RedisServer redis;
  ASSERT_TRUE(redis.ready());
  int port = testing::free_port();
  auto first = start_gateway(port, {"--limits", redis.url(), "--access-log", temp_.path() + "/first.log"});
  auto second = start_gateway(port, {"--limits", redis.url(), "--access-log", temp_.path() + "/second.log"});
  ASSERT_TRUE(first->running() && second->running()) << second->output();
  std::string key = create_key({"--rpm", "60"});
  ASSERT_TRUE(knows_key(url_of(port), key));
  // Both must know the key before the load: listing from fresh connections reaches both.
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 8; ++i) {
          http::BlockingClient client;
          auto answer = client.request("GET", url_of(port) + "/v1/models", "", bearer(key), 2s);
          if (!answer || answer->status != 200) return false;
        }
        return true;
      },
      10s));

  // 100 requests from 20 threads, each on its own connection, spread by the kernel.
  std::atomic<int> passed{0}, limited{0}, other{0};
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 20; ++t) {
    threads.emplace_back([&] {
      while (next.fetch_add(1) < 100) {
        http::BlockingClient client;
        auto answer = client.request("POST", url_of(port) + "/v1/chat/completions", kChat, bearer(key), 30s);
        int status = answer ? answer->status : -1;
        if (status == 200) {
          passed++;
        } else if (status == 429) {
          limited++;
        } else {
          other++;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(passed.load(), 60);
  EXPECT_EQ(limited.load(), 40);
  EXPECT_EQ(other.load(), 0);
  // Both gateways served: each wrote access log lines (flushed once a second).
  EXPECT_TRUE(eventually(
      [&] {
        return !read_file(temp_.path() + "/first.log").empty() && !read_file(temp_.path() + "/second.log").empty();
      },
      5s))
      << "one gateway took every connection";
  // Usage reached the server from both: 60 requests under this key.
  std::string id = key.substr(3, key.find('_') - 3);
  EXPECT_TRUE(eventually(
      [&] {
        json usage = up_->get_json("/api/v1/usage?key=" + id, admin_);
        return usage.is_object() && usage["total"].value("requests", 0) == 60;
      },
      10s))
      << up_->get_json("/api/v1/usage?key=" + id, admin_).dump();
}

TEST_F(HaGatewayE2E, TheConcurrencySlotsOfAKilledGatewayComeBackAfterTheLease) {
  RedisServer redis;
  int doomed_port = testing::free_port();
  int survivor_port = testing::free_port();
  std::vector<std::string> limits = {"--limits", redis.url(), "--limits-lease", "2s"};
  auto doomed = start_gateway(doomed_port, limits);
  auto survivor = start_gateway(survivor_port, limits);
  std::string key = create_key({"--max-concurrency", "2"});
  ASSERT_TRUE(knows_key(url_of(doomed_port), key) && knows_key(url_of(survivor_port), key));

  // Two long streams hold both slots through the doomed gateway.
  std::atomic<int> started{0};
  std::vector<std::thread> streams;
  for (int i = 0; i < 2; ++i) {
    streams.emplace_back([&] {
      http::BlockingClient client;
      bool counted = false;
      (void)client.stream("POST", url_of(doomed_port) + "/v1/chat/completions", kLongStream, bearer(key),
                          [&](std::string_view) {
                            if (!counted) started++;
                            counted = true;
                            return true;
                          });
    });
  }
  ASSERT_TRUE(eventually([&] { return started.load() == 2; }, 20s));
  auto busy = chat(url_of(survivor_port), key);
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->status, 429) << busy->body;
  doomed->stop(SIGKILL, 5s);
  for (auto& stream : streams) stream.join();
  // No finish will ever come for them: the slots come back when the leases lapse.
  EXPECT_TRUE(eventually(
      [&] {
        auto answer = chat(url_of(survivor_port), key);
        return answer && answer->status == 200;
      },
      10s, 200ms));
}

TEST_F(HaGatewayE2E, KillingAGatewayMidStreamLeavesTheOthersServing) {
  int port = testing::free_port();
  auto doomed = start_gateway(port);
  int other_port = testing::free_port();
  auto other = start_gateway(other_port);
  std::string key = create_key({});
  ASSERT_TRUE(knows_key(url_of(port), key) && knows_key(url_of(other_port), key));
  // The gateways without --limits say loudly that their limits are per gateway.
  EXPECT_NE(doomed->output().find("limits are per gateway"), std::string::npos) << doomed->output();

  std::atomic<bool> doomed_streaming{false};
  std::atomic<bool> other_done{false};
  std::string other_text;
  int other_status = 0;
  std::thread on_other([&] {
    http::BlockingClient client;
    auto status = client.stream("POST", url_of(other_port) + "/v1/chat/completions", kLongStream, bearer(key),
                                [&](std::string_view piece) {
                                  other_text += piece;
                                  return true;
                                });
    other_status = status ? *status : -1;
    other_done = true;
  });
  std::string doomed_text;
  std::thread on_doomed([&] {
    http::BlockingClient client;
    (void)client.stream("POST", url_of(port) + "/v1/chat/completions", kLongStream, bearer(key),
                        [&](std::string_view piece) {
                          doomed_text += piece;
                          doomed_streaming = true;
                          return true;
                        });
  });
  ASSERT_TRUE(eventually([&] { return doomed_streaming.load(); }, 20s));
  doomed->stop(SIGKILL, 5s);
  on_doomed.join();
  EXPECT_EQ(doomed_text.find("[DONE]"), std::string::npos) << "the killed gateway's stream cannot have ended well";
  // The other gateway serves new requests and finishes the stream it was relaying.
  auto answer = chat(url_of(other_port), key);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200) << answer->body;
  on_other.join();
  EXPECT_EQ(other_status, 200);
  EXPECT_NE(other_text.find("[DONE]"), std::string::npos);
  // And a gateway started on the killed one's port takes over its clients.
  auto replacement = start_gateway(port);
  auto again = chat(url_of(port), key);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
}

// Redis down: by default rate limits fail open and budgets fail closed; the flags turn both round.
TEST_F(HaGatewayE2E, RedisDownFollowsTheChosenPolicy) {
  RedisServer redis;
  int defaults_port = testing::free_port();
  int reversed_port = testing::free_port();
  auto defaults = start_gateway(defaults_port, {"--limits", redis.url(), "--limits-timeout", "50ms"});
  auto reversed = start_gateway(
      reversed_port, {"--limits", redis.url(), "--limits-fail-rate", "closed", "--limits-fail-budget", "open"});
  std::string rated = create_key({"--rpm", "1"});
  std::string budgeted = create_key({"--budget-tokens", "1000000"});
  for (int port : {defaults_port, reversed_port}) {
    ASSERT_TRUE(knows_key(url_of(port), rated) && knows_key(url_of(port), budgeted));
  }
  // With Redis up, the RPM holds across both gateways.
  EXPECT_EQ(chat(url_of(defaults_port), rated)->status, 200);
  EXPECT_EQ(chat(url_of(reversed_port), rated)->status, 429);
  EXPECT_EQ(chat(url_of(defaults_port), budgeted)->status, 200);

  redis.stop();
  for (int i = 0; i < 3; ++i) {
    auto open = chat(url_of(defaults_port), rated);
    ASSERT_TRUE(open);
    EXPECT_EQ(open->status, 200) << "rate limits fail open: " << open->body;
  }
  auto closed_budget = chat(url_of(defaults_port), budgeted);
  ASSERT_TRUE(closed_budget);
  EXPECT_EQ(closed_budget->status, 503) << closed_budget->body;
  auto error = parse_json(closed_budget->body);
  ASSERT_TRUE(error);
  EXPECT_EQ((*error)["error"]["code"], "limits_unavailable");
  EXPECT_FALSE(closed_budget->header("retry-after").empty());

  auto closed_rate = chat(url_of(reversed_port), rated);
  ASSERT_TRUE(closed_rate);
  EXPECT_EQ(closed_rate->status, 503) << closed_rate->body;
  auto open_budget = chat(url_of(reversed_port), budgeted);
  ASSERT_TRUE(open_budget);
  EXPECT_EQ(open_budget->status, 200) << open_budget->body;

  // Redis back (empty): limits are counted again.
  redis.start();
  EXPECT_TRUE(eventually(
      [&] {
        auto answer = chat(url_of(reversed_port), rated);
        return answer && answer->status == 200;
      },
      10s, 300ms));
  // Each gateway reconnects on its own schedule (at most once per retry interval, and a 50 ms
  // timeout can miss under a sanitizer), failing open until then; once back, the reversed
  // gateway's request counts against the defaults gateway too.
  EXPECT_TRUE(eventually(
      [&] {
        auto answer = chat(url_of(defaults_port), rated);
        return answer && answer->status == 429;
      },
      10s, 300ms));
}

TEST_F(HaGatewayE2E, AStalledRedisStallsNeitherUnlimitedKeysNorHealthz) {
  RedisServer redis;
  int port = testing::free_port();
  auto gateway = start_gateway(port, {"--limits", redis.url(), "--limits-timeout", "30s"});
  std::string limited = create_key({"--rpm", "1000"});
  std::string unlimited = create_key({});
  ASSERT_TRUE(knows_key(url_of(port), limited) && knows_key(url_of(port), unlimited));

  redis.pause();
  std::atomic<int> limited_status{0};
  std::thread waiting([&] {
    auto answer = chat(url_of(port), limited);
    limited_status = answer ? answer->status : -1;
  });
  // Its admission has reached the stalled Redis (the command sits unread in Redis's socket) ...
  bool sent = eventually([&] { return redis.unread_bytes() > 0; }, 10s);
  EXPECT_TRUE(sent);
  // ... and while it waits, the gateway answers everything that does not need Redis.
  // (EXPECT only until the join: the waiting thread must be joined whatever fails.)
  http::BlockingClient client;
  auto health = client.request("GET", url_of(port) + "/healthz", "", {}, 10s);
  EXPECT_TRUE(health && health->status == 200) << (health ? health->body : health.error().message);
  for (int i = 0; i < 3; ++i) {
    auto answer = chat(url_of(port), unlimited);
    EXPECT_TRUE(answer && answer->status == 200) << (answer ? answer->body : answer.error().message);
  }
  EXPECT_EQ(limited_status.load(), 0) << "the limited request did not wait for Redis";
  redis.resume();
  waiting.join();
  EXPECT_EQ(limited_status.load(), 200);
}

TEST_F(HaGatewayE2E, AClientThatLeavesMidAdmissionLeaksNoSlot) {
  RedisServer redis;
  int port = testing::free_port();
  // A long lease: a leaked slot would stay taken for the whole test.
  auto gateway = start_gateway(port, {"--limits", redis.url(), "--limits-timeout", "30s", "--limits-lease", "10m"});
  std::string key = create_key({"--max-concurrency", "1"});
  ASSERT_TRUE(knows_key(url_of(port), key));

  redis.pause();
  // A raw client: sends its request, waits until the admission reached Redis, and hangs up.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key +
                        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(kChat.size()) +
                        "\r\n\r\n" + kChat;
  ASSERT_EQ(::write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  EXPECT_TRUE(eventually([&] { return redis.unread_bytes() > 0; }, 10s));
  ::close(fd);
  redis.resume();  // Redis admits it now, for a client that is gone

  // The slot comes back with the request's end, not with the lease: the key's one slot serves
  // again, and then is free again after each request.
  EXPECT_TRUE(eventually(
      [&] {
        auto answer = chat(url_of(port), key);
        return answer && answer->status == 200;
      },
      10s, 100ms));
  for (int i = 0; i < 3; ++i) {
    auto answer = chat(url_of(port), key);
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 200) << answer->body;
  }
}

// A Redis with a password: the gateway logs in with the password in the URL or in
// NEBULA_REDIS_PASSWORD (out of the process list), counts the key's RPM there, keeps its stored
// responses there; a wrong password stops the start with a message that does not repeat it.
TEST_F(HaGatewayE2E, AGatewayLogsInToARedisWithAPassword) {
  testing::RedisServer redis("gw-s3cret");
  ASSERT_TRUE(redis.ready());
  const std::string where = "127.0.0.1:" + std::to_string(redis.port());
  int port = testing::free_port();
  auto gateway = start_gateway(port, {"--limits", "redis://:gw-s3cret@" + where + "/1"});
  std::string key = create_key({"--rpm", "2"});
  ASSERT_TRUE(knows_key(url_of(port), key));
  EXPECT_EQ(chat(url_of(port), key)->status, 200);
  EXPECT_EQ(chat(url_of(port), key)->status, 200);
  EXPECT_EQ(chat(url_of(port), key)->status, 429) << "the RPM window is in the Redis it logged in to";
  EXPECT_EQ(gateway->output().find("gw-s3cret"), std::string::npos) << gateway->output();

  auto run = [&](std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), {"timeout", "20", NEBULA_BINARY, "gateway", "--server", up_->server(), "--api-key",
                               admin_, "--listen", "127.0.0.1:" + std::to_string(testing::free_port())});
    return testing::run_command(args, env);
  };
  auto wrong = run({"--limits", "redis://:not-it@" + where});
  EXPECT_EQ(wrong.exit_code, 1) << wrong.out;
  EXPECT_NE(wrong.out.find("refused the login"), std::string::npos) << wrong.out;
  EXPECT_EQ(wrong.out.find("not-it"), std::string::npos) << wrong.out;
  auto none = run({"--responses", "redis://" + where});
  EXPECT_EQ(none.exit_code, 1) << none.out;
  EXPECT_NE(none.out.find("NOAUTH"), std::string::npos) << none.out;

  // The password from the environment: a second gateway shares the first one's window.
  int env_port = testing::free_port();
  std::vector<std::string> argv = {"env",
                                   "NEBULA_REDIS_PASSWORD=gw-s3cret",
                                   NEBULA_BINARY,
                                   "gateway",
                                   "--server",
                                   up_->server(),
                                   "--api-key",
                                   admin_,
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(env_port),
                                   "--exit-with-parent",
                                   "--limits",
                                   "redis://" + where + "/1"};
  auto from_env = std::make_unique<testing::Child>(argv, temp_.path() + "/env-gateway.log");
  ASSERT_TRUE(knows_key(url_of(env_port), key)) << from_env->output();
  EXPECT_EQ(chat(url_of(env_port), key)->status, 429) << from_env->output();
}

TEST_F(HaGatewayE2E, BadFlagsAndAnAbsentServerOrRedisAreRefused) {
  auto run = [](std::vector<std::string> args) {
    args.insert(args.begin(), {NEBULA_BINARY, "gateway"});
    return testing::run_command(args);
  };
  int port = testing::free_port();
  std::string listen = "127.0.0.1:" + std::to_string(port);
  auto bad_policy = run({"--server", up_->server(), "--listen", listen, "--limits-fail-rate", "sometimes"});
  EXPECT_EQ(bad_policy.exit_code, 2) << bad_policy.out;
  auto bad_url = run({"--server", up_->server(), "--api-key", admin_, "--listen", listen, "--limits", "http://x:1"});
  EXPECT_EQ(bad_url.exit_code, 1) << bad_url.out;
  EXPECT_NE(bad_url.out.find("redis://"), std::string::npos) << bad_url.out;
  auto no_redis = run({"--server", up_->server(), "--api-key", admin_, "--listen", listen, "--limits",
                       "redis://127.0.0.1:" + std::to_string(testing::free_port())});
  EXPECT_EQ(no_redis.exit_code, 1) << no_redis.out;
  EXPECT_NE(no_redis.out.find("cannot reach redis"), std::string::npos) << no_redis.out;
  auto no_server = run({"--server", "http://127.0.0.1:" + std::to_string(testing::free_port()), "--listen", listen});
  EXPECT_EQ(no_server.exit_code, 1) << no_server.out;
  auto not_admin = run({"--server", up_->server(), "--api-key", "nb-wrong_123", "--listen", listen});
  EXPECT_EQ(not_admin.exit_code, 1) << not_admin.out;
  EXPECT_NE(not_admin.out.find("401"), std::string::npos) << not_admin.out;
  auto open_wide = run({"--server", up_->server(), "--listen", "0.0.0.0:" + std::to_string(port), "--auth", "none"});
  EXPECT_EQ(open_wide.exit_code, 2) << open_wide.out;
}

TEST_F(HaGatewayE2E, TheStateApiRefusesWhatAGatewayMayNotDo) {
  http::BlockingClient client;
  std::string url = up_->server() + "/api/v1/gateway/state";
  auto anonymous = client.request("GET", url);
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401);
  std::string inference = create_key({});
  EXPECT_EQ(client.request("GET", url, "", bearer(inference))->status, 403);
  auto listing = client.request("GET", url, "", bearer(admin_));
  ASSERT_TRUE(listing);
  ASSERT_EQ(listing->status, 200);
  auto listed = parse_json(listing->body);
  ASSERT_TRUE(listed);
  bool has_deployment = false;
  for (const auto& kv : (*listed)["kvs"]) {
    std::string key = kv["key"];
    EXPECT_TRUE(key.rfind("/nebula/deployments/", 0) == 0 || key.rfind("/nebula/replicas/", 0) == 0 ||
                key.rfind("/nebula/apikeys/", 0) == 0 || key.rfind("/nebula/usage/", 0) == 0)
        << key;
    has_deployment = has_deployment || key == "/nebula/deployments/chat";
  }
  EXPECT_TRUE(has_deployment);
  auto post = [&](const std::string& body) { return client.request("POST", url, body, bearer(admin_)); };
  for (const char* hostile :
       {"", "[]", "{\"op\":\"put\"}", "{\"op\":\"put\",\"key\":5}",
        "{\"op\":\"put\",\"key\":\"/nebula/usage/x\",\"value\":{}}", "{\"op\":\"drop\",\"key\":\"/nebula/usage/x\"}",
        "{\"op\":\"put\",\"key\":\"/nebula/usage/x\",\"value\":\"{}\",\"mod_revision\":-7}",
        "{\"op\":\"put\",\"key\":\"/nebula/usage/x\",\"value\":\"{}\",\"mod_revision\":\"1\"}"}) {
    auto answer = post(hostile);
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 400) << hostile << " -> " << answer->body;
  }
  for (const char* outside : {"/nebula/nodes/e2e-node", "/nebula/usage/", "/etc/passwd", "/nebula/tokens/x"}) {
    auto answer = post(json{{"op", "put"}, {"key", outside}, {"value", "{}"}}.dump());
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 403) << outside << " -> " << answer->body;
  }
  // Compare-and-swap: a stale revision is a 409 carrying the current key-value.
  std::string key = "/nebula/usage/2026-12-06/ha-cas/chat";
  auto created = post(json{{"op", "put"}, {"key", key}, {"value", "{}"}, {"mod_revision", 0}}.dump());
  ASSERT_TRUE(created && created->status == 200) << (created ? created->body : created.error().message);
  auto again = post(json{{"op", "put"}, {"key", key}, {"value", "{}"}, {"mod_revision", 0}}.dump());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 409);
  auto conflict = parse_json(again->body);
  ASSERT_TRUE(conflict);
  EXPECT_EQ((*conflict)["current"]["key"], key);
  // A write sent again with its id (its answer was lost) is answered, not applied, again.
  json once{{"op", "put"}, {"key", key}, {"value", "{\"requests\":1}"}, {"id", "gw-test-1"}};
  auto first = post(once.dump());
  auto repeated = post(once.dump());
  ASSERT_TRUE(first && repeated);
  EXPECT_EQ(first->status, 200);
  EXPECT_EQ(repeated->body, first->body);
  auto fresh = post(json{{"op", "put"}, {"key", key}, {"value", "{}"}, {"id", "gw-test-2"}}.dump());
  ASSERT_TRUE(fresh);
  EXPECT_NE(fresh->body, first->body);
  EXPECT_EQ(post(json{{"op", "put"}, {"key", key}, {"value", "{}"}, {"id", std::string(129, 'x')}}.dump())->status,
            400);
  EXPECT_EQ(post(json{{"op", "put"}, {"key", key}, {"value", "{}"}, {"id", 7}}.dump())->status, 400);
  EXPECT_EQ(post(json{{"op", "delete"}, {"key", key}}.dump())->status, 200);
  EXPECT_EQ(post(json{{"op", "delete"}, {"key", key}}.dump())->status, 404);
  // A watch from a bad revision.
  EXPECT_EQ(client.request("GET", url + "?watch=1&revision=abc", "", bearer(admin_))->status, 400);
  EXPECT_EQ(client.request("GET", url + "?watch=1&revision=-3", "", bearer(admin_))->status, 400);
}

}  // namespace
}  // namespace nebula
