// The attacks of docs/security.md, each against real `nebula up` processes on loopback: node
// takeover with a join token, implausible node reports, cross-site requests and DNS rebinding
// under --auth none, loader environment variables, the agent's listener, racing deploys.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "common/json.h"
#include "http/http.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::eventually;

constexpr const char* kNode = "e2e-node";  // NebulaUp's local node

std::string join_token(const testing::NebulaUp& up) {
  std::string token;
  std::ifstream in(up.data_dir() + "/join-token");
  std::getline(in, token);
  return token;
}

std::string error_message(const http::Response& response) {
  auto body = parse_json(response.body);
  if (!body || !body->is_object() || !(*body)["error"].is_object()) return response.body;
  return (*body)["error"].value("message", response.body);
}

json gpu(int index, int64_t memory_total_mb) {
  return {{"index", index},
          {"uuid", "GPU-fake-" + std::to_string(index)},
          {"name", "Fake"},
          {"memory_total_mb", memory_total_mb}};
}

// `nebula up --auth keys` with its local node Ready.
class KeysUp : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(up_.wait_node_ready()); }
  Result<http::Response> call(const std::string& method, const std::string& path, const std::string& body = "",
                              const std::string& key = "") {
    return client_.request(method, up_.server() + path, body, bearer(key.empty() ? up_.admin_key() : key));
  }
  json node() { return up_.get_json(std::string("/api/v1/nodes/") + kNode, up_.admin_key()); }
  // Joins as `name` with the join token (and a key, when given); the answer.
  Result<http::Response> join(const std::string& name, const std::string& key = "") {
    return client_.request("POST", up_.server() + "/api/v1/nodes/join",
                           json{{"token", join_token(up_)}, {"name", name}}.dump(), bearer(key));
  }

  testing::NebulaUp up_{{"--auth", "keys"}};
  http::BlockingClient client_;
};

TEST_F(KeysUp, AJoinCannotTakeOverALiveNodeWhichKeepsHeartbeating) {
  auto taken = join(kNode);
  ASSERT_TRUE(taken);
  EXPECT_EQ(taken->status, 409) << taken->body;
  EXPECT_NE(error_message(*taken).find("is live"), std::string::npos) << taken->body;
  EXPECT_EQ(taken->body.find("credential"), std::string::npos) << "no key may be handed out";

  // The live node's key still works: its heartbeats keep arriving after the attempt.
  int64_t attempted_ms = node()["status"].value("heartbeat_ms", int64_t{0});
  EXPECT_TRUE(eventually(
      [&] {
        json status = node()["status"];
        return status.value("heartbeat_ms", int64_t{0}) > attempted_ms + 1000 && status.value("ready", false);
      },
      15s))
      << node().dump(2);

  // The node's own key lets its agent rejoin while the node is live (an agent restart).
  std::string node_key;
  std::ifstream(up_.data_dir() + "/node.key") >> node_key;
  ASSERT_EQ(node_key.rfind("nb-", 0), 0u);
  auto rejoined = join(kNode, node_key);
  ASSERT_TRUE(rejoined);
  EXPECT_EQ(rejoined->status, 200) << rejoined->body;
}

