#pragma once
// The node agent: joins the server with a token, heartbeats its GPUs, watches the replicas
// placed on its node and starts, supervises and stops their engines until reality matches.
// Everything runs as coroutines on one thread of its own, so its state needs no locks.
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "agent/process.h"
#include "api/api.h"
#include "common/asio.h"
#include "common/config.h"
#include "common/result.h"

namespace nebula::agent {

struct Options {
  std::string server_url = "http://127.0.0.1:8080";
  std::string token;
  std::string name;      // node name; default: the host name
  std::string sim_gpus;  // e.g. "1xH100-80GB"; empty = no GPUs
  HostPort listen{"127.0.0.1", 9091};
  std::string data_dir;       // logs go to <data_dir>/logs/<replica>.log
  std::string nebula_binary;  // runs `engine-sim`; default: this executable
  std::chrono::milliseconds heartbeat_interval{2'000};
  std::chrono::milliseconds startup_timeout{120'000};
  std::chrono::milliseconds restart_backoff{2'000};  // first restart delay, doubled per crash
  std::chrono::milliseconds max_restart_backoff{300'000};
  std::chrono::milliseconds stop_grace{10'000};  // SIGTERM, then SIGKILL after this
  int64_t reserved_vram_mb = -1;  // VRAM the scheduler must leave free per GPU; -1 = as the server has it
};

class Agent {
 public:
  explicit Agent(Options options, std::unique_ptr<ProcessLauncher> launcher = std::make_unique<PosixLauncher>());
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Binds the agent's listener (logs, health) and starts working. Joining the server is retried
  // in the background until it succeeds.
  Status start();
  // Stops the agent and every engine it started (SIGTERM, grace, SIGKILL). Blocks until done.
  void stop();
  // The agent's own URL, e.g. http://127.0.0.1:9091.
  std::string url() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nebula::agent
