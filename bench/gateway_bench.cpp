// Gateway overhead: the same load sent straight to one engine-sim replica, through the Nebula
// gateway (API keys, rate limits and usage accounting on), and through nginx as a plain reverse
// proxy for reference, side by side in one run. Starts its own `nebula up --auth keys` (and
// nginx when /usr/sbin/nginx exists) on free loopback ports.
//
//   build/bench/gateway_bench [--streams N] [--stream-tokens T] [--requests N] [--concurrency C]
//                             [--only TEXT]   (only the loads whose name contains TEXT)
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "bench_support.h"
#include "common/json.h"
#include "common/subprocess.h"
#include "http/http.h"

namespace {
using namespace nebula;
using Clock = std::chrono::steady_clock;

struct Load {
  std::string name;
  int requests = 0;
  int concurrency = 0;
  int max_tokens = 0;
  bool stream = false;
  std::string model = "bench";  // the deployment (and its replica) the load goes to
};

struct Sample {
  double total_ms = 0;
  std::vector<double> gaps_ms;  // between body pieces
  bool ok = false;
};

awaitable<void> worker(http::Client& client, std::string url, std::string body, http::Headers headers, int& next,
                       int total, std::vector<Sample>& samples) {
  while (next < total) {
    int index = next++;
    auto start = Clock::now();
    Sample sample;
    auto response = co_await client.open("POST", url, body, headers, std::chrono::seconds(60));
    if (response && (*response)->status == 200) {
      auto last = start;
      while (true) {
        auto piece = co_await (*response)->read(std::chrono::seconds(60));
        if (!piece || piece->empty()) {
          sample.ok = piece.ok();
          break;
        }
        auto now = Clock::now();
        if (last != start) sample.gaps_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
        last = now;
      }
    }
    sample.total_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    samples[index] = std::move(sample);
  }
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(p * values.size()))];
}

struct LoadResult {
  double seconds = 0;
  int failed = 0;
  double p50 = 0, p99 = 0, gap50 = 0, gap99 = 0;
  double cpu_s = 0;  // of the measured process
  double rss_mb = 0;
};

using nebula::bench::cpu_seconds;

