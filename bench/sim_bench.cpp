// Engine simulator throughput, two ways:
//   1. HTTP: one `nebula engine-sim` process pinned to one core serves C concurrent streams for
//      D seconds while this process (pinned to another core) reads them. Reports generated
//      tokens/s, the rate the step model allows, and the simulator's CPU use.
//   2. Virtual time: an hour of Poisson traffic replayed through an in-process sim::Engine with
//      the h100-8b profile, as the capacity planner will use it.
//
//   build/bench/sim_bench [--streams C] [--seconds D] [--max-tokens T] [--step-ms S] [--virtual-only]
#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/asio.h"  // must precede Asio headers

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "bench_support.h"
#include "common/json.h"
#include "common/subprocess.h"
#include "http/http.h"
#include "sim/engine.h"
#include "sim/sim.h"

namespace {
using namespace nebula;
using Clock = std::chrono::steady_clock;

struct Options {
  int streams = 2000;
  double seconds = 10;
  int max_tokens = 100;
  double step_ms = 20;
  bool virtual_only = false;
};

void pin_to_cpu(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(pid, sizeof(set), &set) != 0) std::cerr << "warning: could not pin pid " << pid << "\n";
}

using nebula::bench::cpu_seconds;

int free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return acceptor.local_endpoint().port();
}

double metric(const std::string& text, const std::string& series) {
  size_t position = text.find("\n" + series + " ");
  if (position == std::string::npos) return 0;
  size_t start = position + series.size() + 2;
  return std::stod(text.substr(start, text.find('\n', start) - start));
}

struct LoadState {
  Clock::time_point end;
  uint64_t events = 0;  // SSE data events received (role, tokens, finish, [DONE])
  uint64_t streams_completed = 0;
  uint64_t failures = 0;
  int open_streams = 0;
  int peak_open_streams = 0;
};

awaitable<void> stream_worker(http::Client& client, std::string url, std::string body, LoadState& state) {
  while (Clock::now() < state.end) {
    auto response = co_await client.open("POST", url, body, {}, std::chrono::seconds(60));
    if (!response || (*response)->status != 200) {
      ++state.failures;
      continue;
    }
    ++state.open_streams;
    state.peak_open_streams = std::max(state.peak_open_streams, state.open_streams);
    bool ok = false;
    while (true) {
      auto piece = co_await (*response)->read(std::chrono::seconds(60));
      if (!piece) break;
      if (piece->empty()) {
        ok = true;
        break;
      }
      for (size_t at = piece->find("data: "); at != std::string::npos; at = piece->find("data: ", at + 6)) {
        ++state.events;
      }
      if (Clock::now() >= state.end) {
        (*response)->cancel();
        ok = true;
        break;
      }
    }
    --state.open_streams;
    if (ok)
      ++state.streams_completed;
    else
      ++state.failures;
  }
}

