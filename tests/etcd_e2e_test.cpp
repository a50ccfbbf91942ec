// `nebula server --store etcd://...` against a real etcd: keys created on one server work at once
// on it and on another server sharing the cluster (watches on etcd arrive asynchronously), keys
// revoked there (an API key, a removed node's key) are refused by it at once, and a bad --store
// URL stops the server with a clear message.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "api/api.h"
#include "common/json.h"
#include "etcd_cluster.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula::testing {
namespace {

using namespace std::chrono_literals;

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string base64(std::string_view data) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < data.size(); i += 3) {
    uint32_t n = uint32_t(uint8_t(data[i])) << 16;
    if (i + 1 < data.size()) n |= uint32_t(uint8_t(data[i + 1])) << 8;
    if (i + 2 < data.size()) n |= uint8_t(data[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < data.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += i + 2 < data.size() ? kAlphabet[n & 63] : '=';
  }
  return out;
}

// A TCP proxy on a free loopback port in front of one etcd member, which can hold back what etcd
// sends on watch streams (connections that asked for POST /v3/watch) as a slow watch would: the
// window between a write and a server's watch bringing it, opened for as long as a test needs.
// It counts the watch events it passed on for each store key, on the streams watching a given
// prefix (etcd's JSON names a key or a watched prefix in base64, encoded from its start).
class WatchHoldingProxy {
 public:
  explicit WatchHoldingProxy(int upstream_port)
      : upstream_port_(upstream_port), listener_(nebula::testing::listen_on_loopback(&port_)) {
    threads_.emplace_back([this] { accept_loop(); });
  }
  ~WatchHoldingProxy() {
    ::shutdown(listener_, SHUT_RDWR);
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      for (auto& connection : connections_) {
        ::shutdown(connection->client, SHUT_RDWR);
        ::shutdown(connection->upstream, SHUT_RDWR);
      }
    }
    // Threads are added only by the accept loop, which ends first.
    threads_[0].join();
    for (size_t i = 1; i < threads_.size(); ++i) threads_[i].join();
    for (auto& connection : connections_) {
      ::close(connection->client);
      ::close(connection->upstream);
    }
    ::close(listener_);
  }
  WatchHoldingProxy(const WatchHoldingProxy&) = delete;
  WatchHoldingProxy& operator=(const WatchHoldingProxy&) = delete;

  // "etcd://127.0.0.1:PORT" for --store.
  std::string url() const { return "etcd://127.0.0.1:" + std::to_string(port_); }
  void hold() {
    std::lock_guard lock(mutex_);
    holding_ = true;
  }
  // Passes on what was held, in order, and stops holding.
  void release() {
    std::lock_guard lock(mutex_);
    holding_ = false;
    for (auto& connection : connections_) pass_on(*connection, std::exchange(connection->held, {}));
  }
  // How many times the streams watching `prefix` passed on `key` (in an event, or as an event's
  // previous value).
  int delivered(const std::string& key, const std::string& prefix) const {
    const std::string needle = json_key(key);
    const std::string watching = json_key(prefix);
    std::lock_guard lock(mutex_);
    int count = 0;
    for (const auto& connection : connections_) {
      if (connection->request.find(watching) == std::string::npos) continue;
      for (size_t at = connection->passed.find(needle); at != std::string::npos;
           at = connection->passed.find(needle, at + 1)) {
        ++count;
      }
    }
    return count;
  }

 private:
  struct Connection {
    int client = -1;
    int upstream = -1;
    bool watch = false;
    std::string request;  // what the client sent on a watch stream (names the watched range)
    std::string held;     // from etcd, not passed on yet
    std::string passed;   // what a watch stream passed on, for delivered()
  };

  static std::string json_key(const std::string& key) { return "\"key\":\"" + base64(key) + "\""; }
  static bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
      ssize_t sent = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (sent <= 0) return false;
      data.remove_prefix(static_cast<size_t>(sent));
    }
    return true;
  }
  // Under mutex_.
  void pass_on(Connection& connection, const std::string& data) {
    if (data.empty()) return;
    if (connection.watch) connection.passed += data;
    if (!send_all(connection.client, data)) ::shutdown(connection.upstream, SHUT_RDWR);
  }

  void accept_loop() {
    while (true) {
      int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) return;
      int upstream = nebula::testing::connect_to_loopback(upstream_port_);
      if (upstream < 0) {
        ::close(client);
        continue;
      }
      auto connection = std::make_shared<Connection>();
      connection->client = client;
      connection->upstream = upstream;
      std::lock_guard lock(mutex_);
      if (stopping_) {
        ::close(client);
        ::close(upstream);
        return;
      }
      connections_.push_back(connection);
      threads_.emplace_back([this, connection] { pump_to_etcd(*connection); });
      threads_.emplace_back([this, connection] { pump_from_etcd(*connection); });
    }
  }
  void pump_to_etcd(Connection& connection) {
    char buffer[16384];
    while (true) {
      ssize_t got = ::recv(connection.client, buffer, sizeof buffer, 0);
      if (got <= 0) break;
      std::string_view data(buffer, static_cast<size_t>(got));
      {
        // Marked before the request goes on, so before etcd can answer it.
        std::lock_guard lock(mutex_);
        if (data.find("/v3/watch ") != std::string_view::npos) connection.watch = true;
        if (connection.watch && connection.request.size() < 65536) connection.request += data;
      }
      if (!send_all(connection.upstream, data)) break;
    }
    ::shutdown(connection.upstream, SHUT_RDWR);
  }
  void pump_from_etcd(Connection& connection) {
    char buffer[16384];
    while (true) {
      ssize_t got = ::recv(connection.upstream, buffer, sizeof buffer, 0);
      if (got <= 0) break;
      std::lock_guard lock(mutex_);
      if (holding_ && connection.watch) {
        connection.held.append(buffer, static_cast<size_t>(got));
      } else {
        pass_on(connection, std::string(buffer, static_cast<size_t>(got)));
      }
    }
    ::shutdown(connection.client, SHUT_RDWR);
  }

  int upstream_port_;
  int port_ = 0;  // before listener_, which sets it
  int listener_ = -1;
  mutable std::mutex mutex_;
  bool holding_ = false;
  bool stopping_ = false;
  std::vector<std::shared_ptr<Connection>> connections_;
  std::vector<std::thread> threads_;
};

