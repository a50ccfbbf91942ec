#include "agent/agent.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <set>

#include "agent/agent_db.h"
#include "agent/container_runtime.h"
#include "agent/gpu_probe.h"
#include "agent/model_cache.h"
#include "common/json.h"
#include "http/http.h"

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

http::Headers json_headers() {
  return {{"Content-Type", "application/json"}};
}
http::Headers text_headers() {
  return {{"Content-Type", "text/plain; charset=utf-8"}};
}

// Writes the files a driver asked for (Command::files) before its engine starts.
Status write_launch_files(const std::map<std::string, std::string>& files) {
  for (const auto& [path, contents] : files) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    if (ec) return Error{ErrorCode::Internal, fmt::format("cannot create the directory of {}: {}", path, ec.message())};
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << contents;
    out.close();
    if (!out) return Error{ErrorCode::Internal, "cannot write " + path};
  }
  return {};
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

// One replica this agent is responsible for, and the engine process that runs it.
struct Managed {
  api::Replica desired;
  bool deleted = false;  // the Replica is gone from the store
  const engines::EngineDriver* driver = nullptr;
  pid_t pid = 0;
  int64_t start_time = 0;  // of the process, to tell it from a reused pid
  bool container = false;  // a docker replica: ContainerRuntime runs it under the replica's name
  std::string container_id;
  int port = 0;
  bool healthy = false;
  bool prepared = false;  // the driver's post-start work (Ollama's pull) is done
  bool stopping = false;
  // Its engine cannot sleep, so it is being stopped while its deployment is idle: the exit is
  // expected, and the replica stays stopped (Sleeping) until it is woken.
  bool stopping_to_sleep = false;
  bool adopted = false;                // started by an earlier agent, taken over after a restart
  int slept_level = 0;                 // the level it was put to sleep at (waking from level 2 reloads weights)
  std::string model_path;              // the model's local path once prepared ("" = pass spec.model as is)
  std::shared_ptr<Download> download;  // while the model is being downloaded
  Clock::time_point started{};
  Clock::time_point ready_since{};
  Clock::time_point next_start{};
  Clock::time_point stop_deadline{};
  Clock::time_point last_health_check{};
  Clock::time_point last_sleep_attempt{};
  Clock::time_point last_housekeeping{};
  milliseconds backoff{0};
  api::ReplicaStatus status;
  bool status_dirty = true;
  std::optional<engines::Load> load;  // from the engine's metrics, for /metrics
};

namespace {
std::string stopped_asleep_message(const Managed& managed) {
  return fmt::format("stopped while idle ({} cannot sleep here); the next request starts it",
                     managed.desired.spec.engine);
}
}  // namespace

struct Agent::Impl {
  Impl(Options options, std::unique_ptr<ProcessLauncher> launcher)
      : options(std::move(options)), launcher(std::move(launcher)), client(io), work(io.get_executor()) {}

  Options options;
  std::unique_ptr<ProcessLauncher> launcher;
  std::unique_ptr<AgentDb> db;
  asio::io_context io;
  http::Client client;
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
  std::shared_ptr<ContainerRuntime> containers;  // created with the first docker replica
  // Complete in the cache, "org/name@rev" (or ".../FILE"), for the scheduler: listed on the
  // background thread every 10 s, and at once after a download (relist_models).
  std::vector<std::string> cached_models;
  bool relist_models = true;                         // guarded by probe_mutex
  std::vector<std::shared_ptr<Download>> downloads;  // every download started, joined at stop
  std::map<std::string, engines::Availability> engines_found;
  std::map<std::string, Managed> replicas;  // only touched on the agent thread
  std::string url;
  bool joined = false;
  bool listed = false;     // the first listing of replicas arrived: adopted engines can be judged
  std::string credential;  // a node-scoped API key from the join, when the server requires keys
  bool stopping = false;

  std::string api(const std::string& path) const { return options.server_url + "/api/v1" + path; }
  std::string log_path(const std::string& replica) const { return options.data_dir + "/logs/" + replica + ".log"; }
  // Files a driver writes for the replica's engine (llama-server's preset file); removed with it.
  std::string work_dir(const std::string& replica) const { return options.data_dir + "/work/" + replica; }

