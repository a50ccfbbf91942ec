// `nebula up` (control plane + gateway + a local agent in one process) and `nebula server`.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/file.h>
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
#include <future>
#include <iostream>
#include <set>
#include <thread>

#include "agent/agent.h"
#include "agent/gpu_probe.h"
#include "cli/cli.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "controlplane/controlplane.h"
#include "gateway/gateway.h"
#include "gateway/origin_guard.h"
#include "mcp/mcp.h"
#include "store/leader.h"
#include "store/store.h"
#include "webui/webui.h"
#include "xtrace/xtrace.h"

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
  std::string load_scrape_interval = "1s";
  // Browser-facing guard (docs/security.md).
  std::vector<std::string> allowed_hosts;
  std::vector<std::string> allowed_origins;
  std::string drain_timeout = "30s";
  size_t max_connections = 0;  // 0: derived from the open-file limit
  LimitsFlags limits;          // the gateway's: --limits redis://HOST:PORT shares them
  ResponsesFlags responses;    // where the gateway's stored responses live
};

}  // namespace

sigset_t block_stop_signals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  return signals;
}

void add_xtrace_flags(CLI::App& app, XtraceFlags& flags, bool gateway) {
  app.add_option("--xtrace", flags.url, "xtrace URL to report metrics and traces to, e.g. http://127.0.0.1:8742")
      ->envname("NEBULA_XTRACE");
  app.add_option("--xtrace-token", flags.token, "Bearer token for xtrace (NEBULA_XTRACE_TOKEN)")
      ->envname("NEBULA_XTRACE_TOKEN");
  if (!gateway) return;
  app.add_flag("--xtrace-content", flags.content, "Put prompts and answers into the traces sent to xtrace");
  app.add_option("--signals", flags.signals,
                 "Load signals for kv-load routing and GPU ties in placement: engine (each engine's /metrics) or "
                 "xtrace (xtrace's while fresh, the engine's otherwise)")
      ->check(CLI::IsMember({"engine", "xtrace"}))
      ->capture_default_str();
}

// The xtrace client the flags ask for; null when --xtrace is not given.
Result<std::shared_ptr<xtrace::Client>> make_xtrace_client(const XtraceFlags& flags, bool gateway) {
  if (flags.url.empty()) {
    if (flags.signals == "xtrace") return make_error(ErrorCode::InvalidArgument, "--signals xtrace needs --xtrace URL");
    if (flags.content) return make_error(ErrorCode::InvalidArgument, "--xtrace-content needs --xtrace URL");
    return std::shared_ptr<xtrace::Client>();
  }
  auto url = http::Url::parse(flags.url);
  if (!url || url->target != "/") {
    return make_error(ErrorCode::InvalidArgument,
                      "--xtrace: expected http://HOST:PORT or https://HOST:PORT, got '" + flags.url + "'");
  }
  xtrace::Options options;
  options.url = url->origin();
  options.token = flags.token;
  std::map<std::string, xtrace::SignalLimits> consumers;
  if (gateway && flags.signals == "xtrace") {
    consumers["router"] = xtrace::kRouterLimits;
    consumers["scheduler"] = xtrace::kSchedulerLimits;
  }
  return std::make_shared<xtrace::Client>(options, consumers);
}