class ServerOnEtcd : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
    cluster_ = std::make_unique<EtcdCluster>(1);
  }
  // A server on the cluster, or on the etcd at store_url when given.
  std::unique_ptr<NebulaServer> start_server(const std::string& name, const std::string& store_url = "") {
    std::string data_dir = temp_.path() + "/" + name;
    auto server = std::make_unique<NebulaServer>(
        data_dir, temp_.path() + "/" + name + ".log",
        std::vector<std::string>{"--auth", "keys", "--store", store_url.empty() ? cluster_->url() : store_url});
    if (!server->start()) {
      ADD_FAILURE() << "server " << name << " did not start: " << server->process().output();
      return nullptr;
    }
    return server;
  }
  // Creates an inference key through `server`; "" on failure.
  std::string create_key(NebulaServer& server, const std::string& admin) {
    auto response = server.client().request("POST", server.url() + "/api/v1/keys",
                                            json{{"name", "app"}, {"scope", "inference"}}.dump(), bearer(admin));
    if (!response || response->status != 201) return "";
    auto body = parse_json(response->body);
    return body ? body->value("secret", "") : "";
  }
  int models_status(NebulaServer& server, const std::string& key) {
    auto response = server.client().request("GET", server.url() + "/v1/models", "", bearer(key));
    return response ? response->status : -1;
  }

  TempDir temp_;
  std::unique_ptr<EtcdCluster> cluster_;
};