TEST_F(KeysUp, ANodeKeyMayReportOnlyPlausibleGpusAndItsOwnEndpoints) {
  auto joined = join("fake");
  ASSERT_TRUE(joined && joined->status == 200) << (joined ? joined->body : joined.error().message);
  std::string key = parse_json(joined->body)->value("credential", "");
  ASSERT_FALSE(key.empty());
  auto report = [&](const json& gpus) {
    json status = {{"gpus", gpus}, {"engines", json::array({"sim"})}};
    return call("PUT", "/api/v1/nodes/fake/status", status.dump(), key);
  };
  // 976 TB on one GPU, and 500 GPUs, are refused.
  auto huge = report(json::array({gpu(0, 976LL * 1000 * 1000 * 1000)}));
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 400) << huge->body;
  EXPECT_NE(error_message(*huge).find("implausible GPU report"), std::string::npos) << huge->body;
  json many = json::array();
  for (int i = 0; i < 500; ++i) many.push_back(gpu(i, 81920));
  auto crowd = report(many);
  ASSERT_TRUE(crowd);
  EXPECT_EQ(crowd->status, 400) << crowd->body;
  json listed = up_.get_json("/api/v1/nodes/fake", up_.admin_key());
  EXPECT_TRUE(listed["status"]["gpus"].empty()) << listed.dump(2);

  // A plausible GPU is taken; swapping it for another is an event.
  auto plausible = report(json::array({gpu(0, 81920)}));
  ASSERT_TRUE(plausible);
  ASSERT_EQ(plausible->status, 200) << plausible->body;
  auto swapped = report(json::array({gpu(0, 24576)}));
  ASSERT_TRUE(swapped && swapped->status == 200);
  auto events = up_.cli({"events", "-o", "json"});
  EXPECT_NE(events.out.find("GPUsChanged"), std::string::npos) << events.out;

  // A replica placed on the fake node: its endpoint must be the node's own address.
  ASSERT_EQ(up_.cli({"nodes", "drain", kNode}).exit_code, 0);
  auto deployed = up_.cli({"deploy", "lured", "--engine", "sim", "--model", "m", "--vram", "10GB"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  std::string replica;
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& item : up_.replicas_of("lured")) {
          if (item["spec"]["node"] == "fake") replica = item["metadata"]["name"];
        }
        return !replica.empty();
      },
      10s));
  auto status_with = [&](const std::string& endpoint) {
    json status = {{"phase", "Ready"}, {"endpoint", endpoint}, {"port", 8000}};
    return call("PUT", "/api/v1/replicas/" + replica + "/status", status.dump(), key);
  };
  auto elsewhere = status_with("http://10.11.12.13:8000");
  ASSERT_TRUE(elsewhere);
  EXPECT_EQ(elsewhere->status, 403) << elsewhere->body;
  EXPECT_NE(error_message(*elsewhere).find("not on the reporting node"), std::string::npos) << elsewhere->body;
  json stored = up_.get_json("/api/v1/replicas/" + replica, up_.admin_key());
  EXPECT_NE(stored["status"].value("endpoint", ""), "http://10.11.12.13:8000");
  auto own = status_with("http://127.0.0.1:8000");
  ASSERT_TRUE(own);
  EXPECT_EQ(own->status, 200) << own->body;
  EXPECT_EQ(up_.cli({"rm", "lured"}).exit_code, 0);
}

