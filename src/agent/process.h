#pragma once
// Child processes for engines: the ProcessLauncher seam, and simulated GPUs.
#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "api/api.h"
#include "common/result.h"

namespace nebula::agent {

struct LaunchSpec {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // added to (and overriding) the agent's environment
  std::string log_path;                    // stdout and stderr are appended here
};

// How a child ended: exit code, or the signal that killed it.
struct ExitStatus {
  int code = 0;
  int signal = 0;
  std::string detail;  // set instead when there is more to say (a container that failed to start)
  std::string describe() const;
};

class ProcessLauncher {
 public:
  virtual ~ProcessLauncher() = default;
  // Starts the child in a process group of its own (so stop reaches its children too).
  virtual Result<pid_t> launch(const LaunchSpec& spec) = 0;
  // Sends a signal to the child's whole process group.
  virtual void signal_group(pid_t pid, int signal) = 0;
  // The child's exit status if it has ended (reaping it), nullopt while it runs. A process this
  // launcher did not start (an engine adopted after an agent restart) is polled through /proc;
  // its exit code is then unknown (-1).
  virtual std::optional<ExitStatus> poll(pid_t pid) = 0;
  // When the process started (clock ticks since boot), to tell it from a later one with the same
  // pid; nullopt when there is no such process.
  virtual std::optional<int64_t> start_time(pid_t pid) = 0;
};

// posix_spawn-based launcher.
class PosixLauncher final : public ProcessLauncher {
 public:
  Result<pid_t> launch(const LaunchSpec& spec) override;
  void signal_group(pid_t pid, int signal) override;
  std::optional<ExitStatus> poll(pid_t pid) override;
  std::optional<int64_t> start_time(pid_t pid) override;
};

// Field 22 of /proc/PID/stat (start time in clock ticks since boot); nullopt for no process or a
// zombie.
std::optional<int64_t> process_start_time(pid_t pid);

// Size-based rotation that works while the engine keeps writing: the engine holds its log open
// with O_APPEND, so the log is copied to PATH.1 (older ones shift to .2 ... .keep) and then
// truncated in place, and the engine's next write lands at the new end (logrotate's
// "copytruncate"; lines written between the copy and the truncate are lost). Returns whether it
// rotated.
bool rotate_log_if_larger(const std::string& path, int64_t max_bytes, int keep);

// Removes the logs (<replica>.log and its rotations) in `dir` of replicas not in `live`, once
// older than `retention`, and beyond the `keep` most recently written. Returns the files removed.
size_t prune_replica_logs(const std::string& dir, const std::set<std::string>& live,
                          std::chrono::milliseconds retention, size_t keep);

// The last `lines` lines of a file (at most the last 16 KiB of it).
std::string tail_lines(const std::string& path, int lines);

// A loopback TCP port nothing listens on right now (bind to port 0, read it, close).
Result<int> find_free_port();

// "1xH100-80GB", "2x24GB", "1xH100-80GB,2xA100-40GB" -> simulated GPUs, indexed from 0.
Result<std::vector<api::Gpu>> parse_sim_gpus(const std::string& spec, const std::string& node_name);

}  // namespace nebula::agent
