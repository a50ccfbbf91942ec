#pragma once
// A `nebula up` on a free loopback port for cross-process tests, with the CLI and HTTP helpers
// every such test needs. Stopped with SIGTERM on destruction, so it stops its engines.
#include <signal.h>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/json.h"
#include "http/http.h"
#include "process_helpers.h"

namespace nebula::testing {

class NebulaUp {
 public:
  // extra: more `nebula up` flags (e.g. --auth keys).
  explicit NebulaUp(std::vector<std::string> extra = {}, const std::string& gpus = "1xH100-80GB");
  ~NebulaUp();
  bool wait_node_ready();

  const std::string& server() const { return server_; }
  const std::string& data_dir() const { return data_dir_; }
  Child& process() { return *up_; }

  // Runs the CLI against this server (NEBULA_DATA_DIR set, so it finds admin.key).
  CommandResult cli(std::vector<std::string> args, const std::string& api_key = "");
  // GET server path as JSON (with the key when given).
  json get_json(const std::string& path, const std::string& api_key = "");
  std::vector<json> replicas_of(const std::string& deployment);
  std::set<int> engine_pids(const std::string& deployment);
  std::vector<std::string> endpoints_of(const std::string& deployment);
  std::string admin_key() const;

 private:
  TempDir temp_;
  std::string data_dir_;
  int port_ = 0;
  std::string server_;
  std::unique_ptr<Child> up_;
  http::BlockingClient client_;
};

http::Headers bearer(const std::string& key);
// What the server presents to an agent's /logs and /metrics: the hex SHA-256 of the node key the
// agent keeps in <agent data dir>/node.key.
http::Headers agent_credential(const std::string& agent_data_dir);

// A `nebula server` (no local agent) on a free loopback port, for tests whose agents are
// processes of their own. Construct, then ASSERT_TRUE(start()).
class NebulaServer {
 public:
  // extra: more `nebula server` flags (e.g. --node-timeout 3s).
  NebulaServer(const std::string& data_dir, const std::string& log_path, std::vector<std::string> extra = {});
  // Waits until the server answers /healthz and has written its join token.
  bool start();

  const std::string& url() const { return url_; }
  const std::string& token() const { return token_; }
  Child& process() { return *process_; }

  // GET path as JSON; null unless the answer is a 200 with a JSON body.
  json get_json(const std::string& path);
  bool node_ready(const std::string& name);
  // Waits until node `name` has sent `count` more heartbeats (each carries its status report);
  // false after timeout.
  bool wait_heartbeats(const std::string& name, int count, std::chrono::milliseconds timeout);
  std::vector<json> replicas_of(const std::string& deployment);
  // Replicas Ready and not being stopped.
  std::vector<json> ready_replicas(const std::string& deployment);
  // Runs the CLI against this server.
  CommandResult cli(std::vector<std::string> args);
  // Deletes every deployment (their agents then stop the engines).
  void remove_deployments();
  http::BlockingClient& client() { return client_; }

 private:
  std::string data_dir_;
  std::string url_;
  std::string token_;
  std::unique_ptr<Child> process_;
  http::BlockingClient client_;
};

// `nebula agent` joining server as node `name` with simulated GPUs, data in data_dir, reporting
// every 500 ms, stopped with the test runner; extra flags are appended.
std::vector<std::string> agent_argv(const std::string& server, const std::string& token, const std::string& name,
                                    const std::string& gpus, const std::string& data_dir,
                                    std::vector<std::string> extra = {});

// http://127.0.0.1:PORT
std::string local_url(int port);
// `nebula gateway --server SERVER --api-key ADMIN --listen 127.0.0.1:PORT` with more flags, its
// output in `log`, stopped with the test runner; waits (and fails the test) until its /readyz
// answers 200.
std::unique_ptr<Child> start_gateway(const std::string& server, const std::string& admin, int port,
                                     const std::vector<std::string>& extra, const std::string& log);
// Waits until the gateway at `url` lists models for `key` (it has seen the key).
bool gateway_knows_key(const std::string& url, const std::string& key);

}  // namespace nebula::testing
