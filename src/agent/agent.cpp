#include "agent/agent.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <set>

#include "agent/agent_db.h"
#include "agent/container_runtime.h"
#include "agent/gpu_probe.h"
#include "agent/model_cache.h"
#include "agent/node_key.h"
#include "agent/supervisor.h"
#include "common/json.h"
#include "common/prometheus.h"
#include "http/http.h"
#include "xtrace/xtrace.h"

namespace nebula::agent {

namespace {
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string self_executable() {
  std::error_code ec;
  auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("nebula") : path.string();
}

std::string host_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof buffer - 1) != 0) return "node";
  std::string name;
  for (char c : std::string(buffer)) {
    char lower = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    name.push_back((std::isalnum(static_cast<unsigned char>(lower))) ? lower : '-');
  }
  return name.empty() ? "node" : name.substr(0, 63);
}

awaitable<void> sleep_for(asio::io_context& io, milliseconds duration) {
  asio::steady_timer timer(io, duration);
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

// Logs and metrics go to the server only (agent/node_key.h).
http::Response unauthorized() {
  return http::error_json(401, "the agent serves logs and metrics to its server only: missing or wrong credential",
                          "unauthorized");
}

http::Headers text_headers() {
  return {{"Content-Type", "text/plain; charset=utf-8"}};
}

// The message of an error answer ({"error":{"message":...}} or plain text), on one line.
std::string error_message_of(const std::string& body) {
  std::string message = body;
  if (auto parsed = parse_json(body); parsed && parsed->is_object() && parsed->contains("error")) {
    const json& error = (*parsed)["error"];
    if (error.is_object() && error.contains("message") && error["message"].is_string()) {
      message = error["message"].get<std::string>();
    } else if (error.is_string()) {
      message = error.get<std::string>();
    }
  }
  std::replace(message.begin(), message.end(), '\n', ' ');
  if (message.size() > 200) message = message.substr(0, 200) + "...";
  return message;
}

// Delays between attempts to reach the server: doubling from `first` up to `max`, each drawn at
// random from the upper half of its step so that agents restarted together do not retry together.
class JoinBackoff {
 public:
  JoinBackoff(milliseconds first, milliseconds max) : step_(first), max_(max), random_(std::random_device{}()) {}
  milliseconds next() {
    milliseconds step = std::min(step_, max_);
    step_ = std::min(step_ * 2, max_);
    std::uniform_int_distribution<int64_t> half(step.count() / 2, std::max<int64_t>(step.count(), 1));
    return milliseconds(half(random_));
  }

 private:
  milliseconds step_;
  milliseconds max_;
  std::mt19937_64 random_;
};

SupervisorOptions supervisor_options(const Options& options) {
  SupervisorOptions supervision;
  supervision.restart_backoff = options.restart_backoff;
  supervision.max_restart_backoff = options.max_restart_backoff;
  supervision.stable_after = options.stable_after;
  supervision.stop_grace = options.stop_grace;
  supervision.probe_period = options.probe_period;
  supervision.probe_timeout = options.probe_timeout;
  supervision.probe_threshold = options.probe_failures;
  supervision.log_max_bytes = options.log_max_bytes;
  supervision.log_keep = options.log_keep;
  return supervision;
}

http::Response container_logs_response(const Result<std::string>& logs) {
  if (!logs) return http::error_json(502, "docker logs: " + logs.error().message, "upstream_error");
  return http::Response::text(200, *logs);
}
}  // namespace

// A model download running on a thread of its own; the agent's thread polls it.
struct Download {
  std::atomic<bool> cancel{false};
  std::mutex mutex;
  DownloadProgress progress;                // guarded by mutex
  std::optional<Result<std::string>> done;  // guarded by mutex; the local path or why not
  std::thread thread;
};

struct Agent::Impl final : SupervisorHost {
  Impl(Options options, std::unique_ptr<ProcessLauncher> launcher)
      : options(std::move(options)), launcher_(std::move(launcher)), client_(io), work(io.get_executor()) {
    supervision_ = supervisor_options(this->options);
  }

  Options options;
  SupervisorOptions supervision_;
  std::unique_ptr<ProcessLauncher> launcher_;
  std::unique_ptr<AgentDb> db;
  asio::io_context io;
  http::Client client_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<http::Server> server;
  std::thread thread;
  std::vector<api::Gpu> gpus;  // as the probe saw them last
  std::unique_ptr<GpuProbe> gpu_probe;
  std::thread probe_thread;  // re-probes real GPUs off the agent's thread
  std::mutex probe_mutex;
  std::condition_variable probe_wake;
  bool probe_stopping = false;  // guarded by probe_mutex
  std::unique_ptr<ModelCache> models;
  std::shared_ptr<ContainerRuntime> containers_;  // created with the first docker replica
  // Complete in the cache, "org/name@rev" (or ".../FILE"), for the scheduler: listed on the
  // background thread every 10 s, and at once after a download (relist_models).
  std::vector<std::string> cached_models;
  bool relist_models = true;                         // guarded by probe_mutex
  std::vector<std::shared_ptr<Download>> downloads;  // every download started, joined at stop
  std::map<std::string, engines::Availability> engines_found;
  // One supervisor per replica, each running as a coroutine of its own. Agent thread only.
  std::map<std::string, std::unique_ptr<Supervisor>> replicas;
  std::set<std::string> supervising;  // replicas whose supervisor's run() was started
  // Sends the next heartbeat at once when cancelled (an engine started or ended).
  std::unique_ptr<asio::steady_timer> heartbeat_timer;
  std::string url;
  bool joined = false;
  bool listed = false;     // the first listing of replicas arrived: adopted engines can be judged
  std::string credential;  // a node-scoped API key from the join, when the server requires keys
  bool stopping = false;
  bool refused = false;           // the server refused the join token: the agent has given up
  std::string heartbeat_problem;  // why the last heartbeat failed, "" when it went through

