#include "engines/common.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/subprocess.h"
#include "http/http.h"

namespace nebula::engines {

std::string gpu_list(const std::vector<int>& gpus) {
  std::string list;
  for (int index : gpus) {
    if (!list.empty()) list += ',';
    list += std::to_string(index);
  }
  return list;
}

std::string flag_number(double value) {
  return fmt::format("{}", value);
}

std::map<std::string, std::string> base_env(const LaunchContext& context) {
  std::map<std::string, std::string> env = context.config.env;
  for (const auto& [name, value] : context.env) env[name] = value;
  env["CUDA_VISIBLE_DEVICES"] = gpu_list(context.gpus);
  return env;
}

void append_user_args(std::vector<std::string>& argv, const LaunchContext& context) {
  argv.insert(argv.end(), context.config.extra_args.begin(), context.config.extra_args.end());
  argv.insert(argv.end(), context.engine_args.begin(), context.engine_args.end());
}

std::string substitute(std::string_view text, const std::map<std::string, std::string>& values) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t open = text.find('{', pos);
    if (open == std::string_view::npos) break;
    size_t close = text.find('}', open);
    if (close == std::string_view::npos) break;
    auto found = values.find(std::string(text.substr(open + 1, close - open - 1)));
    out += text.substr(pos, open - pos);
    if (found == values.end()) {
      out += text.substr(open, close - open + 1);  // not a placeholder of ours: kept as written
    } else {
      out += found->second;
    }
    pos = close + 1;
  }
  out += text.substr(pos);
  return out;
}

std::map<std::string, std::string> placeholder_values(const LaunchContext& context) {
  std::map<std::string, std::string> values;
  values["port"] = std::to_string(context.port);
  values["host"] = context.host;
  values["model"] = context.model;
  values["served_name"] = context.served_name;
  values["max_context"] = std::to_string(context.max_context);
  values["max_seqs"] = std::to_string(context.max_seqs);
  values["gpus"] = gpu_list(context.gpus);
  values["num_gpus"] = std::to_string(context.gpus.size());
  return values;
}

