// The docker driver and its Docker Engine API client (HTTP/1.1 over the daemon's unix socket,
// Beast on a private io_context per call so every call is bounded by its timeout).
#include "engines/docker.h"

#include <fmt/format.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <filesystem>

#include "engines/common.h"
#include "engines/drivers.h"

namespace nebula::engines {
namespace {

namespace beast_http = boost::beast::http;
using Local = boost::asio::local::stream_protocol;

Error invalid(std::string message) {
  return Error{ErrorCode::InvalidArgument, std::move(message)};
}
Error refused(std::string message) {
  return Error{ErrorCode::PermissionDenied, std::move(message)};
}

Result<Mount> parse_mount(const std::string& value) {
  Mount mount;
  if (value.find('=') != std::string::npos) {  // --mount type=bind,source=/a,target=/b,readonly
    size_t pos = 0;
    while (pos <= value.size()) {
      size_t comma = value.find(',', pos);
      std::string item = value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      pos = comma == std::string::npos ? value.size() + 1 : comma + 1;
      size_t equals = item.find('=');
      std::string key = item.substr(0, equals);
      std::string val = equals == std::string::npos ? "" : item.substr(equals + 1);
      if (key == "type") {
        if (val != "bind") return invalid(fmt::format("mount '{}': only type=bind is supported", value));
      } else if (key == "source" || key == "src") {
        mount.source = val;
      } else if (key == "target" || key == "destination" || key == "dst") {
        mount.target = val;
      } else if (key == "readonly" || key == "ro") {
        mount.read_only = val.empty() || val == "true" || val == "1";
      } else {
        return invalid(fmt::format("mount '{}': unknown field '{}'", value, key));
      }
    }
  } else {  // -v /a:/b[:ro]
    size_t first = value.find(':');
    if (first == std::string::npos) return invalid(fmt::format("mount '{}' must be SOURCE:TARGET[:ro]", value));
    size_t second = value.find(':', first + 1);
    mount.source = value.substr(0, first);
    mount.target = value.substr(first + 1, second == std::string::npos ? std::string::npos : second - first - 1);
    if (second != std::string::npos) {
      std::string options = value.substr(second + 1);
      if (options == "ro") {
        mount.read_only = true;
      } else if (options != "rw") {
        return invalid(fmt::format("mount '{}': the options may be ro or rw", value));
      }
    }
  }
  if (mount.source.empty() || mount.source[0] != '/') {
    return invalid(
        fmt::format("mount '{}': the source must be an absolute host path (named volumes are not supported)", value));
  }
  if (mount.target.empty() || mount.target[0] != '/') {
    return invalid(fmt::format("mount '{}': the target must be an absolute path", value));
  }
  return mount;
}

Result<int64_t> parse_size(const std::string& text) {
  int64_t number = 0;
  size_t pos = 0;
  while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) {
    number = number * 10 + (text[pos] - '0');
    if (number > (int64_t{1} << 50)) return invalid("--shm-size too large: " + text);
    ++pos;
  }
  if (pos == 0) return invalid("--shm-size must be a size like 16g, got '" + text + "'");
  std::string unit = text.substr(pos);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (unit.size() == 2 && unit[1] == 'b') unit.resize(1);
  int64_t scale = 1;
  if (unit == "k") {
    scale = int64_t{1} << 10;
  } else if (unit == "m") {
    scale = int64_t{1} << 20;
  } else if (unit == "g") {
    scale = int64_t{1} << 30;
  } else if (!unit.empty() && unit != "b") {
    return invalid("--shm-size must be a size like 16g, got '" + text + "'");
  }
  return number * scale;
}

Result<int> parse_port(const std::string& text) {
  int port = 0;
  for (char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c)) || port > 65535) return invalid("bad --container-port: " + text);
    port = port * 10 + (c - '0');
  }
  if (text.empty() || port < 1 || port > 65535) return invalid("bad --container-port: " + text);
  return port;
}

