#include "agent/process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/config.h"

extern char** environ;

namespace nebula::agent {

std::string ExitStatus::describe() const {
  if (!detail.empty()) return detail;
  if (signal != 0) return fmt::format("killed by signal {} ({})", signal, strsignal(signal));
  if (code < 0) return "exited (exit status unknown: the engine was adopted from an earlier agent)";
  return fmt::format("exited with code {}", code);
}

Result<pid_t> PosixLauncher::launch(const LaunchSpec& spec) {
  if (spec.argv.empty()) return make_error(ErrorCode::InvalidArgument, "empty command");
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(spec.log_path).parent_path(), ignored);

  // Everything the child needs is built before spawning.
  std::vector<char*> argv;
  for (const auto& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** entry = environ; *entry; ++entry) {
    std::string item = *entry;
    std::string key = item.substr(0, item.find('='));
    if (!spec.env.count(key)) env_storage.push_back(item);
  }
  for (const auto& [key, value] : spec.env) env_storage.push_back(key + "=" + value);
  std::vector<char*> envp;
  for (auto& item : env_storage) envp.push_back(item.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setpgroup(&attributes, 0);
  sigset_t no_signals;
  sigemptyset(&no_signals);
  posix_spawnattr_setsigmask(&attributes, &no_signals);
  sigset_t default_signals;
  sigemptyset(&default_signals);
  for (int signal : {SIGINT, SIGTERM, SIGPIPE, SIGHUP, SIGCHLD}) sigaddset(&default_signals, signal);
  posix_spawnattr_setsigdefault(&attributes, &default_signals);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  pid_t pid = 0;
  int error = posix_spawnp(&pid, argv[0], &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  if (error != 0) {
    return make_error(ErrorCode::Internal, fmt::format("cannot start {}: {}", spec.argv[0], std::strerror(error)));
  }
  return pid;
}

void PosixLauncher::signal_group(pid_t pid, int signal) {
  if (pid > 0) ::kill(-pid, signal);
}

std::optional<ExitStatus> PosixLauncher::poll(pid_t pid) {
  int status = 0;
  pid_t result = ::waitpid(pid, &status, WNOHANG);
  if (result == 0) return std::nullopt;
  ExitStatus exit;
  if (result < 0) {
    // Not our child: an adopted engine (its parent was the previous agent). It runs while /proc
    // shows it alive.
    if (errno == ECHILD && process_start_time(pid)) return std::nullopt;
    exit.code = -1;
    return exit;
  }
  if (WIFEXITED(status)) exit.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) exit.signal = WTERMSIG(status);
  return exit;
}

std::optional<int64_t> PosixLauncher::start_time(pid_t pid) {
  return process_start_time(pid);
}

std::optional<int64_t> process_start_time(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream file(fmt::format("/proc/{}/stat", pid));
  std::string stat;
  if (!file || !std::getline(file, stat)) return std::nullopt;
  // "PID (COMM) STATE ..." where COMM may hold spaces and parentheses: fields count from the last ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  std::string state;
  int64_t start = 0;
  for (int index = 3; fields >> field; ++index) {
    if (index == 3) state = field;
    if (index == 22) {
      start = std::atoll(field.c_str());
      break;
    }
  }
  if (state == "Z" || state == "X" || start == 0) return std::nullopt;
  return start;
}

bool rotate_log_if_larger(const std::string& path, int64_t max_bytes, int keep) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec || static_cast<int64_t>(size) <= max_bytes || keep < 1) return false;
  for (int index = keep - 1; index >= 1; --index) {
    fs::rename(fmt::format("{}.{}", path, index), fmt::format("{}.{}", path, index + 1), ec);
  }
  fs::copy_file(path, path + ".1", fs::copy_options::overwrite_existing, ec);
  if (ec) return false;
  ::truncate(path.c_str(), 0);
  return true;
}

std::string tail_lines(const std::string& path, int lines) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return "";
  file.seekg(0, std::ios::end);
  int64_t size = file.tellg();
  int64_t from = std::max<int64_t>(0, size - 16384);
  file.seekg(from);
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  while (!text.empty() && text.back() == '\n') text.pop_back();
  size_t position = text.size();
  for (int count = 0; count < lines && position != std::string::npos && position > 0; ++count) {
    position = text.rfind('\n', position - 1);
  }
  return position == std::string::npos || position == 0 ? text : text.substr(position + 1);
}

Result<int> find_free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return make_error(ErrorCode::Internal, "socket() failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(fd);
    return make_error(ErrorCode::Internal, std::string("cannot find a free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return static_cast<int>(ntohs(address.sin_port));
}

Result<std::vector<api::Gpu>> parse_sim_gpus(const std::string& spec, const std::string& node_name) {
  std::vector<api::Gpu> gpus;
  size_t start = 0;
  while (start < spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    std::string part = spec.substr(start, end - start);
    start = end + 1;
    auto bad = [&] {
      return make_error(
          ErrorCode::InvalidArgument,
          fmt::format("invalid --sim-gpus '{}': expected COUNTxNAME-MEMORY, e.g. 2xH100-80GB or 1x24GB", part));
    };
    size_t x = part.find('x');
    if (x == std::string::npos || x == 0) return bad();
    int count = 0;
    try {
      size_t used = 0;
      count = std::stoi(part.substr(0, x), &used);
      if (used != x) return bad();
    } catch (const std::exception&) {
      return bad();
    }
    if (count < 1 || count > 64) return bad();
    std::string model = part.substr(x + 1);
    size_t dash = model.rfind('-');
    std::string memory_text = dash == std::string::npos ? model : model.substr(dash + 1);
    auto memory = parse_size_mb(memory_text);
    if (!memory || *memory <= 0) return bad();
    std::string name = dash == std::string::npos ? "SimGPU-" + memory_text : model;
    for (int i = 0; i < count; ++i) {
      api::Gpu gpu;
      gpu.index = static_cast<int>(gpus.size());
      gpu.uuid = fmt::format("GPU-sim-{}-{}", node_name, gpu.index);
      gpu.name = name;
      gpu.memory_total_mb = *memory;
      gpus.push_back(gpu);
    }
  }
  if (gpus.empty()) return make_error(ErrorCode::InvalidArgument, "--sim-gpus is empty");
  return gpus;
}

}  // namespace nebula::agent
