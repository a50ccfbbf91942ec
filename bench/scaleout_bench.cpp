// Scale-out: small requests through 1 and 2 `nebula gateway` processes (2 share one port with
// SO_REUSEPORT), limits counted in memory and in Redis, against nginx with 1 and 2 workers, and
// the CPU one Redis limit check costs. Starts its own `nebula up --auth keys`, redis-server and
// nginx (when /usr/sbin/nginx exists) on free loopback ports.
//
//   build/bench/scaleout_bench [--requests N] [--concurrency C] [--checks N] [--rows 0|1]
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "bench_support.h"
#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "gateway/redis_limiter.h"

namespace {
using namespace nebula;
using bench::Clock;

using nebula::bench::cpu_seconds;

// A process and its children (nginx's workers).
double tree_cpu_seconds(pid_t pid) {
  double total = cpu_seconds(pid);
  std::ifstream children(fmt::format("/proc/{}/task/{}/children", pid, pid));
  for (pid_t child; children >> child;) total += cpu_seconds(child);
  return total;
}

struct Result {
  double rate = 0, p50 = 0, p99 = 0, cpu_us_per_request = 0;
  double last_cpu_us_per_request = 0;  // the last of the measured processes' share (redis-server's)
  int failed = 0;
};

awaitable<void> worker(http::Client& client, std::string url, std::string body, http::Headers headers, int& next,
                       int total, std::vector<double>& latencies, int& failed) {
  while (next < total) {
    int index = next++;
    auto start = Clock::now();
    auto response = co_await client.request("POST", url, body, headers, std::chrono::seconds(30));
    if (!response || response->status != 200) ++failed;
    latencies[index] = bench::ms_since(start);
  }
}

// Small non-streamed requests from `concurrency` connections; cpu of `measured` per request.
Result run_load(const std::string& url, const http::Headers& headers, int requests, int concurrency,
                const std::vector<pid_t>& measured) {
  asio::io_context io;
  http::ClientOptions options;
  options.max_idle_per_host = static_cast<size_t>(concurrency);
  http::Client client(io, options);
  std::string body = R"({"model":"fast","max_tokens":1,"messages":[{"role":"user","content":"benchmark prompt"}]})";
  std::vector<double> latencies(requests, 0);
  int next = 0, failed = 0;
  for (int i = 0; i < concurrency; ++i) {
    asio::co_spawn(io, worker(client, url + "/v1/chat/completions", body, headers, next, requests, latencies, failed),
                   asio::detached);
  }
  double cpu_before = 0;
  for (pid_t pid : measured) cpu_before += tree_cpu_seconds(pid);
  double last_before = measured.empty() ? 0 : tree_cpu_seconds(measured.back());
  auto start = Clock::now();
  io.run();
  Result result;
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  double cpu = -cpu_before;
  for (pid_t pid : measured) cpu += tree_cpu_seconds(pid);
  result.rate = requests / seconds;
  result.p50 = bench::quantile(latencies, 0.5);
  result.p99 = bench::quantile(latencies, 0.99);
  result.cpu_us_per_request = cpu * 1e6 / requests;
  if (!measured.empty())
    result.last_cpu_us_per_request = (tree_cpu_seconds(measured.back()) - last_before) * 1e6 / requests;
  result.failed = failed;
  return result;
}

pid_t start_nginx(const std::string& dir, int port, const std::string& engine, int workers) {
  if (!std::filesystem::exists("/usr/sbin/nginx")) return -1;
  std::filesystem::create_directories(dir + "/logs");
  std::ofstream conf(dir + "/nginx.conf");
  conf << (workers == 1 ? "master_process off;\n" : "") << "worker_processes " << workers << ";\n"
       << (::getuid() == 0 ? "user root;\n" : "") << "pid " << dir << "/nginx.pid;\nerror_log " << dir
       << "/logs/error.log;\n"
       << "events { worker_connections 4096; }\nhttp {\n  access_log off;\n"
       << "  client_body_temp_path " << dir << "/body;\n  proxy_temp_path " << dir << "/proxy;\n"
       << "  upstream engine { server " << engine.substr(7) << "; keepalive 512; }\n"
       << "  server {\n    listen 127.0.0.1:" << port << ";\n    location / {\n"
       << "      proxy_pass http://engine;\n      proxy_http_version 1.1;\n"
       << "      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }\n  }\n}\n";
  conf.close();
  return bench::spawn({"/usr/sbin/nginx", "-p", dir, "-c", dir + "/nginx.conf", "-g", "daemon off;"},
                      dir + "/nginx.out");
}

bool answers(const std::string& url) {
  http::BlockingClient client;
  return bench::wait_until(
      [&] {
        auto answer = client.request("GET", url, "", {}, std::chrono::milliseconds(500));
        return answer && answer->status < 500;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(50));
}

api::ApiKey limited_key(const std::string& name) {
  api::ApiKey key;
  key.metadata.name = name;
  key.rpm = 100'000'000;
  key.tpm = 1'000'000'000'000;
  key.max_concurrency = 100'000;
  key.budget_tokens = 1'000'000'000'000'000;
  return key;
}

api::ApiKey rpm_only_key(const std::string& name) {
  api::ApiKey key;
  key.metadata.name = name;
  key.rpm = 100'000'000;
  return key;
}

// Redis's own counts: script runs (EVALSHA calls) and reads of client commands (one per round
// trip of a pipelining client), from INFO; {0, 0} when redis-cli fails.
struct RedisCounts {
  double script_runs = 0, reads = 0;
};
RedisCounts redis_counts(const std::string& redis_url, const std::string& scratch) {
  RedisCounts counts;
  try {
    std::istringstream info(bench::run({"/usr/bin/redis-cli", "-u", redis_url, "INFO", "all"}, scratch));
    for (std::string line; std::getline(info, line);) {
      if (line.rfind("cmdstat_evalsha:calls=", 0) == 0) counts.script_runs = std::atof(line.c_str() + 22);
      if (line.rfind("total_reads_processed:", 0) == 0) counts.reads = std::atof(line.c_str() + 22);
    }
  } catch (const std::exception&) {
  }
  return counts;
}

struct CheckResult {
  double caller_cpu_us = 0, redis_cpu_us = 0, wall_p50_us = 0, wall_p99_us = 0, rate = 0;
};

// `checks` admissions and their finishes, `in_flight` at a time (1: one after another), each
// finish called as soon as its admission is answered. caller cpu = this whole process (the
// limiter's own thread included) per request.
CheckResult run_checks(gateway::Limiter& limiter, const api::ApiKey& key, int checks, int in_flight, pid_t redis) {
  std::vector<double> walls(checks);
  std::mutex mutex;
  std::condition_variable all_done;
  int issued = 0, done = 0;
  std::function<void()> issue = [&] {
    int index;
    {
      std::lock_guard lock(mutex);
      if (issued == checks) return;
      index = issued++;
    }
    auto start = Clock::now();
    limiter.admit_async(key, 20, 0, std::chrono::steady_clock::now(), [&, index, start](gateway::Admission admitted) {
      limiter.finish(key.metadata.name, admitted.ticket, 20, 18, std::chrono::steady_clock::now());
      walls[index] = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
      issue();
      // Last: once done reaches checks, everything here may be gone.
      std::lock_guard lock(mutex);
      if (++done == checks) all_done.notify_all();
    });
  };
  double redis_before = redis > 0 ? cpu_seconds(redis) : 0;
  double cpu_before = cpu_seconds(getpid());
  auto start = Clock::now();
  for (int i = 0; i < in_flight; ++i) issue();
  {
    std::unique_lock lock(mutex);
    all_done.wait(lock, [&] { return done == checks; });
  }
  CheckResult result;
  result.rate = checks / std::chrono::duration<double>(Clock::now() - start).count();
  result.caller_cpu_us = (cpu_seconds(getpid()) - cpu_before) * 1e6 / checks;
  result.redis_cpu_us = redis > 0 ? (cpu_seconds(redis) - redis_before) * 1e6 / checks : 0;
  result.wall_p50_us = bench::quantile(walls, 0.5);
  result.wall_p99_us = bench::quantile(walls, 0.99);
  return result;
}

// The limit check alone, in this process: admit + finish per request, one after another and 32
// at a time, for a key with every limit and a key with only requests per minute.
void price_limit_checks(int checks, const std::string& redis_url, pid_t redis, const std::string& scratch) {
  gateway::RedisLimiterOptions options;
  (void)gateway::parse_redis_url(redis_url, options);
  gateway::RedisLimiter shared(options);
  if (auto started = shared.start(); !started) {
    std::cout << "redis limiter: " << started.error().message << "\n";
    return;
  }
  gateway::MemoryLimiter memory;
  std::cout << fmt::format("limit check (admit + finish), {} requests per row:\n", checks);
  std::cout << fmt::format("{:<8} {:<9} {:>9} {:>13} {:>12} {:>12} {:>10} {:>10} {:>11}\n", "limiter", "key",
                           "in flight", "caller cpu us", "redis cpu us", "total cpu us", "wall p50", "wall p99",
                           "checks/s");
  for (int round = 0; round < 2; ++round) {
    for (int in_flight : {1, 32}) {
      for (bool every_limit : {true, false}) {
        for (gateway::Limiter* limiter :
             {static_cast<gateway::Limiter*>(&memory), static_cast<gateway::Limiter*>(&shared)}) {
          bool is_redis = limiter == &shared;
          std::string name = fmt::format("bench-{}-{}-{}-{}", is_redis ? "redis" : "memory", round, in_flight,
                                         every_limit ? "all" : "rpm");
          auto key = every_limit ? limited_key(name) : rpm_only_key(name);
          auto result = run_checks(*limiter, key, checks, in_flight, is_redis ? redis : -1);
          std::cout << fmt::format("{:<8} {:<9} {:>9} {:>13.2f} {:>12.2f} {:>12.2f} {:>10.1f} {:>10.1f} {:>11.0f}\n",
                                   is_redis ? "redis" : "memory", every_limit ? "all four" : "rpm only", in_flight,
                                   result.caller_cpu_us, result.redis_cpu_us,
                                   result.caller_cpu_us + result.redis_cpu_us, result.wall_p50_us, result.wall_p99_us,
                                   result.rate)
                    << std::flush;
        }
      }
    }
  }
  std::cout << fmt::format("redis limiter: {} script runs (one per key per batch) in {} round trips\n",
                           shared.commands(), shared.batches());
  // Redis's own account of the scripts' time (the rest of its CPU is reading, parsing, writing).
  try {
    std::istringstream stats(bench::run({"/usr/bin/redis-cli", "-u", redis_url, "INFO", "commandstats"}, scratch));
    for (std::string line; std::getline(stats, line);) {
      if (line.rfind("cmdstat_evalsha:", 0) == 0) std::cout << line << "\n";
    }
  } catch (const std::exception& error) {
    std::cout << "redis-cli: " << error.what() << "\n";
  }
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 10000, concurrency = 32, checks = 20000;
  bool rows = true;  // the gateway and nginx rows after the limit checks
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    int value = std::atoi(argv[i + 1]);
    if (flag == "--requests" && value > 0) {
      requests = value;
    } else if (flag == "--concurrency" && value > 0) {
      concurrency = value;
    } else if (flag == "--checks" && value > 0) {
      checks = value;
    } else if (flag == "--rows") {
      rows = value != 0;
    } else {
      std::cerr << "usage: scaleout_bench [--requests N] [--concurrency C] [--checks N] [--rows 0|1]\n";
      return 2;
    }
  }
  std::string nebula = bench::nebula_binary();
  std::string dir = fmt::format("/tmp/nebula-scaleout-{}", getpid());
  std::filesystem::create_directories(dir);
  std::vector<pid_t> started;
  auto cleanup = [&] {
    for (auto it = started.rbegin(); it != started.rend(); ++it) bench::stop(*it);
    std::filesystem::remove_all(dir);
  };

  int redis_port = bench::free_port();
  pid_t redis = bench::spawn({"/usr/bin/redis-server", "--port", std::to_string(redis_port), "--bind", "127.0.0.1",
                              "--dir", dir, "--save", "", "--appendonly", "no"},
                             dir + "/redis.log");
  started.push_back(redis);
  std::string redis_url = fmt::format("redis://127.0.0.1:{}", redis_port);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  price_limit_checks(checks, redis_url, redis, dir + "/commandstats.txt");
  if (!rows) {
    cleanup();
    return 0;
  }

  int port = bench::free_port();
  std::string server = fmt::format("http://127.0.0.1:{}", port);
  started.push_back(
      bench::spawn({nebula, "up", "--listen", fmt::format("127.0.0.1:{}", port), "--data-dir", dir + "/data",
                    "--sim-gpus", "1xH100-80GB", "--auth", "keys", "--log-level", "error", "--exit-with-parent"},
                   dir + "/up.log"));
  if (!answers(server + "/healthz")) {
    std::cerr << "nebula up did not start; see " << dir << "/up.log\n";
    cleanup();
    return 1;
  }
  std::string admin;
  bench::wait_until([&] { return std::getline(std::ifstream(dir + "/data/admin.key"), admin) && !admin.empty(); },
                    std::chrono::seconds(10));
  http::Headers admin_headers = {{"Authorization", "Bearer " + admin}};
  http::BlockingClient client;
  std::string spec = fmt::format(
      R"({{"spec":{{"model":"bench-1b","engine":"sim","replicas":1,"max_seqs":{},"engine_args":
      ["--step-base-ms","0.02","--decode-ms-per-seq","0","--prefill-ms-per-token","0","--step-noise","0"]}}}})",
      concurrency * 4);
  auto deployed = client.request("PUT", server + "/api/v1/deployments/fast", spec, admin_headers);
  if (!deployed || deployed->status >= 300) {
    std::cerr << "the bench deployment was refused: " << (deployed ? deployed->body : deployed.error().message) << "\n";
  }
  auto created = client.request("POST", server + "/api/v1/keys",
                                R"({"name":"bench","rpm":100000000,"tpm":1000000000000,"max_concurrency":100000,
                                    "budget_tokens":1000000000000000})",
                                admin_headers);
  std::string key = created && created->status == 201 ? json::parse(created->body).value("secret", "") : "";
  auto created_rpm =
      client.request("POST", server + "/api/v1/keys", R"({"name":"bench-rpm","rpm":100000000})", admin_headers);
  std::string rpm_key =
      created_rpm && created_rpm->status == 201 ? json::parse(created_rpm->body).value("secret", "") : "";
  std::string endpoint;
  std::string last_listing;
  bench::wait_until(
      [&] {
        auto replicas = client.request("GET", server + "/api/v1/replicas", "", admin_headers);
        if (!replicas || replicas->status != 200) return false;
        last_listing = replicas->body;
        json listing = json::parse(replicas->body);
        for (const auto& item : listing["items"]) {
          if (item["status"]["phase"] == "Ready") endpoint = item["status"]["endpoint"];
        }
        return !endpoint.empty();
      },
      std::chrono::seconds(60), std::chrono::milliseconds(100));
  if (endpoint.empty() || key.empty()) {
    std::cerr << (key.empty() ? "the bench key was refused: " + (created ? created->body : created.error().message)
                              : "the bench deployment never became ready: " + last_listing.substr(0, 600))
              << "\n";
    cleanup();
    return 1;
  }
  http::Headers key_headers = {{"Authorization", "Bearer " + key}};

  // Gateways: (processes, limits) -> port and pids.
  struct Setup {
    std::string name;
    std::string url;
    std::vector<pid_t> measured;  // the proxy's processes (and redis-server when limits live there)
    http::Headers headers;
  };
  std::vector<Setup> setups = {{"direct", endpoint, {}, {}}};
  for (bool shared_limits : {false, true}) {
    for (int count : {1, 2}) {
      int gateway_port = bench::free_port();
      Setup setup{fmt::format("gateway x{} {}", count, shared_limits ? "redis" : "memory"),
                  fmt::format("http://127.0.0.1:{}", gateway_port),
                  {},
                  key_headers};
      for (int i = 0; i < count; ++i) {
        std::vector<std::string> args = {
            nebula,        "gateway", "--server",          server,
            "--api-key",   admin,     "--listen",          fmt::format("127.0.0.1:{}", gateway_port),
            "--log-level", "error",   "--exit-with-parent"};
        if (shared_limits) {
          args.push_back("--limits");
          args.push_back(redis_url);
        }
        pid_t gateway = bench::spawn(args, fmt::format("{}/gateway-{}.log", dir, started.size()));
        started.push_back(gateway);
        setup.measured.push_back(gateway);
        // Each must follow the server before the next starts (and before the load).
        answers(setup.url + "/readyz");
        bench::wait_until(
            [&] {
              auto models = client.request("GET", setup.url + "/v1/models", "", key_headers);
              return models && models->status == 200;
            },
            std::chrono::seconds(10));
      }
      if (shared_limits) setup.measured.push_back(redis);
      setups.push_back(setup);
      if (shared_limits && count == 1 && !rpm_key.empty()) {  // the same gateway, a key with RPM only
        setups.push_back({"gateway x1 redis rpm", setup.url, setup.measured, {{"Authorization", "Bearer " + rpm_key}}});
      }
    }
  }
  for (int workers : {1, 2}) {
    int nginx_port = bench::free_port();
    pid_t nginx = start_nginx(fmt::format("{}/nginx-{}", dir, workers), nginx_port, endpoint, workers);
    if (nginx > 0 && answers(fmt::format("http://127.0.0.1:{}/health", nginx_port))) {
      started.push_back(nginx);
      setups.push_back(
          {fmt::format("nginx x{}", workers), fmt::format("http://127.0.0.1:{}", nginx_port), {nginx}, {}});
    }
  }

  std::cout << fmt::format(
      "small requests (1 token, engine-sim stepping every 20 us), {} per row from {} connections; cpu = the "
      "proxy processes' CPU (with Redis: redis-server's too) per request\n",
      requests, concurrency);
  std::cout << fmt::format("{:<22} {:>9} {:>9} {:>9} {:>12} {:>14} {:>10} {:>10}\n", "path", "req/s", "p50 ms",
                           "p99 ms", "cpu us/req", "of which redis", "runs/req", "trips/req");
  for (int round = 0; round < 2; ++round) {
    for (const auto& setup : setups) {
      bool with_redis = !setup.measured.empty() && setup.measured.back() == redis;
      RedisCounts before = with_redis ? redis_counts(redis_url, dir + "/info.txt") : RedisCounts{};
      auto result = run_load(setup.url, setup.headers, requests, concurrency, setup.measured);
      RedisCounts after = with_redis ? redis_counts(redis_url, dir + "/info.txt") : RedisCounts{};
      auto per_request = [&](double count) { return with_redis ? fmt::format("{:.2f}", count / requests) : "-"; };
      std::cout << fmt::format("{:<22} {:>9.0f} {:>9.2f} {:>9.2f} {:>12} {:>14} {:>10} {:>10}{}\n", setup.name,
                               result.rate, result.p50, result.p99,
                               setup.measured.empty() ? "-" : fmt::format("{:.1f}", result.cpu_us_per_request),
                               with_redis ? fmt::format("{:.1f}", result.last_cpu_us_per_request) : "-",
                               per_request(after.script_runs - before.script_runs),
                               per_request(after.reads - before.reads),
                               result.failed ? fmt::format("  ({} failed)", result.failed) : "")
                << std::flush;
    }
  }
  cleanup();
  return 0;
}
