// `nebula up` (control plane + gateway + a local agent in one process) and `nebula server`.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "agent/agent.h"
#include "cli/cli.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/log.h"
#include "controlplane/controlplane.h"
#include "gateway/gateway.h"
#include "store/sqlite_store.h"

namespace nebula::cli {

namespace {

struct ServerFlags {
  std::string listen = "127.0.0.1:8080";
  std::string data_dir = default_data_dir();
  std::string store;  // sqlite://PATH; default <data-dir>/nebula.db
  std::string log_level = "info";
  std::string node_timeout = "30s";
  std::string reschedule_after = "60s";
  std::string auth;  // "" = none on loopback, required otherwise
  // Gateway timeouts and queue.
  std::string connect_timeout = "5s";
  std::string first_token_timeout = "300s";
  std::string idle_timeout = "120s";
  std::string request_timeout = "600s";
  std::string queue_timeout = "30s";
  size_t max_queue = 1024;
  int replica_capacity = 256;
};

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

void add_server_flags(CLI::App& app, ServerFlags& flags) {
  app.add_option("--listen", flags.listen, "Address for the management API and the OpenAI gateway")
      ->capture_default_str();
  app.add_option("--auth", flags.auth, "none (loopback only) or keys (API keys required)")
      ->check(CLI::IsMember({"none", "keys"}));
  app.add_option("--connect-timeout", flags.connect_timeout, "Gateway: connecting to an engine")->capture_default_str();
  app.add_option("--first-token-timeout", flags.first_token_timeout, "Gateway: until the engine answers")
      ->capture_default_str();
  app.add_option("--idle-timeout", flags.idle_timeout, "Gateway: longest silence within a streamed answer")
      ->capture_default_str();
  app.add_option("--request-timeout", flags.request_timeout, "Gateway: a whole request, queueing included")
      ->capture_default_str();
  app.add_option("--queue-timeout", flags.queue_timeout, "Gateway: longest wait for a free replica")
      ->capture_default_str();
  app.add_option("--max-queue", flags.max_queue, "Gateway: requests waiting per deployment before 429")
      ->capture_default_str();
  app.add_option("--replica-capacity", flags.replica_capacity,
                 "Gateway: requests one replica takes at once when its deployment sets no --max-seqs")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--data-dir", flags.data_dir, "Where state, logs and the join token live")->capture_default_str();
  app.add_option("--store", flags.store, "State store: sqlite://PATH (default <data-dir>/nebula.db)");
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn or error")->capture_default_str();
  app.add_option("--node-timeout", flags.node_timeout, "A node without heartbeat this long is NotReady")
      ->capture_default_str();
  app.add_option("--reschedule-after", flags.reschedule_after,
                 "Replicas of a NotReady node move elsewhere after this much more silence")
      ->capture_default_str();
}

// Creates the file readable by its owner only from the first byte (no umask window).
Status write_private_file(const std::string& path, const std::string& content) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return make_error(ErrorCode::Internal, "cannot write " + path + ": " + std::strerror(errno));
  ::fchmod(fd, 0600);
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ::close(fd);
  if (!ok) return make_error(ErrorCode::Internal, "cannot write " + path);
  return {};
}

// The join token agents present; created once per data dir, readable only by its owner.
Result<std::string> load_join_token(const std::string& data_dir) {
  std::string path = data_dir + "/join-token";
  std::ifstream in(path);
  std::string token;
  if (in && std::getline(in, token) && !token.empty()) return token;
  token = "nbj-" + random_secret_hex(16);
  if (auto written = write_private_file(path, token + "\n"); !written) return written.error();
  return token;
}

// Blocks SIGINT/SIGTERM in every thread (started later, they inherit the mask) so the main
// thread can wait for them with sigwait and shut down in order.
sigset_t block_stop_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return signals;
}