  awaitable<void> join_loop();
  awaitable<void> heartbeat_loop();
  awaitable<void> watch_loop();
  awaitable<void> supervise_loop();
  awaitable<void> step(Managed& managed);
  awaitable<void> check_ready(Managed& managed);
  awaitable<void> follow_sleep(Managed& managed);
  awaitable<void> report(Managed& managed);
  void apply(const api::Replica& replica);
  void launch(Managed& managed);
  void crashed(Managed& managed, const std::string& why, const std::string& log_tail = "");
  // The replica cannot be launched here as specified: Failed, retried after the longest backoff.
  void refuse_launch(Managed& managed, const std::string& why);
  // The engine (process or container) was just started on port: Starting, recorded in agent.db.
  void engine_started(Managed& managed, int port, const std::string& message);
  // Kills an engine that failed to become ready and counts it as a crash.
  void abandon_start(Managed& managed, const std::string& why, const std::string& log_tail = "");
  void forget(Managed& managed);
  // The engine runs: a process, or a container the runtime tracks.
  static bool running(const Managed& managed) { return managed.pid != 0 || managed.container; }
  std::optional<ExitStatus> engine_exited(Managed& managed);
  void kill_engine(Managed& managed, int signal);
  ContainerRuntime& container_runtime();
  void save_record(const Managed& managed);
  void adopt_engines();
  void start_gpu_probe();
  bool needs_download(const api::ReplicaSpec& spec) const;
  // Downloads the model if it must be; true once the engine can be launched.
  bool model_ready(Managed& managed);
  void cancel_download(Managed& managed);
  void detect_engines();
  engines::LaunchContext launch_context(const Managed& managed, int port) const;
  // The replica wants to sleep but its engine cannot (as launched here): it stays stopped.
  bool asleep_while_stopped(const Managed& managed) const;
  milliseconds startup_timeout(const std::string& engine) const;
  void set_phase(Managed& managed, const std::string& phase, const std::string& message);
  json node_status() const;
  std::string metrics_text() const;
  // The server's answer to a join may carry a credential (when it requires API keys).
  void take_credential(const std::string& body) {
    auto answer = parse_json(body);
    if (answer && answer->is_object()) credential = answer->value("credential", "");
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

void Agent::Impl::set_phase(Managed& managed, const std::string& phase, const std::string& message) {
  if (managed.status.phase == phase && managed.status.message == message) return;
  managed.status.phase = phase;
  managed.status.message = message;
  managed.status_dirty = true;
}

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
    Managed managed;
    managed.desired.metadata.name = record.replica;
    managed.desired.spec.engine = record.engine;
    managed.driver = engines::find_driver(record.engine);
    managed.backoff = options.restart_backoff;
    managed.status.restarts = record.restarts;
    managed.status.phase = "";
    auto start = launcher->start_time(record.pid);
    bool container = !record.container_id.empty();
    if (container || (start && *start == record.start_time)) {
      managed.port = record.port;
      managed.adopted = true;
      managed.prepared = true;
      managed.started = Clock::now();
      managed.status.port = record.port;
      managed.status.endpoint = record.endpoint;
      managed.status.plan_version = record.plan_version;
    }
    if (container) {
      // A container: the runtime inspects it and reports whether it still runs.
      container_runtime().adopt(record.replica, record.container_id);
      managed.container = true;
      managed.container_id = record.container_id;
      spdlog::info("agent: re-adopting container {} of {}", record.container_id, record.replica);
    } else if (start && *start == record.start_time) {
      managed.pid = record.pid;
      managed.start_time = record.start_time;
      managed.status.pid = record.pid;
      spdlog::info("agent: re-adopted engine of {} (pid {}, port {})", record.replica, record.pid, record.port);
    } else {
      // It ended while no agent watched: a crash as far as anyone can tell.
      (void)db->remove(record.replica);
      managed.status.restarts = record.restarts + 1;
      managed.status.last_error = "the engine exited while the agent was down";
      spdlog::warn("agent: the engine of {} (pid {}) ended while the agent was down", record.replica, record.pid);
    }
    replicas.emplace(record.replica, std::move(managed));
  }
}

