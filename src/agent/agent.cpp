#include "agent/agent.h"

#include <fmt/format.h>
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
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <set>

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
}  // namespace

// One replica this agent is responsible for, and the engine process that runs it.
struct Managed {
  api::Replica desired;
  bool deleted = false;  // the Replica is gone from the store
  pid_t pid = 0;
  int port = 0;
  bool healthy = false;
  bool stopping = false;
  Clock::time_point started{};
  Clock::time_point next_start{};
  Clock::time_point stop_deadline{};
  Clock::time_point last_health_check{};
  Clock::time_point last_sleep_attempt{};
  milliseconds backoff{0};
  api::ReplicaStatus status;
  bool status_dirty = true;
};

struct Agent::Impl {
  Impl(Options options, std::unique_ptr<ProcessLauncher> launcher)
      : options(std::move(options)), launcher(std::move(launcher)), client(io), work(io.get_executor()) {}

  Options options;
  std::unique_ptr<ProcessLauncher> launcher;
  asio::io_context io;
  http::Client client;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<http::Server> server;
  std::thread thread;
  std::vector<api::Gpu> gpus;
  std::map<std::string, Managed> replicas;  // only touched on the agent thread
  std::string url;
  bool joined = false;
  std::string credential;  // a node-scoped API key from the join, when the server requires keys
  bool stopping = false;

  std::string api(const std::string& path) const { return options.server_url + "/api/v1" + path; }

