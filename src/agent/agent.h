#pragma once
// The node agent: joins the server with a token, heartbeats its GPUs, watches the replicas
// placed on its node and starts, supervises and stops their engines until reality matches.
// Everything runs as coroutines on one thread of its own (one supervisor per replica, see
// supervisor.h), so its state needs no locks.
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "agent/process.h"
#include "api/api.h"
#include "common/asio.h"
#include "common/config.h"
#include "common/result.h"
#include "engines/driver.h"

namespace nebula::xtrace {
class Client;
}

namespace nebula::agent {

struct Options {
  // One server, or several sharing one etcd store, comma-separated: the agent uses one and moves
  // to the next when it cannot be reached.
  std::string server_url = "http://127.0.0.1:8080";
  std::string token;
  std::string name;      // node name; default: the host name
  std::string sim_gpus;  // e.g. "1xH100-80GB"; empty = discover real GPUs (NVML, then nvidia-smi)
  HostPort listen{"127.0.0.1", 9091};
  std::string data_dir;       // agent.db and logs/<replica>.log live here
  std::string nebula_binary;  // runs `engine-sim`; default: this executable
  std::chrono::milliseconds heartbeat_interval{2'000};
  // How long an engine may take to become ready; 0 = the engine's own default (sim 2 min, real
  // engines 20 min, since loading a 70B model from disk takes minutes).
  std::chrono::milliseconds startup_timeout{0};
  // Per engine (agent.yaml `engines.NAME.startup_timeout`), over startup_timeout.
  std::map<std::string, std::chrono::milliseconds> engine_startup_timeouts;
  std::chrono::milliseconds restart_backoff{10'000};  // first restart delay, doubled per crash
  std::chrono::milliseconds max_restart_backoff{300'000};
  std::chrono::milliseconds stable_after{600'000};  // running this long resets the backoff
  std::chrono::milliseconds stop_grace{10'000};     // SIGTERM, then SIGKILL after this
  // Liveness of Ready engines: the driver's health probe every period, failed when it takes
  // longer than the timeout; the first failure takes the replica out of routing (Unhealthy),
  // probe_failures in a row restart it.
  std::chrono::milliseconds probe_period{5'000};
  std::chrono::milliseconds probe_timeout{2'000};
  int probe_failures = 3;
  int64_t reserved_vram_mb = -1;  // VRAM the scheduler must leave free per GPU; -1 = as the server has it
  // `nebula agent` leaves its engines running when it stops, for its successor to re-adopt;
  // `nebula up` stops them, since on a laptop that is what Ctrl-C means.
  bool stop_engines_on_exit = false;
  int64_t log_max_bytes = 64ll << 20;  // per replica log; rotated (copy + truncate) beyond this
  int log_keep = 3;                    // rotated logs kept: <replica>.log.1 .. .N
  // Logs of deleted replicas are removed once older than this, and beyond the newest few.
  std::chrono::milliseconds deleted_log_retention{3'600'000};
  int deleted_logs_keep = 20;
  // Engine binaries, images, extra args per engine (agent.yaml `engines:`).
  std::map<std::string, engines::EngineConfig> engines;
  // Model preparation: Hugging Face ids are downloaded into model_cache_dir from hf_endpoint.
  std::string model_cache_dir;  // default <data_dir>/models
  std::string hf_endpoint = "https://huggingface.co";
  std::string hf_token;
  int64_t model_cache_limit_mb = 0;  // 0 = unlimited
  // Called once, on the agent's thread, when it cannot go on: the server refused its join token
  // (401/403). The message is one line for the user; the agent does nothing more after it.
  std::function<void(const std::string&)> on_fatal;
  // Joining (or rejoining) a server that cannot be reached is retried after a delay that doubles
  // from the first to the last, each drawn at random from its upper half.
  std::chrono::milliseconds join_retry_first{500};
  std::chrono::milliseconds join_retry_max{30'000};
  // --xtrace: every heartbeat also goes to xtrace as POST /v1/metrics/batch (the GPUs, and each
  // engine's KV usage, pending requests and prefix-cache hit rate); null = off. Queued on the
  // client's own thread, so a slow xtrace never delays a heartbeat.
  std::shared_ptr<xtrace::Client> xtrace;
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
  // Stops the agent. Its engines keep running for the next agent to re-adopt, unless
  // stop_engines_on_exit (then SIGTERM, grace, SIGKILL). Blocks until done.
  void stop();
  // The agent's own URL, e.g. http://127.0.0.1:9091.
  std::string url() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nebula::agent