// The control plane and gateway on one listener, running on one I/O thread.
class ServerRuntime {
 public:
  Status start(const ServerFlags& flags) {
    std::error_code ec;
    std::filesystem::create_directories(flags.data_dir, ec);
    if (ec) return make_error(ErrorCode::Internal, "cannot create data dir " + flags.data_dir + ": " + ec.message());
    auto address = parse_host_port(flags.listen);
    if (!address) return address.error();
    auth_ = flags.auth.empty() ? "none" : flags.auth;
    if (!is_loopback(address->host) && auth_ != "keys") {
      return make_error(ErrorCode::InvalidArgument, "refusing to listen on " + flags.listen +
                                                        " without authentication: pass --auth keys (or listen on "
                                                        "127.0.0.1)");
    }
    auto node_timeout = parse_duration(flags.node_timeout);
    if (!node_timeout) return node_timeout.error();
    std::string store_path = flags.data_dir + "/nebula.db";
    if (!flags.store.empty()) {
      if (flags.store.rfind("sqlite://", 0) != 0) {
        return make_error(ErrorCode::InvalidArgument,
                          "unsupported --store '" + flags.store + "' (this build supports sqlite://PATH)");
      }
      store_path = flags.store.substr(9);
    }
    auto store = store::SqliteStore::open(store_path);
    if (!store) return store.error();
    store_ = std::move(*store);
    auto token = load_join_token(flags.data_dir);
    if (!token) return token.error();
    options_.join_token = *token;
    options_.node_timeout = *node_timeout;
    auto reschedule_after = parse_duration(flags.reschedule_after);
    if (!reschedule_after)
      return make_error(ErrorCode::InvalidArgument, "--reschedule-after: " + reschedule_after.error().message);
    options_.reschedule_grace = *reschedule_after;

    resources_ = std::make_unique<controlplane::Resources>(*store_);
    gateway::Options gateway_options;
    gateway_options.require_keys = auth_ == "keys";
    std::pair<const std::string*, std::chrono::milliseconds*> durations[] = {
        {&flags.connect_timeout, &gateway_options.connect_timeout},
        {&flags.first_token_timeout, &gateway_options.first_byte_timeout},
        {&flags.idle_timeout, &gateway_options.idle_timeout},
        {&flags.request_timeout, &gateway_options.total_timeout},
        {&flags.queue_timeout, &gateway_options.queue_timeout}};
    for (auto [text, target] : durations) {
      auto duration = parse_duration(*text);
      if (!duration) return duration.error();
      *target = *duration;
    }
    gateway_options.max_queue = flags.max_queue;
    gateway_options.replica_capacity = flags.replica_capacity;
    gateway_options.access_log_path = flags.data_dir + "/access.log";
    gateway_ = std::make_unique<gateway::Gateway>(*store_, io_, gateway_options);
    if (auto started = gateway_->start(); !started) return started.error();
    if (auth_ == "keys") {
      auto admin = gateway_->bootstrap_admin_key();
      if (!admin) return admin.error();
      if (!admin->empty()) {
        std::string path = flags.data_dir + "/admin.key";
        if (auto written = write_private_file(path, *admin + "\n"); !written) return written.error();
        std::cout << "Bootstrap admin key (shown once, also in " << path << "): " << *admin << "\n" << std::flush;
      }
      options_.issue_node_credential = [this](const std::string& node) { return gateway_->issue_node_key(node); };
    }
    http::Router router;
    controlplane::add_api_routes(router, *resources_, io_, options_);
    gateway_->add_routes(router);
    router.set_guard([this](const http::Request& request) { return gateway_->guard_management(request); });
    server_ = std::make_unique<http::Server>(io_, std::move(router));
    auto port = server_->listen(*address);
    if (!port) return port.error();
    std::string host = address->host == "0.0.0.0" ? "127.0.0.1" : address->host;
    url_ = "http://" + HostPort{host, *port}.to_string();
    // A draining replica stops as soon as this gateway has no request in flight to it.
    options_.replica_drained = [this](const std::string& replica) { return gateway_->table().drained(replica); };
    controller_ = std::make_unique<controlplane::Controller>(*resources_, options_);
    controller_->start();
    thread_ = std::thread([this] { io_.run(); });
    spdlog::info("nebula server listening on {} (store {})", url_, store_path);
    return {};
  }

  void stop() {
    if (controller_) controller_->stop();
    if (gateway_) gateway_->stop();  // flushes pending usage
    if (server_) server_->stop();
    asio::post(io_, [this] { io_.stop(); });
    work_.reset();
    if (thread_.joinable()) thread_.join();
  }

  const std::string& url() const { return url_; }
  const std::string& join_token() const { return options_.join_token; }
  const std::string& auth() const { return auth_; }
  controlplane::Resources& resources() { return *resources_; }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::unique_ptr<store::SqliteStore> store_;
  controlplane::Options options_;
  std::unique_ptr<controlplane::Resources> resources_;
  std::unique_ptr<gateway::Gateway> gateway_;
  std::unique_ptr<http::Server> server_;
  std::unique_ptr<controlplane::Controller> controller_;
  std::thread thread_;
  std::string url_;
  std::string auth_;
};

