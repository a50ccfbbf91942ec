#pragma once
// What the benchmarks that drive a real `nebula` share: finding the binary, a free port,
// starting a process with its output in a log, running a command to completion, waiting on a
// condition, and medians.
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "common/json.h"
#include "http/http.h"

namespace nebula::bench {

// CPU seconds (user + system) the process has used so far; 0 when it is gone.
double cpu_seconds(pid_t pid);

using Clock = std::chrono::steady_clock;

// build/nebula, beside the directory of this benchmark's binary (build/bench/).
std::string nebula_binary();
int free_port();
// Starts args with stdin from /dev/null and stdout + stderr appended to log.
pid_t spawn(const std::vector<std::string>& args, const std::string& log);
// Runs args to completion; returns stdout + stderr, throws when it exits non-zero.
std::string run(const std::vector<std::string>& args, const std::string& scratch);
// SIGTERM, then waits for the process.
void stop(pid_t pid);
double ms_since(Clock::time_point start);
// Polls condition every interval until it holds (true) or limit passes (false).
bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds limit,
                std::chrono::milliseconds interval = std::chrono::milliseconds(5));
// The q-quantile (0..1) of values, nearest rank; 0 when empty.
double quantile(std::vector<double> values, double q);

// `nebula up --sim-gpus GPUS [EXTRA...]` on a free loopback port, its data in a temporary
// directory; stopped, and the directory removed, when destroyed. Throws when it does not answer
// within 20 s.
class Up {
 public:
  Up(const std::string& name, const std::string& sim_gpus, const std::vector<std::string>& extra = {});
  ~Up();
  Up(const Up&) = delete;
  Up& operator=(const Up&) = delete;
  // `nebula ARGS --server URL` to completion; its output (throws when it fails).
  std::string cli(std::vector<std::string> args);
  // GET path as JSON; null unless 200.
  json get(const std::string& path);
  const std::string& url() const { return url_; }
  const std::string& dir() const { return dir_; }
  const std::string& binary() const { return binary_; }
  pid_t pid() const { return pid_; }
  http::BlockingClient& client() { return client_; }

 private:
  std::string binary_;
  std::string dir_;
  std::string url_;
  pid_t pid_ = 0;
  http::BlockingClient client_;
};

}  // namespace nebula::bench