TEST_F(ServerOnEtcd, FreshKeysWorkAtOnceOnEveryServer) {
  auto first = start_server("first");
  ASSERT_TRUE(first);
  std::string admin = read_first_line(temp_.path() + "/first/admin.key");
  ASSERT_FALSE(admin.empty());
  auto second = start_server("second");
  ASSERT_TRUE(second);
  // The admin key lives in etcd: the second server made none of its own and knows the first's.
  EXPECT_FALSE(std::ifstream(temp_.path() + "/second/admin.key").good());
  EXPECT_EQ(models_status(*second, admin), 200);

  for (int i = 0; i < 20; ++i) {
    std::string key = create_key(*first, admin);
    ASSERT_FALSE(key.empty());
    // No 401 right after creation, here or on the other server.
    ASSERT_EQ(models_status(*first, key), 200) << "key " << i;
    ASSERT_EQ(models_status(*second, key), 200) << "key " << i;
  }
  EXPECT_EQ(models_status(*first, "nb-abcdefgh_00000000000000000000000000000000"), 401);
  EXPECT_EQ(models_status(*second, "nb-../../x_00"), 401);
  EXPECT_EQ(models_status(*second, "nb-_"), 401);

  // Revoked on one server: that server refuses it from the moment it answered the DELETE (its
  // key ring is told at once, not by its watch); the other once its watch brings it.
  std::string revoked = create_key(*first, admin);
  auto listing = first->client().request("GET", first->url() + "/api/v1/keys", "", bearer(admin));
  ASSERT_TRUE(listing && listing->status == 200);
  std::string id = revoked.substr(3, revoked.find('_') - 3);
  auto removed = first->client().request("DELETE", first->url() + "/api/v1/keys/" + id, "", bearer(admin));
  ASSERT_TRUE(removed && removed->status == 200) << (removed ? removed->body : removed.error().message);
  EXPECT_EQ(models_status(*first, revoked), 401);
  EXPECT_TRUE(eventually([&] { return models_status(*second, revoked) == 401; }, 10s));
  EXPECT_EQ(models_status(*first, revoked), 401) << "the watch's event does not undo it";
}

// `nebula nodes rm` on etcd: the server that answered the DELETE refuses the removed node's key
// from then on, not from when its watch brings the revocation. The watch is held back (a proxy in
// front of etcd) while the key is used again, so the window is open for as long as the test looks;
// a rejoin under the same name gets a new key that works at once while the old one stays refused.
TEST_F(ServerOnEtcd, ARemovedNodesKeyIsRefusedAtOnceByTheServerThatRemovedIt) {
  const std::string endpoint = cluster_->endpoint(0);
  WatchHoldingProxy proxy(std::stoi(endpoint.substr(endpoint.rfind(':') + 1)));
  auto server = start_server("first", proxy.url());
  ASSERT_TRUE(server);
  std::string admin = read_first_line(temp_.path() + "/first/admin.key");
  ASSERT_FALSE(admin.empty());
  auto call = [&](const std::string& method, const std::string& path, const std::string& key,
                  const std::string& body = "") {
    auto response = server->client().request(method, server->url() + path, body, bearer(key));
    return response ? response->status : -1;
  };
  // The node key of a fresh join as `name`; "" on failure.
  auto join = [&](const std::string& name) -> std::string {
    auto response = server->client().request("POST", server->url() + "/api/v1/nodes/join",
                                             json{{"token", server->token()}, {"name", name}}.dump(), {});
    if (!response || response->status != 200) return "";
    auto body = parse_json(response->body);
    return body ? body->value("credential", "") : "";
  };
  // The key ring's watch: the one on the keys' prefix.
  const std::string keys_prefix = std::string(api::kKeyRoot) + "apikeys/";
  auto store_key = [&](const std::string& secret) { return keys_prefix + secret.substr(3, secret.find('_') - 3); };

  std::vector<std::string> removed_keys;
  for (int round = 0; round < 3; ++round) {
    const std::string name = "gone-" + std::to_string(round);
    std::string key = join(name);
    ASSERT_FALSE(key.empty()) << name;
    // The key ring's watch has been sent the key, so the ring holds it unrevoked (without a
    // watch, a lookup in the store would find the revocation and the test would prove nothing).
    const std::string stored = store_key(key);
    ASSERT_TRUE(eventually([&] { return proxy.delivered(stored, keys_prefix) >= 1; }, 10s)) << name;
    ASSERT_EQ(call("GET", "/api/v1/replicas", key), 200) << name;

    proxy.hold();
    // A node's key cannot remove its node: only an admin can.
    EXPECT_EQ(call("DELETE", "/api/v1/nodes/" + name, key), 403) << name;
    ASSERT_EQ(call("DELETE", "/api/v1/nodes/" + name, admin), 200) << name;
    // The very next requests with the node's key are refused, while the watch has not brought
    // the revocation.
    EXPECT_EQ(call("GET", "/api/v1/replicas", key), 401) << name;
    EXPECT_EQ(call("PUT", "/api/v1/nodes/" + name + "/status", key, "{}"), 401) << name;
    EXPECT_EQ(proxy.delivered(stored, keys_prefix), 1) << "the revocation was not held back: the test proves nothing";
    proxy.release();

    // Once the held events reach the server, the refusal holds: the watch's event does not undo it.
    EXPECT_TRUE(eventually([&] { return proxy.delivered(stored, keys_prefix) >= 2; }, 10s)) << name;
    EXPECT_EQ(call("GET", "/api/v1/replicas", key), 401) << name;
    removed_keys.push_back(key);
  }
  EXPECT_EQ(call("DELETE", "/api/v1/nodes/gone-0", admin), 404) << "removed already";
  EXPECT_EQ(call("DELETE", "/api/v1/nodes/never-joined", admin), 404);
  EXPECT_EQ(call("DELETE", "/api/v1/nodes/" + std::string(300, 'x'), admin), 404);

  // The name is free again: the new key works at once, the old one stays refused.
  std::string rejoined = join("gone-0");
  ASSERT_FALSE(rejoined.empty());
  EXPECT_NE(rejoined, removed_keys[0]);
  EXPECT_EQ(call("GET", "/api/v1/replicas", rejoined), 200);
  for (const auto& key : removed_keys) EXPECT_EQ(call("GET", "/api/v1/replicas", key), 401);
}