// --reserved-vram: "" leaves the node's setting as it is (-1).
Result<int64_t> parse_reserved_vram(const std::string& text) {
  if (text.empty()) return int64_t{-1};
  auto mb = parse_size_mb(text);
  if (!mb) return make_error(ErrorCode::InvalidArgument, "--reserved-vram: " + mb.error().message);
  return *mb;
}

// Supervision and engine settings of an agent, from flags (`nebula agent`, `nebula up`) and
// agent.yaml; a flag given on the command line wins over the file.
struct AgentFlags {
  std::string config;  // agent.yaml
  std::string restart_backoff;
  std::string max_restart_backoff;
  std::string startup_timeout;
  std::string stop_grace;
  std::string heartbeat_interval;
  std::string log_max_size;
  int log_keep = 0;
  std::vector<std::string> engine_binaries;  // NAME=BINARY (image for docker)
  std::string hf_endpoint;
  std::string hf_token;
  std::string model_cache;
  std::string model_cache_limit;
  bool stop_engines_on_exit = false;
};

void add_agent_flags(CLI::App& app, AgentFlags& flags, bool with_config) {
  if (with_config) app.add_option("--config", flags.config, "agent.yaml with these settings (flags win)");
  app.add_option("--restart-backoff", flags.restart_backoff, "First restart delay after an engine crash (default 10s)");
  app.add_option("--max-restart-backoff", flags.max_restart_backoff, "Cap of the doubling restart delay (default 5m)");
  app.add_option("--startup-timeout", flags.startup_timeout,
                 "How long an engine may take to be ready (default: sim 2m, real engines 20m)");
  app.add_option("--stop-grace", flags.stop_grace, "SIGTERM to SIGKILL delay when stopping an engine (default 10s)");
  app.add_option("--heartbeat-interval", flags.heartbeat_interval, "How often the agent reports (default 2s)");
  app.add_option("--log-max-size", flags.log_max_size, "Engine log size that triggers rotation (default 64MB)");
  app.add_option("--log-keep", flags.log_keep, "Rotated engine logs kept per replica (default 3)");
  app.add_option("--engine-binary", flags.engine_binaries,
                 "NAME=BINARY: the binary (or docker image) to run for an engine; repeatable");
  app.add_option("--hf-endpoint", flags.hf_endpoint, "Hugging Face compatible endpoint for model downloads");
  app.add_option("--hf-token", flags.hf_token, "Token for the model endpoint (default: $HF_TOKEN)");
  app.add_option("--model-cache", flags.model_cache, "Where downloaded models live (default <data-dir>/models)");
  app.add_option("--model-cache-limit", flags.model_cache_limit, "Size limit of the model cache, e.g. 500GB");
}

Status apply_duration(const std::string& flag, const std::string& text, std::chrono::milliseconds& out) {
  if (text.empty()) return {};
  auto parsed = parse_duration(text);
  if (!parsed) return make_error(ErrorCode::InvalidArgument, flag + ": " + parsed.error().message);
  out = *parsed;
  return {};
}

// Reads agent.yaml into flags not given on the command line. Keys: server, token, name, listen,
// sim_gpus, data_dir, reserved_vram, restart_backoff, max_restart_backoff, startup_timeout,
// stop_grace, heartbeat_interval, log_max_size, log_keep, hf_endpoint, hf_token, model_cache,
// model_cache_limit, engines: {NAME: {binary, args: [...], env: {...}, command: [...]}}.
Status read_agent_config(const std::string& path, json& config) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::InvalidArgument, "cannot read " + path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto parsed = yaml_to_json(text);
  if (!parsed) return make_error(ErrorCode::InvalidArgument, path + ": " + parsed.error().message);
  if (parsed->is_null()) parsed = json::object();
  if (!parsed->is_object()) return make_error(ErrorCode::InvalidArgument, path + ": expected a mapping of settings");
  static const std::set<std::string> known = {"server",          "token",           "name",
                                              "listen",          "sim_gpus",        "data_dir",
                                              "reserved_vram",   "restart_backoff", "max_restart_backoff",
                                              "startup_timeout", "stop_grace",      "heartbeat_interval",
                                              "log_max_size",    "log_keep",        "hf_endpoint",
                                              "hf_token",        "model_cache",     "model_cache_limit",
                                              "engines"};
  for (const auto& [key, value] : parsed->items()) {
    if (!known.count(key)) return make_error(ErrorCode::InvalidArgument, path + ": unknown setting '" + key + "'");
  }
  config = *parsed;
  return {};
}