  // options.server_url may name several servers (sharing one etcd), comma-separated: requests go
  // to one and move on to the next when it cannot be reached.
  mutable std::vector<std::string> servers;
  size_t server_index = 0;
  const std::string& server_url() const {
    if (servers.empty()) {
      size_t start = 0;
      while (start <= options.server_url.size()) {
        size_t comma = options.server_url.find(',', start);
        if (comma == std::string::npos) comma = options.server_url.size();
        std::string url = options.server_url.substr(start, comma - start);
        while (!url.empty() && url.back() == '/') url.pop_back();
        if (!url.empty()) servers.push_back(url);
        start = comma + 1;
      }
      if (servers.empty()) servers.push_back(options.server_url);
    }
    return servers[server_index % servers.size()];
  }
  void server_unreachable() {
    if (servers.size() < 2) return;
    std::string from = server_url();
    ++server_index;
    spdlog::warn("agent: {} cannot be reached; trying {}", from, server_url());
  }
  std::string api(const std::string& path) const { return server_url() + "/api/v1" + path; }
  // Files a driver writes for the replica's engine (llama-server's preset file); removed with it.
  std::string work_dir(const std::string& replica) const { return options.data_dir + "/work/" + replica; }

  awaitable<bool> join();
  awaitable<void> join_loop();
  awaitable<void> heartbeat_loop();
  awaitable<void> watch_loop();
  // The supervisor of a replica of this node, made on first sight.
  Supervisor& supervisor(const std::string& name);
  // Starts the supervisor's coroutine (once the first listing arrived); it removes the supervisor
  // and the replica's files when the replica is gone.
  void supervise(const std::string& name);
  awaitable<void> supervise_until_gone(std::string name);
  void adopt_engines();
  void start_gpu_probe();
  bool needs_download(const api::ReplicaSpec& spec) const;
  void detect_engines();
  json node_status() const;
  // The heartbeat's figures in xtrace's names, labels and units (docs/xtrace.md).
  void report_to_xtrace(const json& status);

  // SupervisorHost.
  const SupervisorOptions& supervision() const override { return supervision_; }
  const nebula::Clock& clock() const override { return SystemClock::instance(); }
  ProcessLauncher& launcher() override { return *launcher_; }
  http::Client& client() override { return client_; }
  const engines::EngineDriver* driver(const std::string& engine) const override { return engines::find_driver(engine); }
  engines::LaunchContext launch_context(const Supervisor& replica, int port) const override;
  std::string engine_unavailable(const std::string& engine) const override;
  milliseconds startup_timeout(const std::string& engine) const override;
  bool model_ready(Supervisor& replica) override;
  void cancel_download(Supervisor& replica) override;
  ContainerRuntime& containers() override;
  void save_record(const Supervisor& replica) override;
  void remove_record(const std::string& replica) override {
    if (db) (void)db->remove(replica);
  }
  std::string log_path(const std::string& replica) const override {
    return options.data_dir + "/logs/" + replica + ".log";
  }
  awaitable<bool> put_status(const std::string& replica, const api::ReplicaStatus& status) override;
  awaitable<bool> delete_replica(const std::string& replica) override;
  void engines_changed() override {
    if (heartbeat_timer) heartbeat_timer->cancel();
  }

  std::string metrics_text() const;
  // The server's answer to a join carries the node's key: kept on disk for the next agent.
  void take_credential(const std::string& body) {
    auto answer = parse_json(body);
    if (answer && answer->is_object()) credential = answer->value("credential", "");
    if (credential.empty()) return;
    if (auto saved = save_node_key(options.data_dir, credential); !saved)
      spdlog::error("agent: {}", saved.error().message);
  }
  http::Headers server_headers(bool json_body) const {
    http::Headers headers;
    if (json_body) headers.push_back({"Content-Type", "application/json"});
    if (!credential.empty()) headers.push_back({"Authorization", "Bearer " + credential});
    return headers;
  }
  std::string join_body() const {
    json body = {{"token", options.token}, {"name", options.name}};
    if (options.reserved_vram_mb >= 0) body["reserved_vram_mb"] = options.reserved_vram_mb;
    return body.dump();
  }
  void stop_all_engines();
  http::Router routes();
};