TEST_F(KeysUp, TheAgentServesLogsAndMetricsOnlyToItsServer) {
  auto deployed =
      up_.cli({"deploy", "talky", "--engine", "sim", "--model", "m", "--vram", "10GB", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto replicas = up_.replicas_of("talky");
  ASSERT_EQ(replicas.size(), 1u);
  std::string replica = replicas[0]["metadata"]["name"];
  std::string agent_url = node()["status"]["agent_url"];
  ASSERT_FALSE(agent_url.empty());

  for (const std::string& path : {"/logs/" + replica, std::string("/metrics")}) {
    auto anonymous = client_.request("GET", agent_url + path);
    ASSERT_TRUE(anonymous);
    EXPECT_EQ(anonymous->status, 401) << path << ": " << anonymous->body;
    // Not the node key itself, nor an admin key: only the server's proof of the node key.
    auto admin = client_.request("GET", agent_url + path, "", bearer(up_.admin_key()));
    ASSERT_TRUE(admin);
    EXPECT_EQ(admin->status, 401) << path;
    auto proven = client_.request("GET", agent_url + path, "", testing::agent_credential(up_.data_dir()));
    ASSERT_TRUE(proven);
    EXPECT_EQ(proven->status, 200) << path << ": " << proven->body;
  }
  // `nebula logs` goes through the server, which carries the credential.
  auto logs = up_.cli({"logs", "talky"});
  EXPECT_EQ(logs.exit_code, 0) << logs.out;
  EXPECT_FALSE(logs.out.empty());
  EXPECT_EQ(up_.cli({"rm", "talky"}).exit_code, 0);
}

TEST_F(KeysUp, NodesRmRefusesAReadyNodeAndFreesTheNameWhenForced) {
  // A replica on the local node, and a second node with room for it.
  auto deployed = up_.cli({"deploy", "movable", "--engine", "sim", "--model", "m", "--vram", "10GB"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  ASSERT_TRUE(eventually(
      [&] {
        auto replicas = up_.replicas_of("movable");
        return replicas.size() == 1 && replicas[0]["spec"]["node"] == kNode;
      },
      10s));
  auto spare = join("spare");
  ASSERT_TRUE(spare && spare->status == 200);
  std::string spare_key = parse_json(spare->body)->value("credential", "");
  json spare_status = {{"gpus", json::array({gpu(0, 81920)})}, {"engines", json::array({"sim"})}};
  auto reported = call("PUT", "/api/v1/nodes/spare/status", spare_status.dump(), spare_key);
  ASSERT_TRUE(reported && reported->status == 200);

  auto refused = up_.cli({"nodes", "rm", kNode});
  EXPECT_EQ(refused.exit_code, 1) << refused.out;
  EXPECT_NE(refused.out.find("--force"), std::string::npos) << refused.out;
  EXPECT_EQ(node()["metadata"]["name"], kNode);

  std::string node_key;
  std::ifstream(up_.data_dir() + "/node.key") >> node_key;
  ASSERT_FALSE(node_key.empty());
  auto removed = up_.cli({"nodes", "rm", kNode, "--force"});
  ASSERT_EQ(removed.exit_code, 0) << removed.out;
  // The node's key is revoked: its reports are refused, and the name is free for a new join.
  auto report = call("PUT", std::string("/api/v1/nodes/") + kNode + "/status", "{}", node_key);
  ASSERT_TRUE(report);
  EXPECT_EQ(report->status, 401) << report->body;
  auto joined = join(kNode);
  ASSERT_TRUE(joined);
  EXPECT_EQ(joined->status, 200) << joined->body;
  auto events = up_.cli({"events", "-o", "json"});
  EXPECT_NE(events.out.find("\"Removed\""), std::string::npos) << events.out;
  // The removed node's replica is replaced on the other node.
  EXPECT_TRUE(eventually(
      [&] {
        auto replicas = up_.replicas_of("movable");
        return replicas.size() == 1 && replicas[0]["spec"]["node"] == "spare";
      },
      10s))
      << up_.get_json("/api/v1/replicas", up_.admin_key()).dump(2);
}

// `nebula up` without API keys, allowing one web origin.
class OpenUp : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(up_.wait_node_ready()); }
  Result<http::Response> send(const std::string& method, const std::string& path, const std::string& body,
                              http::Headers headers) {
    return client_.request(method, up_.server() + path, body, std::move(headers));
  }
  bool deployment_exists(const std::string& name) {
    auto got = send("GET", "/api/v1/deployments/" + name, "", {});
    return got && got->status == 200;
  }
  std::string port() const { return up_.server().substr(up_.server().rfind(':') + 1); }

  testing::NebulaUp up_{{"--allowed-origins", "http://app.example,https://*.trusted.example"}};
  http::BlockingClient client_;
  const std::string deployment_ = R"({"metadata":{"name":"web"},"spec":{"model":"m","engine":"sim","replicas":0}})";
};

TEST_F(OpenUp, WritesMustBeJson) {
  auto plain = send("POST", "/api/v1/deployments", deployment_, {{"Content-Type", "text/plain"}});
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->status, 415) << plain->body;
  EXPECT_NE(error_message(*plain).find("application/json"), std::string::npos) << plain->body;
  auto form = send("POST", "/v1/chat/completions", R"({"model":"web","messages":[]})",
                   {{"Content-Type", "text/plain;charset=UTF-8"}});
  ASSERT_TRUE(form);
  EXPECT_EQ(form->status, 415) << form->body;
  EXPECT_FALSE(deployment_exists("web"));
  auto json_body = send("POST", "/api/v1/deployments", deployment_, {{"Content-Type", "application/json"}});
  ASSERT_TRUE(json_body);
  EXPECT_EQ(json_body->status, 201) << json_body->body;
}

TEST_F(OpenUp, ForeignOriginsAreRefusedAndAllowedOnesGetCors) {
  http::Headers evil = {{"Content-Type", "application/json"}, {"Origin", "http://evil.example"}};
  auto refused = send("POST", "/api/v1/deployments", deployment_, evil);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 403) << refused->body;
  EXPECT_NE(error_message(*refused).find("--allowed-origins"), std::string::npos) << refused->body;
  EXPECT_FALSE(deployment_exists("web"));
  // Inference too: a page must not use the user's loopback server either.
  auto chat = send("POST", "/v1/chat/completions", R"({"model":"web","messages":[]})", evil);
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 403) << chat->body;
  auto preflight_evil = send("OPTIONS", "/api/v1/deployments", "",
                             {{"Origin", "http://evil.example"}, {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(preflight_evil);
  EXPECT_EQ(preflight_evil->status, 403);
  EXPECT_TRUE(preflight_evil->header("access-control-allow-origin").empty());

  // An allowed origin: the preflight names it, and so does the answer.
  for (const std::string origin : {"http://app.example", "https://ui.trusted.example"}) {
    auto preflight = send("OPTIONS", "/api/v1/deployments", "",
                          {{"Origin", origin},
                           {"Access-Control-Request-Method", "POST"},
                           {"Access-Control-Request-Headers", "content-type"}});
    ASSERT_TRUE(preflight);
    EXPECT_EQ(preflight->status, 204) << preflight->body;
    EXPECT_EQ(preflight->header("access-control-allow-origin"), origin);
    EXPECT_NE(preflight->header("access-control-allow-methods").find("POST"), std::string::npos);
    EXPECT_EQ(preflight->header("access-control-allow-headers"), "content-type");
  }
  auto allowed = send("POST", "/api/v1/deployments", deployment_,
                      {{"Content-Type", "application/json"}, {"Origin", "http://app.example"}});
  ASSERT_TRUE(allowed);
  EXPECT_EQ(allowed->status, 201) << allowed->body;
  EXPECT_EQ(allowed->header("access-control-allow-origin"), "http://app.example");
  // A page served by the server itself is its own origin.
  auto own = send("GET", "/api/v1/deployments", "", {{"Origin", up_.server()}});
  ASSERT_TRUE(own);
  EXPECT_EQ(own->status, 200) << own->body;
}

// Sends one request as written (the HTTP client always writes its own Host) and returns the
// whole answer.
std::string raw_exchange(const std::string& port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buffer[4096];
    ssize_t n;
    while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) answer.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return answer;
}

TEST_F(OpenUp, AForeignHostIsRefused) {
  // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 is same-origin
  // with itself, so only the Host header tells.
  auto request = [&](const std::string& method, const std::string& host, const std::string& extra,
                     const std::string& body) {
    return raw_exchange(port(), method + " /api/v1/deployments HTTP/1.1\r\nHost: " + host +
                                    "\r\nConnection: close\r\n" + extra +
                                    "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  };
  std::string rebound =
      request("POST", "evil.example:" + port(),
              "Content-Type: application/json\r\nOrigin: http://evil.example:" + port() + "\r\n", deployment_);
  EXPECT_EQ(rebound.rfind("HTTP/1.1 403", 0), 0u) << rebound;
  EXPECT_NE(rebound.find("--allowed-host"), std::string::npos) << rebound;
  std::string read = request("GET", "evil.example:" + port(), "", "");
  EXPECT_EQ(read.rfind("HTTP/1.1 403", 0), 0u) << read;
  EXPECT_FALSE(deployment_exists("web"));
  for (const std::string& host : {"localhost:" + port(), "127.0.0.1:" + port(), "[::1]:" + port()}) {
    std::string local = request("GET", host, "", "");
    EXPECT_EQ(local.rfind("HTTP/1.1 200", 0), 0u) << host << ": " << local;
  }
}

TEST_F(OpenUp, LoaderEnvironmentNeedsAnAdminKey) {
  json spec = *parse_json(deployment_);
  spec["spec"]["env"] = {{"LD_PRELOAD", "/tmp/evil.so"}};
  auto refused = send("POST", "/api/v1/deployments", spec.dump(), {{"Content-Type", "application/json"}});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 403) << refused->body;
  EXPECT_NE(error_message(*refused).find("LD_PRELOAD"), std::string::npos) << refused->body;
  EXPECT_FALSE(deployment_exists("web"));
  auto cli =
      up_.cli({"deploy", "web", "--engine", "sim", "--model", "m", "--replicas", "0", "--env", "PYTHONPATH=/tmp/evil"});
  EXPECT_EQ(cli.exit_code, 1) << cli.out;
  EXPECT_NE(cli.out.find("PYTHONPATH"), std::string::npos) << cli.out;
  // Ordinary variables are fine.
  auto fine =
      up_.cli({"deploy", "web", "--engine", "sim", "--model", "m", "--replicas", "0", "--env", "PYTHONUNBUFFERED=1"});
  EXPECT_EQ(fine.exit_code, 0) << fine.out;
}

// Ids in the path of GET /v1/models/{id} and POST /v1/responses/{id}/cancel are the client's:
// slashes, CR/LF, NULs, 10 KB of them get a clear OpenAI 4xx, nothing leaks into a header, and
// the server keeps serving.
TEST_F(OpenUp, HostileIdsInModelAndCancelPathsGetAClear4xx) {
  auto created = send("POST", "/api/v1/deployments", deployment_, {{"Content-Type", "application/json"}});
  ASSERT_TRUE(created);
  ASSERT_EQ(created->status, 201) << created->body;
  ASSERT_TRUE(eventually(
      [&] {
        auto known = send("GET", "/v1/models/web", "", {});
        return known && known->status == 200;
      },
      10s));
  const std::vector<std::string> hostile = {
      "a/b",
      "a%2Fb",
      "..%2F..%2Fapi%2Fv1%2Fkeys",
      "web%0D%0AX-Injected:%201",
      "web%0AX-Injected:%201",
      "%00",
      "web%00",
      "%FF%FE%FD",
      "%",
      "%zz",
      std::string(10 * 1024, 'm'),
      "resp_" + std::string(10 * 1024, '9'),
      "resp_%0D%0A%0D%0AHTTP%2F1.1%20200%20OK",
      "%E2%80%AEresp",
  };
  auto expect_clear_4xx = [](const Result<http::Response>& answer, const std::string& what) {
    ASSERT_TRUE(answer) << what << ": " << answer.error().message;
    EXPECT_GE(answer->status, 400) << what << ": " << answer->body.substr(0, 300);
    EXPECT_LT(answer->status, 500) << what << ": " << answer->body.substr(0, 300);
    EXPECT_EQ(answer->header("x-injected"), "") << what;
    auto body = parse_json(answer->body);
    ASSERT_TRUE(body && body->is_object() && (*body)["error"].is_object())
        << what << ": " << answer->body.substr(0, 300);
    EXPECT_TRUE((*body)["error"]["message"].is_string()) << what;
  };
  for (const auto& id : hostile) {
    SCOPED_TRACE(id.substr(0, 40));
    expect_clear_4xx(send("GET", "/v1/models/" + id, "", {}), "model");
    expect_clear_4xx(send("POST", "/v1/responses/" + id + "/cancel", "", {{"Content-Type", "application/json"}}),
                     "cancel");
    expect_clear_4xx(send("POST", "/v1/responses/" + id + "/cancel", "{\"x\":", {{"Content-Type", "application/json"}}),
                     "cancel with a broken body");
  }
  // Unknown ids name themselves in the message; an absurd one is still a plain 404.
  auto unknown = send("GET", "/v1/models/nosuch", "", {});
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_NE(error_message(*unknown).find("nosuch"), std::string::npos) << unknown->body;
  auto absurd = send("POST", "/v1/responses/resp_" + std::string(10 * 1024, 'x') + "/cancel", "",
                     {{"Content-Type", "application/json"}});
  ASSERT_TRUE(absurd);
  EXPECT_EQ(absurd->status, 404) << absurd->body.substr(0, 300);
  // Still serving.
  auto models = send("GET", "/v1/models", "", {});
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  auto known = send("GET", "/v1/models/web", "", {});
  ASSERT_TRUE(known);
  EXPECT_EQ(known->status, 200) << known->body;
}

TEST_F(OpenUp, ParallelDeploysOfOneNameCreateItOnce) {
  // Three rounds: each is a race between deploys that all start at once.
  constexpr int kDeploys = 8;
  for (const std::string name : {"racy-a", "racy-b", "racy-c"}) {
    std::vector<testing::CommandResult> results(kDeploys);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kDeploys; ++i) {
      threads.emplace_back([&, i] {
        ready++;
        while (ready.load() < kDeploys) std::this_thread::yield();
        results[i] = up_.cli({"deploy", name, "--engine", "sim", "--model", "m", "--replicas", "0"});
      });
    }
    for (auto& thread : threads) thread.join();
    int created = 0, updated = 0;
    for (const auto& result : results) {
      EXPECT_EQ(result.exit_code, 0) << result.out;
      created += result.out.find("deployment " + name + " created") != std::string::npos;
      updated += result.out.find("deployment " + name + " updated") != std::string::npos;
    }
    EXPECT_EQ(created, 1) << name;
    EXPECT_EQ(updated, kDeploys - 1) << name;
  }
}

}  // namespace
}  // namespace nebula