Status apply_agent_flags(AgentFlags flags, const json& config, agent::Options& options) {
  auto text = [&](std::string& flag, const char* key) {
    if (flag.empty() && config.contains(key)) {
      const json& value = config[key];
      flag = value.is_string() ? value.get<std::string>() : value.dump();
    }
  };
  text(flags.restart_backoff, "restart_backoff");
  text(flags.max_restart_backoff, "max_restart_backoff");
  text(flags.startup_timeout, "startup_timeout");
  text(flags.stop_grace, "stop_grace");
  text(flags.heartbeat_interval, "heartbeat_interval");
  text(flags.log_max_size, "log_max_size");
  text(flags.hf_endpoint, "hf_endpoint");
  text(flags.hf_token, "hf_token");
  text(flags.model_cache, "model_cache");
  text(flags.model_cache_limit, "model_cache_limit");
  if (flags.log_keep == 0 && config.contains("log_keep") && config["log_keep"].is_number_integer()) {
    flags.log_keep = config["log_keep"].get<int>();
  }
  if (auto done = apply_duration("--restart-backoff", flags.restart_backoff, options.restart_backoff); !done)
    return done;
  if (auto done = apply_duration("--max-restart-backoff", flags.max_restart_backoff, options.max_restart_backoff);
      !done)
    return done;
  if (auto done = apply_duration("--startup-timeout", flags.startup_timeout, options.startup_timeout); !done)
    return done;
  if (auto done = apply_duration("--stop-grace", flags.stop_grace, options.stop_grace); !done) return done;
  if (auto done = apply_duration("--heartbeat-interval", flags.heartbeat_interval, options.heartbeat_interval); !done)
    return done;
  if (options.restart_backoff.count() <= 0 || options.heartbeat_interval.count() <= 0) {
    return make_error(ErrorCode::InvalidArgument, "--restart-backoff and --heartbeat-interval must be positive");
  }
  if (!flags.log_max_size.empty()) {
    auto mb = parse_size_mb(flags.log_max_size);
    if (!mb || *mb <= 0) return make_error(ErrorCode::InvalidArgument, "--log-max-size: expected a size like 64MB");
    options.log_max_bytes = *mb << 20;
  }
  if (flags.log_keep < 0) return make_error(ErrorCode::InvalidArgument, "--log-keep must be 1 or more");
  if (flags.log_keep > 0) options.log_keep = flags.log_keep;
  if (!flags.hf_endpoint.empty()) options.hf_endpoint = flags.hf_endpoint;
  options.hf_token = flags.hf_token;
  if (options.hf_token.empty()) {
    if (const char* token = std::getenv("HF_TOKEN")) options.hf_token = token;
  }
  if (!flags.model_cache.empty()) options.model_cache_dir = expand_home(flags.model_cache);
  if (!flags.model_cache_limit.empty()) {
    auto mb = parse_size_mb(flags.model_cache_limit);
    if (!mb || *mb < 0)
      return make_error(ErrorCode::InvalidArgument, "--model-cache-limit: expected a size like 500GB");
    options.model_cache_limit_mb = *mb;
  }
  options.stop_engines_on_exit = options.stop_engines_on_exit || flags.stop_engines_on_exit;
  // engines: from the file, then --engine-binary NAME=BINARY on top.
  if (config.contains("engines")) {
    const json& engines = config["engines"];
    if (!engines.is_object())
      return make_error(ErrorCode::InvalidArgument, "engines: expected a mapping by engine name");
    for (const auto& [name, value] : engines.items()) {
      if (!value.is_object()) return make_error(ErrorCode::InvalidArgument, "engines." + name + ": expected a mapping");
      engines::EngineConfig engine;
      try {
        engine.binary = value.value("binary", value.value("image", ""));
        engine.extra_args = value.value("args", std::vector<std::string>{});
        engine.env = value.value("env", std::map<std::string, std::string>{});
        engine.command_template = value.value("command", std::vector<std::string>{});
        engine.docker_socket = value.value("docker_socket", engine.docker_socket);
        engine.allowed_mounts = value.value("allowed_mounts", engine.allowed_mounts);
        if (value.contains("startup_timeout")) {
          auto timeout = parse_duration(value["startup_timeout"].get<std::string>());
          if (!timeout)
            return make_error(ErrorCode::InvalidArgument,
                              "engines." + name + ".startup_timeout: " + timeout.error().message);
          options.engine_startup_timeouts[name] = *timeout;
        }
      } catch (const json::exception&) {
        return make_error(ErrorCode::InvalidArgument,
                          "engines." + name +
                              ": binary/image/docker_socket/startup_timeout are strings, args, command and "
                              "allowed_mounts lists, env a mapping");
      }
      options.engines[name] = engine;
    }
  }
  for (const auto& item : flags.engine_binaries) {
    size_t equals = item.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == item.size()) {
      return make_error(ErrorCode::InvalidArgument, "--engine-binary: expected NAME=BINARY, got '" + item + "'");
    }
    options.engines[item.substr(0, equals)].binary = item.substr(equals + 1);
  }
  return {};
}