// Reads docker options into spec; returns the command arguments after `--` (nullopt when there is
// no `--`). allow_command = false for the node's extra args, which may hold options only.
Result<std::optional<std::vector<std::string>>> parse_options(const std::vector<std::string>& args, ContainerSpec& spec,
                                                              bool allow_command) {
  static const std::vector<std::string> kRefused{
      "--cap-add",      "--device", "--pid", "--security-opt", "--userns", "--uts",        "--cgroupns",
      "--volumes-from", "--gpus",   "-p",    "--publish",      "-P",       "--publish-all"};
  for (size_t index = 0; index < args.size(); ++index) {
    std::string arg = args[index];
    if (arg == "--") {
      if (!allow_command) return invalid("the node's docker extra_args may not hold '--' and a command");
      return std::optional<std::vector<std::string>>(std::vector<std::string>(args.begin() + index + 1, args.end()));
    }
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0) {
      if (size_t equals = arg.find('='); equals != std::string::npos) {
        inline_value = arg.substr(equals + 1);
        arg = arg.substr(0, equals);
      }
    }
    for (const std::string& name : kRefused) {
      if (arg == name) {
        return refused(fmt::format("docker option {} is not allowed (GPUs and the port come from the placement)", arg));
      }
    }
    if (arg == "--privileged") {
      spec.privileged = !inline_value || *inline_value != "false";
      continue;
    }
    auto value = [&]() -> Result<std::string> {
      if (inline_value) return *inline_value;
      if (index + 1 >= args.size()) return invalid(fmt::format("docker option {} needs a value", arg));
      return args[++index];
    };
    if (arg == "--image") {
      auto image = value();
      if (!image) return image.error();
      spec.image = *image;
    } else if (arg == "--container-port") {
      auto text = value();
      if (!text) return text.error();
      auto port = parse_port(*text);
      if (!port) return port.error();
      spec.container_port = *port;
    } else if (arg == "-v" || arg == "--volume" || arg == "--mount") {
      auto text = value();
      if (!text) return text.error();
      auto mount = parse_mount(*text);
      if (!mount) return mount.error();
      spec.mounts.push_back(*mount);
    } else if (arg == "-e" || arg == "--env") {
      auto text = value();
      if (!text) return text.error();
      size_t equals = text->find('=');
      if (equals == std::string::npos || equals == 0)
        return invalid(fmt::format("{} {} must be NAME=VALUE", arg, *text));
      spec.env[text->substr(0, equals)] = text->substr(equals + 1);
    } else if (arg == "--shm-size") {
      auto text = value();
      if (!text) return text.error();
      auto size = parse_size(*text);
      if (!size) return size.error();
      spec.shm_size_bytes = *size;
    } else if (arg == "--network" || arg == "--net") {
      auto text = value();
      if (!text) return text.error();
      spec.network_mode = *text;
    } else if (arg == "--ipc") {
      auto text = value();
      if (!text) return text.error();
      spec.ipc_mode = *text;
    } else {
      return invalid(fmt::format(
          "unknown docker option '{}': a docker deployment's engine args are docker options (--image, "
          "--container-port, --mount, -v, -e, --shm-size, --network, --ipc), then '--', then the container's command",
          arg));
    }
  }
  return std::optional<std::vector<std::string>>();
}