int run_http(const Options& options) {
  std::string nebula = (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "nebula").string();
  int port = free_port();
  std::vector<std::string> args = {nebula,
                                   "engine-sim",
                                   "--port",
                                   std::to_string(port),
                                   "--model",
                                   "bench",
                                   "--log-level",
                                   "warn",
                                   "--max-num-seqs",
                                   "8192",
                                   "--kv-blocks",
                                   "100000",
                                   "--max-model-len",
                                   "4096",
                                   "--step-base-ms",
                                   fmt::format("{}", options.step_ms),
                                   "--decode-ms-per-seq",
                                   "0",
                                   "--prefill-ms-per-token",
                                   "0",
                                   "--step-noise",
                                   "0"};
  SpawnOptions spawn_options;
  spawn_options.argv = args;
  auto spawned = spawn(spawn_options);
  if (!spawned) {
    std::cerr << spawned.error().message << "\n";
    return 1;
  }
  pid_t pid = *spawned;
  pin_to_cpu(pid, 0);
  pin_to_cpu(0, 1);
  std::string base = fmt::format("http://127.0.0.1:{}", port);
  http::BlockingClient probe;
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto health = probe.request("GET", base + "/health", "", {}, std::chrono::seconds(1));
    if (health && health->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  std::string body = json{
      {"model", "bench"},
      {"messages", json::array({json{{"role", "user"}, {"content", "benchmark the simulator now"}}})},
      {"max_tokens", options.max_tokens},
      {"stream", true}}.dump();
  asio::io_context io(1);
  http::ClientOptions client_options;
  client_options.max_idle_per_host = static_cast<size_t>(options.streams) + 16;
  http::Client client(io, client_options);
  LoadState state;
  auto started = Clock::now();
  state.end = started + std::chrono::milliseconds(static_cast<int64_t>(options.seconds * 1000));
  auto metrics_before = probe.request("GET", base + "/metrics", "", {}, std::chrono::seconds(5));
  double tokens_before =
      metrics_before ? metric(metrics_before->body, "vllm:generation_tokens_total{model_name=\"bench\"}") : 0;
  double cpu_before = cpu_seconds(pid);
  for (int i = 0; i < options.streams; ++i) {
    asio::co_spawn(io, stream_worker(client, base + "/v1/chat/completions", body, state), asio::detached);
  }
  // Sample the server's running count half-way through.
  double running_mid = 0;
  std::thread sampler([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(options.seconds * 500)));
    http::BlockingClient client_mid;
    auto mid = client_mid.request("GET", base + "/metrics", "", {}, std::chrono::seconds(5));
    if (mid) running_mid = metric(mid->body, "vllm:num_requests_running{model_name=\"bench\"}");
  });
  io.run();
  sampler.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
  double cpu_used = cpu_seconds(pid) - cpu_before;
  auto metrics_after = probe.request("GET", base + "/metrics", "", {}, std::chrono::seconds(5));
  double tokens_after =
      metrics_after ? metric(metrics_after->body, "vllm:generation_tokens_total{model_name=\"bench\"}") : 0;
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);

  double model_rate = options.streams * 1000.0 / options.step_ms;  // one token per stream per step
  std::cout << fmt::format(
      "HTTP: {} concurrent streams, {} tokens each, step {} ms, {:.1f} s, engine on cpu0, clients on cpu1\n",
      options.streams, options.max_tokens, options.step_ms, elapsed);
  std::cout << fmt::format("{:<40} {:>12}\n", "running sequences (server, mid-run)", running_mid);
  std::cout << fmt::format("{:<40} {:>12}\n", "peak open streams (client)", state.peak_open_streams);
  std::cout << fmt::format("{:<40} {:>12.0f}\n", "generated tokens/s (server metrics)",
                           (tokens_after - tokens_before) / elapsed);
  std::cout << fmt::format("{:<40} {:>12.0f}\n", "SSE events/s received (client)", state.events / elapsed);
  std::cout << fmt::format("{:<40} {:>12.0f}\n", "tokens/s the step model allows", model_rate);
  std::cout << fmt::format("{:<40} {:>11.0f}%\n", "engine-sim CPU (of one core)", 100 * cpu_used / elapsed);
  std::cout << fmt::format("{:<40} {:>12}\n", "streams completed / failed",
                           fmt::format("{}/{}", state.streams_completed, state.failures));
  return 0;
}

double percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  size_t index = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  std::nth_element(values.begin(), values.begin() + index, values.end());
  return values[index];
}

