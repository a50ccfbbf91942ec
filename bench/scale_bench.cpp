// The control plane at scale, two measurements (docs/benchmarks.md, "The scheduler at scale"):
//
//   scale_bench place [--nodes N]... [--replicas R]... [--store sqlite|etcd|etcd-json]... [--one-write-per-placement]
//     In process, on a SqliteStore in a temporary directory or on a real one-member etcd the bench
//     starts (etcd on PATH; a fresh one per row): N Ready nodes of 8 × 80 GiB GPUs and R pending
//     single-GPU replicas; times the controller's passes until every replica is placed (each
//     placement a compare-and-swap write, written in transactions of up to 128, and an event, as
//     in production): this process's CPU, etcd's CPU, and the wall clock. etcd-json: etcd with
//     the pass's transactions through etcd's JSON gateway instead of its gRPC API (the baseline).
//     --one-write-per-placement hides the store's transactions (Store::put_all) from the
//     controller, as before they existed: one compare-and-swap write per placement.
//     --txns-in-flight N: on etcd, how many of a pass's transactions are in flight at once
//     (Store::put_batches; 4 by default, 1 = one after another).
//
//   scale_bench idle --nodes N --replicas R [--pending P] [--seconds S]
//     A real `nebula server` and N fake agents in this process, each a loopback HTTP client doing
//     what `nebula agent` does when nothing changes: a heartbeat every 2 s, a replica watch, a
//     status report when one of its replicas is placed. R replicas are deployed and reported
//     Ready, P more cannot be placed anywhere; once the cluster is quiet, the server's CPU time
//     (utime + stime from /proc) is sampled over S seconds and reported as CPU-s per minute, with
//     the controller's work over the same window (its passes, deployments reconciled, nodes
//     checked, scheduler runs, per minute) from the pass lines it logs at debug level.
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <time.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "bench_support.h"
#include "common/asio.h"
#include "common/clock.h"
#include "controlplane/controlplane.h"
#include "controlplane/resources.h"
#include "scheduler/scheduler.h"
#include "store/etcd_store.h"
#include "store/forwarding_store.h"
#include "store/sqlite_store.h"

namespace {

using namespace nebula;
using namespace std::chrono_literals;
using bench::Clock;

constexpr int kGpusPerNode = 8;
constexpr int64_t kGpuMemoryMb = 81920;

json gpus_json() {
  json gpus = json::array();
  for (int index = 0; index < kGpusPerNode; ++index) {
    gpus.push_back(json{{"index", index},
                        {"uuid", fmt::format("GPU-sim-{}", index)},
                        {"name", "NVIDIA H100 80GB HBM3"},
                        {"memory_total_mb", kGpuMemoryMb},
                        {"memory_used_mb", 0}});
  }
  return gpus;
}

// CPU time of this process so far, in ms: the machine may be shared, so placement is timed on the
// CPU it used rather than on the wall clock.
double cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1000 + static_cast<double>(now.tv_nsec) / 1e6;
}

// ---- place ---------------------------------------------------------------------------------

struct PlaceResult {
  double create_ms = 0;
  double memory_ms = 0;  // the scheduler alone: the same placements in memory, no store
  double place_ms = 0;   // CPU of this process (the controller, the store's client)
  double etcd_ms = 0;    // CPU of etcd over the same passes
  double wall_ms = 0;    // the passes, not the counting between them
  int passes = 0;
  int placed = 0;
  int nodes_used = 0;
};

// A store that hides put_all (the default answers Unavailable): the controller falls back to one
// compare-and-swap write per placement, as it did before batches.
class OneWriteAtATime final : public store::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  Result<std::vector<int64_t>> put_all(const std::vector<store::Put>& puts) override {
    return store::Store::put_all(puts);
  }
};