std::optional<std::string> find_executable(const std::string& name) {
  auto executable = [](const std::string& path) {
    struct stat info {};
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(path.c_str(), X_OK) == 0;
  };
  if (name.empty()) return std::nullopt;
  if (name.find('/') != std::string::npos) {
    if (executable(name)) return name;
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + name;
    if (executable(candidate)) return candidate;
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return std::nullopt;
}

Result<ProcessOutput> run_captured(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  constexpr size_t kOutputLimit = 64 * 1024;
  if (argv.empty()) return Error{ErrorCode::InvalidArgument, "no command to run"};
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Error{ErrorCode::Internal, fmt::format("pipe: {}", strerror(errno))};
  SpawnOptions options;
  options.argv = argv;
  options.out = Stdio::from_descriptor(pipe_fds[1]);
  options.err = Stdio::from_descriptor(pipe_fds[1]);
  options.new_process_group = true;
  auto spawned = spawn(options);
  ::close(pipe_fds[1]);
  if (!spawned) {
    ::close(pipe_fds[0]);
    return Error{ErrorCode::NotFound, spawned.error().message};
  }
  pid_t pid = *spawned;

  ProcessOutput result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto remaining_ms = [&] {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<int64_t>(0, left.count()));
  };
  char buffer[4096];
  while (true) {
    pollfd poll_fd{pipe_fds[0], POLLIN, 0};
    int ready = ::poll(&poll_fd, 1, remaining_ms());
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) {
      result.timed_out = true;
      break;
    }
    ssize_t n = ::read(pipe_fds[0], buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (result.output.size() < kOutputLimit) {
      result.output.append(buffer, std::min<size_t>(static_cast<size_t>(n), kOutputLimit - result.output.size()));
    }
  }
  ::close(pipe_fds[0]);
  // The output ended (or time ran out); the process gets what is left of the time to exit.
  int status = 0;
  while (true) {
    pid_t waited = ::waitpid(pid, &status, WNOHANG);
    if (waited == pid) break;
    if (waited < 0 && errno != EINTR) return result;
    if (result.timed_out || remaining_ms() == 0) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return result;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

std::string version_from_output(std::string_view output) {
  auto trim = [](std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
    return text;
  };
  std::vector<std::string_view> lines;
  while (!output.empty()) {
    size_t newline = output.find('\n');
    std::string_view line = trim(output.substr(0, newline));
    if (!line.empty()) lines.push_back(line);
    if (newline == std::string_view::npos) break;
    output.remove_prefix(newline + 1);
  }
  for (std::string_view line : lines) {
    size_t at = line.find("version");
    if (at == std::string_view::npos) continue;
    std::string_view rest = line.substr(at + 7);
    while (!rest.empty() && (rest.front() == ':' || rest.front() == ' ' || rest.front() == '=')) rest.remove_prefix(1);
    if (rest.substr(0, 3) == "is ") rest.remove_prefix(3);
    rest = trim(rest);
    if (!rest.empty()) return std::string(rest);
  }
  if (lines.empty()) return "";
  std::string_view first = lines.front();
  size_t space = first.find_last_of(" \t");
  return std::string(space == std::string_view::npos ? first : first.substr(space + 1));
}

Availability detect_binary(const std::string& binary, const std::vector<std::string>& version_args) {
  Availability availability;
  auto path = find_executable(binary);
  if (!path) {
    availability.detail = binary.find('/') == std::string::npos ? binary + " not found on PATH" : binary + " not found";
    return availability;
  }
  std::vector<std::string> argv{*path};
  argv.insert(argv.end(), version_args.begin(), version_args.end());
  auto ran = run_captured(argv, std::chrono::seconds(10));
  if (!ran) {
    availability.detail = ran.error().message;
    return availability;
  }
  if (ran->timed_out) {
    availability.detail = fmt::format("{} did not answer {} within 10 s", *path, fmt::join(version_args, " "));
    return availability;
  }
  if (ran->exit_code != 0) {
    availability.detail = fmt::format("{} {} exited with {}: {}", *path, fmt::join(version_args, " "), ran->exit_code,
                                      ran->output.substr(0, 300));
    return availability;
  }
  availability.available = true;
  availability.version = version_from_output(ran->output);
  availability.detail = *path;
  return availability;
}

awaitable<Readiness> probe_path(http::Client& client, std::string url) {
  auto response = co_await client.request("GET", std::move(url), "", {}, std::chrono::seconds(3));
  if (!response) co_return Readiness::Down;
  co_return response->status == 200 ? Readiness::Ready : Readiness::Loading;
}

awaitable<Result<Metrics>> fetch_metrics(http::Client& client, std::string endpoint) {
  auto response = co_await client.request("GET", endpoint + "/metrics", "", {}, std::chrono::seconds(5));
  if (!response) co_return response.error();
  if (response->status != 200) {
    co_return Error{ErrorCode::Unavailable, fmt::format("GET {}/metrics: HTTP {}", endpoint, response->status)};
  }
  co_return Metrics::parse(response->body);
}

namespace {
http::Headers json_content(bool has_body) {
  if (!has_body) return {};
  return {http::Header{"Content-Type", "application/json"}};
}
}  // namespace

awaitable<Status> post_expect_ok(http::Client& client, std::string url, std::string body,
                                 std::chrono::milliseconds timeout) {
  http::Headers headers = json_content(!body.empty());
  auto response = co_await client.request("POST", url, std::move(body), std::move(headers), timeout);
  if (!response) co_return Error{response.error().code, fmt::format("POST {}: {}", url, response.error().message)};
  if (response->status < 200 || response->status > 299) {
    co_return Error{ErrorCode::Unavailable,
                    fmt::format("POST {}: HTTP {} {}", url, response->status, response->body.substr(0, 300))};
  }
  co_return Status{};
}

Error unsupported(const std::string& what) {
  return Error{ErrorCode::InvalidArgument, what};
}

}  // namespace nebula::engines