json Agent::Impl::node_status() const {
  api::NodeStatus status;
  status.gpus = gpus;
  status.gpu_probe = gpu_probe ? gpu_probe->name() : "none";
  if (!options.sim_gpus.empty()) {
    // Simulated GPUs report the memory their running engines were given.
    for (auto& gpu : status.gpus) {
      for (const auto& [name, managed] : replicas) {
        const auto& spec = managed.desired.spec;
        // A sleeping engine gave its GPU memory back (level 1 keeps weights in CPU memory).
        if (!running(managed) || spec.gpus.empty() || managed.status.phase == api::phase::kSleeping) continue;
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

awaitable<void> Agent::Impl::join_loop() {
  const std::string body = join_body();
  while (!stopping) {
    auto response = co_await client.request("POST", api("/nodes/join"), body, json_headers(), milliseconds(5000));
    if (response && response->status == 200) {
      take_credential(response->body);
      break;
    }
    std::string why = response ? response->body : response.error().message;
    spdlog::warn("agent: cannot join {} yet: {}", options.server_url, why);
    if (response && response->status == 401) spdlog::error("agent: the join token was refused");
    co_await sleep_for(io, milliseconds(1000));
  }
  if (stopping) co_return;
  joined = true;
  spdlog::info("agent: node {} joined {}", options.name, options.server_url);
  asio::co_spawn(io, heartbeat_loop(), asio::detached);
  asio::co_spawn(io, watch_loop(), asio::detached);
  asio::co_spawn(io, supervise_loop(), asio::detached);
}

awaitable<void> Agent::Impl::heartbeat_loop() {
  while (!stopping) {
    auto response = co_await client.request("PUT", api("/nodes/" + options.name + "/status"), node_status().dump(),
                                            server_headers(true), milliseconds(5000));
    if (response && response->status == 404) {
      // The Node was deleted while this agent runs: join again.
      spdlog::warn("agent: node {} is unknown to the server; rejoining", options.name);
      auto joined =
          co_await client.request("POST", api("/nodes/join"), join_body(), json_headers(), milliseconds(5000));
      if (joined && joined->status == 200) take_credential(joined->body);
      continue;
    }
    if (!response || response->status != 200) {
      spdlog::warn("agent: heartbeat failed: {}", response ? response->body : response.error().message);
    }
    co_await sleep_for(io, options.heartbeat_interval);
  }
}

void Agent::Impl::apply(const api::Replica& replica) {
  if (replica.spec.node != options.name) return;
  auto [it, inserted] = replicas.try_emplace(replica.metadata.name);
  Managed& managed = it->second;
  bool first_sight = inserted || managed.status.phase.empty();
  managed.desired = replica;
  managed.deleted = false;
  if (!managed.driver) managed.driver = engines::find_driver(replica.spec.engine);
  if (inserted) {
    managed.status = replica.status;
    managed.status.pid = 0;
    managed.backoff = options.restart_backoff;
  } else if (first_sight) {
    // An engine known from agent.db: keep what this agent knows of the process, take the rest.
    api::ReplicaStatus known = managed.status;
    managed.status = replica.status;
    managed.status.pid = known.pid;
    managed.status.port = known.port;
    managed.status.endpoint = known.endpoint;
    managed.status.plan_version = known.plan_version;
    managed.status.restarts = std::max(known.restarts, replica.status.restarts);
    if (!known.last_error.empty()) managed.status.last_error = known.last_error;
    if (!running(managed)) managed.status.phase = api::phase::kScheduled;
    managed.status_dirty = true;
  } else if (replica.status.phase != managed.status.phase) {
    // Someone else rewrote the status (the controller marks replicas of a silent node Unknown):
    // report what this agent actually sees.
    managed.status_dirty = true;
  }
}

awaitable<void> Agent::Impl::watch_loop() {
  while (!stopping) {
    // List, then watch from the listing's revision: level-triggered, so a broken stream just
    // relists.
    auto listing = co_await client.request("GET", api("/replicas"), "", server_headers(false), milliseconds(10000));
    if (!listing || listing->status != 200) {
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
      apply(*replica);
    }
    // Engines of replicas the server no longer places here (deleted, or moved elsewhere while
    // this node was away) are stale: they are stopped.
    for (auto& [name, managed] : replicas) {
      if (!seen.count(name)) managed.deleted = true;
    }
    listed = true;
    int64_t revision = document->value("revision", int64_t{0});
    auto stream = co_await client.open("GET", api(fmt::format("/replicas?watch=1&revision={}", revision + 1)), "",
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
          if (it != replicas.end()) it->second.deleted = true;
        } else {
          apply(*replica);
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

bool Agent::Impl::model_ready(Managed& managed) {
  const auto& spec = managed.desired.spec;
  if (!managed.model_path.empty() || !needs_download(spec)) return true;
  if (!managed.download) {
    auto download = std::make_shared<Download>();
    std::set<std::string> pinned;
    for (const auto& [name, other] : replicas) {
      if (!other.model_path.empty()) pinned.insert(other.model_path);
    }
    std::string reference = spec.model;
    download->thread = std::thread([this, download, reference, pinned] {
      FetchOptions fetch;
      fetch.cancel = &download->cancel;
      fetch.pinned = pinned;
      fetch.on_progress = [download](const DownloadProgress& progress) {
        std::lock_guard lock(download->mutex);
        download->progress = progress;
      };
      auto path = models->fetch(reference, fetch);
      std::lock_guard lock(download->mutex);
      download->done = std::move(path);
    });
    managed.download = download;
    downloads.push_back(download);
    managed.status.next_restart_ms = 0;
  }
  std::optional<Result<std::string>> done;
  DownloadProgress progress;
  {
    std::lock_guard lock(managed.download->mutex);
    done = managed.download->done;
    progress = managed.download->progress;
  }
  if (!done) {
    std::string message = "downloading " + spec.model;
    if (progress.total_bytes > 0) {
      message += fmt::format(": {:.0f}% ({:.2f} of {:.2f} GiB)", 100.0 * progress.done_bytes / progress.total_bytes,
                             progress.done_bytes / 1073741824.0, progress.total_bytes / 1073741824.0);
    }
    set_phase(managed, api::phase::kDownloading, message);
    return false;
  }
  managed.download->thread.join();
  std::erase(downloads, managed.download);
  managed.download.reset();
  if (!*done) {
    // Partial files stay: the next attempt resumes them.
    crashed(managed, "model download failed: " + done->error().message);
    return false;
  }
  managed.model_path = **done;
  models->touch(managed.model_path);
  {
    std::lock_guard lock(probe_mutex);
    relist_models = true;  // the next heartbeat tells the scheduler this node has it
  }
  probe_wake.notify_all();
  spdlog::info("agent: model {} of {} is at {}", spec.model, managed.desired.metadata.name, managed.model_path);
  return true;
}

void Agent::Impl::cancel_download(Managed& managed) {
  if (managed.download) managed.download->cancel = true;
}

engines::LaunchContext Agent::Impl::launch_context(const Managed& managed, int port) const {
  const auto& spec = managed.desired.spec;
  engines::LaunchContext context;
  context.replica = managed.desired.metadata.name;
  context.served_name = spec.deployment;
  context.model = managed.model_path.empty() ? spec.model : managed.model_path;
  context.gpus = spec.gpus;
  context.port = port;
  context.max_context = spec.max_context;
  context.max_seqs = spec.max_seqs;
  context.engine_args = spec.engine_args;
  context.env = spec.env;
  context.nebula_binary = options.nebula_binary;
  if (auto it = options.engines.find(spec.engine); it != options.engines.end()) context.config = it->second;
  context.work_dir = work_dir(managed.desired.metadata.name);
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

void Agent::Impl::launch(Managed& managed) {
  const auto& spec = managed.desired.spec;
  auto available = engines_found.find(spec.engine);
  if (!managed.driver || available == engines_found.end() || !available->second.available) {
    std::string why = "engine " + spec.engine + " is not available on this node";
    if (available != engines_found.end() && !available->second.detail.empty()) why += ": " + available->second.detail;
    refuse_launch(managed, why);
    return;
  }
  auto port = find_free_port();
  if (!port) {
    set_phase(managed, api::phase::kFailed, port.error().message);
    return;
  }
  if (managed.driver->runs_in_container()) {
    engines::LaunchContext context = launch_context(managed, *port);
    auto container = managed.driver->container(context);
    if (!container) {
      refuse_launch(managed, container.error().message);
      return;
    }
    container_runtime().start(managed.desired.metadata.name, *container, context.config.allowed_mounts);
    managed.container = true;
    managed.container_id.clear();
    managed.status.pid = 0;
    spdlog::info("agent: starting {} in a container of {} on port {}", managed.desired.metadata.name, container->image,
                 *port);
    engine_started(managed, *port, "starting container " + container->image);
    return;
  }
  auto command = managed.driver->command(launch_context(managed, *port));
  if (!command) {
    refuse_launch(managed, command.error().message);
    return;
  }
  if (Status written = write_launch_files(command->files); !written.ok()) {
    crashed(managed, written.error().message);
    return;
  }
  LaunchSpec launch_spec;
  launch_spec.argv = command->argv;
  launch_spec.env = command->env;
  launch_spec.log_path = log_path(managed.desired.metadata.name);
  auto pid = launcher->launch(launch_spec);
  if (!pid) {
    crashed(managed, pid.error().message);
    return;
  }
  managed.pid = *pid;
  managed.start_time = launcher->start_time(*pid).value_or(0);
  managed.status.pid = *pid;
  spdlog::info("agent: started {} (pid {}, port {}): {}", managed.desired.metadata.name, *pid, *port,
               fmt::join(launch_spec.argv, " "));
  engine_started(managed, *port, "waiting for the engine to be ready");
}

void Agent::Impl::refuse_launch(Managed& managed, const std::string& why) {
  managed.status.last_error = why;
  set_phase(managed, api::phase::kFailed, why);
  managed.next_start = Clock::now() + options.max_restart_backoff;
}

void Agent::Impl::engine_started(Managed& managed, int port, const std::string& message) {
  managed.port = port;
  managed.healthy = false;
  managed.prepared = false;
  managed.adopted = false;
  managed.started = Clock::now();
  managed.status.port = port;
  managed.status.endpoint = fmt::format("http://127.0.0.1:{}", port);
  managed.status.plan_version = managed.desired.spec.plan_version;
  managed.status.next_restart_ms = 0;
  managed.status_dirty = true;
  set_phase(managed, api::phase::kStarting, message);
  save_record(managed);
}

void Agent::Impl::abandon_start(Managed& managed, const std::string& why, const std::string& log_tail) {
  kill_engine(managed, SIGKILL);
  forget(managed);
  crashed(managed, why, log_tail);
}

void Agent::Impl::save_record(const Managed& managed) {
  if (!db) return;
  EngineRecord record;
  record.replica = managed.desired.metadata.name;
  record.engine = managed.desired.spec.engine;
  record.pid = managed.pid;
  record.start_time = managed.start_time;
  record.port = managed.port;
  record.endpoint = managed.status.endpoint;
  record.restarts = managed.status.restarts;
  record.plan_version = managed.status.plan_version;
  record.container_id = managed.container_id;
  if (auto saved = db->put(record); !saved) spdlog::error("agent: {}", saved.error().message);
}

ContainerRuntime& Agent::Impl::container_runtime() {
  if (!containers) {
    engines::EngineConfig config =
        options.engines.count("docker") ? options.engines.at("docker") : engines::EngineConfig{};
    containers = std::make_shared<ContainerRuntime>(config.docker_socket);
  }
  return *containers;
}

// Has the engine ended? A process is polled (and, when adopted, checked against pid reuse); a
// container is read from the runtime's last inspection.
std::optional<ExitStatus> Agent::Impl::engine_exited(Managed& managed) {
  if (!managed.container) {
    std::optional<ExitStatus> exit = launcher->poll(managed.pid);
    if (!exit && managed.adopted && launcher->start_time(managed.pid) != managed.start_time)
      exit = ExitStatus{-1, 0, ""};
    return exit;
  }
  auto state = container_runtime().state(managed.desired.metadata.name);
  using Phase = ContainerRuntime::State::Phase;
  if (!state.container_id.empty() && state.container_id != managed.container_id) {
    managed.container_id = state.container_id;
    save_record(managed);
  }
  if (state.pid != managed.status.pid) {
    managed.status.pid = state.pid;  // the container's main process, as Docker reports it
    managed.status_dirty = true;
  }
  if (state.phase == Phase::Starting && !managed.healthy && !state.stage.empty()) {
    set_phase(managed, api::phase::kStarting, state.stage);
  }
  if (state.phase != Phase::Exited && state.phase != Phase::Failed) return std::nullopt;
  ExitStatus exit;
  exit.code = state.exit_code;
  exit.detail = state.phase == Phase::Failed ? "container failed: " + state.error : "";
  return exit;
}

void Agent::Impl::kill_engine(Managed& managed, int signal) {
  if (!managed.container) {
    launcher->signal_group(managed.pid, signal);
    return;
  }
  // docker stop: SIGTERM, then SIGKILL after the grace (a second call changes nothing).
  if (signal == SIGTERM || signal == SIGKILL) {
    auto grace = signal == SIGKILL ? std::chrono::seconds(0)
                                   : std::chrono::duration_cast<std::chrono::seconds>(options.stop_grace);
    container_runtime().stop(managed.desired.metadata.name, grace);
  }
}

// The engine died (or never came up): restart it after the backoff, which doubles per crash up
// to the cap and starts over once an engine ran stably.
void Agent::Impl::crashed(Managed& managed, const std::string& why, const std::string& log_tail) {
  auto now = Clock::now();
  if (managed.healthy && now - managed.ready_since >= options.stable_after) managed.backoff = options.restart_backoff;
  managed.healthy = false;
  managed.status.restarts += 1;
  managed.status.last_error = log_tail.empty() ? why : why + "; last log lines:\n" + log_tail;
  managed.next_start = now + managed.backoff;
  managed.status.next_restart_ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch() + managed.backoff)
          .count();
  set_phase(managed, api::phase::kFailed,
            fmt::format("{}; restart {} in {} s", why, managed.status.restarts,
                        std::chrono::duration_cast<std::chrono::seconds>(managed.backoff).count()));
  spdlog::warn("agent: {}: {}", managed.desired.metadata.name, managed.status.message);
  managed.backoff = std::min(managed.backoff * 2, options.max_restart_backoff);
}

// The engine process is gone: drop it from agent.db.
void Agent::Impl::forget(Managed& managed) {
  if (managed.container && containers) containers->forget(managed.desired.metadata.name);
  managed.container = false;
  managed.container_id.clear();
  managed.pid = 0;
  managed.start_time = 0;
  managed.healthy = false;
  managed.status.pid = 0;
  if (db) (void)db->remove(managed.desired.metadata.name);
}

awaitable<void> Agent::Impl::step(Managed& managed) {
  auto now = Clock::now();
  const std::string& name = managed.desired.metadata.name;
  if (running(managed)) {
    std::optional<ExitStatus> exit = engine_exited(managed);
    if (exit) {
      bool was_starting = !managed.healthy;
      bool stopped_to_sleep = managed.stopping_to_sleep;
      // An engine that dies while starting says why in its last log lines: the process's log
      // file, or what the container runtime read from Docker when it saw the container exit.
      std::string log_tail;
      if (was_starting) {
        log_tail = managed.container ? container_runtime().state(name).log_tail : tail_lines(log_path(name), 10);
      }
      forget(managed);
      managed.stopping_to_sleep = false;
      if (stopped_to_sleep) {
        set_phase(managed, api::phase::kSleeping, stopped_asleep_message(managed));
      } else if (!managed.stopping && !managed.deleted && !managed.desired.spec.stop) {
        std::string why = "engine " + exit->describe();
        if (was_starting) why += " while starting";
        crashed(managed, why, log_tail);
      }
    }
  }

  if (managed.deleted || managed.desired.spec.stop) {
    cancel_download(managed);
    if (running(managed) && !managed.stopping) {
      kill_engine(managed, SIGTERM);
      managed.stopping = true;
      managed.stop_deadline = now + options.stop_grace;
      set_phase(managed, api::phase::kStopping, "stopping the engine");
    } else if (running(managed) && now > managed.stop_deadline && !managed.container) {
      kill_engine(managed, SIGKILL);
    }
    if (!running(managed) && !managed.deleted) {
      // The engine is gone: remove the Replica; the watch then reports it deleted.
      auto removed =
          co_await client.request("DELETE", api("/replicas/" + name), "", server_headers(false), milliseconds(5000));
      if (removed && (removed->status == 200 || removed->status == 404)) managed.deleted = true;
    }
    co_return;
  }

  if (!running(managed)) {
    if (asleep_while_stopped(managed)) {
      set_phase(managed, api::phase::kSleeping, stopped_asleep_message(managed));
      co_return;
    }
    if (now >= managed.next_start && model_ready(managed)) launch(managed);
    co_return;
  }
  if (managed.stopping_to_sleep) {
    if (now > managed.stop_deadline && !managed.container) kill_engine(managed, SIGKILL);
    co_return;
  }
  if (now - managed.last_housekeeping >= milliseconds(1000)) {
    managed.last_housekeeping = now;
    if (rotate_log_if_larger(log_path(name), options.log_max_bytes, options.log_keep)) {
      spdlog::info("agent: rotated the log of {}", name);
    }
    if (managed.healthy && managed.driver) {
      auto load = co_await managed.driver->load(client, managed.status.endpoint, launch_context(managed, managed.port));
      if (load) {
        managed.load = *load;
      } else {
        managed.load.reset();
      }
    }
  }
  if (!managed.healthy) {
    co_await check_ready(managed);
    co_return;
  }
  if (now - managed.ready_since >= options.stable_after) managed.backoff = options.restart_backoff;
  co_await follow_sleep(managed);
}

// Starting: ready once the driver says so (and its post-start work is done), or killed when the
// startup timeout passes, with the engine's last log lines in the replica's error.
awaitable<void> Agent::Impl::check_ready(Managed& managed) {
  auto now = Clock::now();
  if (now - managed.last_health_check < milliseconds(250)) co_return;
  managed.last_health_check = now;
  auto readiness = co_await managed.driver->probe(client, managed.status.endpoint);
  if (!running(managed)) co_return;
  if (readiness == engines::Readiness::Ready && !managed.prepared) {
    set_phase(managed, api::phase::kStarting, "preparing the engine");
    co_await report(managed);
    // Loading the model (llama.cpp's router) may take what is left of the startup timeout.
    engines::LaunchContext context = launch_context(managed, managed.port);
    auto left = context.ready_timeout - std::chrono::duration_cast<milliseconds>(Clock::now() - managed.started);
    context.ready_timeout = std::max(left, milliseconds(1000));
    auto prepared = co_await managed.driver->prepare(client, managed.status.endpoint, context);
    if (!prepared) {
      abandon_start(managed, "preparing the engine failed: " + prepared.error().message);
      co_return;
    }
    managed.prepared = true;
  }
  if (readiness == engines::Readiness::Ready) {
    managed.healthy = true;
    managed.ready_since = Clock::now();
    managed.status.next_restart_ms = 0;
    set_phase(managed, api::phase::kReady, "");
    co_return;
  }
  if (readiness == engines::Readiness::Loading) set_phase(managed, api::phase::kStarting, "the engine is loading");
  auto limit = startup_timeout(managed.desired.spec.engine);
  if (Clock::now() - managed.started > limit) {
    std::string why =
        fmt::format("not ready after {} s", std::chrono::duration_cast<std::chrono::seconds>(limit).count());
    abandon_start(managed, why, tail_lines(log_path(managed.desired.metadata.name), 10));
  }
}

bool Agent::Impl::asleep_while_stopped(const Managed& managed) const {
  return managed.desired.spec.sleep_level > 0 && managed.driver &&
         !managed.driver->can_sleep(launch_context(managed, managed.port));
}

// Sleep and wake follow spec.sleep_level, through the driver (vLLM's levels, Ollama's keep_alive,
// llama.cpp's router). An engine that cannot sleep (as launched here) is stopped instead; step()
// keeps it stopped while the level stays above 0 and starts it again when it drops to 0.
awaitable<void> Agent::Impl::follow_sleep(Managed& managed) {
  auto now = Clock::now();
  if (!managed.driver || now - managed.last_sleep_attempt < milliseconds(250)) co_return;
  int wanted = managed.desired.spec.sleep_level;
  engines::LaunchContext context = launch_context(managed, managed.port);
  if (!managed.driver->can_sleep(context)) {
    if (wanted > 0) {
      spdlog::info("agent: stopping the engine of {} while idle: {} cannot sleep here", managed.desired.metadata.name,
                   managed.desired.spec.engine);
      kill_engine(managed, SIGTERM);
      managed.stopping_to_sleep = true;
      managed.stop_deadline = now + options.stop_grace;
      set_phase(managed, api::phase::kStopping, "stopping the engine while idle: it cannot sleep here");
    }
    co_return;
  }
  bool asleep = managed.status.phase == api::phase::kSleeping;
  if (wanted > 0 && !asleep) {
    managed.last_sleep_attempt = now;
    context.sleep_level = wanted;
    auto slept = co_await managed.driver->sleep(client, managed.status.endpoint, wanted, context);
    if (slept) {
      managed.slept_level = wanted;
      set_phase(managed, api::phase::kSleeping, fmt::format("sleep level {}", wanted));
    }
  } else if (wanted == 0 && asleep) {
    managed.last_sleep_attempt = now;
    context.sleep_level = managed.slept_level;
    auto woken = co_await managed.driver->wake(client, managed.status.endpoint, context);
    if (woken) {
      auto readiness = co_await managed.driver->probe(client, managed.status.endpoint);
      if (readiness == engines::Readiness::Ready) set_phase(managed, api::phase::kReady, "");
    }
  }
}

awaitable<void> Agent::Impl::report(Managed& managed) {
  if (!managed.status_dirty || managed.deleted || managed.status.phase.empty()) co_return;
  managed.status_dirty = false;
  auto response =
      co_await client.request("PUT", api("/replicas/" + managed.desired.metadata.name + "/status"),
                              api::to_json(managed.status).dump(), server_headers(true), milliseconds(5000));
  if (!response || (response->status != 200 && response->status != 404)) managed.status_dirty = true;
}

awaitable<void> Agent::Impl::supervise_loop() {
  while (!stopping) {
    // Until the first listing, an adopted engine's replica may or may not still exist: wait.
    if (!listed) {
      co_await sleep_for(io, milliseconds(100));
      continue;
    }
    for (auto it = replicas.begin(); it != replicas.end();) {
      co_await step(it->second);
      co_await report(it->second);
      if (it->second.deleted && !running(it->second)) {
        std::error_code ignored;
        std::filesystem::remove_all(work_dir(it->first), ignored);
        // Everything the replica held goes with it: pooled connections to its engine, and (past
        // the retention) its logs.
        if (auto endpoint = http::Url::parse(it->second.status.endpoint)) client.close_idle(endpoint->origin());
        it = replicas.erase(it);
        std::set<std::string> live;
        for (const auto& [name, managed] : replicas) live.insert(name);
        prune_replica_logs(options.data_dir + "/logs", live, options.deleted_log_retention,
                           static_cast<size_t>(std::max(0, options.deleted_logs_keep)));
      } else {
        ++it;
      }
    }
    co_await sleep_for(io, milliseconds(200));
  }
}

void Agent::Impl::stop_all_engines() {
  std::vector<pid_t> running;
  std::vector<std::string> in_containers;
  for (auto& [name, managed] : replicas) {
    if (managed.container) {
      kill_engine(managed, SIGTERM);
      in_containers.push_back(name);
    } else if (managed.pid != 0) {
      launcher->signal_group(managed.pid, SIGTERM);
      running.push_back(managed.pid);
    }
  }
  auto container_deadline = Clock::now() + options.stop_grace + milliseconds(5000);
  using Phase = ContainerRuntime::State::Phase;
  while (!in_containers.empty() && Clock::now() < container_deadline) {
    std::erase_if(in_containers, [&](const std::string& name) {
      auto phase = containers->state(name).phase;
      return phase == Phase::Exited || phase == Phase::Failed || phase == Phase::Unknown;
    });
    std::this_thread::sleep_for(milliseconds(50));
  }
  auto deadline = Clock::now() + options.stop_grace;
  while (!running.empty()) {
    std::erase_if(running, [&](pid_t pid) { return launcher->poll(pid).has_value(); });
    if (running.empty()) break;
    if (Clock::now() > deadline) {
      for (pid_t pid : running) launcher->signal_group(pid, SIGKILL);
      deadline = Clock::now() + milliseconds(2000);
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  for (auto& [name, managed] : replicas) {
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
      {"nebula_gpu_memory_total_bytes", "GPU memory", "memory_total_mb", 1048576.0},
      {"nebula_gpu_memory_used_bytes", "GPU memory in use", "memory_used_mb", 1048576.0},
      {"nebula_gpu_utilization_ratio", "GPU utilisation, 0..1", "utilization", 0.01},
      {"nebula_gpu_temperature_celsius", "GPU temperature", "temperature_c", 1.0},
      {"nebula_gpu_power_watts", "GPU power draw", "power_w", 1.0},
  };
  for (const auto& gauge : gpu_gauges) {
    family(gauge.name, gauge.help);
    for (const auto& gpu : status["gpus"]) {
      out += fmt::format("{}{{gpu=\"{}\",uuid=\"{}\"}} {}\n", gauge.name, gpu["index"].get<int>(),
                         gpu["uuid"].get<std::string>(), gpu[gauge.field].get<double>() * gauge.scale);
    }
  }
  auto labels = [](const std::string& name, const Managed& managed) {
    return fmt::format("replica=\"{}\",deployment=\"{}\",engine=\"{}\"", name, managed.desired.spec.deployment,
                       managed.desired.spec.engine);
  };
  family("nebula_engine_up", "1 when the engine is ready (or asleep), 0 otherwise");
  for (const auto& [name, managed] : replicas) {
    out += fmt::format("nebula_engine_up{{{}}} {}\n", labels(name, managed), managed.healthy ? 1 : 0);
  }
  family("nebula_engine_restarts", "Engine restarts after crashes");
  for (const auto& [name, managed] : replicas) {
    out += fmt::format("nebula_engine_restarts{{{}}} {}\n", labels(name, managed), managed.status.restarts);
  }
  struct Gauge {
    const char* name;
    const char* help;
    std::optional<double> engines::Load::*field;
  };
  const Gauge gauges[] = {
      {"nebula_engine_requests_running", "Requests the engine is running", &engines::Load::running},
      {"nebula_engine_requests_waiting", "Requests queued in the engine", &engines::Load::waiting},
      {"nebula_engine_kv_cache_usage_ratio", "KV-cache usage, 0..1", &engines::Load::kv_cache_usage},
      {"nebula_engine_prefix_cache_hit_ratio", "Prefix-cache hit rate, 0..1", &engines::Load::prefix_hit_rate},
  };
  for (const auto& gauge : gauges) {
    family(gauge.name, gauge.help);
    for (const auto& [name, managed] : replicas) {
      if (!managed.load || !((*managed.load).*gauge.field)) continue;
      out += fmt::format("{}{{{}}} {}\n", gauge.name, labels(name, managed), *((*managed.load).*gauge.field));
    }
  }
  return out;
}

http::Router Agent::Impl::routes() {
  http::Router router;
  router.add("GET", "/healthz", [](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::text(200, "ok\n"));
  });
  router.add("GET", "/metrics", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::text(200, metrics_text(), "text/plain; version=0.0.4; charset=utf-8"));
  });
  // Engine logs: ?tail=N bytes from the end (default 64 KiB), ?follow=1 keeps streaming.
  router.add("GET", "/logs/{replica}", [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    const std::string replica = request.params["replica"];
    if (api::validate_name(replica).ok() == false) {
      co_await writer.send(http::error_json(400, "invalid replica name", "invalid_request"));
      co_return;
    }
    auto managed = replicas.find(replica);
    if (managed != replicas.end() && managed->second.container && containers) {
      // A container's output is Docker's: fetched off this thread (the call blocks up to 5 s).
      auto answer = std::make_shared<std::promise<Result<std::string>>>();
      auto future = answer->get_future();
      std::thread([runtime = containers, replica, answer] {
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
    for (const auto& [name, managed] : impl.replicas) running += Impl::running(managed);
    if (running) spdlog::info("agent: leaving {} engine(s) running for the next agent to re-adopt", running);
  }
}

std::string Agent::url() const {
  return impl_->url;
}

}  // namespace nebula::agent