// The etcd binary on PATH.
std::string etcd_binary() {
  const char* path = std::getenv("PATH");
  std::stringstream directories(path ? path : "/usr/bin");
  for (std::string directory; std::getline(directories, directory, ':');) {
    std::string candidate = directory + "/etcd";
    if (!directory.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  throw std::runtime_error("etcd is not on PATH (Debian: apt install etcd-server)");
}

// A one-member etcd on free loopback ports, data in `dir`; killed by the destructor.
class Etcd {
 public:
  explicit Etcd(const std::string& dir) {
    int client = bench::free_port();
    int peer = bench::free_port();
    url_ = fmt::format("http://127.0.0.1:{}", client);
    std::string peer_url = fmt::format("http://127.0.0.1:{}", peer);
    pid_ =
        bench::spawn({etcd_binary(), "--name", "bench", "--data-dir", dir + "/etcd", "--listen-client-urls", url_,
                      "--advertise-client-urls", url_, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls",
                      peer_url, "--initial-cluster", "bench=" + peer_url, "--log-level", "error"},
                     dir + "/etcd.log");
    http::BlockingClient client_http;
    bool healthy = bench::wait_until(
        [&] {
          auto response = client_http.request("GET", url_ + "/health");
          return response && response->status == 200 && response->body.find("true") != std::string::npos;
        },
        20s, 50ms);
    if (!healthy) throw std::runtime_error("etcd did not start; see " + dir + "/etcd.log");
  }
  ~Etcd() { bench::stop(pid_); }
  Etcd(const Etcd&) = delete;
  Etcd& operator=(const Etcd&) = delete;
  const std::string& url() const { return url_; }
  pid_t pid() const { return pid_; }

 private:
  std::string url_;
  pid_t pid_ = 0;
};

struct PlaceOptions {
  std::string store = "sqlite";  // sqlite | etcd
  bool one_write_per_placement = false;
  size_t txns_in_flight = store::kBatchesInFlight;  // etcd: EtcdOptions::batches_in_flight
};

// Writes resources in transactions of up to store::kMaxBatch (setting up, not timed), in the
// form Resources keeps them.
class BatchCreator {
 public:
  explicit BatchCreator(store::Store& store) : store_(store) {}
  ~BatchCreator() { flush(); }
  template <typename T>
  void create(const T& object) {
    puts_.push_back({api::store_key(controlplane::Traits<T>::kPlural, object.metadata.name),
                     controlplane::Resources::stored_json(object).dump(), store::Precondition::absent()});
    if (puts_.size() == store::kMaxBatch) flush();
  }
  void flush() {
    if (puts_.empty()) return;
    if (auto written = store_.put_all(puts_); !written) throw std::runtime_error(written.error().message);
    puts_.clear();
  }

 private:
  store::Store& store_;
  std::vector<store::Put> puts_;
};

PlaceResult run_place(int node_count, int replica_count, const std::string& scratch, const PlaceOptions& place) {
  std::filesystem::remove_all(scratch);
  std::filesystem::create_directories(scratch);
  std::unique_ptr<Etcd> etcd;
  std::unique_ptr<store::Store> opened;
  if (place.store == "etcd" || place.store == "etcd-json") {
    etcd = std::make_unique<Etcd>(scratch);
    store::EtcdOptions options;
    options.endpoints = {etcd->url()};
    options.batches_in_flight = place.txns_in_flight;
    options.grpc_batches = place.store == "etcd";
    auto etcd_store = store::EtcdStore::open(options);
    if (!etcd_store) throw std::runtime_error(etcd_store.error().message);
    opened = std::move(*etcd_store);
  } else {
    auto sqlite = store::SqliteStore::open(scratch + "/nebula.db");
    if (!sqlite) throw std::runtime_error(sqlite.error().message);
    opened = std::move(*sqlite);
  }
  std::unique_ptr<store::Store> unbatched;
  if (place.one_write_per_placement) unbatched = std::make_unique<OneWriteAtATime>(*opened);
  store::Store& store = unbatched ? *unbatched : *opened;
  controlplane::Resources resources(store);
  int64_t now_ms = to_unix_ms(SystemClock::instance().wall_now());
  BatchCreator creator(*opened);
  for (int i = 0; i < node_count; ++i) {
    api::Node node;
    node.metadata.name = fmt::format("node-{:04}", i);
    node.metadata.uid = fmt::format("uid-node-{}", i);
    node.metadata.created_ms = now_ms;
    node.status.ready = true;
    node.status.heartbeat_ms = now_ms;
    node.status.engines = {"sim"};
    auto parsed =
        api::node_from_json(json{{"metadata", {{"name", node.metadata.name}}}, {"status", {{"gpus", gpus_json()}}}});
    node.status.gpus = parsed->status.gpus;
    creator.create(node);
  }
  creator.flush();
  // The controller runs before the replicas exist, as on a leader that has been up for a while:
  // its informer has listed the nodes, and the replicas reach it by its watch.
  controlplane::Options options;
  controlplane::Controller controller(resources, options);
  controller.reconcile();
  // Deployments of at most 1,000 replicas (the API's limit), each replica asking 4 GiB of one GPU (20 fit on a GPU).
  PlaceResult result;
  auto start = Clock::now();
  int deployments = (replica_count + 999) / 1000;
  for (int d = 0; d < deployments; ++d) {
    int count = std::min(1000, replica_count - d * 1000);
    api::Deployment deployment;
    deployment.metadata.name = fmt::format("model-{:02}", d);
    deployment.spec.model = "sim-8b";
    deployment.spec.engine = "sim";
    deployment.spec.replicas = count;
    deployment.spec.vram_mb = 4096;
    deployment.metadata.uid = "uid-" + deployment.metadata.name;
    deployment.metadata.created_ms = now_ms;
    creator.create(deployment);
    for (int r = 0; r < count; ++r) {
      api::Replica replica;
      replica.metadata.name = fmt::format("{}-{:05}", deployment.metadata.name, r);
      replica.spec.deployment = deployment.metadata.name;
      replica.spec.model = deployment.spec.model;
      replica.spec.engine = "sim";
      replica.spec.vram_mb = deployment.spec.vram_mb;
      replica.spec.plan_version = 1;
      replica.status.phase = api::phase::kPending;
      replica.metadata.uid = "uid-" + replica.metadata.name;
      replica.metadata.created_ms = now_ms;
      creator.create(replica);
    }
  }
  creator.flush();
  result.create_ms = bench::ms_since(start);

  {
    auto nodes = resources.list<api::Node>();
    auto pending = resources.list<api::Replica>();
    api::DeploymentSpec spec;
    spec.vram_mb = 4096;
    double memory_start = cpu_ms();
    scheduler::Capacity capacity(nodes, {});
    for (const auto& replica : pending) {
      auto placement = capacity.place(scheduler::request_for(replica, spec));
      if (placement) capacity.add(*placement);
    }
    result.memory_ms = cpu_ms() - memory_start;
  }

  // etcd's CPU counts the passes only, not the listings that check them.
  double etcd_start = etcd ? bench::cpu_seconds(etcd->pid()) : 0;
  double pass_start = cpu_ms();
  start = Clock::now();
  for (result.passes = 1; result.passes <= 50; ++result.passes) {
    controller.reconcile();
    result.place_ms += cpu_ms() - pass_start;
    result.wall_ms += bench::ms_since(start);
    if (etcd) result.etcd_ms += (bench::cpu_seconds(etcd->pid()) - etcd_start) * 1000;
    auto replicas = resources.list<api::Replica>();
    int placed = 0;
    std::set<std::string> nodes;
    for (const auto& replica : replicas) {
      if (replica.spec.node.empty()) continue;
      ++placed;
      nodes.insert(replica.spec.node);
    }
    result.placed = placed;
    result.nodes_used = static_cast<int>(nodes.size());
    if (placed >= replica_count) break;
    etcd_start = etcd ? bench::cpu_seconds(etcd->pid()) : 0;
    pass_start = cpu_ms();
    start = Clock::now();
  }
  etcd.reset();
  std::filesystem::remove_all(scratch);
  return result;
}

// ---- idle ----------------------------------------------------------------------------------

using nebula::bench::cpu_seconds;

int64_t rss_kb(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return 0;
}

// (Bodies are built outside the coroutines: g++ 12 rejects braced json initializers in them.)
std::string node_status_body() {
  return json{{"gpus", gpus_json()}, {"engines", json::array({"sim"})}, {"gpu_probe", "sim"}}.dump();
}
std::string ready_status_body() {
  return json{{"phase", "Ready"}, {"endpoint", "http://127.0.0.1:9"}, {"port", 9}}.dump();
}

// What `nebula agent` does when nothing changes, minus engines: heartbeats, a replica watch (only
// its own node's replicas, filtered by the server), a Ready report for each replica placed here.
class FakeAgent {
 public:
  FakeAgent(asio::io_context& io, std::string server, std::string name, std::string token)
      : io_(io), client_(io), server_(std::move(server)), name_(std::move(name)), token_(std::move(token)) {}

  void start() { asio::co_spawn(io_, run(), asio::detached); }
  std::atomic<int> reported{0};
  std::atomic<bool> joined{false};

 private:
  std::string api(const std::string& path) const { return server_ + "/api/v1" + path; }
  std::string join_body() const { return json{{"token", token_}, {"name", name_}}.dump(); }

  awaitable<void> run() {
    while (true) {
      auto response = co_await client_.request("POST", api("/nodes/join"), join_body(), {}, 10s);
      if (response && response->status == 200) break;
      asio::steady_timer timer(io_, 500ms);
      co_await timer.async_wait(asio::use_awaitable);
    }
    asio::co_spawn(io_, heartbeats(), asio::detached);
    asio::co_spawn(io_, watch(), asio::detached);
  }

  awaitable<void> heartbeats() {
    const std::string body = node_status_body();
    asio::steady_timer timer(io_);
    while (true) {
      auto response = co_await client_.request("PUT", api("/nodes/" + name_ + "/status"), body, {}, 10s);
      if (response && response->status == 200) joined = true;
      timer.expires_after(2s);
      co_await timer.async_wait(asio::use_awaitable);
    }
  }

  awaitable<void> report(std::string replica) {
    auto response =
        co_await client_.request("PUT", api("/replicas/" + replica + "/status"), ready_status_body(), {}, 10s);
    if (response && response->status == 200) ++reported;
  }

  void consider(const json& object) {
    auto replica = api::replica_from_json(object);
    if (!replica || replica->spec.node != name_ || replica->spec.stop) return;
    if (replica->status.phase == api::phase::kReady || !reporting_.insert(replica->metadata.name).second) return;
    asio::co_spawn(io_, report(replica->metadata.name), asio::detached);
  }

  awaitable<void> watch() {
    while (true) {
      auto listing = co_await client_.request("GET", api("/replicas?node=" + name_), "", {}, 30s);
      if (!listing || listing->status != 200) {
        asio::steady_timer timer(io_, 1s);
        co_await timer.async_wait(asio::use_awaitable);
        continue;
      }
      auto document = parse_json(listing->body);
      if (!document) continue;
      for (const auto& item : (*document)["items"]) consider(item);
      int64_t revision = document->value("revision", int64_t{0});
      auto stream = co_await client_.open(
          "GET", api(fmt::format("/replicas?watch=1&node={}&revision={}", name_, revision + 1)), "", {}, 30s);
      if (!stream || (*stream)->status != 200) continue;
      std::string pending;
      while (true) {
        auto piece = co_await (*stream)->read(60s);
        if (!piece || piece->empty()) break;
        pending += *piece;
        size_t newline;
        while ((newline = pending.find('\n')) != std::string::npos) {
          std::string line = pending.substr(0, newline);
          pending.erase(0, newline + 1);
          auto event = parse_json(line);
          if (event && event->is_object() && event->value("type", "") == "PUT") consider((*event)["object"]);
        }
      }
    }
  }

  asio::io_context& io_;
  http::Client client_;
  std::string server_;
  std::string name_;
  std::string token_;
  std::set<std::string> reporting_;
};

// What the controller did, from the lines it logs at debug level after each pass ("controller: full
// pass: 11 deployment(s) reconciled, 100 node(s) checked, scheduler idle") appended to the
// server's log from `offset` on.
struct ControllerWork {
  int passes = 0;
  int full_passes = 0;
  int deployments = 0;
  int nodes = 0;
  int scheduler_runs = 0;
};

ControllerWork controller_work(const std::string& log, uintmax_t offset) {
  ControllerWork work;
  std::ifstream in(log);
  in.seekg(static_cast<std::streamoff>(offset));
  std::string line;
  while (std::getline(in, line)) {
    auto at = line.find("controller: ");
    if (at == std::string::npos || line.find(" pass: ", at) == std::string::npos) continue;
    int deployments = 0;
    int nodes = 0;
    char scheduler[8] = {};
    auto pass = line.find(" pass: ", at);
    if (std::sscanf(line.c_str() + pass, " pass: %d deployment(s) reconciled, %d node(s) checked, scheduler %7s",
                    &deployments, &nodes, scheduler) != 3) {
      continue;
    }
    ++work.passes;
    if (line.compare(at, 17, "controller: full ") == 0) ++work.full_passes;
    work.deployments += deployments;
    work.nodes += nodes;
    if (std::string(scheduler) == "ran") ++work.scheduler_runs;
  }
  return work;
}

int run_idle(int node_count, int replica_count, int pending, int seconds) {
  std::string dir = std::filesystem::temp_directory_path() / fmt::format("nebula-scale-bench-{}", getpid());
  std::filesystem::create_directories(dir);
  int port = bench::free_port();
  std::string url = fmt::format("http://127.0.0.1:{}", port);
  pid_t server = bench::spawn({bench::nebula_binary(), "server", "--listen", fmt::format("127.0.0.1:{}", port),
                               "--data-dir", dir, "--load-scrape-interval", "0", "--log-level", "debug"},
                              dir + "/server.log");
  http::BlockingClient client;
  auto healthy = [&] {
    auto response = client.request("GET", url + "/healthz");
    return response && response->status == 200;
  };
  if (!bench::wait_until(healthy, 20s, 50ms)) {
    throw std::runtime_error("nebula server did not start; see " + dir + "/server.log");
  }
  std::string token;
  std::ifstream(dir + "/join-token") >> token;

  asio::io_context io;
  std::vector<std::unique_ptr<FakeAgent>> agents;
  for (int i = 0; i < node_count; ++i) {
    agents.push_back(std::make_unique<FakeAgent>(io, url, fmt::format("node-{:04}", i), token));
    agents.back()->start();
  }
  std::thread io_thread([&io] {
    auto guard = asio::make_work_guard(io);
    io.run();
  });
  auto joined = [&] {
    int count = 0;
    for (auto& agent : agents) count += agent->joined ? 1 : 0;
    return count;
  };
  bool all_joined = bench::wait_until([&] { return joined() == node_count; }, 120s, 100ms);
  std::cout << fmt::format("{} of {} nodes joined\n", joined(), node_count);
  (void)all_joined;

  auto deploy = [&](const std::string& name, int replicas, int64_t vram_mb) {
    json body = {{"name", name},
                 {"spec", {{"model", "sim-8b"}, {"engine", "sim"}, {"replicas", replicas}, {"vram_mb", vram_mb}}}};
    auto response =
        client.request("POST", url + "/api/v1/deployments", body.dump(), {{"Content-Type", "application/json"}});
    if (!response || response->status >= 300) {
      throw std::runtime_error("deploy failed: " + (response ? response->body : response.error().message));
    }
  };
  for (int d = 0; d * 100 < replica_count; ++d)
    deploy(fmt::format("model-{:02}", d), std::min(100, replica_count - d * 100), 8192);
  if (pending > 0) deploy("too-big", pending, 4 * 1024 * 1024);
  auto reported = [&] {
    int count = 0;
    for (auto& agent : agents) count += agent->reported;
    return count;
  };
  auto settle_start = Clock::now();
  bench::wait_until([&] { return reported() >= replica_count; }, 600s, 200ms);
  std::cout << fmt::format("{} replicas Ready after {:.1f} s\n", reported(), bench::ms_since(settle_start) / 1000);
  // Let the controller write the deployments' status and the events settle.
  std::this_thread::sleep_for(5s);

  const std::string log = dir + "/server.log";
  auto log_before = std::filesystem::file_size(log);
  double cpu_before = cpu_seconds(server);
  auto window_start = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  double cpu = cpu_seconds(server) - cpu_before;
  double window_s = bench::ms_since(window_start) / 1000;
  ControllerWork work = controller_work(log, log_before);
  double per_minute = cpu * 60 / window_s;
  std::cout << fmt::format(
      "| {} nodes | {} replicas | {} pending | {:.2f} CPU-s/min | {:.1f} % of a core | RSS {} MiB |\n", node_count,
      replica_count, pending, per_minute, per_minute / 60 * 100, rss_kb(server) / 1024);
  auto rate = [&](int count) { return count * 60 / window_s; };
  if (work.passes == 0) {
    std::cout << "controller work: no pass logged (a server that does not log its passes)\n";
  } else {
    std::cout << fmt::format(
        "controller work per minute: {:.0f} passes ({:.0f} full), {:.0f} deployments reconciled, {:.0f} node "
        "checks, {:.0f} scheduler runs\n",
        rate(work.passes), rate(work.full_passes), rate(work.deployments), rate(work.nodes), rate(work.scheduler_runs));
  }
  auto db_size = std::filesystem::file_size(dir + "/nebula.db");
  std::cout << fmt::format("store file {:.1f} MiB\n", static_cast<double>(db_size) / (1024 * 1024));

  io.stop();
  io_thread.join();
  agents.clear();
  bench::stop(server);
  std::filesystem::remove_all(dir);
  return 0;
}

std::vector<int> numbers(char** begin, char** end, const std::string& flag, std::vector<int> fallback) {
  std::vector<int> values;
  for (char** arg = begin; arg + 1 < end; ++arg) {
    if (*arg == flag) values.push_back(std::atoi(*(arg + 1)));
  }
  return values.empty() ? fallback : values;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  spdlog::set_level(spdlog::level::err);
  std::string command = argc > 1 ? argv[1] : "";
  try {
    if (command == "place") {
      auto nodes = numbers(argv, argv + argc, "--nodes", {100, 1000});
      auto replicas = numbers(argv, argv + argc, "--replicas", {1000, 10000});
      std::vector<std::string> stores;
      for (char** arg = argv; arg + 1 < argv + argc; ++arg) {
        if (std::string(*arg) == "--store") stores.push_back(*(arg + 1));
      }
      if (stores.empty()) stores = {"sqlite", "etcd", "etcd-json"};
      PlaceOptions place;
      for (char** arg = argv; arg < argv + argc; ++arg) {
        if (std::string(*arg) == "--one-write-per-placement") place.one_write_per_placement = true;
      }
      int in_flight = numbers(argv, argv + argc, "--txns-in-flight", {int(store::kBatchesInFlight)})[0];
      if (in_flight < 1 || in_flight > 64) throw std::runtime_error("--txns-in-flight is 1 to 64");
      place.txns_in_flight = static_cast<size_t>(in_flight);
      std::string scratch = std::filesystem::temp_directory_path() / fmt::format("nebula-place-bench-{}", getpid());
      std::cout << "| nodes | replicas | store | scheduler alone (CPU ms) | controller + store client (CPU ms) | etcd "
                   "(CPU ms) | wall (ms) | passes | placed | nodes used |\n"
                   "|---|---|---|---|---|---|---|---|---|---|\n";
      for (int node_count : nodes) {
        for (int replica_count : replicas) {
          for (const auto& kind : stores) {
            if (kind != "sqlite" && kind != "etcd" && kind != "etcd-json") {
              throw std::runtime_error("--store is sqlite, etcd or etcd-json");
            }
            place.store = kind;
            auto result = run_place(node_count, replica_count, scratch, place);
            std::cout << fmt::format("| {} | {} | {} | {:.0f} | {:.0f} | {} | {:.0f} | {} | {} | {} |\n", node_count,
                                     replica_count, kind, result.memory_ms, result.place_ms,
                                     kind != "sqlite" ? fmt::format("{:.0f}", result.etcd_ms) : "-", result.wall_ms,
                                     result.passes, result.placed, result.nodes_used)
                      << std::flush;
          }
        }
      }
      return 0;
    }
    if (command == "idle") {
      int nodes = numbers(argv, argv + argc, "--nodes", {100})[0];
      int replicas = numbers(argv, argv + argc, "--replicas", {0})[0];
      int pending = numbers(argv, argv + argc, "--pending", {0})[0];
      int seconds = numbers(argv, argv + argc, "--seconds", {30})[0];
      return run_idle(nodes, replicas, pending, seconds);
    }
  } catch (const std::exception& error) {
    std::cerr << "scale_bench: " << error.what() << "\n";
    return 1;
  }
  std::cerr << "usage: scale_bench place [--nodes N]... [--replicas R]... [--store sqlite|etcd]... "
               "[--one-write-per-placement] [--txns-in-flight N]\n"
               "       scale_bench idle [--nodes N] [--replicas R] [--pending P] [--seconds S]\n";
  return 2;
}
