#pragma once
// Docker replicas, supervised without blocking the agent's io thread: ContainerRuntime does every
// Docker Engine API call (engines/docker.h) on worker threads and keeps a snapshot of each
// replica's container that the agent's supervise loop reads without waiting.
//
// Threading: one worker thread per tracked replica, so a multi-gigabyte image pull or a stop's
// grace period for one replica never delays another's commands or its state refresh (a node runs
// a handful of replicas). A replica's commands run in the order they were given. Every public
// member is thread-safe; all but logs() return at once.
//
// Containers outlive the runtime by design (engines outlive the agent): destroying it stops the
// workers, not the containers. After a restart, adopt() takes them over again.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "engines/driver.h"

namespace nebula::agent {

struct ContainerRuntimeOptions {
  // How often a running (or adopted, not yet confirmed) container is inspected.
  std::chrono::milliseconds refresh_interval{1000};
  // Bounds each Docker call except pulls and stops (a stop waits its grace period on top of it).
  std::chrono::milliseconds call_timeout{30'000};
  std::chrono::milliseconds pull_timeout{std::chrono::hours(2)};
  // Bounds logs(), which blocks its caller.
  std::chrono::milliseconds logs_timeout{5'000};
};

class ContainerRuntime {
 public:
  struct State {
    enum class Phase {
      Starting,  // start() given; checking, pulling, creating, starting (see stage)
      Running,   // Docker says it runs (as of the last refresh)
      Exited,    // it ended by itself, was stopped, or is gone
      Failed,    // start could not finish (refused spec, pull or create error): see error
      Unknown,   // not tracked, or adopted and Docker has not answered yet
    };
    Phase phase = Phase::Unknown;
    std::string container_id;
    int exit_code = 0;  // once Exited; -1 when the container vanished and its code is unknown
    int pid = 0;        // on the host, from the last inspect while running
    // Why it failed or exited (Docker's State.Error), or the last refresh's error while the
    // phase is kept (the daemon did not answer: the container may well still run).
    std::string error;
    // What the worker is doing, for status messages: "pulling image vllm/vllm-openai:v0.8.5",
    // "creating", "running", "stopping", ...
    std::string stage;
    // The container's last log lines, read when it was seen to have exited by itself (so a
    // replica that fails while starting can say why, as a process's log file does).
    std::string log_tail;
  };

  explicit ContainerRuntime(std::string socket_path, ContainerRuntimeOptions options = {});
  // Stops the workers: in-flight start sequences and pulls are abandoned (closing a pull's
  // connection makes Docker cancel it), queued commands are dropped, a docker stop already under
  // way is finished. Containers are left as they are.
  ~ContainerRuntime();
  ContainerRuntime(const ContainerRuntime&) = delete;
  ContainerRuntime& operator=(const ContainerRuntime&) = delete;

  // Asynchronously: validates the spec against allowed_mounts (a refusal -> Failed with the
  // reason; nothing is sent to Docker), force-removes a leftover container named spec.name (the
  // replica when empty), pulls the image when Docker does not have it, creates and starts the
  // container -> Running. The state is Starting when this returns. Supersedes an earlier
  // start() still in progress for the replica (it is abandoned between steps or mid-pull).
  void start(const std::string& replica, engines::ContainerSpec spec, std::vector<std::string> allowed_mounts);

  // Asynchronously: docker stop with the grace period (SIGTERM, then SIGKILL), then remove ->
  // Exited with the container's exit code. Abandons a start still in progress; a container it
  // already created is stopped by name. A failed stop keeps the phase and sets error.
  void stop(const std::string& replica, std::chrono::seconds grace);

  // After an agent restart: track a container recorded earlier. The worker inspects it:
  // running -> Running; stopped -> Exited with its code; gone -> Exited (-1); no answer from
  // Docker -> stays Unknown and is retried every refresh_interval.
  void adopt(const std::string& replica, const std::string& container_id);

  // Stops tracking the replica. Its container goes too: a pending stop still runs (then the
  // removal), else a container whose id is known is stopped at once and removed. Other pending
  // commands are dropped.
  void forget(const std::string& replica);

  // A snapshot; Phase::Unknown for a replica that is not tracked.
  State state(const std::string& replica) const;
  std::vector<std::string> replicas() const;

  // The last lines of the container's stdout and stderr. BLOCKS the caller for up to
  // logs_timeout (one Docker call on the caller's thread): call it off the io thread.
  // NotFound when the replica has no container.
  Result<std::string> logs(const std::string& replica, int tail_lines) const;

 private:
  struct Replica;
  struct Command;

  std::shared_ptr<Replica> replica_for(const std::string& replica);  // mutex_ held
  void run(Replica& replica);
  void execute_start(Replica& replica, const Command& command);
  void execute_stop(Replica& replica, const Command& command);
  void refresh(Replica& replica, uint64_t generation, const std::string& container_id);
  void reap_retired();  // mutex_ held

  const std::string socket_path_;
  const ContainerRuntimeOptions options_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Replica>> replicas_;
  std::vector<std::shared_ptr<Replica>> retired_;  // forgotten; their threads are finishing
};

}  // namespace nebula::agent
