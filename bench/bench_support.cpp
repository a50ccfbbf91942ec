#include "bench_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/asio.h"  // must precede Asio headers

#include <fmt/format.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace nebula::bench {

double cpu_seconds(pid_t pid) {
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; fields >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);  // utime, stime
    if (i == 15) break;
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string nebula_binary() {
  return (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "nebula").string();
}

int free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return acceptor.local_endpoint().port();
}

pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  int failed = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (failed != 0) throw std::runtime_error("cannot start " + args[0]);
  return pid;
}

std::string run(const std::vector<std::string>& args, const std::string& scratch) {
  std::filesystem::remove(scratch);
  pid_t pid = spawn(args, scratch);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::ifstream in(scratch);
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error((args.size() > 1 ? args[1] : args[0]) + " failed: " + out);
  }
  return out;
}

void stop(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds limit,
                std::chrono::milliseconds interval) {
  auto deadline = Clock::now() + limit;
  while (!condition()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(interval);
  }
  return true;
}

double quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

Up::Up(const std::string& name, const std::string& sim_gpus, const std::vector<std::string>& extra)
    : binary_(nebula_binary()) {
  std::string pattern = "/tmp/nebula-" + name + "-XXXXXX";
  dir_ = ::mkdtemp(pattern.data());
  int port = free_port();
  url_ = fmt::format("http://127.0.0.1:{}", port);
  std::vector<std::string> args = {binary_,
                                   "up",
                                   "--listen",
                                   fmt::format("127.0.0.1:{}", port),
                                   "--data-dir",
                                   dir_ + "/data",
                                   "--sim-gpus",
                                   sim_gpus,
                                   "--log-level",
                                   "warn",
                                   "--name",
                                   "bench",
                                   "--exit-with-parent"};
  args.insert(args.end(), extra.begin(), extra.end());
  pid_ = spawn(args, dir_ + "/up.log");
  if (!wait_until([&] { return !get("/healthz").is_null(); }, std::chrono::milliseconds(20'000))) {
    stop(pid_);
    throw std::runtime_error("nebula up did not start; see " + dir_ + "/up.log");
  }
}

Up::~Up() {
  stop(pid_);
  std::filesystem::remove_all(dir_);
}

std::string Up::cli(std::vector<std::string> args) {
  args.insert(args.begin(), binary_);
  args.push_back("--server");
  args.push_back(url_);
  return run(args, dir_ + "/cli.out");
}

json Up::get(const std::string& path) {
  auto response = client_.request("GET", url_ + path, "", {}, std::chrono::milliseconds(5000));
  if (!response || response->status != 200) return json();
  auto parsed = parse_json(response->body);
  return parsed ? *parsed : json(true);
}

}  // namespace nebula::bench