namespace {

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

void add_server_flags(CLI::App& app, ServerFlags& flags) {
  app.add_option("--listen", flags.listen, "Address for the management API and the OpenAI gateway")
      ->capture_default_str();
  app.add_option("--auth", flags.auth, "none (loopback only) or keys (API keys required)")
      ->check(CLI::IsMember({"none", "keys"}));
  app.add_option("--connect-timeout", flags.connect_timeout, "Gateway: connecting to an engine")
      ->check(duration_value(1))
      ->capture_default_str();
  app.add_option("--first-token-timeout", flags.first_token_timeout, "Gateway: until the engine answers")
      ->check(duration_value(1))
      ->capture_default_str();
  app.add_option("--idle-timeout", flags.idle_timeout, "Gateway: longest silence within a streamed answer")
      ->check(duration_value(1))
      ->capture_default_str();
  app.add_option("--request-timeout", flags.request_timeout, "Gateway: a whole request, queueing included")
      ->check(duration_value(1))
      ->capture_default_str();
  app.add_option("--queue-timeout", flags.queue_timeout, "Gateway: longest wait for a free replica")
      ->check(duration_value())
      ->capture_default_str();
  app.add_option("--max-queue", flags.max_queue, "Gateway: requests waiting per deployment before 429")
      ->check(whole_number(0, 1'000'000))
      ->capture_default_str();
  app.add_option("--replica-capacity", flags.replica_capacity,
                 "Gateway: requests one replica takes at once when its deployment sets no --max-seqs")
      ->check(whole_number(1, 1'000'000))
      ->capture_default_str();
  app.add_option("--load-scrape-interval", flags.load_scrape_interval,
                 "Gateway: how often each replica's engine /metrics is read for its load (0 = never)")
      ->check(duration_value())
      ->capture_default_str();
  app.add_option("--drain-timeout", flags.drain_timeout,
                 "On SIGTERM/Ctrl-C: how long requests in flight may take to finish before they are cut")
      ->check(duration_value())
      ->capture_default_str();
  app.add_option("--max-connections", flags.max_connections,
                 "Client connections at once; more get a fast 503 (default: half the open-file limit, less 48)");
  app.add_option("--data-dir", flags.data_dir, "Where state, logs and the join token live")->capture_default_str();
  app.add_option(
      "--store", flags.store,
      "State store: sqlite://PATH (default <data-dir>/nebula.db) or etcd://HOST:PORT[,HOST:PORT...][?options]");
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn or error")
      ->check(log_level_value())
      ->capture_default_str();
  app.add_option("--node-timeout", flags.node_timeout, "A node without heartbeat this long is NotReady")
      ->check(duration_value(1))
      ->capture_default_str();
  app.add_option("--reschedule-after", flags.reschedule_after,
                 "Replicas of a NotReady node move elsewhere after this much more silence")
      ->check(duration_value())
      ->capture_default_str();
  app.add_option("--allowed-host", flags.allowed_hosts,
                 "Without API keys, Host names accepted besides localhost and the --listen address "
                 "(DNS-rebinding guard; comma-separated or repeated)")
      ->delimiter(',');
  app.add_option("--allowed-origins", flags.allowed_origins,
                 "Web page origins that may call this server from a browser, e.g. https://app.example.com or "
                 "http://localhost:* (NEBULA_ALLOWED_ORIGINS; comma-separated or repeated)")
      ->delimiter(',')
      ->envname("NEBULA_ALLOWED_ORIGINS");
  add_limits_flags(app, flags.limits);
  add_responses_flags(app, flags.responses);
}

// Creates the file readable by its owner only from the first byte (no umask window).
Status write_private_file(const std::string& path, const std::string& content) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::Internal, "cannot write " + path + ": " + std::strerror(errno));
  ::fchmod(fd, 0600);
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ::close(fd);
  if (!ok) return make_error(ErrorCode::Internal, "cannot write " + path);
  return {};
}

// Creates the data dir readable by its owner only (engine logs, the join token and the store hold
// prompts and secrets); an existing one more open than that is only warned about.
Status prepare_data_dir(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    auto parent = std::filesystem::path(dir).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return make_error(ErrorCode::Internal, "cannot create data dir " + dir + ": " + std::strerror(errno));
    }
  }
  struct stat info {};
  if (::stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return make_error(ErrorCode::Internal, "data dir " + dir + " is not a directory");
  }
  if (info.st_mode & 077) {
    spdlog::warn("data dir {} is readable by other users (mode {:o}): chmod 700 it", dir, info.st_mode & 0777);
  }
  return {};
}

// Takes an exclusive lock on DIR/FILE for the life of the process, so two servers (or agents)
// never share a data dir: the second would adopt the first one's engines and corrupt its store.
// The descriptor is close-on-exec and never closed: the kernel releases the lock when the process
// ends, however it ends (an engine started meanwhile does not hold it).
Status lock_data_dir(const std::string& dir, const std::string& file, const std::string& who) {
  std::string path = dir + "/" + file;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::Internal, "cannot open " + path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int error = errno;
    char holder[32] = {};
    ssize_t got = ::pread(fd, holder, sizeof holder - 1, 0);
    ::close(fd);
    std::string pid = got > 0 ? std::string(holder, static_cast<size_t>(got)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    if (error == EWOULDBLOCK) {
      return make_error(ErrorCode::Conflict, fmt::format("data dir {} is in use by another nebula {} (pid {}); stop "
                                                         "it first or pass another --data-dir",
                                                         dir, who, pid.empty() ? "unknown" : pid));
    }
    return make_error(ErrorCode::Internal, "cannot lock " + path + ": " + std::strerror(error));
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    spdlog::warn("cannot write the pid into {}: {}", path, std::strerror(errno));
  }
  return {};
}

