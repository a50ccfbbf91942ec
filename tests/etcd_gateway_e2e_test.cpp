// `nebula gateway --store etcd://...` against real processes: a 3-member etcd, a `nebula server
// --store etcd://` with an agent running an engine-sim replica, and two gateways on etcd itself.
// Keys made on the server work at once on both gateways, revoked keys stop on both, chat works
// through both, usage from the server and both gateways adds up exactly, and losing an etcd member
// leaves both serving. Bad flags and an unreachable etcd stop a gateway with a clear message.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>

#include "common/json.h"
#include "etcd_cluster.h"
#include "nebula_fixture.h"
#include "process_helpers.h"
#include "redis_server.h"

namespace nebula::testing {
namespace {

using namespace std::chrono_literals;

const std::string kChat = R"({"model":"chat","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]})";

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string url_of(int port) {
  return "http://127.0.0.1:" + std::to_string(port);
}

class GatewaysOnEtcd : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
    cluster_ = std::make_unique<EtcdCluster>(3);
    server_ = std::make_unique<NebulaServer>(temp_.path() + "/server", temp_.path() + "/server.log",
                                             std::vector<std::string>{"--auth", "keys", "--store", cluster_->url()});
    ASSERT_TRUE(server_->start()) << server_->process().output();
    admin_ = read_first_line(temp_.path() + "/server/admin.key");
    ASSERT_FALSE(admin_.empty());
  }
  void TearDown() override {
    if (HasFailure()) {
      if (server_) std::cerr << "---- server ----\n" << server_->process().output() << "\n";
      for (size_t i = 0; i < gateways_.size(); ++i) {
        std::cerr << "---- gateway " << i << " ----\n" << gateways_[i]->output() << "\n";
      }
      if (agent_) std::cerr << "---- agent ----\n" << agent_->output() << "\n";
    }
    gateways_.clear();
    if (server_ && server_->process().running()) {
      (void)request("DELETE", "/api/v1/deployments/chat");
      if (agent_) {
        eventually(
            [&] {
              json replicas = get("/api/v1/replicas");
              return replicas.is_object() && replicas["items"].empty();
            },
            20s);
        agent_->stop(SIGTERM, 20s);
      }
      server_->process().stop(SIGTERM, 20s);
    }
  }

  Result<http::Response> request(const std::string& method, const std::string& path, const std::string& body = "",
                                 const std::string& base = "") {
    http::BlockingClient client;
    auto headers = bearer(admin_);
    if (!body.empty()) headers.push_back({"Content-Type", "application/json"});
    return client.request(method, (base.empty() ? server_->url() : base) + path, body, headers, 30s);
  }
  json get(const std::string& path) {
    auto response = request("GET", path);
    if (!response || response->status != 200) return json();
    auto parsed = parse_json(response->body);
    return parsed ? *parsed : json();
  }
  // An inference key made on the server: {id, secret}.
  std::pair<std::string, std::string> create_key(int64_t rpm = 0) {
    json wanted{{"name", "app"}, {"scope", "inference"}};
    if (rpm > 0) wanted["rpm"] = rpm;
    auto response = request("POST", "/api/v1/keys", wanted.dump());
    if (!response || response->status != 201) return {};
    auto body = parse_json(response->body);
    std::string secret = body ? body->value("secret", "") : "";
    return {secret.substr(3, secret.find('_') - 3), secret};
  }
  int models_status(const std::string& base, const std::string& key) {
    http::BlockingClient client;
    auto response = client.request("GET", base + "/v1/models", "", bearer(key), 10s);
    return response ? response->status : -1;
  }
  // Chat through `base`; the tokens the answer says it used, or -1.
  int64_t chat(const std::string& base, const std::string& key) {
    http::BlockingClient client;
    auto response = client.request("POST", base + "/v1/chat/completions", kChat, bearer(key), 30s);
    if (!response || response->status != 200) return -1;
    auto body = parse_json(response->body);
    if (!body || !body->is_object()) return -1;
    return (*body)["usage"].value("total_tokens", int64_t{-1});
  }
  // An agent with one simulated GPU and a deployment `chat` of one engine-sim replica.
  void deploy_chat() {
    agent_ = std::make_unique<Child>(
        agent_argv(server_->url(), server_->token(), "n1", "1xH100-80GB", temp_.path() + "/agent", {}),
        temp_.path() + "/agent.log");
    ASSERT_TRUE(eventually(
        [&] {
          json node = get("/api/v1/nodes/n1");
          return node.is_object() && node["status"].is_object() && node["status"].value("ready", false);
        },
        30s));
    json deployment{{"name", "chat"},
                    {"spec", {{"engine", "sim"}, {"model", "qwen2.5-0.5b"}, {"replicas", 1}, {"max_seqs", 16}}}};
    auto deployed = request("POST", "/api/v1/deployments", deployment.dump());
    ASSERT_TRUE(deployed && deployed->status == 201) << (deployed ? deployed->body : deployed.error().message);
  }
  // A `nebula gateway --store` on a port of its own, with more flags; waits until it is ready.
  std::string start_gateway(std::vector<std::string> extra = {}) {
    int port = free_port();
    std::string log = temp_.path() + "/gateway-" + std::to_string(gateways_.size()) + ".log";
    std::vector<std::string> argv = {NEBULA_BINARY,   "gateway",  "--store",
                                     cluster_->url(), "--listen", "127.0.0.1:" + std::to_string(port),
                                     "--log-level",   "info",     "--exit-with-parent"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    gateways_.push_back(std::make_unique<Child>(argv, log));
    bool ready = eventually(
        [&] {
          http::BlockingClient client;
          auto answer = client.request("GET", url_of(port) + "/readyz", "", {}, 2s);
          return answer && answer->status == 200;
        },
        20s);
    EXPECT_TRUE(ready) << gateways_.back()->output();
    return url_of(port);
  }
  int64_t stored_usage(const std::string& key_id) {
    json usage = get("/api/v1/usage?key=" + key_id);
    if (!usage.is_object() || !usage["total"].is_object()) return -1;
    return usage["total"].value("total_tokens", int64_t{-1});
  }

  TempDir temp_;
  std::unique_ptr<EtcdCluster> cluster_;
  std::unique_ptr<NebulaServer> server_;
  std::string admin_;
  std::unique_ptr<Child> agent_;
  std::vector<std::unique_ptr<Child>> gateways_;
};