milliseconds Agent::Impl::startup_timeout(const std::string& engine) const {
  if (auto it = options.engine_startup_timeouts.find(engine); it != options.engine_startup_timeouts.end()) {
    return it->second;
  }
  if (options.startup_timeout.count() > 0) return options.startup_timeout;
  return engine == "sim" ? milliseconds(120'000) : milliseconds(1'200'000);
}

// Which engines can run here: each driver looks for its binary (or socket) and version.
void Agent::Impl::detect_engines() {
  for (const auto& name : engines::driver_names()) {
    const auto* driver = engines::find_driver(name);
    if (!driver) continue;
    engines::EngineConfig config = options.engines.count(name) ? options.engines.at(name) : engines::EngineConfig{};
    if (name == "sim" && config.binary.empty()) config.binary = options.nebula_binary;
    auto found = driver->detect(config);
    if (found.available) {
      spdlog::info("agent: engine {} available{}{}", name,
                   found.version.empty() ? "" : " (version " + found.version + ")",
                   found.detail.empty() ? "" : ": " + found.detail);
    } else {
      spdlog::debug("agent: engine {} not available: {}", name, found.detail);
    }
    engines_found[name] = found;
  }
}

// Engines an earlier agent started and that still run are taken over as they are; the first
// listing of replicas then decides whether they are still wanted.
void Agent::Impl::adopt_engines() {
  auto records = db->all();
  if (!records) {
    spdlog::error("agent: {}", records.error().message);
    return;
  }
  for (const auto& record : *records) {
    Supervisor::Adopted adopted;
    adopted.engine = record.engine;
    adopted.pid = record.pid;
    adopted.start_time = record.start_time;
    adopted.port = record.port;
    adopted.endpoint = record.endpoint;
    adopted.restarts = record.restarts;
    adopted.plan_version = record.plan_version;
    adopted.container_id = record.container_id;
    Supervisor& replica = supervisor(record.replica);
    replica.adopt(adopted);
    if (!replica.running()) (void)db->remove(record.replica);
  }
}

Supervisor& Agent::Impl::supervisor(const std::string& name) {
  auto& slot = replicas[name];
  if (!slot) slot = std::make_unique<Supervisor>(*this, io, name);
  return *slot;
}

void Agent::Impl::supervise(const std::string& name) {
  if (!listed || stopping || !replicas.count(name) || !supervising.insert(name).second) return;
  asio::co_spawn(io, supervise_until_gone(name), asio::detached);
}

awaitable<void> Agent::Impl::supervise_until_gone(std::string name) {
  co_await replicas.at(name)->run();
  if (stopping) co_return;
  supervising.erase(name);
  auto it = replicas.find(name);
  if (it == replicas.end() || it->second->phase() != Supervisor::Phase::Gone) co_return;
  // Everything the replica held goes with it: pooled connections to its engine, its work dir, and
  // (past the retention) its logs.
  if (auto endpoint = http::Url::parse(it->second->status().endpoint)) client_.close_idle(endpoint->origin());
  replicas.erase(it);
  std::error_code ignored;
  std::filesystem::remove_all(work_dir(name), ignored);
  std::set<std::string> live;
  for (const auto& [replica, supervisor] : replicas) live.insert(replica);
  prune_replica_logs(options.data_dir + "/logs", live, options.deleted_log_retention,
                     static_cast<size_t>(std::max(0, options.deleted_logs_keep)));
}

awaitable<bool> Agent::Impl::put_status(const std::string& replica, const api::ReplicaStatus& status) {
  auto response = co_await client_.request("PUT", api("/replicas/" + replica + "/status"), api::to_json(status).dump(),
                                           server_headers(true), milliseconds(5000));
  co_return response && (response->status == 200 || response->status == 404);
}

awaitable<bool> Agent::Impl::delete_replica(const std::string& replica) {
  auto removed =
      co_await client_.request("DELETE", api("/replicas/" + replica), "", server_headers(false), milliseconds(5000));
  co_return removed && (removed->status == 200 || removed->status == 404);
}

std::string Agent::Impl::engine_unavailable(const std::string& engine) const {
  auto available = engines_found.find(engine);
  if (engines::find_driver(engine) && available != engines_found.end() && available->second.available) return "";
  std::string why = "engine " + engine + " is not available on this node";
  if (available != engines_found.end() && !available->second.detail.empty()) why += ": " + available->second.detail;
  return why;
}

json Agent::Impl::node_status() const {
  api::NodeStatus status;
  status.gpus = gpus;
  status.gpu_probe = gpu_probe ? gpu_probe->name() : "none";
  if (!options.sim_gpus.empty()) {
    // Simulated GPUs report the memory their running engines were given.
    for (auto& gpu : status.gpus) {
      for (const auto& [name, replica] : replicas) {
        const auto& spec = replica->desired().spec;
        // A sleeping engine gave its GPU memory back (level 1 keeps weights in CPU memory).
        if (!replica->running() || spec.gpus.empty() || replica->status().phase == api::phase::kSleeping) continue;
        for (int index : spec.gpus) {
          if (index == gpu.index) gpu.memory_used_mb += spec.vram_mb / static_cast<int64_t>(spec.gpus.size());
        }
      }
    }
  }
  for (const auto& [name, found] : engines_found) {
    if (!found.available) continue;
    status.engines.push_back(name);
    if (!found.version.empty()) status.engine_versions[name] = found.version;
  }
  status.models = cached_models;
  status.agent_url = url;
  status.ready = true;
  return api::to_json(status);
}

void Agent::Impl::report_to_xtrace(const json& status) {
  auto now = std::chrono::system_clock::now();
  std::vector<xtrace::Metric> metrics;
  struct GpuMetric {
    const char* name;
    const char* field;  // in the node status
  };
  // Percent, Celsius and MiB, as the node status has them and xtrace wants them.
  const GpuMetric gpu_metrics[] = {{"gpu_utilization", "utilization"},
                                   {"gpu_temperature", "temperature_c"},
                                   {"gpu_memory_used_mb", "memory_used_mb"},
                                   {"gpu_memory_total_mb", "memory_total_mb"}};
  if (status.contains("gpus") && status["gpus"].is_array()) {
    for (const auto& gpu : status["gpus"]) {
      std::string index = std::to_string(gpu.value("index", 0));
      for (const auto& metric : gpu_metrics) {
        if (!gpu.contains(metric.field) || !gpu[metric.field].is_number()) continue;
        metrics.push_back(
            {metric.name, {{"node_id", options.name}, {"gpu_index", index}}, gpu[metric.field].get<double>(), now});
      }
    }
  }
  struct EngineMetric {
    const char* name;
    std::optional<double> engines::Load::*field;
  };
  const EngineMetric engine_metrics[] = {{"kv_cache_usage", &engines::Load::kv_cache_usage},
                                         {"pending_requests", &engines::Load::waiting},
                                         {"prefix_cache_hit_rate", &engines::Load::prefix_hit_rate}};
  for (const auto& [name, replica] : replicas) {
    const auto& load = replica->load();
    if (!load || !replica->running()) continue;
    // model_uid is the deployment (what clients ask for), replica_id the replica's name.
    for (const auto& metric : engine_metrics) {
      const auto& value = (*load).*metric.field;
      if (!value || !std::isfinite(*value)) continue;
      metrics.push_back(
          {metric.name,
           {{"model_uid", replica->desired().spec.deployment}, {"replica_id", name}, {"node_id", options.name}},
           *value,
           now});
    }
  }
  if (!metrics.empty()) options.xtrace->report_metrics(std::move(metrics));
}

// Joins the server: true once joined, false when stopping or when the server refused the token
// (then on_fatal has been called and the agent does nothing more). Unreachable servers and other
// answers are retried with capped exponential backoff and jitter, logged once per kind of failure.
awaitable<bool> Agent::Impl::join() {
  const std::string body = join_body();
  // The key of an earlier agent of this node: presented, it lets this one rejoin a live node.
  if (credential.empty()) credential = load_node_key(options.data_dir);
  JoinBackoff backoff(options.join_retry_first, options.join_retry_max);
  std::string last_problem;
  while (!stopping && !refused) {
    auto response =
        co_await client_.request("POST", api("/nodes/join"), body, server_headers(true), milliseconds(5000));
    if (response && response->status == 200) {
      take_credential(response->body);
      if (!last_problem.empty()) spdlog::info("agent: reached {} again", options.server_url);
      co_return true;
    }
    if (response && (response->status == 401 || response->status == 403)) {
      refused = true;
      std::string message = fmt::format(
          "the server at {} refused the join token (HTTP {}: {}); get a valid one with `nebula token create`",
          options.server_url, response->status, error_message_of(response->body));
      if (options.on_fatal) {
        options.on_fatal(message);
      } else {
        spdlog::error("agent: {}", message);
      }
      co_return false;
    }
    // The state is the kind of failure (unreachable, or the HTTP status), not its exact words:
    // a refused connection and a reset one are the same news.
    std::string problem = response ? fmt::format("HTTP {}", response->status) : "unreachable";
    if (!response) server_unreachable();
    milliseconds delay = backoff.next();
    if (problem != last_problem) {
      std::string detail = response ? error_message_of(response->body) : response.error().message;
      spdlog::warn(
          "agent: cannot join {}: {}: {}; retrying with backoff (up to {} s apart), logged again if it changes",
          options.server_url, problem, detail,
          std::chrono::duration_cast<std::chrono::seconds>(options.join_retry_max).count());
      last_problem = problem;
    }
    co_await sleep_for(io, delay);
  }
  co_return false;
}

awaitable<void> Agent::Impl::join_loop() {
  // g++ 12 miscompiles a co_await inside an if condition (SIGILL): the result is a named local.
  bool joined_now = co_await join();
  if (!joined_now) co_return;
  joined = true;
  spdlog::info("agent: node {} joined {}", options.name, options.server_url);
  asio::co_spawn(io, heartbeat_loop(), asio::detached);
  asio::co_spawn(io, watch_loop(), asio::detached);
}

awaitable<void> Agent::Impl::heartbeat_loop() {
  heartbeat_timer = std::make_unique<asio::steady_timer>(io);
  while (!stopping) {
    json status = node_status();
    if (options.xtrace) report_to_xtrace(status);
    auto response = co_await client_.request("PUT", api("/nodes/" + options.name + "/status"), status.dump(),
                                             server_headers(true), milliseconds(5000));
    if (response && response->status == 404) {
      // The Node was deleted while this agent runs: join again.
      spdlog::warn("agent: node {} is unknown to the server; rejoining", options.name);
      bool rejoined = co_await join();
      if (!rejoined) co_return;
      continue;
    }
    // Logged when the kind of failure (unreachable, an HTTP status) starts, changes or ends, not at
    // every heartbeat.
    std::string problem;
    if (!response) {
      problem = "unreachable";
      server_unreachable();
    } else if (response->status != 200) {
      problem = fmt::format("HTTP {}", response->status);
    }
    if (problem != heartbeat_problem) {
      if (problem.empty()) {
        spdlog::info("agent: heartbeats reach {} again", options.server_url);
      } else {
        spdlog::warn("agent: heartbeat failed: {}: {}", problem,
                     response ? error_message_of(response->body) : response.error().message);
      }
      heartbeat_problem = problem;
    }
    // Until the next interval, or at once when an engine starts or ends (a mode switch waits for
    // the GPU memory it frees).
    heartbeat_timer->expires_after(options.heartbeat_interval);
    boost::system::error_code cancelled;
    co_await heartbeat_timer->async_wait(asio::redirect_error(asio::use_awaitable, cancelled));
  }
}

awaitable<void> Agent::Impl::watch_loop() {
  while (!stopping) {
    // List, then watch from the listing's revision: level-triggered, so a broken stream (or one
    // the server cut off because this agent fell behind) just relists. The server sends only this
    // node's replicas (?node=), and each one once more as it moves away or is deleted.
    auto listing = co_await client_.request("GET", api("/replicas?node=" + options.name), "", server_headers(false),
                                            milliseconds(10000));
    if (!listing || listing->status != 200) {
      if (!listing) server_unreachable();
      co_await sleep_for(io, milliseconds(1000));
      continue;
    }
    auto document = parse_json(listing->body);
    if (!document || !document->is_object()) {
      co_await sleep_for(io, milliseconds(1000));
      continue;
    }
    std::set<std::string> seen;
    for (const auto& item : (*document)["items"]) {
      auto replica = api::replica_from_json(item);
      if (!replica || replica->spec.node != options.name) continue;
      seen.insert(replica->metadata.name);
      supervisor(replica->metadata.name).apply(*replica);
    }
    // Engines of replicas the server no longer places here (deleted, or moved elsewhere while
    // this node was away) are stale: they are stopped.
    for (auto& [name, replica] : replicas) {
      if (!seen.count(name)) replica->mark_deleted();
    }
    listed = true;
    for (auto& [name, replica] : replicas) supervise(name);
    int64_t revision = document->value("revision", int64_t{0});
    auto stream = co_await client_.open(
        "GET", api(fmt::format("/replicas?watch=1&node={}&revision={}", options.name, revision + 1)), "",
        server_headers(false), milliseconds(10000));
    if (!stream || (*stream)->status != 200) {
      co_await sleep_for(io, milliseconds(1000));
      continue;
    }
    std::string pending;
    while (!stopping) {
      auto piece = co_await (*stream)->read(milliseconds(45000));
      if (!piece || piece->empty()) break;
      pending += *piece;
      size_t newline;
      while ((newline = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, newline);
        pending.erase(0, newline + 1);
        if (line.empty()) continue;
        auto event = parse_json(line);
        if (!event || !event->is_object() || !event->contains("object")) continue;
        auto replica = api::replica_from_json((*event)["object"]);
        if (!replica) continue;
        bool moved_away = replica->spec.node != options.name && replicas.count(replica->metadata.name);
        if ((*event)["type"] == "DELETE" || moved_away) {
          auto it = replicas.find(replica->metadata.name);
          if (it != replicas.end()) it->second->mark_deleted();
        } else if (replica->spec.node == options.name) {
          supervisor(replica->metadata.name).apply(*replica);
          supervise(replica->metadata.name);
        }
      }
    }
    co_await sleep_for(io, milliseconds(200));
  }
}

namespace {
// What the node's model cache holds, as the scheduler matches it: whole repositories as
// "org/name@rev", single files fetched from one as "org/name@rev/FILE". Reads the disk.
std::vector<std::string> list_cached_models(const ModelCache& cache) {
  std::vector<std::string> found;
  for (const auto& model : cache.list()) {
    if (model.complete) {
      found.push_back(model.reference);
      continue;
    }
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(model.path, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (!it->is_regular_file() || it->path().extension() == ".part") continue;
      found.push_back(model.reference + "/" + std::filesystem::relative(it->path(), model.path).generic_string());
    }
  }
  return found;
}
}  // namespace

// The disk and the GPUs are read on a thread of their own, never on the agent's: real GPUs are
// probed again every heartbeat (nvidia-smi can take a second; simulated ones never change), and
// the model cache is listed every 10 s and right after a download.
void Agent::Impl::start_gpu_probe() {
  bool real_gpus = gpu_probe->name() != "sim" && gpu_probe->name() != "none";
  probe_thread = std::thread([this, real_gpus] {
    auto listed = Clock::now();
    std::unique_lock lock(probe_mutex);
    while (!probe_stopping) {
      bool relist = relist_models || Clock::now() - listed >= std::chrono::seconds(10);
      relist_models = false;
      lock.unlock();
      if (relist) {
        listed = Clock::now();
        asio::post(io, [this, found = list_cached_models(*models)] { cached_models = found; });
      }
      if (real_gpus) {
        auto found = gpu_probe->probe();
        if (found) {
          asio::post(io, [this, seen = to_api_gpus(*found)] { gpus = seen; });
        } else {
          spdlog::warn("agent: GPU probe ({}) failed: {}", gpu_probe->name(), found.error().message);
        }
      }
      lock.lock();
      probe_wake.wait_for(lock, options.heartbeat_interval, [this] { return probe_stopping || relist_models; });
    }
  });
}

// Engines that load model files from disk get them from the node's model cache: vLLM, SGLang,
// TGI and llama.cpp for Hugging Face ids, any engine for an explicit hf:// reference. Local paths,
// Ollama tags and catalog names pass as they are.
bool Agent::Impl::needs_download(const api::ReplicaSpec& spec) const {
  static const std::set<std::string> file_engines = {"vllm", "sglang", "tgi", "llamacpp"};
  bool explicit_hub = spec.model.rfind("hf://", 0) == 0;
  if (!explicit_hub && !file_engines.count(spec.engine)) return false;
  auto reference = ModelRef::parse(spec.model);
  return reference && !reference->is_local();
}

bool Agent::Impl::model_ready(Supervisor& replica) {
  const auto& spec = replica.desired().spec;
  if (!replica.model_path().empty() || !needs_download(spec)) return true;
  auto& current = replica.download();
  if (!current) {
    auto download = std::make_shared<Download>();
    std::set<std::string> pinned;
    for (const auto& [name, other] : replicas) {
      if (!other->model_path().empty()) pinned.insert(other->model_path());
    }
    std::string reference = spec.model;
    std::string name = replica.name();
    download->thread = std::thread([this, download, reference, pinned, name] {
      FetchOptions fetch;
      fetch.cancel = &download->cancel;
      fetch.pinned = pinned;
      fetch.on_progress = [download](const DownloadProgress& progress) {
        std::lock_guard lock(download->mutex);
        download->progress = progress;
      };
      auto path = models->fetch(reference, fetch);
      {
        std::lock_guard lock(download->mutex);
        download->done = std::move(path);
      }
      // Its supervisor launches the engine at once.
      asio::post(io, [this, name] {
        if (auto it = replicas.find(name); it != replicas.end()) it->second->kick();
      });
    });
    current = download;
    downloads.push_back(download);
  }
  std::optional<Result<std::string>> done;
  DownloadProgress progress;
  {
    std::lock_guard lock(current->mutex);
    done = current->done;
    progress = current->progress;
  }
  if (!done) {
    std::string message = "downloading " + spec.model;
    if (progress.total_bytes > 0) {
      message += fmt::format(": {:.0f}% ({:.2f} of {:.2f} GiB)", 100.0 * progress.done_bytes / progress.total_bytes,
                             progress.done_bytes / 1073741824.0, progress.total_bytes / 1073741824.0);
    }
    replica.downloading(message);
    return false;
  }
  current->thread.join();
  std::erase(downloads, current);
  current.reset();
  if (!*done) {
    // Partial files stay: the next attempt resumes them.
    replica.crashed("model download failed: " + done->error().message);
    return false;
  }
  replica.set_model_path(**done);
  models->touch(replica.model_path());
  {
    std::lock_guard lock(probe_mutex);
    relist_models = true;  // the next heartbeat tells the scheduler this node has it
  }
  probe_wake.notify_all();
  spdlog::info("agent: model {} of {} is at {}", spec.model, replica.name(), replica.model_path());
  return true;
}

void Agent::Impl::cancel_download(Supervisor& replica) {
  if (replica.download()) replica.download()->cancel = true;
}

engines::LaunchContext Agent::Impl::launch_context(const Supervisor& replica, int port) const {
  const auto& spec = replica.desired().spec;
  engines::LaunchContext context;
  context.replica = replica.name();
  context.served_name = spec.deployment;
  context.model = replica.model_path().empty() ? spec.model : replica.model_path();
  context.gpus = spec.gpus;
  context.port = port;
  context.max_context = spec.max_context;
  context.max_seqs = spec.max_seqs;
  context.engine_args = spec.engine_args;
  context.env = spec.env;
  context.nebula_binary = options.nebula_binary;
  if (auto it = options.engines.find(spec.engine); it != options.engines.end()) context.config = it->second;
  context.work_dir = work_dir(replica.name());
  // What this agent's detect() found; an engine re-adopted after an upgrade of the engine binary
  // is taken to be the build found now.
  if (auto found = engines_found.find(spec.engine); found != engines_found.end()) {
    context.features = found->second.features;
  }
  context.ready_timeout = startup_timeout(spec.engine);
  // The engine claims what the scheduler reserved for it, as a fraction of each of its cards.
  if (!spec.gpus.empty() && spec.vram_mb > 0) {
    for (const auto& gpu : gpus) {
      if (gpu.index == spec.gpus.front() && gpu.memory_total_mb > 0) {
        double share = static_cast<double>(spec.vram_mb) / static_cast<double>(spec.gpus.size());
        context.gpu_memory_utilization = std::min(0.98, share / static_cast<double>(gpu.memory_total_mb));
      }
    }
  }
  return context;
}

void Agent::Impl::save_record(const Supervisor& replica) {
  if (!db) return;
  EngineRecord record;
  record.replica = replica.name();
  record.engine = replica.desired().spec.engine;
  record.pid = replica.pid();
  record.start_time = replica.start_time();
  record.port = replica.port();
  record.endpoint = replica.status().endpoint;
  record.restarts = replica.status().restarts;
  record.plan_version = replica.status().plan_version;
  record.container_id = replica.container_id();
  if (auto saved = db->put(record); !saved) spdlog::error("agent: {}", saved.error().message);
}

ContainerRuntime& Agent::Impl::containers() {
  if (!containers_) {
    engines::EngineConfig config =
        options.engines.count("docker") ? options.engines.at("docker") : engines::EngineConfig{};
    containers_ = std::make_shared<ContainerRuntime>(config.docker_socket);
  }
  return *containers_;
}

void Agent::Impl::stop_all_engines() {
  std::vector<pid_t> running;
  std::vector<std::string> in_containers;
  for (auto& [name, replica] : replicas) {
    if (replica->container()) {
      replica->kill_engine(SIGTERM);
      in_containers.push_back(name);
    } else if (replica->pid() != 0) {
      replica->kill_engine(SIGTERM);
      running.push_back(replica->pid());
    }
  }
  auto container_deadline = Clock::now() + options.stop_grace + milliseconds(5000);
  using Phase = ContainerRuntime::State::Phase;
  while (!in_containers.empty() && Clock::now() < container_deadline) {
    std::erase_if(in_containers, [&](const std::string& name) {
      auto phase = containers_->state(name).phase;
      return phase == Phase::Exited || phase == Phase::Failed || phase == Phase::Unknown;
    });
    std::this_thread::sleep_for(milliseconds(50));
  }
  auto deadline = Clock::now() + options.stop_grace;
  while (!running.empty()) {
    std::erase_if(running, [&](pid_t pid) { return launcher_->poll(pid).has_value(); });
    if (running.empty()) break;
    if (Clock::now() > deadline) {
      for (pid_t pid : running) launcher_->signal_group(pid, SIGKILL);
      deadline = Clock::now() + milliseconds(2000);
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  for (auto& [name, replica] : replicas) {
    if (db) (void)db->remove(name);
  }
  replicas.clear();
}

// Prometheus text: GPU gauges from the probe and engine gauges from each engine's metrics.
std::string Agent::Impl::metrics_text() const {
  std::string out;
  auto family = [&](const char* name, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n", name, help, name);
  };
  json status = node_status();
  struct GpuGauge {
    const char* name;
    const char* help;
    const char* field;
    double scale;
  };
  const GpuGauge gpu_gauges[] = {
      {"nebula_gpu_memory_total_bytes", "Memory of the GPU, in bytes.", "memory_total_mb", 1048576.0},
      {"nebula_gpu_memory_used_bytes", "GPU memory in use (by anything), in bytes.", "memory_used_mb", 1048576.0},
      {"nebula_gpu_utilization_ratio", "Share of the last sample period the GPU was busy, 0-1.", "utilization", 0.01},
      {"nebula_gpu_temperature_celsius", "GPU temperature, in degrees Celsius.", "temperature_c", 1.0},
      {"nebula_gpu_power_watts", "GPU power draw, in watts.", "power_w", 1.0},
  };
  for (const auto& gauge : gpu_gauges) {
    family(gauge.name, gauge.help);
    for (const auto& gpu : status["gpus"]) {
      out +=
          fmt::format("{}{{gpu=\"{}\",uuid=\"{}\"}} {}\n", gauge.name, gpu["index"].get<int>(),
                      prometheus_label(gpu["uuid"].get<std::string>()), gpu[gauge.field].get<double>() * gauge.scale);
    }
  }
  auto labels = [](const std::string& name, const Supervisor& replica) {
    return fmt::format("replica=\"{}\",deployment=\"{}\",engine=\"{}\"", prometheus_label(name),
                       prometheus_label(replica.desired().spec.deployment),
                       prometheus_label(replica.desired().spec.engine));
  };
  family("nebula_engine_up", "1 when the engine is ready (or asleep), 0 otherwise.");
  for (const auto& [name, replica] : replicas) {
    bool up = replica->phase() == Supervisor::Phase::Ready || replica->phase() == Supervisor::Phase::Sleeping;
    out += fmt::format("nebula_engine_up{{{}}} {}\n", labels(name, *replica), up ? 1 : 0);
  }
  out +=
      "# HELP nebula_engine_restarts_total Engine restarts after crashes and failed liveness probes.\n"
      "# TYPE nebula_engine_restarts_total counter\n";
  for (const auto& [name, replica] : replicas) {
    out += fmt::format("nebula_engine_restarts_total{{{}}} {}\n", labels(name, *replica), replica->status().restarts);
  }
  struct Gauge {
    const char* name;
    const char* help;
    std::optional<double> engines::Load::*field;
  };
  const Gauge gauges[] = {
      {"nebula_engine_requests_running", "Requests the engine is running, from its own metrics.",
       &engines::Load::running},
      {"nebula_engine_requests_waiting", "Requests queued in the engine, from its own metrics.",
       &engines::Load::waiting},
      {"nebula_engine_kv_cache_usage_ratio", "Share of the engine's KV cache in use, 0-1, from its own metrics.",
       &engines::Load::kv_cache_usage},
      {"nebula_engine_prefix_cache_hit_ratio",
       "Share of prompt tokens found in the engine's prefix cache, 0-1, from its own metrics.",
       &engines::Load::prefix_hit_rate},
  };
  for (const auto& gauge : gauges) {
    family(gauge.name, gauge.help);
    for (const auto& [name, replica] : replicas) {
      const auto& load = replica->load();
      if (!load || !((*load).*gauge.field)) continue;
      out += fmt::format("{}{{{}}} {}\n", gauge.name, labels(name, *replica), *((*load).*gauge.field));
    }
  }
  return out;
}

http::Router Agent::Impl::routes() {
  http::Router router;
  router.add("GET", "/healthz", [](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::text(200, "ok\n"));
  });
  router.add("GET", "/metrics", [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    if (!server_authorized(request, credential)) {
      co_await writer.send(unauthorized());
      co_return;
    }
    co_await writer.send(http::Response::text(200, metrics_text(), "text/plain; version=0.0.4; charset=utf-8"));
  });
  // Engine logs: ?tail=N bytes from the end (default 64 KiB), ?follow=1 keeps streaming.
  router.add("GET", "/logs/{replica}", [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    if (!server_authorized(request, credential)) {
      co_await writer.send(unauthorized());
      co_return;
    }
    const std::string replica = request.params["replica"];
    if (api::validate_name(replica).ok() == false) {
      co_await writer.send(http::error_json(400, "invalid replica name", "invalid_request"));
      co_return;
    }
    auto managed = replicas.find(replica);
    if (managed != replicas.end() && managed->second->container() && containers_) {
      // A container's output is Docker's: fetched off this thread (the call blocks up to 5 s).
      auto answer = std::make_shared<std::promise<Result<std::string>>>();
      auto future = answer->get_future();
      std::thread([runtime = containers_, replica, answer] {
        answer->set_value(runtime->logs(replica, 1000));
      }).detach();
      while (future.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
        co_await sleep_for(io, milliseconds(50));
      }
      co_await writer.send(container_logs_response(future.get()));
      co_return;
    }
    std::string path = options.data_dir + "/logs/" + replica + ".log";
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      co_await writer.send(http::error_json(404, "no logs for replica " + replica, "not_found"));
      co_return;
    }
    bool follow = request.query_or("follow") == "1" || request.query_or("follow") == "true";
    int64_t tail = std::atoll(request.query_or("tail", "65536").c_str());
    file.seekg(0, std::ios::end);
    int64_t size = file.tellg();
    file.seekg(std::max<int64_t>(0, size - tail));
    if (!co_await writer.start_stream(200, text_headers())) co_return;
    char buffer[16384];
    while (!stopping) {
      file.read(buffer, sizeof buffer);
      std::streamsize n = file.gcount();
      if (n > 0) {
        if (!co_await writer.write(std::string_view(buffer, static_cast<size_t>(n)))) co_return;
        continue;
      }
      if (!follow) break;
      file.clear();
      co_await sleep_for(io, milliseconds(250));
    }
    co_await writer.finish();
  });
  return router;
}

Agent::Agent(Options options, std::unique_ptr<ProcessLauncher> launcher)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(launcher))) {
  auto& o = impl_->options;
  if (o.name.empty()) o.name = host_name();
  if (o.nebula_binary.empty()) o.nebula_binary = self_executable();
  if (o.data_dir.empty()) o.data_dir = default_data_dir();
}

