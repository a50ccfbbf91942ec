#include "nebula_fixture.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/ids.h"

namespace nebula::testing {

using namespace std::chrono_literals;

http::Headers bearer(const std::string& key) {
  http::Headers headers;
  if (!key.empty()) headers.push_back({"Authorization", "Bearer " + key});
  return headers;
}

http::Headers agent_credential(const std::string& agent_data_dir) {
  std::ifstream in(agent_data_dir + "/node.key");
  std::string key;
  std::getline(in, key);
  return bearer(key.empty() ? std::string() : sha256_hex(key));
}

NebulaUp::NebulaUp(std::vector<std::string> extra, const std::string& gpus) {
  data_dir_ = temp_.path() + "/data";
  port_ = free_port();
  server_ = "http://127.0.0.1:" + std::to_string(port_);
  std::vector<std::string> argv = {NEBULA_BINARY,       "up",      "--listen",   "127.0.0.1:" + std::to_string(port_),
                                   "--data-dir",        data_dir_, "--sim-gpus", gpus,
                                   "--log-level",       "warn",    "--name",     "e2e-node",
                                   "--exit-with-parent"};
  for (auto& arg : extra) argv.push_back(arg);
  up_ = std::make_unique<Child>(argv, temp_.path() + "/up.log");
}

NebulaUp::~NebulaUp() {
  up_->stop(SIGTERM, 30s);
  if (::testing::Test::HasFailure()) std::cerr << "---- nebula up output ----\n" << up_->output() << "\n";
}

bool NebulaUp::wait_node_ready() {
  return eventually(
      [&] {
        json nodes = get_json("/api/v1/nodes", admin_key());
        return nodes.is_object() && nodes["items"].size() == 1 && nodes["items"][0]["status"]["ready"] == true;
      },
      20s);
}

std::string NebulaUp::admin_key() const {
  std::ifstream in(data_dir_ + "/admin.key");
  std::string key;
  std::getline(in, key);
  return key;
}

CommandResult NebulaUp::cli(std::vector<std::string> args, const std::string& api_key) {
  args.insert(args.begin(), NEBULA_BINARY);
  std::vector<std::string> env = {"NEBULA_SERVER=" + server_, "NEBULA_DATA_DIR=" + data_dir_};
  if (!api_key.empty()) env.push_back("NEBULA_API_KEY=" + api_key);
  return run_command(args, env);
}

json NebulaUp::get_json(const std::string& path, const std::string& api_key) {
  auto response = client_.request("GET", server_ + path, "", bearer(api_key));
  if (!response) return json();
  auto parsed = parse_json(response->body);
  return parsed ? *parsed : json();
}

std::vector<json> NebulaUp::replicas_of(const std::string& deployment) {
  std::vector<json> replicas;
  json listing = get_json("/api/v1/replicas", admin_key());
  if (!listing.is_object()) return replicas;
  for (const auto& item : listing["items"]) {
    if (item["spec"]["deployment"] == deployment) replicas.push_back(item);
  }
  return replicas;
}

std::set<int> NebulaUp::engine_pids(const std::string& deployment) {
  std::set<int> pids;
  for (const auto& replica : replicas_of(deployment)) {
    int pid = replica["status"].value("pid", 0);
    if (pid > 0) pids.insert(pid);
  }
  return pids;
}

std::vector<std::string> NebulaUp::endpoints_of(const std::string& deployment) {
  std::vector<std::string> endpoints;
  for (const auto& replica : replicas_of(deployment)) {
    if (replica["status"]["phase"] == "Ready") endpoints.push_back(replica["status"]["endpoint"]);
  }
  return endpoints;
}

NebulaServer::NebulaServer(const std::string& data_dir, const std::string& log_path, std::vector<std::string> extra)
    : data_dir_(data_dir) {
  int port = free_port();
  url_ = "http://127.0.0.1:" + std::to_string(port);
  std::vector<std::string> argv = {NEBULA_BINARY, "server",  "--listen",    "127.0.0.1:" + std::to_string(port),
                                   "--data-dir",  data_dir_, "--log-level", "warn"};
  for (auto& arg : extra) argv.push_back(arg);
  process_ = std::make_unique<Child>(argv, log_path);
}

bool NebulaServer::start() {
  bool healthy = eventually(
      [&] {
        auto health = client_.request("GET", url_ + "/healthz");
        return health && health->status == 200;
      },
      10s);
  return healthy && eventually(
                        [&] {
                          std::ifstream in(data_dir_ + "/join-token");
                          return static_cast<bool>(std::getline(in, token_)) && !token_.empty();
                        },
                        5s);
}

json NebulaServer::get_json(const std::string& path) {
  auto response = client_.request("GET", url_ + path);
  if (!response || response->status != 200) return json();
  auto parsed = parse_json(response->body);
  return parsed ? *parsed : json();
}

bool NebulaServer::node_ready(const std::string& name) {
  json node = get_json("/api/v1/nodes/" + name);
  return node.is_object() && node["status"]["ready"] == true;
}

bool NebulaServer::wait_heartbeats(const std::string& name, int count, std::chrono::milliseconds timeout) {
  auto heartbeat = [&] {
    json node = get_json("/api/v1/nodes/" + name);
    return node.is_object() ? node["status"].value("heartbeat_ms", int64_t{0}) : int64_t{0};
  };
  int64_t last = heartbeat();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int seen = 0; seen < count; ++seen) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (!eventually([&] { return heartbeat() > last; }, std::max(left, std::chrono::milliseconds(0)), 20ms)) {
      return false;
    }
    last = heartbeat();
  }
  return true;
}