// The store's file is its owner's alone from its first byte; SQLite gives its -wal and -shm
// files the same mode.
Status make_private(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::Internal, "cannot open " + path + ": " + std::strerror(errno));
  ::fchmod(fd, 0600);
  ::close(fd);
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

// The control plane and gateway on one listener, running on one I/O thread.
class ServerRuntime {
 public:
  // Reports to (and, with signals, reads from) xtrace; null = off. Set before start().
  void set_xtrace(std::shared_ptr<xtrace::Client> client, const XtraceFlags& flags) {
    xtrace_ = std::move(client);
    xtrace_flags_ = flags;
  }

  Status start(const ServerFlags& flags) {
    if (auto prepared = prepare_data_dir(flags.data_dir); !prepared) return prepared;
    if (auto locked = lock_data_dir(flags.data_dir, "server.lock", "server"); !locked) return locked;
    auto address = parse_host_port(flags.listen);
    if (!address) return address.error();
    auth_ = flags.auth.empty() ? "none" : flags.auth;
    if (!is_loopback(address->host) && auth_ != "keys") {
      return make_error(ErrorCode::InvalidArgument, "refusing to listen on " + flags.listen +
                                                        " without authentication: pass --auth keys (or listen on "
                                                        "127.0.0.1)");
    }
    gateway::OriginOptions origin_options;
    origin_options.check_host = auth_ != "keys";
    origin_options.listen_host = address->host;
    origin_options.allowed_hosts = flags.allowed_hosts;
    origin_options.allowed_origins = flags.allowed_origins;
    if (auto valid = gateway::validate(origin_options); !valid) return valid.error();
    auto node_timeout = parse_duration(flags.node_timeout);
    if (!node_timeout) return node_timeout.error();
    std::string store_url = flags.store.empty() ? "sqlite://" + flags.data_dir + "/nebula.db" : flags.store;
    if (store_url.rfind("sqlite://", 0) == 0 && store_url.size() > 9) {
      if (auto made = make_private(store_url.substr(9)); !made) return made;
    }
    auto store = store::open(store_url);
    if (!store) return make_error(store.error().code, "--store: " + store.error().message);
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
        {&flags.queue_timeout, &gateway_options.queue_timeout},
        {&flags.load_scrape_interval, &gateway_options.load_scrape_interval}};
    for (auto [text, target] : durations) {
      auto duration = parse_duration(*text);
      if (!duration) return duration.error();
      *target = *duration;
    }
    gateway_options.max_queue = flags.max_queue;
    gateway_options.replica_capacity = flags.replica_capacity;
    gateway_options.access_log_path = flags.data_dir + "/access.log";
    auto limiter = make_limiter(flags.limits);
    if (!limiter) return limiter.error();
    gateway_options.limiter = *limiter;
    // One server on SQLite keeps them in a file beside its state; several on etcd share the
    // --limits Redis, if there is one.
    std::string responses_fallback =
        store_url.rfind("sqlite://", 0) == 0 ? "sqlite://" + flags.data_dir + "/responses.db" : flags.limits.url;
    auto responses = make_response_store(flags.responses, responses_fallback);
    if (!responses) return responses.error();
    gateway_options.responses = *responses;
    gateway_options.xtrace = xtrace_;
    gateway_options.xtrace_content = xtrace_ && xtrace_flags_.content;
    gateway_options.xtrace_signals = xtrace_ && xtrace_flags_.signals == "xtrace";
    gateway_ = std::make_unique<gateway::Gateway>(*store_, io_, gateway_options);
    if (auto started = gateway_->start(); !started) return started.error();
    if (auth_ == "keys") {
      auto admin = gateway_->auth().bootstrap_admin_key();
      if (!admin) return admin.error();
      if (!admin->empty()) {
        std::string path = flags.data_dir + "/admin.key";
        if (auto written = write_private_file(path, *admin + "\n"); !written) return written.error();
        std::cout << "Bootstrap admin key (shown once, also in " << path << "): " << *admin << "\n" << std::flush;
      }
    }
    // Every agent gets a node key, with or without --auth keys: it is how a restarted agent
    // proves a live node's name is its own, and how the agent knows the server calls it.
    options_.issue_node_credential = [this](const std::string& node) { return gateway_->auth().issue_node_key(node); };
    // A removed node's key is refused by this server from the moment it answers `nodes rm`.
    options_.on_node_key_revoked = [this](const std::string& id) { gateway_->auth().revoked_here(id); };
    options_.keys_required = auth_ == "keys";
    if (xtrace_ && xtrace_flags_.signals == "xtrace") {
      // The first placement after start has no answer yet (the query starts then): the nodes'
      // own reports break its ties.
      options_.gpu_utilization = [client = xtrace_](const std::string& node, int gpu) -> std::optional<double> {
        xtrace::Query query{"gpu_utilization", {{"node_id", node}}, "gpu_index"};
        client->watch("scheduler", query);
        return client->value("scheduler", query, std::to_string(gpu), std::chrono::system_clock::now());
      };
    }
    options_.is_leader = [this] { return !election_ || election_->is_leader(); };
    http::Router router;
    controlplane::add_api_routes(router, *resources_, io_, options_);
    gateway_->add_routes(router);
    // MCP over Streamable HTTP: any valid key opens a session; its tools call this server's API
    // with that key, so the API's scopes decide what they may do (docs/mcp.md).
    mcp::HttpOptions mcp_options;
    mcp_options.authorize = [this](const http::Request& request) {
      std::shared_ptr<const api::ApiKey> key;
      return gateway_->auth().listing_refusal(request, key);
    };
    mcp_options.base_url = [this] { return url_; };
    mcp::add_http_routes(router, io_, std::move(mcp_options));
    webui::add_routes(router);
    router.set_guard([this](const http::Request& request) { return gateway_->auth().management_refusal(request); });
    auto drain_timeout = parse_duration(flags.drain_timeout);
    if (!drain_timeout)
      return make_error(ErrorCode::InvalidArgument, "--drain-timeout: " + drain_timeout.error().message);
    drain_timeout_ = *drain_timeout;
    http::ServerOptions server_options;
    // Each proxied stream holds two descriptors (the client's and the engine's); keep 96 for the
    // store, logs, the agent and clients being refused.
    uint64_t descriptors = descriptor_limit().soft;
    server_options.max_connections =
        flags.max_connections > 0
            ? flags.max_connections
            : static_cast<size_t>(descriptors > 192 ? (descriptors - 96) / 2 : descriptors / 4 + 1);
    server_ =
        std::make_unique<http::Server>(io_, gateway::guard_origins(std::move(router), origin_options), server_options);
    auto port = server_->listen(*address);
    if (!port) return port.error();
    std::string host = address->host == "0.0.0.0" ? "127.0.0.1" : address->host;
    url_ = "http://" + HostPort{host, *port}.to_string();
    // A draining replica stops as soon as this gateway has no request in flight to it.
    options_.replica_drained = [this](const std::string& replica) { return gateway_->table().drained(replica); };
    if (store_url.rfind("etcd://", 0) == 0) {
      // Several servers may share the cluster: all serve the API and the gateway, only the leader
      // runs the controller (and with it the scheduler).
      store::LeaderElection::Options election;
      election.identity = url_ + " pid " + std::to_string(getpid());
      election_ = std::make_unique<store::LeaderElection>(
          *store_, election,
          [this] {
            controller_ = std::make_unique<controlplane::Controller>(*resources_, options_);
            controller_->start();
          },
          [this] {
            if (controller_) controller_->stop();
            controller_.reset();
          });
      election_->start();
    } else {
      controller_ = std::make_unique<controlplane::Controller>(*resources_, options_);
      controller_->start();
    }
    thread_ = std::thread([this] { io_.run(); });
    // The options may hold a password: not logged.
    spdlog::info("nebula server listening on {} (store {}, at most {} connections)", url_,
                 store_url.substr(0, store_url.find('?')), server_->max_connections());
    return {};
  }

  // Stops accepting and lets the requests in flight finish, up to --drain-timeout.
  void drain() {
    if (!server_) return;
    spdlog::info("draining: waiting up to {} s for requests in flight",
                 std::chrono::duration_cast<std::chrono::seconds>(drain_timeout_).count());
    size_t cut = server_->drain(drain_timeout_);
    if (cut > 0) spdlog::warn("drain timeout: cut {} connection{} still busy", cut, cut == 1 ? "" : "s");
  }

  void stop() {
    if (election_) election_->stop();  // steps down: the next server need not wait for the lease
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
  std::unique_ptr<store::Store> store_;
  controlplane::Options options_;
  std::unique_ptr<controlplane::Resources> resources_;
  std::unique_ptr<gateway::Gateway> gateway_;
  std::unique_ptr<http::Server> server_;
  std::unique_ptr<controlplane::Controller> controller_;
  std::unique_ptr<store::LeaderElection> election_;  // on etcd only; it starts and stops controller_
  std::thread thread_;
  std::string url_;
  std::string auth_;
  std::chrono::milliseconds drain_timeout_{30'000};
  std::shared_ptr<xtrace::Client> xtrace_;
  XtraceFlags xtrace_flags_;
};

// --reserved-vram: "" leaves the node's setting as it is (-1). More than the smallest GPU of the
// node would leave no room anywhere, so it is refused (the GPUs are probed as the agent will).
Result<int64_t> parse_reserved_vram(const std::string& text, const std::string& sim_gpus) {
  if (text.empty()) return int64_t{-1};
  auto mb = parse_size_mb(text);
  if (!mb) return make_error(ErrorCode::InvalidArgument, "--reserved-vram: " + mb.error().message);
  auto probe = agent::make_gpu_probe(sim_gpus);
  if (!probe) return *mb;  // a bad --sim-gpus is the agent's to report
  auto gpus = (*probe)->probe();
  if (!gpus) return *mb;
  for (const auto& gpu : *gpus) {
    if (gpu.memory_total_mb > 0 && *mb >= gpu.memory_total_mb) {
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("--reserved-vram {} is not less than the memory of GPU {} ({}, {:.1f} GiB)", text,
                                    gpu.index, gpu.name, static_cast<double>(gpu.memory_total_mb) / 1024.0));
    }
  }
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
  std::string probe_period;
  std::string probe_timeout;
  int probe_failures = 0;
  std::string log_max_size;
  int log_keep = 0;
  std::string deleted_log_retention;
  int deleted_logs_keep = -1;
  std::vector<std::string> engine_binaries;  // NAME=BINARY (image for docker)
  std::string hf_endpoint;
  std::string hf_token;
  std::string model_cache;
  std::string model_cache_limit;
  bool stop_engines_on_exit = false;
};