Agent::~Agent() {
  stop();
}

Status Agent::start() {
  auto& impl = *impl_;
  if (auto valid = api::validate_name(impl.options.name); !valid) return valid.error();
  auto probe = make_gpu_probe(impl.options.sim_gpus, impl.options.name);
  if (!probe) return probe.error();
  impl.gpu_probe = std::move(*probe);
  auto found = impl.gpu_probe->probe();
  if (!found) return found.error();
  impl.gpus = to_api_gpus(*found);
  ModelCacheOptions cache;
  cache.directory =
      impl.options.model_cache_dir.empty() ? impl.options.data_dir + "/models" : impl.options.model_cache_dir;
  cache.endpoint = impl.options.hf_endpoint;
  cache.token = impl.options.hf_token;
  cache.max_bytes = impl.options.model_cache_limit_mb << 20;
  impl.models = std::make_unique<ModelCache>(cache);
  std::error_code ignored;
  std::filesystem::create_directories(impl.options.data_dir, ignored);
  auto db = AgentDb::open(impl.options.data_dir + "/agent.db");
  if (!db) return db.error();
  impl.db = std::move(*db);
  impl.detect_engines();
  impl.adopt_engines();
  impl.server = std::make_unique<http::Server>(impl.io, impl.routes());
  auto port = impl.server->listen(impl.options.listen);
  if (!port) return port.error();
  std::string host = impl.options.listen.host == "0.0.0.0" ? "127.0.0.1" : impl.options.listen.host;
  impl.url = fmt::format("http://{}", HostPort{host, *port}.to_string());
  asio::co_spawn(impl.io, impl.join_loop(), asio::detached);
  impl.thread = std::thread([&impl] { impl.io.run(); });
  impl.start_gpu_probe();
  return {};
}