std::vector<json> NebulaServer::replicas_of(const std::string& deployment) {
  std::vector<json> result;
  json listing = get_json("/api/v1/replicas");
  if (!listing.is_object()) return result;
  for (const auto& item : listing["items"]) {
    if (item["spec"]["deployment"] == deployment) result.push_back(item);
  }
  return result;
}

std::vector<json> NebulaServer::ready_replicas(const std::string& deployment) {
  auto replicas = replicas_of(deployment);
  std::erase_if(replicas, [](const json& r) { return r["status"]["phase"] != "Ready" || r["spec"]["stop"] == true; });
  return replicas;
}

CommandResult NebulaServer::cli(std::vector<std::string> args) {
  args.insert(args.begin(), NEBULA_BINARY);
  return run_command(args, {"NEBULA_SERVER=" + url_});
}

void NebulaServer::remove_deployments() {
  json deployments = get_json("/api/v1/deployments");
  if (!deployments.is_object()) return;
  for (const auto& item : deployments["items"]) {
    (void)client_.request("DELETE", url_ + "/api/v1/deployments/" + item["metadata"]["name"].get<std::string>());
  }
}

std::vector<std::string> agent_argv(const std::string& server, const std::string& token, const std::string& name,
                                    const std::string& gpus, const std::string& data_dir,
                                    std::vector<std::string> extra) {
  std::vector<std::string> argv = {NEBULA_BINARY,
                                   "agent",
                                   "--server",
                                   server,
                                   "--token",
                                   token,
                                   "--name",
                                   name,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--sim-gpus",
                                   gpus,
                                   "--data-dir",
                                   data_dir,
                                   "--heartbeat-interval",
                                   "500ms",
                                   "--log-level",
                                   "info",
                                   "--exit-with-parent"};
  for (auto& arg : extra) argv.push_back(arg);
  return argv;
}

std::string local_url(int port) {
  return "http://127.0.0.1:" + std::to_string(port);
}

std::unique_ptr<Child> start_gateway(const std::string& server, const std::string& admin, int port,
                                     const std::vector<std::string>& extra, const std::string& log) {
  std::vector<std::string> argv = {NEBULA_BINARY, "gateway", "--server",          server,
                                   "--api-key",   admin,     "--listen",          "127.0.0.1:" + std::to_string(port),
                                   "--log-level", "info",    "--exit-with-parent"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  auto child = std::make_unique<Child>(argv, log);
  bool ready = eventually(
      [&] {
        http::BlockingClient client;
        auto answer = client.request("GET", local_url(port) + "/readyz", "", {}, 2s);
        return answer && answer->status == 200;
      },
      20s);
  EXPECT_TRUE(ready) << child->output();
  return child;
}

bool gateway_knows_key(const std::string& url, const std::string& key) {
  return eventually(
      [&] {
        http::BlockingClient client;
        auto answer = client.request("GET", url + "/v1/models", "", bearer(key), 2s);
        return answer && answer->status == 200;
      },
      10s);
}

}  // namespace nebula::testing
