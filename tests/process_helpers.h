#pragma once
// Helpers for cross-process tests: free ports, temp dirs, child processes, CLI runs.
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace nebula::testing {

int free_port();
// A listening TCP socket on a free loopback port (for the tests' proxies): its descriptor, and
// the port in *port; throws when none can be opened.
int listen_on_loopback(int* port);
// A TCP connection to 127.0.0.1:port: its descriptor, -1 when refused.
int connect_to_loopback(int port);
// Starts argv[0] (a path) with stdin from /dev/null and stdout+stderr to output_path, in this
// process's environment plus extra_env ("NAME=value"); throws when it cannot be started.
pid_t spawn_logged(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                   const std::string& output_path);
// The first executable `name` on PATH, "" when there is none (for tests of real engine binaries).
std::string find_on_path(const std::string& name);
// A fresh directory under /tmp, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A child process with stdout+stderr captured to a file; killed (SIGKILL) by the destructor if
// still running.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& output_path);
  ~Child();
  pid_t pid() const { return pid_; }
  // Sends a signal and waits for the exit; returns the exit status (-1 on timeout).
  int stop(int signal, std::chrono::milliseconds timeout);
  bool running();
  std::string output() const;

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  std::string output_path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};
// Runs argv to completion with extra environment variables.
CommandResult run_command(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});

// True when pid is gone (or a zombie nobody reaped yet).
bool process_gone(pid_t pid);

// Polls until predicate holds or timeout passes; returns the predicate's last value.
bool eventually(const std::function<bool()>& predicate, std::chrono::milliseconds timeout,
                std::chrono::milliseconds interval = std::chrono::milliseconds(100));

}  // namespace nebula::testing