int run_virtual() {
  sim::SimOptions sim_options;
  sim_options.profile = "h100-8b";
  sim::ResolvedSim resolved = sim::resolve(sim_options);
  sim::Engine engine(resolved.engine);
  std::mt19937_64 rng(7);
  const double rate = 10;  // requests per second
  std::exponential_distribution<double> gaps(rate);
  std::uniform_int_distribution<int> prompt_len(200, 1800), output_len(50, 350), system_prompt(0, 9);
  std::vector<double> ttft, itl;
  std::vector<sim::SimDuration> first_token_at;
  uint64_t requests = 0;
  auto wall_start = Clock::now();
  double at = 0;
  while (at < 3600) {
    engine.advance_to(std::chrono::nanoseconds(static_cast<int64_t>(at * 1e9)));
    sim::SeqRequest request;
    // Ten shared 512-token system prompts, then a unique user part.
    int system = system_prompt(rng);
    for (int i = 0; i < 512; ++i) request.prompt.push_back(static_cast<uint32_t>(system * 100000 + i));
    int user = prompt_len(rng);
    for (int i = 0; i < user; ++i) request.prompt.push_back(static_cast<uint32_t>(rng()));
    request.output_tokens = output_len(rng);
    auto arrival = engine.now();
    auto last = std::make_shared<sim::SimDuration>(-1);
    request.on_update = [&ttft, &itl, arrival, last](const sim::SeqUpdate& update) {
      double now = std::chrono::duration<double>(update.time).count();
      if (last->count() < 0)
        ttft.push_back(now - std::chrono::duration<double>(arrival).count());
      else
        itl.push_back(now - std::chrono::duration<double>(*last).count());
      *last = update.time;
    };
    engine.submit(std::move(request));
    ++requests;
    at += gaps(rng);
  }
  engine.run_until_idle();
  double wall = std::chrono::duration<double>(Clock::now() - wall_start).count();
  const sim::EngineMetrics& metrics = engine.metrics();
  double simulated = std::chrono::duration<double>(engine.now()).count();
  std::cout << fmt::format(
      "\nVirtual time: h100-8b, Poisson {} req/s, prompts 712-2312 tokens (512 shared), outputs 50-350\n", rate);
  std::cout << fmt::format("{:<40} {:>12}\n", "requests", requests);
  std::cout << fmt::format("{:<40} {:>12.0f}\n", "simulated seconds", simulated);
  std::cout << fmt::format("{:<40} {:>12.2f}\n", "wall seconds", wall);
  std::cout << fmt::format("{:<40} {:>11.0f}x\n", "speed-up over real time", simulated / wall);
  std::cout << fmt::format("{:<40} {:>12}\n", "steps", metrics.steps);
  std::cout << fmt::format("{:<40} {:>12}\n", "generated tokens", metrics.generation_tokens);
  std::cout << fmt::format("{:<40} {:>12.0f}\n", "generated tokens per wall second", metrics.generation_tokens / wall);
  std::cout << fmt::format("{:<40} {:>11.1f}%\n", "prefix cache hit rate",
                           100.0 * metrics.prefix_cache_hits / std::max<uint64_t>(metrics.prefix_cache_queries, 1));
  std::cout << fmt::format("{:<40} {:>12.1f}\n", "TTFT p50 / p99 ms", 1000 * percentile(ttft, 0.5));
  std::cout << fmt::format("{:<40} {:>12.1f}\n", "", 1000 * percentile(ttft, 0.99));
  std::cout << fmt::format("{:<40} {:>12.1f}\n", "ITL p50 / p99 ms", 1000 * percentile(itl, 0.5));
  std::cout << fmt::format("{:<40} {:>12.1f}\n", "", 1000 * percentile(itl, 0.99));
  std::cout << fmt::format("{:<40} {:>12}\n", "preemptions", metrics.preemptions);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << flag << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (flag == "--streams")
      options.streams = std::stoi(value());
    else if (flag == "--seconds")
      options.seconds = std::stod(value());
    else if (flag == "--max-tokens")
      options.max_tokens = std::stoi(value());
    else if (flag == "--step-ms")
      options.step_ms = std::stod(value());
    else if (flag == "--virtual-only")
      options.virtual_only = true;
    else {
      std::cerr << "usage: sim_bench [--streams C] [--seconds D] [--max-tokens T] [--step-ms S] [--virtual-only]\n";
      return 2;
    }
  }
  if (!options.virtual_only) {
    if (int code = run_http(options)) return code;
  }
  return run_virtual();
}