// `nebula gateway --server A,B`: the gateway follows A; when A is killed it lists B and follows it
// (a key made on B afterwards works on the gateway); a gateway started while A is down starts
// from B; a malformed list is refused before anything starts.
TEST_F(ServerOnEtcd, AGatewayFollowingSeveralServersMovesOnWhenOneDies) {
  auto first = start_server("first");
  ASSERT_TRUE(first);
  std::string admin = read_first_line(temp_.path() + "/first/admin.key");
  auto second = start_server("second");
  ASSERT_TRUE(second);
  const std::string servers = first->url() + "," + second->url();
  int port = free_port();
  auto gateway = start_gateway(servers, admin, port, {}, temp_.path() + "/gateway.log");
  std::string before = create_key(*first, admin);
  ASSERT_FALSE(before.empty());
  ASSERT_TRUE(gateway_knows_key(local_url(port), before)) << gateway->output();

  ASSERT_EQ(first->process().stop(SIGKILL, 5s), 128 + SIGKILL);
  std::string after = create_key(*second, admin);
  ASSERT_FALSE(after.empty());
  EXPECT_TRUE(gateway_knows_key(local_url(port), after)) << gateway->output();
  EXPECT_TRUE(gateway_knows_key(local_url(port), before));
  EXPECT_NE(gateway->output().find("following " + second->url() + " instead"), std::string::npos) << gateway->output();
  EXPECT_TRUE(eventually(
      [&] {
        http::BlockingClient client;
        auto ready = client.request("GET", local_url(port) + "/readyz", "", {}, 2s);
        return ready && ready->status == 200;
      },
      10s));

  // Started with the first server already gone: it lists the second.
  int late_port = free_port();
  auto late = start_gateway(servers, admin, late_port, {}, temp_.path() + "/late.log");
  EXPECT_TRUE(gateway_knows_key(local_url(late_port), after)) << late->output();

  // Under `timeout`: a list wrongly accepted would leave a gateway running, not a hung test.
  auto bad = run_command({"timeout", "20", NEBULA_BINARY, "gateway", "--server", second->url() + ",," + second->url(),
                          "--api-key", admin, "--listen", "127.0.0.1:" + std::to_string(free_port())});
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
  EXPECT_NE(bad.out.find("empty entry"), std::string::npos) << bad.out;
}

