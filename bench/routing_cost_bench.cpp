// What routing adds to a request in the gateway, per call on one core:
//   1. reading a chat request (read_request, the baseline the gateway already paid) against
//      reading it and building its RouteContext (prompt text kept, prefix hashes), by prompt size;
//   2. the endpoint table's candidates plus the default policy's choice, by replica count;
//   3. parsing an engine's /metrics text into an EngineLoad (once per replica and scrape).
// Times are this thread's CPU time per call, so other processes on the machine do not count.
//
//   build/bench/routing_cost_bench [--seconds S]   (CPU time per measurement, default 0.5)
#include <fmt/format.h>

#include <time.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>

#include "api/api.h"
#include "gateway/request_json.h"
#include "gateway/route_context.h"
#include "router/endpoint_table.h"
#include "router/engine_load.h"
#include "sim/engine.h"
#include "sim/metrics_text.h"

namespace {
using namespace nebula;
using Clock = std::chrono::steady_clock;

double seconds_per_run = 0.5;

// This thread's CPU time: on a shared machine, wall time counts the other processes too.
double thread_cpu_ns() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1e9 + static_cast<double>(now.tv_nsec);
}

// CPU nanoseconds per call of `body`, over about seconds_per_run of CPU.
template <typename Body>
double ns_per_call(Body&& body) {
  for (int i = 0; i < 100; ++i) body();  // warm up
  int64_t calls = 0;
  double start = thread_cpu_ns();
  double now = start;
  while (now - start < seconds_per_run * 1e9) {
    for (int i = 0; i < 100; ++i) body();
    calls += 100;
    now = thread_cpu_ns();
  }
  return (now - start) / static_cast<double>(calls);
}

std::string chat_body(size_t prompt_bytes) {
  std::string prompt;
  while (prompt.size() < prompt_bytes) prompt += "the quick brown fox jumps over the lazy dog. ";
  prompt.resize(prompt_bytes);
  return R"({"model":"chat","max_tokens":64,"user":"alice","messages":[{"role":"system","content":"be brief"},)"
         R"({"role":"user","content":")" +
         prompt + R"("}]})";
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds_per_run = std::stod(argv[++i]);
    } else {
      std::cerr << "usage: routing_cost_bench [--seconds S]\n";
      return 2;
    }
  }

  std::cout << fmt::format("{:<34} {:>14} {:>14} {:>12}\n", "request (prompt bytes)", "read ns", "read+route ns",
                           "route ns");
  for (size_t bytes : {64, 1024, 8192, 32768, 131072}) {
    std::string body = chat_body(bytes);
    http::Request request;
    request.body = body;
    double read = ns_per_call([&] {
      auto facts = gateway::read_request(body);
      if (!facts) std::abort();
    });
    double routed = ns_per_call([&] {
      auto facts = gateway::read_request(body);
      auto context = gateway::route_context(request, *facts, nullptr, "", 0);
      if (context.session_key.empty()) std::abort();
    });
    std::cout << fmt::format("{:<34} {:>14.0f} {:>14.0f} {:>12.0f}\n", fmt::format("chat, {} B", bytes), read, routed,
                             routed - read);
  }

  std::cout << fmt::format("\n{:<34} {:>14}\n", "choice (replicas)", "ns");
  for (int replicas : {2, 8, 64}) {
    router::EndpointTable table;
    api::Deployment deployment;
    deployment.metadata.name = "chat";
    std::string document = api::to_json(deployment).dump();
    table.apply(api::store_key("deployments", "chat"), &document);
    for (int i = 0; i < replicas; ++i) {
      api::Replica replica;
      replica.metadata.name = fmt::format("chat-{}", i);
      replica.spec.deployment = "chat";
      replica.status.phase = api::phase::kReady;
      replica.status.endpoint = fmt::format("http://127.0.0.1:{}", 10000 + i);
      std::string text = api::to_json(replica).dump();
      table.apply(api::store_key("replicas", replica.metadata.name), &text);
    }
    auto policy = router::make_policy("");
    if (!policy) return 1;
    router::RouteContext context;
    context.deployment = "chat";
    double choose = ns_per_call([&] {
      auto found = table.candidates("chat", {}, 256, Clock::now());
      auto chosen = (*policy)->choose(context, found.candidates);
      if (!chosen) std::abort();
      (*policy)->routed(context, found.candidates[*chosen].replica);
    });
    std::cout << fmt::format("{:<34} {:>14.0f}\n", fmt::format("least-outstanding, {}", replicas), choose);
  }

  sim::Engine engine(sim::EngineConfig{});
  sim::ServerGauges gauges;
  gauges.model = "chat";
  std::cout << fmt::format("\n{:<34} {:>14} {:>8}\n", "engine /metrics", "ns", "bytes");
  for (auto [name, dialect] : {std::pair{"vllm", sim::Dialect::Vllm}, std::pair{"sglang", sim::Dialect::Sglang},
                               std::pair{"llamacpp", sim::Dialect::Llamacpp}}) {
    std::string text = sim::render_metrics(dialect, engine, gauges);
    double parse = ns_per_call([&] {
      auto load = router::parse_engine_load(text);
      if (load.running < 0) std::abort();
    });
    std::cout << fmt::format("{:<34} {:>14.0f} {:>8}\n", name, parse, text.size());
  }
  return 0;
}