TEST_F(GatewaysOnEtcd, KeysChatAndUsageAddUpThroughTwoGatewaysAndALostMember) {
  deploy_chat();
  ASSERT_FALSE(HasFailure());
  std::vector<std::string> gateways = {start_gateway(), start_gateway()};
  ASSERT_FALSE(HasFailure());
  auto [key_id, key] = create_key();
  ASSERT_FALSE(key.empty());
  // Ready everywhere: the server's own gateway and both others route to the replica. Every
  // answered chat's tokens are counted from here on.
  int64_t used = 0;
  auto chat_counted = [&](const std::string& base) {
    int64_t tokens = chat(base, key);
    if (tokens > 0) used += tokens;
    return tokens;
  };
  for (const auto& base : {server_->url(), gateways[0], gateways[1]}) {
    ASSERT_TRUE(eventually([&] { return chat_counted(base) > 0; }, 60s)) << base;
  }

  // Fresh keys: accepted by both gateways at once, no 401 while their watches catch up.
  for (int i = 0; i < 10; ++i) {
    auto [id, secret] = create_key();
    ASSERT_FALSE(secret.empty());
    ASSERT_EQ(models_status(gateways[0], secret), 200) << "key " << i;
    ASSERT_EQ(models_status(gateways[1], secret), 200) << "key " << i;
  }
  // Made-up and malformed keys are refused.
  for (const auto& base : gateways) {
    EXPECT_EQ(models_status(base, "nb-abcdefgh_00000000000000000000000000000000"), 401);
    EXPECT_EQ(models_status(base, "nb-../../x_00"), 401);
    std::string wrong_secret = key;
    wrong_secret.back() = wrong_secret.back() == '0' ? '1' : '0';
    EXPECT_EQ(models_status(base, wrong_secret), 401);
  }

  // Usage from the server's gateway and both others, chat spread over the three.
  for (int round = 0; round < 4; ++round) {
    for (const auto& base : {server_->url(), gateways[0], gateways[1]}) ASSERT_GT(chat_counted(base), 0) << base;
  }

  // One etcd member dies (SIGKILL): both gateways go on serving, and keys made since still reach
  // them (their watches move to another member).
  cluster_->kill(0);
  for (const auto& base : gateways) {
    bool serving = eventually([&] { return chat_counted(base) > 0; }, 30s);
    ASSERT_TRUE(serving) << base;
  }
  std::pair<std::string, std::string> after_kill;
  ASSERT_TRUE(eventually(
      [&] {
        after_kill = create_key();
        return !after_kill.second.empty();
      },
      30s));
  for (const auto& base : gateways) {
    EXPECT_TRUE(eventually([&] { return models_status(base, after_kill.second) == 200; }, 20s)) << base;
    ASSERT_GT(chat_counted(base), 0) << base;
  }

  // A revoked key is refused by both gateways once their watches bring the change.
  auto revoked = request("DELETE", "/api/v1/keys/" + after_kill.first);
  ASSERT_TRUE(revoked && revoked->status == 200) << (revoked ? revoked->body : revoked.error().message);
  for (const auto& base : gateways) {
    EXPECT_TRUE(eventually([&] { return models_status(base, after_kill.second) == 401; }, 20s)) << base;
  }

  // The gateways stop (SIGTERM flushes what they hold); then the stored usage is exactly what
  // the answers said, once the server's own gateway has flushed too.
  for (auto& gateway : gateways_) {
    gateway->stop(SIGTERM, 20s);
    EXPECT_FALSE(gateway->running());
  }
  EXPECT_TRUE(eventually([&] { return stored_usage(key_id) == used; }, 20s))
      << "stored " << stored_usage(key_id) << ", answered " << used;
  // The server's answer includes what its own gateway has not flushed yet, so a batch added
  // twice would show here at once.
  EXPECT_EQ(stored_usage(key_id), used);
}

