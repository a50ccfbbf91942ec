// Where the time of a wake and of a mode switch goes: the engine's own time against Nebula's
// (control plane, gateway and agent), side by side.
//
//   build/bench/wake_bench [--runs N] [--wake-seconds S]
//
// It starts `nebula up --sim-gpus 1xH100-80GB` on a free port and measures, N times each:
//   wake:   a chat request (max_tokens 1) through the gateway to a deployment asleep at level 1,
//           until its answer. The engine's own part is what the same engine-sim (same argv, on
//           another port) takes for POST /wake_up plus the same request sent to it directly.
//   switch: `mode switch` between two 50 GB deployments on one 80 GB GPU (the server's own
//           duration_ms). The engine's own part is what the same engine-sim takes to exit after
//           SIGTERM plus the time from its spawn until /health answers 200 (polled every 1 ms).
// Nebula's part is the difference. Reported as medians (and the worst run).
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/asio.h"  // must precede Asio headers

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "bench_support.h"
#include "common/json.h"
#include "http/http.h"

namespace {
using namespace nebula;
using namespace nebula::bench;
using std::chrono::milliseconds;

struct Stats {
  std::vector<double> values;
  double median() const {
    auto sorted = values;
    std::sort(sorted.begin(), sorted.end());
    return sorted.empty() ? 0 : sorted[sorted.size() / 2];
  }
  double worst() const { return values.empty() ? 0 : *std::max_element(values.begin(), values.end()); }
};

class Bench {
 public:
  Bench() : up_("wake-bench", "1xH100-80GB") {}
  ~Bench() {
    for (pid_t pid : engines_) ::kill(pid, SIGKILL);
  }

  std::string cli(std::vector<std::string> args) { return up_.cli(std::move(args)); }
  json get(const std::string& path) { return up_.get(path); }

  json replica_of(const std::string& deployment) {
    json replicas = get("/api/v1/replicas");
    for (const auto& replica : replicas["items"]) {
      if (replica["spec"]["deployment"] == deployment && !replica["spec"].value("stop", false)) return replica;
    }
    return json();
  }