TEST_F(ServerOnEtcd, BadStoreUrlStopsTheServerClearly) {
  for (const std::string& url : {std::string("etcd://127.0.0.1:notaport"), std::string("redis://x:1"),
                                 "etcd://127.0.0.1:" + std::to_string(free_port()) + "?timeout_ms=300"}) {
    auto result = run_command({NEBULA_BINARY, "server", "--listen", "127.0.0.1:" + std::to_string(free_port()),
                               "--data-dir", temp_.path() + "/bad", "--store", url});
    EXPECT_NE(result.exit_code, 0) << url;
    EXPECT_NE(result.out.find("--store"), std::string::npos) << url << ": " << result.out;
  }
}

// Several servers on one etcd: one leader runs the controller; kill -9 it under a stream of
// deployment writes and another takes over; every acknowledged write is there afterwards, each
// deployment has exactly the replicas it asks for (none placed twice), and the agent, given every
// server's URL, follows the survivors.
class HighAvailability : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
    cluster_ = std::make_unique<EtcdCluster>(1);
    for (int i = 0; i < 3; ++i) {
      std::string name = "server" + std::to_string(i);
      servers_.push_back(std::make_unique<NebulaServer>(
          temp_.path() + "/" + name, temp_.path() + "/" + name + ".log",
          std::vector<std::string>{"--store", cluster_->url(), "--node-timeout", "10s"}));
    }
    for (auto& server : servers_) ASSERT_TRUE(server->start()) << server->process().output();
  }
  void TearDown() override {
    for (auto& server : servers_) {
      if (server->process().running()) {
        server->remove_deployments();
        break;
      }
    }
    if (agent_) {
      eventually(
          [&] {
            for (auto& server : servers_) {
              if (server->process().running()) return server->get_json("/api/v1/replicas")["items"].empty();
            }
            return true;
          },
          20s);
      agent_->stop(SIGTERM, 20s);
    }
    for (auto& server : servers_) {
      if (server->process().running()) server->process().stop(SIGTERM, 20s);
    }
    if (HasFailure()) {
      for (size_t i = 0; i < servers_.size(); ++i) {
        std::cerr << "---- server " << i << " ----\n" << servers_[i]->process().output() << "\n";
      }
      if (agent_) std::cerr << "---- agent ----\n" << agent_->output() << "\n";
    }
  }
  // Indexes of the servers that answer that they lead (a dead one does not answer). Safe from
  // another thread: it only sends requests, each with a client of its own.
  std::vector<int> leaders() {
    std::vector<int> out;
    http::BlockingClient client;
    for (size_t i = 0; i < servers_.size(); ++i) {
      auto response = client.request("GET", servers_[i]->url() + "/api/v1/leader", "", {}, 2s);
      if (!response || response->status != 200) continue;
      auto parsed = parse_json(response->body);
      json answer = parsed ? *parsed : json();
      if (answer.is_object() && answer.value("leading", false)) out.push_back(static_cast<int>(i));
    }
    return out;
  }
  int one_leader() {
    int leader = -1;
    eventually(
        [&] {
          auto found = leaders();
          leader = found.size() == 1 ? found[0] : -1;
          return leader >= 0;
        },
        20s);
    return leader;
  }
  NebulaServer* live_server() {
    for (auto& server : servers_) {
      if (server->process().running()) return server.get();
    }
    return nullptr;
  }

  TempDir temp_;
  std::unique_ptr<EtcdCluster> cluster_;
  std::vector<std::unique_ptr<NebulaServer>> servers_;
  std::unique_ptr<Child> agent_;
};

