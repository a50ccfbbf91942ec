// Does reporting to xtrace cost requests anything? The same load through the gateway of a
// `nebula up` with xtrace off, reporting to an xtrace that is down (nothing listens), to one that
// accepts connections and never answers (a black hole), and to one that answers after 2 s (slow);
// latency percentiles and the server's CPU per request side by side. The xtrace stand-ins are
// the tests' xtrace server (tests/xtrace_server.h) with scripted faults.
//
//   build/bench/xtrace_bench [--requests N] [--concurrency C] [--max-tokens T] [--stream]
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "bench_support.h"
#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include "process_helpers.h"
#include "xtrace_server.h"

namespace {
using namespace nebula;
using bench::Clock;

struct Settings {
  int requests = 3000;
  int concurrency = 8;
  int max_tokens = 8;
  bool stream = false;
};

using nebula::bench::cpu_seconds;

// Outside the coroutine: g++ 12 miscompiles braced initialisers of string literals inside one.
http::Headers json_headers() {
  return {{"Content-Type", "application/json"}};
}

awaitable<void> worker(http::Client& client, std::string url, std::string body, int& next, int total,
                       std::vector<double>& latencies, int& failed) {
  while (next < total) {
    int index = next++;
    auto start = Clock::now();
    auto response = co_await client.open("POST", url, body, json_headers(), std::chrono::seconds(60));
    bool ok = response && (*response)->status == 200;
    if (ok) ok = (co_await (*response)->read_all(std::chrono::seconds(60))).ok();
    if (!ok) ++failed;
    latencies[index] = bench::ms_since(start);
  }
}

struct Measured {
  std::string name;
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
  double rps = 0;
  double cpu_us_per_request = 0;
  int failed = 0;
  std::string xtrace;  // what the client's counters said afterwards
};

std::string counter(const std::string& metrics, const std::string& series) {
  auto at = metrics.find(series + " ");
  if (at == std::string::npos) return "-";
  auto end = metrics.find('\n', at);
  return metrics.substr(at + series.size() + 1, end - at - series.size() - 1);
}

Measured measure(const std::string& name, const std::vector<std::string>& flags, const Settings& settings) {
  bench::Up up("xtrace-bench", "1xH100-80GB", flags);
  // A fast engine (20 us steps, room for every request at once) so the gateway's cost shows.
  up.cli({"deploy", "fast", "--engine", "sim", "--model", "bench-1b", "--max-seqs",
          std::to_string(settings.concurrency * 2), "--engine-arg=--step-base-ms", "--engine-arg=0.02",
          "--engine-arg=--decode-ms-per-seq", "--engine-arg=0", "--engine-arg=--prefill-ms-per-token", "--engine-arg=0",
          "--engine-arg=--step-noise", "--engine-arg=0", "--wait", "--timeout", "60s"});
  json request = {{"model", "fast"},
                  {"stream", settings.stream},
                  {"max_tokens", settings.max_tokens},
                  {"messages", {{{"role", "user"}, {"content", "benchmark prompt with a few words"}}}}};
  auto run = [&](int count, std::vector<double>& latencies, int& failed) {
    asio::io_context io;
    http::ClientOptions options;
    options.max_idle_per_host = static_cast<size_t>(settings.concurrency);
    http::Client client(io, options);
    int next = 0;
    latencies.assign(count, 0);
    for (int i = 0; i < settings.concurrency; ++i) {
      asio::co_spawn(io,
                     worker(client, up.url() + "/v1/chat/completions", request.dump(), next, count, latencies, failed),
                     asio::detached);
    }
    io.run();
  };
  std::vector<double> latencies;
  int failed = 0;
  run(200, latencies, failed);  // warm-up: connections, the engine's caches
  failed = 0;
  double cpu_before = cpu_seconds(up.pid());
  auto start = Clock::now();
  run(settings.requests, latencies, failed);
  double seconds = bench::ms_since(start) / 1000;
  double cpu = cpu_seconds(up.pid()) - cpu_before;
  Measured result;
  result.name = name;
  result.p50 = bench::quantile(latencies, 0.5);
  result.p90 = bench::quantile(latencies, 0.9);
  result.p99 = bench::quantile(latencies, 0.99);
  result.max = bench::quantile(latencies, 1.0);
  result.rps = settings.requests / seconds;
  result.cpu_us_per_request = cpu * 1e6 / settings.requests;
  result.failed = failed;
  auto metrics = up.client().request("GET", up.url() + "/metrics", "", {}, std::chrono::seconds(5));
  if (metrics && metrics->status == 200 && !flags.empty()) {
    result.xtrace =
        fmt::format("sent {} dropped {} queued {}", counter(metrics->body, "nebula_xtrace_sent_total{kind=\"traces\"}"),
                    counter(metrics->body, "nebula_xtrace_dropped_total{kind=\"traces\",reason=\"queue_full\"}"),
                    counter(metrics->body, "nebula_xtrace_queue_length{kind=\"traces\"}"));
  }
  return result;
}
}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (arg == "--requests") {
      settings.requests = value();
    } else if (arg == "--concurrency") {
      settings.concurrency = value();
    } else if (arg == "--max-tokens") {
      settings.max_tokens = value();
    } else if (arg == "--stream") {
      settings.stream = true;
    } else {
      std::cerr << "usage: xtrace_bench [--requests N] [--concurrency C] [--max-tokens T] [--stream]\n";
      return 2;
    }
  }
  if (settings.requests <= 0 || settings.concurrency <= 0) return 2;
  testing::XtraceServer healthy;
  testing::XtraceServer black_hole;
  black_hole.set_default_fault({0, -1, std::chrono::milliseconds(0), true});
  testing::XtraceServer slow;
  slow.set_default_fault({0, -1, std::chrono::milliseconds(2'000), false});
  std::string dead = fmt::format("http://127.0.0.1:{}", bench::free_port());
  auto with = [](const testing::XtraceServer& server) {
    return std::vector<std::string>{"--xtrace", server.url(), "--xtrace-token", server.token()};
  };
  std::vector<Measured> results;
  results.push_back(measure("xtrace off", {}, settings));
  results.push_back(measure("xtrace healthy", with(healthy), settings));
  results.push_back(measure("xtrace down (refused)", {"--xtrace", dead, "--xtrace-token", "t"}, settings));
  results.push_back(measure("xtrace black hole", with(black_hole), settings));
  results.push_back(measure("xtrace slow (2 s)", with(slow), settings));
  std::cout << fmt::format("xtrace_bench: {} {} requests, {} at once, max_tokens {}, engine-sim at 20 us/step\n\n",
                           settings.requests, settings.stream ? "streamed" : "non-streamed", settings.concurrency,
                           settings.max_tokens);
  std::cout << fmt::format("| {:<22} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>12} | {:>6} | {} |\n", "xtrace",
                           "p50 ms", "p90 ms", "p99 ms", "max ms", "req/s", "CPU us/req", "failed", "traces");
  std::cout << "|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const auto& result : results) {
    std::cout << fmt::format(
        "| {:<22} | {:>7.2f} | {:>7.2f} | {:>7.2f} | {:>7.2f} | {:>7.0f} | {:>12.1f} | {:>6} | {} |\n", result.name,
        result.p50, result.p90, result.p99, result.max, result.rps, result.cpu_us_per_request, result.failed,
        result.xtrace);
  }
  return 0;
}
