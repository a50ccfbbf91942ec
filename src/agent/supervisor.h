#pragma once
// One replica's supervisor: the engine process (or container) that runs it, from launch to stop,
// as an explicit state machine (Phase) on an injected clock.
//
// Each supervisor runs as a coroutine of its own on the agent's thread (run()), so a slow step of
// one replica (an Ollama pull inside prepare(), a model loading for minutes) never holds up
// another. It is event-driven: it sleeps until its next deadline (a restart time, a probe, a
// timeout) and is woken at once by kick() when the replica's desired state changes (a wake, a
// stop, a deletion). step() does one pass and is what unit tests drive, with a fake launcher, a
// fake driver and a FakeClock (supervisor_test.cpp).
//
// Everything it needs from the agent comes through SupervisorHost, the seam tests fake.
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "agent/process.h"
#include "api/api.h"
#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/steady_timer.hpp>

#include "common/clock.h"
#include "common/result.h"
#include "engines/driver.h"

namespace nebula::http {
class Client;
}

namespace nebula::agent {

class ContainerRuntime;
struct Download;
class Supervisor;

// Supervision settings (agent flags; see agent.h's Options for the defaults' reasons).
struct SupervisorOptions {
  std::chrono::milliseconds restart_backoff{10'000};  // first restart delay, doubled per crash
  std::chrono::milliseconds max_restart_backoff{300'000};
  std::chrono::milliseconds stable_after{600'000};  // running this long resets the backoff
  std::chrono::milliseconds stop_grace{10'000};     // SIGTERM, then SIGKILL after this
  // Liveness of a Ready engine: its driver's probe every period; a probe that fails or takes
  // longer than the timeout is a failure. The first failure takes the replica out of routing
  // (Unhealthy); `threshold` failures in a row restart it (a counted restart).
  std::chrono::milliseconds probe_period{5'000};
  std::chrono::milliseconds probe_timeout{2'000};
  int probe_threshold = 3;
  int64_t log_max_bytes = 64ll << 20;
  int log_keep = 3;
};

// What a supervisor needs from its agent. Called on the agent's thread only.
class SupervisorHost {
 public:
  virtual ~SupervisorHost() = default;
  virtual const SupervisorOptions& supervision() const = 0;
  virtual const Clock& clock() const = 0;
  virtual ProcessLauncher& launcher() = 0;
  virtual http::Client& client() = 0;
  // The driver of an engine by name (engines::find_driver), nullptr for none.
  virtual const engines::EngineDriver* driver(const std::string& engine) const = 0;
  // The engine's launch for this replica on `port` (model path, GPUs, work dir, timeouts).
  virtual engines::LaunchContext launch_context(const Supervisor& replica, int port) const = 0;
  // Why the replica's engine cannot run on this node ("" = it can).
  virtual std::string engine_unavailable(const std::string& engine) const = 0;
  // How long the engine may take to become ready.
  virtual std::chrono::milliseconds startup_timeout(const std::string& engine) const = 0;
  // Fetches the replica's model if it must be (setting phase Downloading meanwhile); true once the
  // engine can be launched.
  virtual bool model_ready(Supervisor& replica) = 0;
  virtual void cancel_download(Supervisor& replica) = 0;
  // Docker replicas only.
  virtual ContainerRuntime& containers() = 0;
  // agent.db: what the next agent needs to re-adopt the engine.
  virtual void save_record(const Supervisor& replica) = 0;
  virtual void remove_record(const std::string& replica) = 0;
  virtual std::string log_path(const std::string& replica) const = 0;
  // The server: the replica's status (true when it took it), and the removal of a stopped replica
  // (true once the server no longer has it).
  virtual awaitable<bool> put_status(const std::string& replica, const api::ReplicaStatus& status) = 0;
  virtual awaitable<bool> delete_replica(const std::string& replica) = 0;
  // An engine started or ended: the node's GPU memory changed, report it now.
  virtual void engines_changed() = 0;
};

class Supervisor {
 public:
  // Where the replica's engine is in its life. Each phase says what the supervisor waits for.
  enum class Phase {
    Idle,             // no engine: until its start (or restart after a crash) is due
    Downloading,      // no engine yet: the model's files are being fetched
    Starting,         // launched: probed until it answers ready, killed at the startup timeout
    Preparing,        // answers: the driver's post-start work runs (Ollama's pull, llama.cpp's load)
    Ready,            // serving; its liveness is probed every probe period
    Unhealthy,        // liveness probes fail: out of routing, restarted after the threshold
    Sleeping,         // asleep at the desired level (the engine still runs)
    StoppedAsleep,    // asleep by having been stopped: its engine cannot sleep here
    StoppingToSleep,  // SIGTERM sent because it cannot sleep: waiting for the exit
    Killing,          // SIGKILL sent to an engine judged dead (startup timeout, liveness): then restarted
    Stopping,         // SIGTERM sent because the replica is deleted or stopped: waiting for the exit
    Removing,         // the engine is gone: the replica is being deleted from the server
    Gone,             // deleted and its engine ended: the agent drops the supervisor
  };
  static const char* phase_name(Phase phase);

  Supervisor(SupervisorHost& host, asio::io_context& io, const std::string& name);
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;
  ~Supervisor();

  // The engine of an earlier agent, from agent.db: taken over as it runs (pid and start time
  // match), else counted as a crash that happened while no agent watched.
  struct Adopted {
    std::string engine;
    pid_t pid = 0;
    int64_t start_time = 0;
    int port = 0;
    std::string endpoint;
    int restarts = 0;
    int64_t plan_version = 0;
    std::string container_id;  // a docker replica
  };
  void adopt(const Adopted& record);

  // The replica as the server has it now (from the listing or the watch); wakes the supervisor.
  void apply(const api::Replica& replica);
  // The replica is no longer this node's (deleted, or moved away): its engine is stopped.
  void mark_deleted();
  // Wakes run() now (something it waits for may have changed).
  void kick();
  // Runs until the supervisor is Gone or stop() is called. Reports every change to the server.
  awaitable<void> run();
  void stop();

  // One pass: reacts to the engine's exit, the desired state and due deadlines. Public for tests.
  awaitable<void> step();
  // When step() should run next at the latest, on the host's clock (kick() may come sooner).
  std::chrono::steady_clock::time_point next_deadline() const;
  // Sends the status if it changed since the last report that the server took.
  awaitable<void> report();

  // ---- For the agent (its node report, /metrics, downloads) and tests.
  const std::string& name() const { return name_; }
  Phase phase() const { return phase_; }
  const api::Replica& desired() const { return desired_; }
  const api::ReplicaStatus& status() const { return status_; }
  const engines::EngineDriver* driver() const { return driver_; }
  bool deleted() const { return deleted_; }
  bool listed() const { return listed_; }
  // The engine runs: a process, or a container the runtime tracks.
  bool running() const { return pid_ != 0 || container_; }
  bool serving() const { return phase_ == Phase::Ready || phase_ == Phase::Sleeping || phase_ == Phase::Unhealthy; }
  bool asleep_gpu_free() const { return phase_ == Phase::Sleeping || phase_ == Phase::StoppedAsleep; }
  pid_t pid() const { return pid_; }
  bool container() const { return container_; }
  int port() const { return port_; }
  const std::optional<engines::Load>& load() const { return load_; }
  const std::string& model_path() const { return model_path_; }
  void set_model_path(const std::string& path) { model_path_ = path; }
  std::shared_ptr<Download>& download() { return download_; }
  // The record agent.db keeps of its engine.
  int64_t start_time() const { return start_time_; }
  const std::string& container_id() const { return container_id_; }

  // Sets the phase the server sees (api::phase::k*) and its message.
  void set_status_phase(const std::string& phase, const std::string& message);
  // The engine died or never came up: Failed, restarted after the backoff (doubling per crash).
  void crashed(const std::string& why, const std::string& log_tail = "");
  // Downloading (for the host's model_ready()).
  void downloading(const std::string& message);
  // Kills the engine at once (SIGKILL; a container without grace). Used at the agent's exit too.
  void kill_engine(int signal);

 private:
  void launch();
  void refuse_launch(const std::string& why);
  void engine_started(int port, const std::string& message);
  void abandon_start(const std::string& why, const std::string& log_tail = "");
  void kill_for_restart(const std::string& why, const std::string& log_tail = "");
  void forget();
  std::optional<ExitStatus> engine_exited();
  awaitable<void> check_ready();
  void start_prepare();
  void became_ready();
  awaitable<std::optional<engines::Readiness>> probe_within(std::chrono::milliseconds timeout);
  awaitable<void> check_liveness();
  awaitable<void> follow_sleep();
  void housekeeping();
  bool can_sleep_here() const;
  std::string stopped_asleep_message() const;
  std::chrono::steady_clock::time_point now() const { return host_.clock().steady_now(); }

  SupervisorHost& host_;
  asio::io_context& io_;
  const std::string name_;
  std::shared_ptr<bool> alive_;  // false once destroyed: tasks of its own check it before touching it
  std::unique_ptr<asio::steady_timer> wake_;
  bool kicked_ = false;
  bool stopped_ = false;

  Phase phase_ = Phase::Idle;
  api::Replica desired_;
  bool listed_ = false;       // seen in a listing or watch event of the server
  bool from_record_ = false;  // made from agent.db at the agent's start (adopt())
  bool deleted_ = false;      // the Replica is gone from the store (or moved to another node)
  const engines::EngineDriver* driver_ = nullptr;
  pid_t pid_ = 0;
  int64_t start_time_ = 0;  // of the process, to tell it from a reused pid
  bool container_ = false;  // a docker replica: ContainerRuntime runs it under the replica's name
  std::string container_id_;
  int port_ = 0;
  bool adopted_ = false;  // started by an earlier agent, taken over after a restart
  int slept_level_ = 0;   // the level it was put to sleep at (waking from level 2 reloads weights)
  std::string model_path_;
  std::shared_ptr<Download> download_;
  using TimePoint = std::chrono::steady_clock::time_point;
  TimePoint started_{};
  TimePoint ready_since_{};
  TimePoint next_start_{};
  TimePoint stop_deadline_{};
  TimePoint next_probe_{};  // Starting: readiness poll; Ready/Unhealthy: liveness probe
  int probes_ = 0;          // readiness probes since launch (they start fast and slow down)
  int failed_probes_ = 0;   // liveness probes failed in a row
  TimePoint next_sleep_attempt_{};
  TimePoint next_housekeeping_{};
  std::optional<Status> prepared_;  // Preparing: the driver's answer, once it came
  std::string kill_reason_;         // Killing: the crash to count when the exit is seen
  std::string kill_log_tail_;
  bool load_in_flight_ = false;
  std::chrono::milliseconds backoff_{0};
  api::ReplicaStatus status_;
  bool status_dirty_ = true;
  std::optional<engines::Load> load_;
};

}  // namespace nebula::agent