  awaitable<void> join_loop();
  awaitable<void> heartbeat_loop();
  awaitable<void> watch_loop();
  awaitable<void> supervise_loop();
  awaitable<void> step(Managed& managed);
  awaitable<void> report(Managed& managed);
  void apply(const api::Replica& replica);
  void launch(Managed& managed);
  void set_phase(Managed& managed, const std::string& phase, const std::string& message);
  json node_status() const;
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

json Agent::Impl::node_status() const {
  api::NodeStatus status;
  status.gpus = gpus;
  // Simulated GPUs report the memory their running engines were given.
  for (auto& gpu : status.gpus) {
    for (const auto& [name, managed] : replicas) {
      const auto& spec = managed.desired.spec;
      // A sleeping engine gave its GPU memory back (level 1 keeps weights in CPU memory).
      if (managed.pid == 0 || spec.gpus.empty() || managed.status.phase == api::phase::kSleeping) continue;
      for (int index : spec.gpus) {
        if (index == gpu.index) gpu.memory_used_mb += spec.vram_mb / static_cast<int64_t>(spec.gpus.size());
      }
    }
  }
  status.engines = {"sim"};
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
  managed.desired = replica;
  managed.deleted = false;
  if (inserted) {
    managed.status = replica.status;
    managed.status.pid = 0;
    managed.backoff = options.restart_backoff;
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
    for (auto& [name, managed] : replicas) {
      if (!seen.count(name)) managed.deleted = true;
    }
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
        if ((*event)["type"] == "DELETE") {
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

void Agent::Impl::launch(Managed& managed) {
  const auto& spec = managed.desired.spec;
  auto port = find_free_port();
  if (!port) {
    set_phase(managed, api::phase::kFailed, port.error().message);
    return;
  }
  LaunchSpec launch_spec;
  if (spec.engine != "sim") {
    managed.status.last_error = "engine " + spec.engine + " is not available on this node";
    set_phase(managed, api::phase::kFailed, managed.status.last_error);
    managed.next_start = Clock::now() + options.max_restart_backoff;
    return;
  }
  launch_spec.argv = {options.nebula_binary, "engine-sim", "--host",       "127.0.0.1", "--port",
                      std::to_string(*port), "--model",    spec.deployment};
  for (const auto& arg : spec.engine_args) launch_spec.argv.push_back(arg);
  if (spec.max_context > 0) {
    launch_spec.argv.push_back("--max-model-len");
    launch_spec.argv.push_back(std::to_string(spec.max_context));
  }
  if (spec.max_seqs > 0) {
    launch_spec.argv.push_back("--max-num-seqs");
    launch_spec.argv.push_back(std::to_string(spec.max_seqs));
  }
  launch_spec.env = spec.env;
  std::string devices;
  for (int index : spec.gpus) devices += (devices.empty() ? "" : ",") + std::to_string(index);
  launch_spec.env["CUDA_VISIBLE_DEVICES"] = devices;
  launch_spec.log_path = options.data_dir + "/logs/" + managed.desired.metadata.name + ".log";
  auto pid = launcher->launch(launch_spec);
  if (!pid) {
    managed.status.last_error = pid.error().message;
    set_phase(managed, api::phase::kFailed, pid.error().message);
    managed.next_start = Clock::now() + managed.backoff;
    managed.backoff = std::min(managed.backoff * 2, options.max_restart_backoff);
    return;
  }
  managed.pid = *pid;
  managed.port = *port;
  managed.healthy = false;
  managed.started = Clock::now();
  managed.status.pid = *pid;
  managed.status.port = *port;
  managed.status.endpoint = fmt::format("http://127.0.0.1:{}", *port);
  managed.status.plan_version = spec.plan_version;
  managed.status_dirty = true;
  set_phase(managed, api::phase::kStarting, "waiting for /health");
  spdlog::info("agent: started {} (pid {}, port {})", managed.desired.metadata.name, *pid, *port);
}

awaitable<void> Agent::Impl::step(Managed& managed) {
  auto now = Clock::now();
  const std::string& name = managed.desired.metadata.name;
  if (managed.pid != 0) {
    if (auto exit = launcher->poll(managed.pid)) {
      managed.pid = 0;
      managed.healthy = false;
      managed.status.pid = 0;
      if (!managed.stopping && !managed.deleted && !managed.desired.spec.stop) {
        // A crash: restart with exponential backoff, reset once it ran stably for 10 minutes.
        if (now - managed.started > std::chrono::minutes(10)) managed.backoff = options.restart_backoff;
        managed.status.restarts += 1;
        managed.status.last_error = "engine " + exit->describe();
        managed.next_start = now + managed.backoff;
        set_phase(managed, api::phase::kFailed,
                  fmt::format("{}; restarting in {} s", managed.status.last_error, managed.backoff.count() / 1000.0));
        spdlog::warn("agent: {} {}", name, managed.status.message);
        managed.backoff = std::min(managed.backoff * 2, options.max_restart_backoff);
      }
    }
  }

  if (managed.deleted || managed.desired.spec.stop) {
    if (managed.pid != 0 && !managed.stopping) {
      launcher->signal_group(managed.pid, SIGTERM);
      managed.stopping = true;
      managed.stop_deadline = now + options.stop_grace;
      set_phase(managed, api::phase::kStopping, "stopping the engine");
    } else if (managed.pid != 0 && now > managed.stop_deadline) {
      launcher->signal_group(managed.pid, SIGKILL);
    }
    if (managed.pid == 0 && !managed.deleted) {
      // The engine is gone: remove the Replica; the watch then reports it deleted.
      auto removed =
          co_await client.request("DELETE", api("/replicas/" + name), "", server_headers(false), milliseconds(5000));
      if (removed && (removed->status == 200 || removed->status == 404)) managed.deleted = true;
    }
    co_return;
  }

  if (managed.pid == 0) {
    if (now >= managed.next_start) launch(managed);
    co_return;
  }
  if (!managed.healthy && now - managed.last_health_check >= milliseconds(250)) {
    managed.last_health_check = now;
    auto health = co_await client.request("GET", managed.status.endpoint + "/health", "", {}, milliseconds(2000));
    if (health && health->status == 200) {
      managed.healthy = true;
      set_phase(managed, api::phase::kReady, "");
    } else if (Clock::now() - managed.started > options.startup_timeout) {
      managed.status.last_error = fmt::format(
          "not healthy after {} s", std::chrono::duration_cast<std::chrono::seconds>(options.startup_timeout).count());
      launcher->signal_group(managed.pid, SIGKILL);
    }
  }
  if (!managed.healthy || now - managed.last_sleep_attempt < milliseconds(250)) co_return;
  // Sleep and wake (vLLM's sleep mode: /sleep?level=N, /wake_up) follow spec.sleep_level.
  int wanted = managed.desired.spec.sleep_level;
  bool asleep = managed.status.phase == api::phase::kSleeping;
  if (wanted > 0 && !asleep) {
    managed.last_sleep_attempt = now;
    auto slept = co_await client.request("POST", fmt::format("{}/sleep?level={}", managed.status.endpoint, wanted), "",
                                         {}, milliseconds(60000));
    if (slept && slept->status == 200) set_phase(managed, api::phase::kSleeping, fmt::format("sleep level {}", wanted));
  } else if (wanted == 0 && asleep) {
    managed.last_sleep_attempt = now;
    auto woken = co_await client.request("POST", managed.status.endpoint + "/wake_up", "", {}, milliseconds(60000));
    if (woken && woken->status == 200) {
      auto health = co_await client.request("GET", managed.status.endpoint + "/health", "", {}, milliseconds(2000));
      if (health && health->status == 200) set_phase(managed, api::phase::kReady, "");
    }
  }
}

awaitable<void> Agent::Impl::report(Managed& managed) {
  if (!managed.status_dirty || managed.deleted) co_return;
  managed.status_dirty = false;
  auto response =
      co_await client.request("PUT", api("/replicas/" + managed.desired.metadata.name + "/status"),
                              api::to_json(managed.status).dump(), server_headers(true), milliseconds(5000));
  if (!response || (response->status != 200 && response->status != 404)) managed.status_dirty = true;
}

awaitable<void> Agent::Impl::supervise_loop() {
  while (!stopping) {
    for (auto it = replicas.begin(); it != replicas.end();) {
      co_await step(it->second);
      co_await report(it->second);
      if (it->second.deleted && it->second.pid == 0) {
        it = replicas.erase(it);
      } else {
        ++it;
      }
    }
    co_await sleep_for(io, milliseconds(200));
  }
}

void Agent::Impl::stop_all_engines() {
  std::vector<pid_t> running;
  for (auto& [name, managed] : replicas) {
    if (managed.pid != 0) {
      launcher->signal_group(managed.pid, SIGTERM);
      running.push_back(managed.pid);
    }
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
  replicas.clear();
}

http::Router Agent::Impl::routes() {
  http::Router router;
  router.add("GET", "/healthz", [](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::text(200, "ok\n"));
  });
  // Engine logs: ?tail=N bytes from the end (default 64 KiB), ?follow=1 keeps streaming.
  router.add("GET", "/logs/{replica}", [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    const std::string replica = request.params["replica"];
    if (api::validate_name(replica).ok() == false) {
      co_await writer.send(http::error_json(400, "invalid replica name", "invalid_request"));
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
  if (!impl.options.sim_gpus.empty()) {
    auto gpus = parse_sim_gpus(impl.options.sim_gpus, impl.options.name);
    if (!gpus) return gpus.error();
    impl.gpus = *gpus;
  }
  impl.server = std::make_unique<http::Server>(impl.io, impl.routes());
  auto port = impl.server->listen(impl.options.listen);
  if (!port) return port.error();
  std::string host = impl.options.listen.host == "0.0.0.0" ? "127.0.0.1" : impl.options.listen.host;
  impl.url = fmt::format("http://{}", HostPort{host, *port}.to_string());
  asio::co_spawn(impl.io, impl.join_loop(), asio::detached);
  impl.thread = std::thread([&impl] { impl.io.run(); });
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
  impl.stop_all_engines();
}

std::string Agent::url() const {
  return impl_->url;
}

}  // namespace nebula::agent