bool valid_container_name(const std::string& name) {
  if (name.empty() || !std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

bool inside(const std::filesystem::path& path, const std::filesystem::path& directory) {
  auto path_it = path.begin();
  for (auto dir_it = directory.begin(); dir_it != directory.end(); ++dir_it, ++path_it) {
    if (dir_it->empty()) continue;  // a trailing slash
    if (path_it == path.end() || *path_it != *dir_it) return false;
  }
  return true;
}

std::filesystem::path resolved(const std::string& path) {
  std::error_code error;
  auto canonical = std::filesystem::weakly_canonical(std::filesystem::path(path), error);
  if (error) return std::filesystem::path(path).lexically_normal();
  return canonical;
}

Error docker_error(const std::string& what, const DockerResponse& response) {
  std::string message = response.body;
  auto body = parse_json(response.body);
  if (body && body->is_object() && body->contains("message") && (*body)["message"].is_string()) {
    message = (*body)["message"].get<std::string>();
  }
  ErrorCode code = ErrorCode::Unavailable;
  if (response.status == 400) code = ErrorCode::InvalidArgument;
  if (response.status == 404) code = ErrorCode::NotFound;
  if (response.status == 409) code = ErrorCode::AlreadyExists;
  return Error{code, fmt::format("docker {}: HTTP {}: {}", what, response.status, message.substr(0, 500))};
}

}  // namespace

std::string docker_escape(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/' || c == ':' || c == '@') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

namespace {

class DockerDriver final : public EngineDriver {
 public:
  std::string name() const override { return "docker"; }

  Availability detect(const EngineConfig& config) const override {
    Availability availability;
    DockerClient client(config.docker_socket, std::chrono::seconds(5));
    auto version = client.version();
    if (!version) {
      availability.detail = version.error().message;
      return availability;
    }
    availability.available = true;
    availability.version = *version;
    availability.detail = config.docker_socket;
    return availability;
  }

  Result<Command> command(const LaunchContext& context) const override {
    return Error{ErrorCode::InvalidArgument,
                 "docker replicas are containers, not processes: build them with container() and run them "
                 "with engines::DockerClient"};
  }

  bool runs_in_container() const override { return true; }

  Result<ContainerSpec> container(const LaunchContext& context) const override {
    auto spec = parse_container_spec(context);
    if (!spec) return spec;
    if (Status valid = validate_container_spec(*spec, context.config.allowed_mounts); !valid.ok()) {
      return valid.error();
    }
    return spec;
  }

  awaitable<Readiness> probe(http::Client& client, std::string endpoint) const override {
    co_return co_await generic_probe(client, endpoint);
  }

  awaitable<Result<Load>> load(http::Client& client, std::string endpoint) const override {
    co_return co_await generic_load(client, endpoint);
  }
};

}  // namespace

Result<ContainerSpec> parse_container_spec(const LaunchContext& context) {
  ContainerSpec spec;
  spec.name = context.replica;
  spec.image = context.config.binary;
  spec.env = context.config.env;
  for (const auto& [name, value] : context.env) spec.env[name] = value;
  spec.labels["nebula.replica"] = context.replica;
  if (!context.served_name.empty()) spec.labels["nebula.served-name"] = context.served_name;
  spec.host_ip = context.host;
  spec.host_port = context.port;
  spec.gpus = context.gpus;
  if (auto node = parse_options(context.config.extra_args, spec, false); !node) return node.error();
  auto command = parse_options(context.engine_args, spec, true);
  if (!command) return command.error();

  // Inside the container the engine listens on every interface of its own network namespace, on
  // the container port, and sees its GPUs numbered from 0.
  auto values = placeholder_values(context);
  values["port"] = std::to_string(spec.container_port);
  values["host"] = "0.0.0.0";
  std::vector<int> inside_gpus;
  for (size_t index = 0; index < context.gpus.size(); ++index) inside_gpus.push_back(static_cast<int>(index));
  values["gpus"] = gpu_list(inside_gpus);
  const std::vector<std::string>& words = command->has_value() ? **command : context.config.command_template;
  for (const std::string& word : words) spec.cmd.push_back(substitute(word, values));
  return spec;
}

Status validate_container_spec(const ContainerSpec& spec, const std::vector<std::string>& allowed_mounts) {
  if (spec.privileged) return refused("privileged containers are refused");
  if (spec.network_mode == "host" || spec.network_mode.rfind("container:", 0) == 0) {
    return refused(fmt::format("network '{}' is refused: replicas run on a bridge network with a published port",
                               spec.network_mode));
  }
  if (spec.ipc_mode == "host" || spec.ipc_mode.rfind("container:", 0) == 0) {
    return refused(fmt::format("ipc '{}' is refused; give the container shared memory with --shm-size", spec.ipc_mode));
  }
  if (!valid_container_name(spec.name)) {
    return invalid(fmt::format("'{}' is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)", spec.name));
  }
  if (spec.image.empty()) return invalid("a docker deployment needs an image: --image IMAGE in its engine args");
  if (spec.host_port < 1 || spec.host_port > 65535) return invalid(fmt::format("bad host port {}", spec.host_port));
  for (const Mount& mount : spec.mounts) {
    if (mount.source.empty() || mount.source[0] != '/')
      return invalid("mount source must be absolute: " + mount.source);
    auto source = resolved(mount.source);
    bool allowed = false;
    for (const std::string& directory : allowed_mounts) {
      if (!directory.empty() && directory[0] == '/' && inside(source, resolved(directory))) allowed = true;
    }
    if (!allowed) {
      return refused(
          fmt::format("mounting {} is refused: it is outside the node's allowed mounts ({})", mount.source,
                      allowed_mounts.empty() ? "none configured" : fmt::format("{}", fmt::join(allowed_mounts, ", "))));
    }
  }
  return Status{};
}

json container_create_body(const ContainerSpec& spec) {
  std::string port_key = fmt::format("{}/tcp", spec.container_port);
  json body = json::object();
  body["Image"] = spec.image;
  if (!spec.cmd.empty()) body["Cmd"] = spec.cmd;
  json env = json::array();
  for (const auto& [name, value] : spec.env) env.push_back(name + "=" + value);
  body["Env"] = env;
  body["Labels"] = spec.labels;
  body["ExposedPorts"][port_key] = json::object();
  json host = json::object();
  json binding = json::object();
  binding["HostIp"] = spec.host_ip;
  binding["HostPort"] = std::to_string(spec.host_port);
  host["PortBindings"][port_key] = json::array({binding});
  if (!spec.mounts.empty()) {
    json binds = json::array();
    for (const Mount& mount : spec.mounts)
      binds.push_back(mount.source + ":" + mount.target + (mount.read_only ? ":ro" : ""));
    host["Binds"] = binds;
  }
  if (!spec.gpus.empty()) {
    json device_ids = json::array();
    for (int gpu : spec.gpus) device_ids.push_back(std::to_string(gpu));
    json request = json::object();
    request["Driver"] = "nvidia";
    request["DeviceIDs"] = device_ids;
    request["Capabilities"] = json::array({json::array({"gpu"})});
    host["DeviceRequests"] = json::array({request});
  }
  if (spec.shm_size_bytes) host["ShmSize"] = *spec.shm_size_bytes;
  if (!spec.network_mode.empty()) host["NetworkMode"] = spec.network_mode;
  if (!spec.ipc_mode.empty()) host["IpcMode"] = spec.ipc_mode;
  body["HostConfig"] = host;
  return body;
}

std::string demultiplex_docker_logs(const std::string& raw) {
  auto framed_at = [&](size_t pos) {
    return pos + 8 <= raw.size() && static_cast<unsigned char>(raw[pos]) <= 2 && raw[pos + 1] == 0 &&
           raw[pos + 2] == 0 && raw[pos + 3] == 0;
  };
  if (raw.empty() || !framed_at(0)) return raw;  // a TTY container's log is not framed
  std::string out;
  size_t pos = 0;
  while (framed_at(pos)) {
    uint32_t size = 0;
    for (int i = 4; i < 8; ++i) size = (size << 8) | static_cast<unsigned char>(raw[pos + i]);
    pos += 8;
    out.append(raw, pos, std::min<size_t>(size, raw.size() - pos));
    pos += size;
  }
  return out;
}

DockerClient::DockerClient(std::string socket_path, std::chrono::milliseconds timeout)
    : socket_path_(std::move(socket_path)), timeout_(timeout) {}

Result<DockerResponse> DockerClient::request(const std::string& method, const std::string& target,
                                             const std::string& body, std::optional<std::chrono::milliseconds> timeout,
                                             const std::function<bool()>& abandoned) {
  boost::asio::io_context io;
  Local::socket socket(io);
  beast_http::request<beast_http::string_body> request{beast_http::string_to_verb(method), target, 11};
  request.set(beast_http::field::host, "docker");
  request.set(beast_http::field::user_agent, "nebula");
  if (!body.empty()) request.set(beast_http::field::content_type, "application/json");
  request.body() = body;
  request.prepare_payload();
  boost::beast::flat_buffer buffer;
  beast_http::response_parser<beast_http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  boost::system::error_code failure;
  bool done = false;
  auto finish = [&](boost::system::error_code error) {
    failure = error;
    done = true;
  };
  socket.async_connect(Local::endpoint(socket_path_), [&](boost::system::error_code error) {
    if (error) return finish(error);
    beast_http::async_write(socket, request, [&](boost::system::error_code error, size_t) {
      if (error) return finish(error);
      beast_http::async_read(socket, buffer, parser, [&](boost::system::error_code error, size_t) { finish(error); });
    });
  });
  auto deadline = std::chrono::steady_clock::now() + timeout.value_or(timeout_);
  bool gave_up = false;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    io.run_for(abandoned ? std::chrono::milliseconds(100) : timeout.value_or(timeout_));
    if (!done && abandoned && abandoned()) {
      gave_up = true;
      break;
    }
  }
  if (!done) {
    boost::system::error_code ignored;
    socket.close(ignored);
    io.restart();
    io.run();  // lets the aborted handlers finish before their captures go
    if (gave_up) return Error{ErrorCode::Unavailable, fmt::format("docker {} {}: abandoned", method, target)};
    return Error{ErrorCode::Timeout,
                 fmt::format("docker {} {}: no answer from {} in time", method, target, socket_path_)};
  }
  if (failure) {
    return Error{ErrorCode::Unavailable,
                 fmt::format("docker {} {} via {}: {}", method, target, socket_path_, failure.message())};
  }
  return DockerResponse{static_cast<int>(parser.get().result_int()), parser.get().body()};
}

Result<std::string> DockerClient::version() {
  auto response = request("GET", "/version");
  if (!response) return response.error();
  if (response->status != 200) return docker_error("version", *response);
  auto body = parse_json(response->body);
  if (!body || !body->is_object() || !body->contains("Version") || !(*body)["Version"].is_string()) {
    return Error{ErrorCode::Unavailable, "docker /version: no Version in " + response->body.substr(0, 200)};
  }
  return (*body)["Version"].get<std::string>();
}

Status DockerClient::pull(const std::string& image, std::chrono::milliseconds timeout,
                          const std::function<bool()>& abandoned) {
  auto response = request("POST", "/images/create?fromImage=" + docker_escape(image), "", timeout, abandoned);
  if (!response) return response.error();
  if (response->status != 200) return docker_error("pull " + image, *response);
  // The progress stream reports a failed pull as a line with "error" after a 200.
  size_t pos = 0;
  while (pos < response->body.size()) {
    size_t newline = response->body.find('\n', pos);
    auto line =
        parse_json(response->body.substr(pos, newline == std::string::npos ? std::string::npos : newline - pos));
    if (line && line->is_object() && line->contains("error")) {
      return Error{ErrorCode::Unavailable, fmt::format("docker pull {}: {}", image, (*line)["error"].dump())};
    }
    if (newline == std::string::npos) break;
    pos = newline + 1;
  }
  return Status{};
}

Result<std::string> DockerClient::create(const ContainerSpec& spec, const std::vector<std::string>& allowed_mounts) {
  if (Status valid = validate_container_spec(spec, allowed_mounts); !valid.ok()) return valid.error();
  auto response = request("POST", "/containers/create?name=" + spec.name, container_create_body(spec).dump());
  if (!response) return response.error();
  if (response->status != 201) return docker_error("create " + spec.name, *response);
  auto body = parse_json(response->body);
  if (!body || !body->is_object() || !body->contains("Id") || !(*body)["Id"].is_string()) {
    return Error{ErrorCode::Unavailable, "docker create: no Id in " + response->body.substr(0, 200)};
  }
  return (*body)["Id"].get<std::string>();
}

Status DockerClient::start(const std::string& id) {
  auto response = request("POST", "/containers/" + id + "/start");
  if (!response) return response.error();
  if (response->status != 204 && response->status != 304) return docker_error("start " + id, *response);
  return Status{};
}

Result<ContainerState> DockerClient::inspect(const std::string& id) {
  auto response = request("GET", "/containers/" + id + "/json");
  if (!response) return response.error();
  if (response->status != 200) return docker_error("inspect " + id, *response);
  auto body = parse_json(response->body);
  if (!body || !body->is_object() || !body->contains("State") || !(*body)["State"].is_object()) {
    return Error{ErrorCode::Unavailable, "docker inspect: no State in " + response->body.substr(0, 200)};
  }
  const json& state = (*body)["State"];
  ContainerState result;
  result.status = state.value("Status", "");
  result.running = state.value("Running", false);
  result.exit_code = state.value("ExitCode", 0);
  result.pid = state.value("Pid", 0);
  result.error = state.value("Error", "");
  return result;
}

Status DockerClient::stop(const std::string& id, std::chrono::seconds grace) {
  auto response = request("POST", fmt::format("/containers/{}/stop?t={}", id, grace.count()), "",
                          timeout_ + std::chrono::duration_cast<std::chrono::milliseconds>(grace));
  if (!response) return response.error();
  if (response->status != 204 && response->status != 304) return docker_error("stop " + id, *response);
  return Status{};
}

Status DockerClient::remove(const std::string& id, bool force) {
  auto response = request("DELETE", "/containers/" + id + (force ? "?force=true" : ""));
  if (!response) return response.error();
  if (response->status != 204) return docker_error("remove " + id, *response);
  return Status{};
}

Result<std::string> DockerClient::logs(const std::string& id, int tail_lines) {
  auto response = request("GET", fmt::format("/containers/{}/logs?stdout=1&stderr=1&tail={}", id, tail_lines));
  if (!response) return response.error();
  if (response->status != 200) return docker_error("logs " + id, *response);
  return demultiplex_docker_logs(response->body);
}

const EngineDriver& docker_driver() {
  static const DockerDriver driver;
  return driver;
}

}  // namespace nebula::engines