TEST_F(HighAvailability, LeaderKilledAnotherTakesOverNothingLostNothingPlacedTwice) {
  int leader = one_leader();
  ASSERT_GE(leader, 0) << "no single leader";

  // A join token from the store is valid on every server; the agent knows them all.
  auto created = servers_[0]->cli({"token", "create", "--ttl", "1h", "-o", "json"});
  ASSERT_EQ(created.exit_code, 0) << created.out;
  auto token = parse_json(created.out);
  ASSERT_TRUE(token);
  std::string urls = servers_[0]->url() + "," + servers_[1]->url() + "," + servers_[2]->url();
  agent_ = std::make_unique<Child>(
      agent_argv(urls, token->value("token", ""), "n1", "4xH100-80GB", temp_.path() + "/agent", {}),
      temp_.path() + "/agent.log");
  ASSERT_TRUE(eventually([&] { return servers_[leader]->node_ready("n1"); }, 30s));

  // Deployments written to every live server in turn, each retried until acknowledged: before
  // the kill, in the leaderless moment right after it, and once another leads. At most one leader
  // at any time, checked all along.
  http::BlockingClient client;
  std::vector<std::string> deployed;
  int next = 0;
  auto write_deployments = [&](int count) {
    for (int n = 0; n < count; ++n, ++next) {
      std::string name = "d" + std::to_string(next);
      json body{{"name", name},
                {"spec", {{"engine", "sim"}, {"model", "m"}, {"vram_mb", 1024}, {"replicas", 1 + next % 2}}}};
      bool acknowledged = false;
      for (int attempt = 0; attempt < 60 && !acknowledged; ++attempt) {
        auto& server = *servers_[(next + attempt) % servers_.size()];
        if (!server.process().running()) continue;
        auto response = client.request("POST", server.url() + "/api/v1/deployments", body.dump(),
                                       {{"Content-Type", "application/json"}}, 5s);
        acknowledged = response && (response->status == 201 || response->status == 409);
      }
      if (acknowledged) deployed.push_back(name);
    }
  };
  std::atomic<bool> stop{false};
  std::atomic<int> most_leaders{0};
  std::thread sampler([&] {
    while (!stop.load()) {
      int count = static_cast<int>(leaders().size());
      if (count > most_leaders.load()) most_leaders = count;
    }
  });
  write_deployments(3);
  auto killed_at = std::chrono::steady_clock::now();
  ::kill(servers_[leader]->process().pid(), SIGKILL);
  std::thread leaderless([&] { write_deployments(3); });  // while no server leads
  int successor = -1;
  bool took_over = eventually(
      [&] {
        auto found = leaders();
        successor = found.size() == 1 ? found[0] : -1;
        return successor >= 0;
      },
      15s, 50ms);
  auto takeover = std::chrono::steady_clock::now() - killed_at;
  std::cerr << "takeover after kill -9 of the leader: "
            << std::chrono::duration_cast<std::chrono::milliseconds>(takeover).count() << " ms\n";
  leaderless.join();
  servers_[leader]->process().stop(SIGKILL, 5s);  // reaped
  // The agent's first server goes too (when it was not the leader): the agent moves on.
  if (leader != 0 && successor != 0) servers_[0]->process().stop(SIGKILL, 5s);
  write_deployments(3);
  stop = true;
  sampler.join();
  ASSERT_TRUE(took_over) << "no server took over";
  EXPECT_NE(successor, leader);
  EXPECT_LE(most_leaders.load(), 1);
  ASSERT_EQ(deployed.size(), 9u) << "some writes were never acknowledged";
  std::vector<std::string> names = deployed;

  NebulaServer* survivor = live_server();
  ASSERT_NE(survivor, nullptr);
  for (const auto& name : names) {
    json deployment = survivor->get_json("/api/v1/deployments/" + name);
    ASSERT_TRUE(deployment.is_object()) << name << " was acknowledged but is gone";
  }
  // Every deployment gets exactly its replicas, Ready on the agent (which followed the survivors).
  for (const auto& name : names) {
    int want = survivor->get_json("/api/v1/deployments/" + name)["spec"].value("replicas", 0);
    bool settled = eventually(
        [&] {
          auto replicas = survivor->replicas_of(name);
          return static_cast<int>(replicas.size()) == want &&
                 static_cast<int>(survivor->ready_replicas(name).size()) == want;
        },
        60s);
    EXPECT_TRUE(settled) << name << ": " << json(survivor->replicas_of(name)).dump();
  }
}

}  // namespace
}  // namespace nebula::testing