TEST_F(GatewaysOnEtcd, SharedLimitsInRedisWorkUnchanged) {
  if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
  RedisServer redis;
  ASSERT_TRUE(redis.ready());
  deploy_chat();
  ASSERT_FALSE(HasFailure());
  std::vector<std::string> gateways = {start_gateway({"--limits", redis.url()}),
                                       start_gateway({"--limits", redis.url()})};
  ASSERT_FALSE(HasFailure());
  // The replica is Ready for both (asked with the admin key, which has no limits); then the
  // key's 4 a minute are shared: two on each gateway, and the next one is refused by either.
  for (const auto& base : gateways) ASSERT_TRUE(eventually([&] { return chat(base, admin_) > 0; }, 60s)) << base;
  auto [key_id, key] = create_key(4);
  ASSERT_FALSE(key.empty());
  EXPECT_GT(chat(gateways[0], key), 0);
  EXPECT_GT(chat(gateways[0], key), 0);
  EXPECT_GT(chat(gateways[1], key), 0);
  EXPECT_GT(chat(gateways[1], key), 0);
  for (const auto& base : gateways) {
    http::BlockingClient client;
    auto refused = client.request("POST", base + "/v1/chat/completions", kChat, bearer(key), 30s);
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 429) << base << ": " << refused->body;
  }
}

TEST(GatewayOnEtcdFlags, BadCombinationsAndUnreachableEtcdFailClearly) {
  TempDir temp;
  std::string listen = "127.0.0.1:" + std::to_string(free_port());
  struct Case {
    std::vector<std::string> flags;
    int exit_code;
    std::string says;
  };
  std::string unreachable = "etcd://127.0.0.1:" + std::to_string(free_port()) + "?timeout_ms=300";
  std::vector<Case> cases = {
      {{"--store", "etcd://127.0.0.1:notaport"}, 2, "bad port"},
      {{"--store", "etcd://"}, 2, "--store"},
      {{"--store", "etcd://127.0.0.1:2379?password=x"}, 2, "user and password go together"},
      {{"--store", "sqlite://" + temp.path() + "/nebula.db"}, 2, "SQLite"},
      {{"--store", "redis://127.0.0.1:6379"}, 2, "expected etcd://"},
      {{"--store", ""}, 2, "expected etcd://"},
      {{"--store", "etcd://127.0.0.1:2379", "--server", "http://127.0.0.1:8080"}, 2, "not both"},
      {{"--store", "etcd://127.0.0.1:2379", "--api-key", "nb-x"}, 2, "--api-key"},
      {{"--store", unreachable}, 1, "cannot use the etcd cluster"},
  };
  for (const auto& test : cases) {
    std::vector<std::string> argv = {NEBULA_BINARY, "gateway", "--listen", listen};
    argv.insert(argv.end(), test.flags.begin(), test.flags.end());
    auto result = run_command(argv);
    std::string shown = test.flags.size() > 1 ? test.flags[1] : "";
    EXPECT_EQ(result.exit_code, test.exit_code) << shown << ": " << result.out;
    EXPECT_NE(result.out.find(test.says), std::string::npos) << shown << ": " << result.out;
  }
}

}  // namespace
}  // namespace nebula::testing
