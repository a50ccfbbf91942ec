#include "nebula_fixture.h"

#include <gtest/gtest.h>

#include <fstream>

namespace nebula::testing {

using namespace std::chrono_literals;

http::Headers bearer(const std::string& key) {
  http::Headers headers;
  if (!key.empty()) headers.push_back({"Authorization", "Bearer " + key});
  return headers;
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

}  // namespace nebula::testing