void wait_for_stop_signal(const sigset_t& signals) {
  int received = 0;
  sigwait(&signals, &received);
  spdlog::info("received {}, shutting down", strsignal(received));
}

}  // namespace

int run_server(int argc, char** argv) {
  CLI::App app{"Run the control plane and gateway (agents join with a token)", "nebula server"};
  ServerFlags flags;
  add_server_flags(app, flags);
  if (auto exit = parse(app, argc, argv)) return *exit;
  init_logging(flags.log_level);
  auto signals = block_stop_signals();
  ServerRuntime runtime;
  if (auto started = runtime.start(flags); !started) return fail(started.error().message);
  std::cout << "Nebula server: " << runtime.url() << "\n"
            << "Join an agent: nebula agent --server " << runtime.url() << " --token " << runtime.join_token() << "\n"
            << std::flush;
  wait_for_stop_signal(signals);
  runtime.stop();
  return 0;
}

int run_up(int argc, char** argv) {
  CLI::App app{"Run everything on this machine: control plane, gateway and a local agent", "nebula up"};
  ServerFlags flags;
  std::string sim_gpus;
  std::string node_name;
  std::string demo_model;
  add_server_flags(app, flags);
  app.add_option("--sim-gpus", sim_gpus, "Simulated GPUs for the local agent, e.g. 2xH100-80GB");
  app.add_option("--name", node_name, "Name of the local node (default: the host name)");
  std::string reserved_vram;
  app.add_option("--reserved-vram", reserved_vram, "VRAM the scheduler leaves free on each local GPU, e.g. 2GB");
  bool exit_with_parent = false;
  app.add_flag("--exit-with-parent", exit_with_parent,
               "Shut down (stopping every engine) when the process that started this one dies; for tests");
  AgentFlags agent_flags;
  add_agent_flags(app, agent_flags, false);
  app.add_option("--demo", demo_model,
                 "Deploy a demo deployment named 'demo' serving this model on the simulator, if absent");
  if (auto exit = parse(app, argc, argv)) return *exit;
  init_logging(flags.log_level);
  flags.data_dir = expand_home(flags.data_dir);
  auto reserved_mb = parse_reserved_vram(reserved_vram);
  if (!reserved_mb) return fail(reserved_mb.error().message);
  auto signals = block_stop_signals();
  // The kernel sends SIGTERM when the parent dies; sigwait below takes it like any stop.
  if (exit_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() == 1)) {
    return fail("--exit-with-parent: the parent is already gone");
  }

  ServerRuntime runtime;
  if (auto started = runtime.start(flags); !started) return fail(started.error().message);
  agent::Options agent_options;
  agent_options.server_url = runtime.url();
  agent_options.token = runtime.join_token();
  agent_options.name = node_name;
  agent_options.sim_gpus = sim_gpus;
  agent_options.listen = HostPort{"127.0.0.1", 0};
  agent_options.data_dir = flags.data_dir;
  agent_options.reserved_vram_mb = *reserved_mb;
  agent_options.stop_engines_on_exit = true;
  if (auto applied = apply_agent_flags(agent_flags, json::object(), agent_options); !applied) {
    runtime.stop();
    return fail(applied.error().message);
  }
  agent::Agent local_agent(agent_options);
  if (auto started = local_agent.start(); !started) {
    runtime.stop();
    return fail(started.error().message);
  }
  if (!demo_model.empty()) {
    api::Deployment demo;
    demo.metadata.name = "demo";
    demo.spec.model = demo_model;
    demo.spec.engine = "sim";
    auto created = runtime.resources().create(demo);
    if (created) spdlog::info("deployed demo: {} on the simulator", demo_model);
  }
  std::cout << "\nNebula is up.\n"
            << "  OpenAI API:      " << runtime.url() << "/v1\n"
            << "  Management API:  " << runtime.url() << "/api/v1\n"
            << "  Health:          " << runtime.url() << "/healthz\n"
            << "  Data dir:        " << flags.data_dir << "\n"
            << "  Auth:            " << (runtime.auth() == "keys" ? "API keys" : "none (loopback only)") << "\n"
            << "  Join token:      " << runtime.join_token() << "\n"
            << "Try: nebula ls    curl " << runtime.url()
            << "/v1/chat/completions -d '{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'\n"
            << "Ctrl-C stops Nebula and every engine it started.\n\n"
            << std::flush;
  wait_for_stop_signal(signals);
  local_agent.stop();
  runtime.stop();
  return 0;
}