void Agent::stop() {
  auto& impl = *impl_;
  if (!impl.thread.joinable()) return;
  // Stop the loops on their own thread, then end the thread and stop the engines from here.
  std::promise<void> stopped;
  asio::post(impl.io, [&impl, &stopped] {
    impl.stopping = true;
    if (impl.server) impl.server->stop();
    for (auto& [name, replica] : impl.replicas) replica->stop();
    if (impl.heartbeat_timer) impl.heartbeat_timer->cancel();
    stopped.set_value();
  });
  stopped.get_future().wait();
  impl.work.reset();
  impl.io.stop();
  impl.thread.join();
  {
    std::lock_guard lock(impl.probe_mutex);
    impl.probe_stopping = true;
  }
  impl.probe_wake.notify_all();
  if (impl.probe_thread.joinable()) impl.probe_thread.join();
  for (auto& download : impl.downloads) {
    download->cancel = true;
    if (download->thread.joinable()) download->thread.join();
  }
  if (impl.options.stop_engines_on_exit) {
    impl.stop_all_engines();
  } else {
    // Engines keep running; agent.db tells the next agent which ones to re-adopt.
    size_t running = 0;
    for (const auto& [name, replica] : impl.replicas) running += replica->running();
    if (running) spdlog::info("agent: leaving {} engine(s) running for the next agent to re-adopt", running);
  }
}

std::string Agent::url() const {
  return impl_->url;
}

}  // namespace nebula::agent