void add_agent_flags(CLI::App& app, AgentFlags& flags, bool with_config) {
  if (with_config) app.add_option("--config", flags.config, "agent.yaml with these settings (flags win)");
  app.add_option("--restart-backoff", flags.restart_backoff, "First restart delay after an engine crash (default 10s)")
      ->check(duration_value(1));
  app.add_option("--max-restart-backoff", flags.max_restart_backoff, "Cap of the doubling restart delay (default 5m)")
      ->check(duration_value(1));
  app.add_option("--startup-timeout", flags.startup_timeout,
                 "How long an engine may take to be ready (default: sim 2m, real engines 20m)")
      ->check(duration_value(1));
  app.add_option("--stop-grace", flags.stop_grace, "SIGTERM to SIGKILL delay when stopping an engine (default 10s)")
      ->check(duration_value());
  app.add_option("--heartbeat-interval", flags.heartbeat_interval, "How often the agent reports (default 2s)")
      ->check(duration_value(1));
  app.add_option("--probe-period", flags.probe_period, "How often a Ready engine's health is probed (default 5s)")
      ->check(duration_value(1));
  app.add_option("--probe-timeout", flags.probe_timeout,
                 "How long a health probe may take before it counts as failed (default 2s)")
      ->check(duration_value(1));
  app.add_option("--probe-failures", flags.probe_failures,
                 "Failed health probes in a row that restart an engine (default 3; the first takes it out of routing)")
      ->check(whole_number(1, 100));
  app.add_option("--log-max-size", flags.log_max_size, "Engine log size that triggers rotation (default 64MB)")
      ->check(size_value());
  app.add_option("--log-keep", flags.log_keep, "Rotated engine logs kept per replica (default 3)")
      ->check(whole_number(1, 1000));
  app.add_option("--deleted-log-retention", flags.deleted_log_retention,
                 "How long the logs of a deleted replica are kept (default 1h)")
      ->check(duration_value());
  app.add_option("--deleted-logs-keep", flags.deleted_logs_keep,
                 "Deleted replicas whose logs are kept at most, newest first (default 20)")
      ->check(whole_number(0, 100000));
  app.add_option("--engine-binary", flags.engine_binaries,
                 "NAME=BINARY: the binary (or docker image) to run for an engine; repeatable");
  app.add_option("--hf-endpoint", flags.hf_endpoint, "Hugging Face compatible endpoint for model downloads");
  app.add_option("--hf-token", flags.hf_token, "Token for the model endpoint (default: $HF_TOKEN)");
  app.add_option("--model-cache", flags.model_cache, "Where downloaded models live (default <data-dir>/models)");
  app.add_option("--model-cache-limit", flags.model_cache_limit, "Size limit of the model cache, e.g. 500GB")
      ->check(size_value());
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
// stop_grace, heartbeat_interval, probe_period, probe_timeout, probe_failures, log_max_size, log_keep,
// deleted_log_retention, deleted_logs_keep, hf_endpoint, hf_token, model_cache, model_cache_limit,
// engines: {NAME: {binary, args: [...], env: {...}, command: [...]}}.
Status read_agent_config(const std::string& path, json& config) {
  auto text = read_input_file(path);
  if (!text) return text.error();
  auto parsed = yaml_to_json(*text);
  if (!parsed) return make_error(ErrorCode::InvalidArgument, path + ": " + parsed.error().message);
  if (parsed->is_null()) parsed = json::object();
  if (!parsed->is_object()) return make_error(ErrorCode::InvalidArgument, path + ": expected a mapping of settings");
  static const std::set<std::string> known = {"server",
                                              "token",
                                              "name",
                                              "listen",
                                              "sim_gpus",
                                              "data_dir",
                                              "reserved_vram",
                                              "restart_backoff",
                                              "max_restart_backoff",
                                              "startup_timeout",
                                              "stop_grace",
                                              "heartbeat_interval",
                                              "probe_period",
                                              "probe_timeout",
                                              "probe_failures",
                                              "log_max_size",
                                              "log_keep",
                                              "hf_endpoint",
                                              "hf_token",
                                              "model_cache",
                                              "model_cache_limit",
                                              "engines",
                                              "deleted_log_retention",
                                              "deleted_logs_keep"};
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
  text(flags.probe_period, "probe_period");
  text(flags.probe_timeout, "probe_timeout");
  if (flags.probe_failures == 0 && config.contains("probe_failures") && config["probe_failures"].is_number_integer()) {
    flags.probe_failures = config["probe_failures"].get<int>();
  }
  text(flags.log_max_size, "log_max_size");
  text(flags.hf_endpoint, "hf_endpoint");
  text(flags.hf_token, "hf_token");
  text(flags.model_cache, "model_cache");
  text(flags.model_cache_limit, "model_cache_limit");
  text(flags.deleted_log_retention, "deleted_log_retention");
  if (flags.deleted_logs_keep == -1 && config.contains("deleted_logs_keep") &&
      config["deleted_logs_keep"].is_number_integer()) {
    flags.deleted_logs_keep = config["deleted_logs_keep"].get<int>();
  }
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
  if (auto done = apply_duration("--probe-period", flags.probe_period, options.probe_period); !done) return done;
  if (auto done = apply_duration("--probe-timeout", flags.probe_timeout, options.probe_timeout); !done) return done;
  if (options.probe_period.count() <= 0 || options.probe_timeout.count() <= 0) {
    return make_error(ErrorCode::InvalidArgument, "--probe-period and --probe-timeout must be positive");
  }
  if (flags.probe_failures < 0) return make_error(ErrorCode::InvalidArgument, "--probe-failures must be 1 or more");
  if (flags.probe_failures > 0) options.probe_failures = flags.probe_failures;
  if (!flags.log_max_size.empty()) {
    auto mb = parse_size_mb(flags.log_max_size);
    if (!mb || *mb <= 0) return make_error(ErrorCode::InvalidArgument, "--log-max-size: expected a size like 64MB");
    options.log_max_bytes = *mb << 20;
  }
  if (auto done = apply_duration("--deleted-log-retention", flags.deleted_log_retention, options.deleted_log_retention);
      !done)
    return done;
  if (flags.deleted_logs_keep < -1)
    return make_error(ErrorCode::InvalidArgument, "--deleted-logs-keep must be 0 or more");
  if (flags.deleted_logs_keep >= 0) options.deleted_logs_keep = flags.deleted_logs_keep;
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
  XtraceFlags xtrace_flags;
  add_xtrace_flags(app, xtrace_flags, true);
  if (auto exit = parse(app, argc, argv)) return *exit;
  auto xtrace_client = make_xtrace_client(xtrace_flags, true);
  if (!xtrace_client) return usage_error(app, xtrace_client.error().message);
  init_logging(flags.log_level);
  flags.data_dir = expand_home(flags.data_dir);
  raise_descriptor_limit();
  auto signals = block_stop_signals();
  ServerRuntime runtime;
  runtime.set_xtrace(*xtrace_client, xtrace_flags);
  if (auto started = runtime.start(flags); !started) return fail(started.error().message);
  std::cout << "Nebula server: " << runtime.url() << "\n"
            << "Join an agent: nebula agent --server " << runtime.url() << " --token " << runtime.join_token() << "\n"
            << std::flush;
  wait_for_stop_signal(signals);
  runtime.drain();
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
  app.add_option("--reserved-vram", reserved_vram, "VRAM the scheduler leaves free on each local GPU, e.g. 2GB")
      ->check(size_value());
  bool exit_with_parent = false;
  app.add_flag("--exit-with-parent", exit_with_parent,
               "Shut down (stopping every engine) when the process that started this one dies; for tests");
  AgentFlags agent_flags;
  add_agent_flags(app, agent_flags, false);
  app.add_option("--demo", demo_model,
                 "Deploy a demo deployment named 'demo' serving this model on the simulator, if absent");
  XtraceFlags xtrace_flags;
  add_xtrace_flags(app, xtrace_flags, true);
  if (auto exit = parse(app, argc, argv)) return *exit;
  auto reserved_mb = parse_reserved_vram(reserved_vram, sim_gpus);
  if (!reserved_mb) return usage_error(app, reserved_mb.error().message);
  auto xtrace_client = make_xtrace_client(xtrace_flags, true);
  if (!xtrace_client) return usage_error(app, xtrace_client.error().message);
  init_logging(flags.log_level);
  flags.data_dir = expand_home(flags.data_dir);
  raise_descriptor_limit();
  auto signals = block_stop_signals();
  // The kernel sends SIGTERM when the parent dies; sigwait below takes it like any stop.
  if (exit_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() == 1)) {
    return fail("--exit-with-parent: the parent is already gone");
  }

  ServerRuntime runtime;
  runtime.set_xtrace(*xtrace_client, xtrace_flags);
  if (auto started = runtime.start(flags); !started) return fail(started.error().message);
  if (auto locked = lock_data_dir(flags.data_dir, "agent.lock", "agent"); !locked) {
    runtime.stop();
    return fail(locked.error().message);
  }
  agent::Options agent_options;
  agent_options.server_url = runtime.url();
  agent_options.token = runtime.join_token();
  agent_options.name = node_name;
  agent_options.sim_gpus = sim_gpus;
  agent_options.listen = HostPort{"127.0.0.1", 0};
  agent_options.data_dir = flags.data_dir;
  agent_options.reserved_vram_mb = *reserved_mb;
  agent_options.stop_engines_on_exit = true;
  agent_options.xtrace = *xtrace_client;  // one client, one thread, for the gateway and the agent
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
            << "  Dashboard:       " << runtime.url() << "/ui/\n"
            << "  OpenAI API:      " << runtime.url() << "/v1\n"
            << "  Management API:  " << runtime.url() << "/api/v1\n"
            << "  Health:          " << runtime.url() << "/healthz\n"
            << "  Data dir:        " << flags.data_dir << "\n"
            << "  Auth:            " << (runtime.auth() == "keys" ? "API keys" : "none (loopback only)") << "\n"
            << "  Join token:      " << runtime.join_token() << "\n"
            << "Try: nebula ls    curl " << runtime.url()
            << "/v1/chat/completions -d "
               "'{\"model\":\"demo\",\"max_tokens\":32,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'\n"
            << "Ctrl-C stops Nebula and every engine it started.\n\n"
            << std::flush;
  wait_for_stop_signal(signals);
  // Streams in flight finish on engines that still run; then the engines stop.
  runtime.drain();
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
  app.add_option("--server", server, "Server URL, or several comma-separated (or `server:` in agent.yaml)");
  app.add_option("--token", token, "Join token from `nebula token create` or the server's start message");
  app.add_option("--name", options.name, "Node name (default: the host name)");
  app.add_option("--listen", listen, "Address for the agent's logs, health and metrics (default 127.0.0.1:9091)");
  app.add_option("--sim-gpus", options.sim_gpus, "Simulated GPUs, e.g. 2xH100-80GB (default: discover real GPUs)");
  app.add_option("--reserved-vram", reserved_vram, "VRAM the scheduler leaves free on each GPU, e.g. 2GB")
      ->check(size_value());
  app.add_option("--data-dir", data_dir, "agent.db, engine logs and the model cache (default ~/.nebula)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn or error")
      ->check(log_level_value())
      ->capture_default_str();
  add_agent_flags(app, flags, true);
  app.add_flag("--stop-engines-on-exit", flags.stop_engines_on_exit,
               "Stop the engines when the agent stops (default: leave them for the next agent to re-adopt)");
  app.add_flag("--exit-with-parent", exit_with_parent, "Stop when the process that started this one dies; for tests");
  XtraceFlags xtrace_flags;
  add_xtrace_flags(app, xtrace_flags, false);
  if (auto exit = parse(app, argc, argv)) return *exit;
  auto xtrace_client = make_xtrace_client(xtrace_flags, false);
  if (!xtrace_client) return usage_error(app, xtrace_client.error().message);
  options.xtrace = *xtrace_client;
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
  auto reserved_mb = parse_reserved_vram(reserved_vram, options.sim_gpus);
  if (!reserved_mb) return usage_error(app, reserved_mb.error().message);
  options.reserved_vram_mb = *reserved_mb;
  options.listen = *address;
  options.data_dir = expand_home(data_dir);
  if (auto applied = apply_agent_flags(flags, config, options); !applied) return fail(applied.error().message);
  if (auto servers = parse_server_list(options.server_url); !servers) return usage_error(app, servers.error().message);
  if (auto prepared = prepare_data_dir(options.data_dir); !prepared) return fail(prepared.error().message);
  if (auto locked = lock_data_dir(options.data_dir, "agent.lock", "agent"); !locked)
    return fail(locked.error().message);
  raise_descriptor_limit();
  auto signals = block_stop_signals();
  // SIGUSR1 (blocked like the stop signals, so sigwait takes it) tells this thread that the agent
  // gave up: its join token was refused.
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (exit_with_parent && (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() == 1)) {
    return fail("--exit-with-parent: the parent is already gone");
  }
  auto fatal = std::make_shared<std::promise<std::string>>();
  auto fatal_message = fatal->get_future();
  options.on_fatal = [fatal](const std::string& message) {
    fatal->set_value(message);
    ::kill(::getpid(), SIGUSR1);
  };
  agent::Agent node_agent(options);
  if (auto started = node_agent.start(); !started) return fail(started.error().message);
  std::cout << "Nebula agent " << node_agent.url() << " joining " << options.server_url << "\n" << std::flush;
  int received = 0;
  sigwait(&signals, &received);
  if (received == SIGUSR1) {
    node_agent.stop();
    std::cerr << "error: " << fatal_message.get() << "\n";
    return 2;
  }
  spdlog::info("received {}, shutting down", strsignal(received));
  node_agent.stop();
  return 0;
}

}  // namespace nebula::cli