double rss_mb(pid_t pid) {
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

LoadResult run_load(const std::string& url, const http::Headers& headers, const Load& load, pid_t measured) {
  asio::io_context io;
  http::ClientOptions options;
  options.max_idle_per_host = static_cast<size_t>(load.concurrency);
  http::Client client(io, options);
  json request = {{"model", load.model},
                  {"stream", load.stream},
                  {"max_tokens", load.max_tokens},
                  {"messages", {{{"role", "user"}, {"content", "benchmark prompt with a few words"}}}}};
  if (load.stream) request["ignore_eos"] = true;
  std::vector<Sample> samples(load.requests);
  int next = 0;
  for (int i = 0; i < load.concurrency; ++i) {
    asio::co_spawn(io, worker(client, url, request.dump(), headers, next, load.requests, samples), asio::detached);
  }
  double cpu_before = measured > 0 ? cpu_seconds(measured) : 0;
  auto start = Clock::now();
  io.run();
  LoadResult result;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (measured > 0) {
    result.cpu_s = cpu_seconds(measured) - cpu_before;
    result.rss_mb = rss_mb(measured);
  }
  std::vector<double> totals, gaps;
  for (const auto& sample : samples) {
    if (!sample.ok) {
      ++result.failed;
      continue;
    }
    totals.push_back(sample.total_ms);
    gaps.insert(gaps.end(), sample.gaps_ms.begin(), sample.gaps_ms.end());
  }
  result.p50 = percentile(totals, 0.5);
  result.p99 = percentile(totals, 0.99);
  result.gap50 = percentile(gaps, 0.5);
  result.gap99 = percentile(gaps, 0.99);
  return result;
}

int free_port() {
  http::BlockingClient probe;
  static int next = 20000 + getpid() % 20000;
  while (true) {
    int port = next++;
    if (!probe.request("GET", fmt::format("http://127.0.0.1:{}/", port), "", {}, std::chrono::milliseconds(200))) {
      return port;
    }
  }
}

pid_t spawn_quiet(std::vector<std::string> args) {
  SpawnOptions options;
  options.argv = std::move(args);
  options.out = Stdio::null();
  options.err = Stdio::same_as_stdout();
  auto spawned = spawn(options);
  return spawned ? *spawned : -1;
}

// nginx as a plain streaming reverse proxy to the engine, for reference.
pid_t start_nginx(const std::string& dir, int port, const std::string& engine) {
  if (!std::filesystem::exists("/usr/sbin/nginx")) return -1;
  std::filesystem::create_directories(dir + "/logs");
  std::ofstream conf(dir + "/nginx.conf");
  conf << "master_process off;\nworker_processes 1;\npid " << dir << "/nginx.pid;\nerror_log " << dir
       << "/logs/error.log;\n"
       << "events { worker_connections 4096; }\nhttp {\n  access_log off;\n"
       << "  client_body_temp_path " << dir << "/body;\n  proxy_temp_path " << dir << "/proxy;\n"
       << "  upstream engine { server " << engine.substr(7) << "; keepalive 512; }\n"
       << "  server {\n    listen 127.0.0.1:" << port << ";\n    location / {\n"
       << "      proxy_pass http://engine;\n      proxy_http_version 1.1;\n"
       << "      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }\n  }\n}\n";
  conf.close();
  return spawn_quiet({"/usr/sbin/nginx", "-p", dir, "-c", dir + "/nginx.conf", "-g", "daemon off;"});
}

std::string self_dir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

bool wait_http(const std::string& url) {
  http::BlockingClient client;
  for (int i = 0; i < 100; ++i) {
    if (client.request("GET", url, "", {}, std::chrono::milliseconds(500))) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  int streams = 256, stream_tokens = 256, requests = 20000, concurrency = 32;
  std::string only;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    int value = std::atoi(argv[i + 1]);
    if (flag == "--only")
      only = argv[i + 1];
    else if (flag == "--streams")
      streams = value;
    else if (flag == "--stream-tokens")
      stream_tokens = value;
    else if (flag == "--requests")
      requests = value;
    else if (flag == "--concurrency")
      concurrency = value;
    else {
      std::cerr << "usage: gateway_bench [--streams N] [--stream-tokens T] [--requests N] [--concurrency C] "
                   "[--only TEXT]\n";
      return 2;
    }
  }
  std::string nebula = self_dir() + "/../nebula";
  std::string work_dir = fmt::format("/tmp/nebula-bench-{}", getpid());
  int port = free_port();
  std::string server = fmt::format("http://127.0.0.1:{}", port);
  pid_t up = spawn_quiet({nebula, "up", "--listen", fmt::format("127.0.0.1:{}", port), "--data-dir", work_dir + "/data",
                          "--sim-gpus", "1xH100-80GB", "--auth", "keys", "--log-level", "error"});
  if (up < 0 || !wait_http(server + "/healthz")) {
    std::cerr << "cannot start " << nebula << "\n";
    return 1;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  std::string admin;
  std::getline(std::ifstream(work_dir + "/data/admin.key"), admin);
  http::Headers admin_headers = {{"Authorization", "Bearer " + admin}};
  http::BlockingClient client;
  // A fast engine (1 ms steps, room for every stream in one batch) so the proxies' cost shows.
  // And a second one stepping every 20 us, for small requests: with 1 ms steps a request's latency
  // is quantised to whole steps, which hides (or magnifies) a proxy's cost of a few tens of us.
  for (auto [name, step] : {std::pair<std::string, std::string>{"bench", "1"}, {"fast", "0.02"}}) {
    std::string spec = fmt::format(
        R"({{"spec":{{"model":"bench-1b","engine":"sim","replicas":1,"max_seqs":{},"engine_args":
        ["--step-base-ms","{}","--decode-ms-per-seq","0","--prefill-ms-per-token","0","--step-noise","0"]}}}})",
        std::max(streams, concurrency) * 2, step);
    (void)client.request("PUT", server + "/api/v1/deployments/" + name, spec, admin_headers);
  }
  // The measured key has limits (high enough never to trip) and is accounted like any other.
  auto created =
      client.request("POST", server + "/api/v1/keys",
                     R"({"name":"bench","rpm":10000000,"tpm":1000000000,"max_concurrency":100000})", admin_headers);
  std::string key = created && created->status == 201 ? json::parse(created->body).value("secret", "") : "";
  std::map<std::string, std::string> endpoints;  // deployment -> its replica's endpoint
  for (int attempt = 0; attempt < 300 && endpoints.size() < 2; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto replicas = client.request("GET", server + "/api/v1/replicas", "", admin_headers);
    if (!replicas || replicas->status != 200) continue;
    json listing = json::parse(replicas->body);
    for (const auto& item : listing["items"]) {
      if (item["status"]["phase"] == "Ready") endpoints[item["spec"]["deployment"]] = item["status"]["endpoint"];
    }
  }
  if (endpoints.size() < 2 || key.empty()) {
    std::cerr << "the bench deployment never became ready\n";
    kill(up, SIGTERM);
    return 1;
  }
  // One nginx per engine, each a plain reverse proxy to it.
  std::map<std::string, int> nginx_ports;
  std::vector<pid_t> nginxes;
  for (const auto& [name, endpoint] : endpoints) {
    int nginx_port = free_port();
    pid_t nginx = start_nginx(work_dir + "/nginx-" + name, nginx_port, endpoint);
    if (nginx > 0 && !wait_http(fmt::format("http://127.0.0.1:{}/health", nginx_port))) nginx = -1;
    if (nginx > 0) {
      nginx_ports[name] = nginx_port;
      nginxes.push_back(nginx);
    }
  }
  pid_t nginx = nginxes.size() == endpoints.size() ? nginxes.front() : -1;

  std::vector<Load> loads = {
      {fmt::format("{} streams x {} tok", streams, stream_tokens), streams, streams, stream_tokens, true},
      {fmt::format("non-stream x{}", concurrency), requests, concurrency, 1, false},
      {fmt::format("non-stream x{} 20us", concurrency), requests, concurrency, 1, false, "fast"},
      // One request at a time: the added latency with no queueing, i.e. the proxy's own time.
      {"non-stream x1 20us", std::max(1, requests / 4), 1, 1, false, "fast"}};
  std::cout << fmt::format(
      "gateway_bench: engine-sim at 1 ms/step; gateway with --auth keys, a limited key and "
      "usage accounting; nginx {}\n\n",
      nginx > 0                                    ? "1 worker, proxy_buffering off"
      : std::filesystem::exists("/usr/sbin/nginx") ? "did not start (skipped)"
                                                   : "not installed (skipped)");
  std::cout << fmt::format("{:<26} {:<8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>7} {:>7}\n", "load",
                           "path", "req/s", "tok/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "chunk p50", "chunk p99",
                           "cpu s", "rss MB");
  for (const auto& load : loads) {
    if (load.name.find(only) == std::string::npos) continue;
    LoadResult direct;
    for (int round = 0; round < 2; ++round) {
      struct Path {
        std::string name;
        std::string url;
        http::Headers headers;
        pid_t measured;
      };
      std::vector<Path> paths = {{"direct", endpoints[load.model], {}, -1},
                                 {"gateway", server, {{"Authorization", "Bearer " + key}}, up}};
      if (nginx > 0) {
        size_t which = load.model == endpoints.begin()->first ? 0 : 1;
        paths.push_back({"nginx", fmt::format("http://127.0.0.1:{}", nginx_ports[load.model]), {}, nginxes[which]});
      }
      for (const auto& path : paths) {
        auto result = run_load(path.url + "/v1/chat/completions", path.headers, load, path.measured);
        if (path.name == "direct") direct = result;
        double rate = load.requests / result.seconds;
        std::string added50 = path.name == "direct" ? "-" : fmt::format("{:.2f}", result.p50 - direct.p50);
        std::string added99 = path.name == "direct" ? "-" : fmt::format("{:.2f}", result.p99 - direct.p99);
        std::string cpu = path.measured > 0 ? fmt::format("{:.2f}", result.cpu_s) : "-";
        std::string rss = path.measured > 0 ? fmt::format("{:.0f}", result.rss_mb) : "-";
        std::cout
            << fmt::format(
                   "{:<26} {:<8} {:>8.0f} {:>9.0f} {:>9.2f} {:>9.2f} {:>10} {:>10} {:>9.2f} {:>9.2f} {:>7} {:>7}{}\n",
                   load.name, path.name, rate, rate * load.max_tokens, result.p50, result.p99, added50, added99,
                   result.gap50, result.gap99, cpu, rss,
                   result.failed ? fmt::format("  ({} failed)", result.failed) : "")
            << std::flush;
      }
    }
  }
  for (pid_t each : nginxes) kill(each, SIGTERM);
  kill(up, SIGTERM);
  int status = 0;
  waitpid(up, &status, 0);
  for (pid_t each : nginxes) waitpid(each, &status, 0);
  std::filesystem::remove_all(work_dir);
  return 0;
}
