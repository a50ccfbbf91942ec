#pragma once
// A `nebula up` on a free loopback port for cross-process tests, with the CLI and HTTP helpers
// every such test needs. Stopped with SIGTERM on destruction, so it stops its engines.
#include <signal.h>

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

}  // namespace nebula::testing