int run_agent(int argc, char** argv) {
  CLI::App app{"Run a node agent that joins a Nebula server", "nebula agent"};
  agent::Options options;
  std::string server;
  std::string token;
  std::string listen;
  std::string log_level = "info";
  std::string reserved_vram;
  std::string data_dir;
  AgentFlags flags;
  bool exit_with_parent = false;
  app.add_option("--server", server, "Server URL (or `server:` in agent.yaml)");
  app.add_option("--token", token, "Join token from `nebula token create` or the server's start message");
  app.add_option("--name", options.name, "Node name (default: the host name)");
  app.add_option("--listen", listen, "Address for the agent's logs, health and metrics (default 127.0.0.1:9091)");
  app.add_option("--sim-gpus", options.sim_gpus, "Simulated GPUs, e.g. 2xH100-80GB (default: discover real GPUs)");
  app.add_option("--reserved-vram", reserved_vram, "VRAM the scheduler leaves free on each GPU, e.g. 2GB");
  app.add_option("--data-dir", data_dir, "agent.db, engine logs and the model cache (default ~/.nebula)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn or error")->capture_default_str();
  add_agent_flags(app, flags, true);
  app.add_flag("--stop-engines-on-exit", flags.stop_engines_on_exit,
               "Stop the engines when the agent stops (default: leave them for the next agent to re-adopt)");
  app.add_flag("--exit-with-parent", exit_with_parent, "Stop when the process that started this one dies; for tests");
  if (auto exit = parse(app, argc, argv)) return *exit;
  init_logging(log_level);
  json config = json::object();
  if (!flags.config.empty()) {
    if (auto read = read_agent_config(flags.config, config); !read) return fail(read.error().message);
  }
  auto setting = [&](std::string& flag, const char* key, const std::string& fallback) {
    if (flag.empty() && config.contains(key) && config[key].is_string()) flag = config[key].get<std::string>();
    if (flag.empty()) flag = fallback;
  };
  setting(server, "server", "");
  setting(token, "token", "");
  setting(options.name, "name", "");
  setting(listen, "listen", "127.0.0.1:9091");
  setting(options.sim_gpus, "sim_gpus", "");
  setting(reserved_vram, "reserved_vram", "");
  setting(data_dir, "data_dir", default_data_dir());
  if (server.empty() || token.empty()) return fail("--server and --token are required (flags or agent.yaml)");
  options.server_url = server;
  options.token = token;
  auto address = parse_host_port(listen);
  if (!address) return fail(address.error().message);
  auto reserved_mb = parse_reserved_vram(reserved_vram);
  if (!reserved_mb) return fail(reserved_mb.error().message);
  options.reserved_vram_mb = *reserved_mb;
  options.listen = *address;
  options.data_dir = expand_home(data_dir);
  if (auto applied = apply_agent_flags(flags, config, options); !applied) return fail(applied.error().message);
  auto signals = block_stop_signals();
  if (exit_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() == 1)) {
    return fail("--exit-with-parent: the parent is already gone");
  }
  agent::Agent node_agent(options);
  if (auto started = node_agent.start(); !started) return fail(started.error().message);
  std::cout << "Nebula agent " << node_agent.url() << " joining " << options.server_url << "\n" << std::flush;
  wait_for_stop_signal(signals);
  node_agent.stop();
  return 0;
}

}  // namespace nebula::cli