  // POST path with body to base; true on a 200.
  bool post(const std::string& base, const std::string& path, const std::string& body) {
    auto response =
        up_.client().request("POST", base + path, body, {{"Content-Type", "application/json"}}, milliseconds(60'000));
    return response && response->status == 200;
  }

  // An engine-sim with the argv the agent gave an engine (read from /proc), on another port.
  struct Twin {
    pid_t pid = 0;
    std::string url;
    double started_ms = 0;  // spawn until /health answered 200
  };
  Twin twin_of(int engine_pid) {
    std::ifstream in(fmt::format("/proc/{}/cmdline", engine_pid));
    std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> args;
    for (size_t start = 0; start < raw.size();) {
      size_t end = raw.find('\0', start);
      args.push_back(raw.substr(start, end - start));
      start = end + 1;
    }
    int port = free_port();
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--port") args[i + 1] = std::to_string(port);
    }
    Twin twin;
    twin.url = fmt::format("http://127.0.0.1:{}", port);
    auto start = Clock::now();
    twin.pid = spawn(args, up_.dir() + "/twin.log");
    engines_.push_back(twin.pid);
    http::BlockingClient probe;
    wait_until(
        [&] {
          auto health = probe.request("GET", twin.url + "/health", "", {}, milliseconds(1000));
          return health && health->status == 200;
        },
        milliseconds(60'000), milliseconds(1));
    twin.started_ms = ms_since(start);
    return twin;
  }
  // SIGTERM until the process is gone.
  double stop_twin(Twin& twin) {
    auto start = Clock::now();
    ::kill(twin.pid, SIGTERM);
    int status = 0;
    ::waitpid(twin.pid, &status, 0);
    std::erase(engines_, twin.pid);
    return ms_since(start);
  }

  const std::string& url() const { return up_.url(); }

 private:
  Up up_;
  std::vector<pid_t> engines_;
};

const std::string kChat = R"({"model":"s1","max_tokens":1,"messages":[{"role":"user","content":"hi"}]})";

void wake(Bench& bench, int runs, double wake_seconds) {
  std::string seconds = fmt::format("{}", wake_seconds);
  bench.cli({"deploy", "s1", "--engine", "sim", "--model", "qwen2.5-0.5b", "--idle-timeout", "1s", "--on-idle",
             "sleep-l1", "--engine-arg=--wake-l1-seconds", "--engine-arg=" + seconds, "--wait", "--timeout", "60s"});
  Stats total;
  for (int run = 0; run < runs; ++run) {
    if (!wait_until([&] { return bench.replica_of("s1")["status"].value("phase", "") == "Sleeping"; },
                    milliseconds(30'000))) {
      throw std::runtime_error("s1 did not fall asleep");
    }
    auto start = Clock::now();
    if (!bench.post(bench.url(), "/v1/chat/completions", kChat)) throw std::runtime_error("the wake request failed");
    total.values.push_back(ms_since(start));
  }
  // The engine's own: the same engine woken and asked directly.
  auto twin = bench.twin_of(bench.replica_of("s1")["status"].value("pid", 0));
  Stats own;
  for (int run = 0; run < runs; ++run) {
    bench.post(twin.url, "/sleep?level=1", "");
    auto start = Clock::now();
    bool ok = bench.post(twin.url, "/wake_up", "") && bench.post(twin.url, "/v1/chat/completions", kChat);
    if (!ok) throw std::runtime_error("the engine's own wake failed");
    own.values.push_back(ms_since(start));
  }
  bench.stop_twin(twin);
  bench.cli({"rm", "s1"});
  wait_until([&] { return bench.replica_of("s1").is_null(); }, milliseconds(30'000));
  fmt::print("{:<44} {:>9.0f} ms {:>9.0f} ms {:>13.0f} ms {:>9.0f} ms\n",
             fmt::format("wake (level 1, engine wake {} s), request", seconds), total.median(), own.median(),
             total.median() - own.median(), total.worst());
}

void mode_switch(Bench& bench, int runs) {
  bench.cli(
      {"deploy", "a", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "50GB", "--wait", "--timeout", "60s"});
  bench.cli({"deploy", "b", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "50GB", "--replicas", "0"});
  bench.cli({"mode", "create", "ma", "--deployments", "a"});
  bench.cli({"mode", "create", "mb", "--deployments", "b"});
  Stats total;
  Stats release;
  Stats start;
  for (int run = 0; run < runs * 2; ++run) {
    std::string target = run % 2 == 0 ? "mb" : "ma";
    auto answer = parse_json(bench.cli({"mode", "switch", target, "-o", "json"}));
    if (!answer || !answer->contains("duration_ms")) throw std::runtime_error("mode switch answered no duration");
    total.values.push_back((*answer)["duration_ms"].get<double>());
    if (answer->contains("phases")) {
      release.values.push_back((*answer)["phases"].value("vram_release_ms", 0.0));
      start.values.push_back((*answer)["phases"].value("start_ms", 0.0));
    }
  }
  // The engine's own: an engine like a's exits after SIGTERM, one like b's starts until healthy.
  Stats own;
  std::string deployment = bench.replica_of("a").is_null() ? "b" : "a";
  for (int run = 0; run < runs; ++run) {
    auto twin = bench.twin_of(bench.replica_of(deployment)["status"].value("pid", 0));
    own.values.push_back(twin.started_ms + bench.stop_twin(twin));
  }
  fmt::print("{:<44} {:>9.0f} ms {:>9.0f} ms {:>13.0f} ms {:>9.0f} ms\n", "mode switch (50 GB out, 50 GB in, one GPU)",
             total.median(), own.median(), total.median() - own.median(), total.worst());
  fmt::print("  of which, as the server reports it: VRAM release {:.0f} ms, start until Ready {:.0f} ms (medians)\n",
             release.median(), start.median());
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 5;
  double wake_seconds = 0.5;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--wake-seconds" && i + 1 < argc) {
      wake_seconds = std::atof(argv[++i]);
    } else {
      std::cerr << "usage: wake_bench [--runs N] [--wake-seconds S]\n";
      return 2;
    }
  }
  try {
    signal(SIGPIPE, SIG_IGN);
    Bench bench;
    fmt::print("{:<44} {:>12} {:>12} {:>16} {:>12}\n", "operation (median of " + std::to_string(runs) + ")", "total",
               "engine's own", "Nebula's part", "worst total");
    wake(bench, runs, wake_seconds);
    mode_switch(bench, runs);
  } catch (const std::exception& error) {
    std::cerr << "wake_bench: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
