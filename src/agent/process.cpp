#include "agent/process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/config.h"
#include "common/subprocess.h"

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
  // The log may hold prompts and secrets from the engine's arguments: its owner's alone (an
  // existing one, from an earlier agent, too).
  ::chmod(spec.log_path.c_str(), 0600);
  SpawnOptions options;
  options.argv = spec.argv;
  options.env = spec.env;
  options.out = Stdio::file(spec.log_path, /*append=*/true, 0600);
  options.err = Stdio::same_as_stdout();
  options.new_process_group = true;
  return spawn(options);
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

size_t prune_replica_logs(const std::string& dir, const std::set<std::string>& live,
                          std::chrono::milliseconds retention, size_t keep) {
  namespace fs = std::filesystem;
  struct Group {
    std::vector<fs::path> files;
    fs::file_time_type newest = fs::file_time_type::min();
  };
  std::map<std::string, Group> groups;  // by replica
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    size_t suffix = name.rfind(".log");
    if (suffix == std::string::npos || suffix == 0) continue;
    std::string rest = name.substr(suffix + 4);  // "" or ".N"
    if (!rest.empty() && (rest[0] != '.' || rest.find_first_not_of("0123456789", 1) != std::string::npos)) continue;
    std::string replica = name.substr(0, suffix);
    if (live.count(replica)) continue;
    auto& group = groups[replica];
    group.files.push_back(entry.path());
    std::error_code time_error;
    auto written = fs::last_write_time(entry.path(), time_error);
    if (!time_error) group.newest = std::max(group.newest, written);
  }
  std::vector<std::pair<fs::file_time_type, std::string>> by_age;
  for (const auto& [replica, group] : groups) by_age.emplace_back(group.newest, replica);
  std::sort(by_age.begin(), by_age.end(), std::greater<>());
  auto oldest_kept = fs::file_time_type::clock::now() - retention;
  size_t removed = 0;
  for (size_t rank = 0; rank < by_age.size(); ++rank) {
    const auto& [newest, replica] = by_age[rank];
    if (rank < keep && newest >= oldest_kept) continue;
    for (const auto& file : groups[replica].files) removed += fs::remove(file, ec) ? 1 : 0;
  }
  return removed;
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
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
