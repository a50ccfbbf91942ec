// Gateway overhead: the same load sent straight to one engine-sim replica and through the
// gateway to it, side by side in one run. Starts its own `nebula up` on a free loopback port.
//
//   build/bench/gateway_bench [--requests N] [--concurrency C] [--max-tokens T]
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "common/json.h"
#include "http/http.h"

extern char** environ;

namespace {
using namespace nebula;
using Clock = std::chrono::steady_clock;

struct Sample {
  double ttft_ms = 0;
  double total_ms = 0;
  bool ok = false;
};

struct Load {
  int requests = 2000;
  int concurrency = 32;
  int max_tokens = 16;
  bool stream = true;
};
// "1st byte": time to the first body bytes (the role chunk when streamed, the whole body when not).

awaitable<void> worker(http::Client& client, std::string url, std::string body, int& next, int total,
                       std::vector<Sample>& samples) {
  while (next < total) {
    int index = next++;
    auto start = Clock::now();
    Sample sample;
    auto response = co_await client.open("POST", url, body, {}, std::chrono::seconds(30));
    if (response && (*response)->status == 200) {
      bool first = true;
      while (true) {
        auto piece = co_await (*response)->read(std::chrono::seconds(30));
        if (!piece || piece->empty()) {
          sample.ok = piece.ok();
          break;
        }
        if (first) {
          sample.ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          first = false;
        }
      }
    }
    sample.total_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    samples[index] = sample;
  }
}

struct Summary {
  double seconds = 0;
  int failed = 0;
  double p50 = 0, p99 = 0, ttft_p50 = 0, ttft_p99 = 0;
};

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, static_cast<size_t>(p * values.size()))];
}

Summary run_load(const std::string& url, const std::string& model, const Load& load) {
  asio::io_context io;
  http::Client client(io);
  std::string body = json{{"model", model},
                          {"stream", load.stream},
                          {"max_tokens", load.max_tokens},
                          {"messages", {{{"role", "user"}, {"content", "benchmark prompt with a few words"}}}}}
                         .dump();
  std::vector<Sample> samples(load.requests);
  int next = 0;
  for (int i = 0; i < load.concurrency; ++i) {
    asio::co_spawn(io, worker(client, url, body, next, load.requests, samples), asio::detached);
  }
  auto start = Clock::now();
  io.run();
  Summary summary;
  summary.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> totals, ttfts;
  for (const auto& sample : samples) {
    if (!sample.ok) {
      ++summary.failed;
      continue;
    }
    totals.push_back(sample.total_ms);
    ttfts.push_back(sample.ttft_ms);
  }
  summary.p50 = percentile(totals, 0.5);
  summary.p99 = percentile(totals, 0.99);
  summary.ttft_p50 = percentile(ttfts, 0.5);
  summary.ttft_p99 = percentile(ttfts, 0.99);
  return summary;
}

int free_port() {
  http::BlockingClient probe;
  for (int port = 20000 + getpid() % 20000;; ++port) {
    if (!probe.request("GET", fmt::format("http://127.0.0.1:{}/", port), "", {}, std::chrono::milliseconds(200))) {
      return port;
    }
  }
}

std::string self_dir() { return std::filesystem::read_symlink("/proc/self/exe").parent_path().string(); }

}  // namespace

int main(int argc, char** argv) {
  Load load;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    int value = std::atoi(argv[i + 1]);
    if (flag == "--requests") load.requests = value;
    else if (flag == "--concurrency") load.concurrency = value;
    else if (flag == "--max-tokens") load.max_tokens = value;
    else {
      std::cerr << "usage: gateway_bench [--requests N] [--concurrency C] [--max-tokens T]\n";
      return 2;
    }
  }
  std::string nebula = self_dir() + "/../nebula";
  std::string data_dir = fmt::format("/tmp/nebula-bench-{}", getpid());
  int port = free_port();
  std::string server = fmt::format("http://127.0.0.1:{}", port);
  std::vector<std::string> args = {nebula, "up", "--listen", fmt::format("127.0.0.1:{}", port), "--data-dir",
                                   data_dir, "--sim-gpus", "1xH100-80GB", "--log-level", "error"};
  std::vector<char*> argv_up;
  for (auto& arg : args) argv_up.push_back(arg.data());
  argv_up.push_back(nullptr);
  pid_t up = 0;
  posix_spawn_file_actions_t quiet;  // the banner and logs of `nebula up` would bury the table
  posix_spawn_file_actions_init(&quiet);
  posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&quiet, 1, 2);
  int spawned = posix_spawn(&up, argv_up[0], &quiet, nullptr, argv_up.data(), environ);
  posix_spawn_file_actions_destroy(&quiet);
  if (spawned != 0) {
    std::cerr << "cannot start " << nebula << "\n";
    return 1;
  }
  http::BlockingClient client;
  // A fast engine (1 ms per token, 1 ms to first token) so the gateway's own cost is visible.
  std::string spec = R"({"spec":{"model":"bench-1b","engine":"sim","replicas":1,"engine_args":
      ["--itl-ms","1","--ttft-base-ms","1","--itl-ms-per-running-seq","0"]}})";
  std::string endpoint;
  for (int attempt = 0; attempt < 300 && endpoint.empty(); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (attempt == 10) client.request("PUT", server + "/api/v1/deployments/bench", spec);
    auto replicas = client.request("GET", server + "/api/v1/replicas");
    if (!replicas || replicas->status != 200) continue;
    json listing = json::parse(replicas->body);
    for (const auto& item : listing["items"]) {
      if (item["status"]["phase"] == "Ready") endpoint = item["status"]["endpoint"];
    }
  }
  if (endpoint.empty()) {
    std::cerr << "the bench deployment never became ready\n";
    kill(up, SIGTERM);
    return 1;
  }

  std::cout << fmt::format("gateway_bench: {} requests per row, {} concurrent, engine at 1 ms/token\n\n",
                           load.requests, load.concurrency);
  std::cout << fmt::format("{:<22} {:<8} {:>8} {:>8} {:>9} {:>9} {:>11} {:>11} {:>7}\n", "load", "path", "req/s",
                           "tok/s", "p50 ms", "p99 ms", "1st byte50", "1st byte99", "failed");
  // Streamed completions of max_tokens, then small non-streamed requests (1 token) at full rate;
  // each twice, alternating direct and through the gateway so drift hits both alike.
  for (bool stream : {true, false}) {
    Load row = load;
    row.stream = stream;
    if (!stream) row.max_tokens = 1;
    std::string name = stream ? fmt::format("stream {} tokens", row.max_tokens) : "non-stream 1 token";
    for (int round = 0; round < 2; ++round) {
      for (bool via_gateway : {false, true}) {
        std::string url = (via_gateway ? server : endpoint) + "/v1/chat/completions";
        auto summary = run_load(url, "bench", row);
        double rate = row.requests / summary.seconds;
        std::cout << fmt::format("{:<22} {:<8} {:>8.0f} {:>8.0f} {:>9.2f} {:>9.2f} {:>11.2f} {:>11.2f} {:>7}\n", name,
                                 via_gateway ? "gateway" : "direct", rate, rate * row.max_tokens, summary.p50,
                                 summary.p99, summary.ttft_p50, summary.ttft_p99, summary.failed);
      }
    }
  }
  kill(up, SIGTERM);
  int status = 0;
  waitpid(up, &status, 0);
  std::filesystem::remove_all(data_dir);
  return 0;
}
