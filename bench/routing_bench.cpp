// Routing policies against each other on the same workloads, in one run.
//
//   build/bench/routing_bench [--policies round-robin,least-outstanding,...] [--workloads a,b,c]
//                             [--replicas 8] [--kv-blocks 1500] [--scale 1] [--seed 1] [--runs 1]
//
// Starts `nebula up` with 8 simulated RTX 4090s and, for every policy, deploys a fresh
// deployment of 8 simulated Llama-3.1-8B replicas (engine-sim's rtx4090-8b profile: prefill
// 0.22 ms per token, prefix caching on, a KV cache of --kv-blocks blocks of 16 tokens, small
// enough that it evicts) with `--routing POLICY`, then sends every workload through the gateway
// as streaming chat completions, and removes it (so every policy starts with cold caches):
//   (a) multi-turn chat: users each sending turns that resend the growing conversation,
//       closed loop with think time;
//   (b) shared prefixes: 32 system prompts of 2k-6k tokens, short questions, Poisson arrivals
//       whose rate steps up to past saturation;
//   (c) no sharing: unrelated prompts with skewed (log-normal) lengths at a moderate rate.
// Reported per workload and policy: TTFT p50/p90/p99, ITL p50, output tokens/s (for (b), over
// the last, saturated, rate step), the engines' prefix-cache hit rate (their own counters), and
// the max/min of generated tokens across replicas (over the workload, and over its last rate step). Requests and
// prompts are the same for every policy (seeded). Not run by CI.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include "common/asio.h"  // must precede Asio headers

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "bench_support.h"
#include "common/json.h"
#include "http/http.h"
#include "http/sse.h"

namespace {
using namespace nebula;
using namespace nebula::bench;
using std::chrono::milliseconds;

struct Options {
  std::vector<std::string> policies = {"round-robin", "least-outstanding", "power-of-two", "session",
                                       "prefix",      "kv-load",           "prefix+load"};
  std::vector<std::string> workloads = {"a", "b", "c"};
  int replicas = 8;
  int kv_blocks = 1500;
  double scale = 1;
  unsigned seed = 1;
  int runs = 1;
};

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string part; std::getline(in, part, separator);) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

// Words of a made-up vocabulary: the simulator counts one token per word.
std::string words(std::mt19937_64& rng, int count) {
  static const char* kSyllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "do", "pe", "zu", "fa"};
  std::string text;
  text.reserve(static_cast<size_t>(count) * 6);
  std::uniform_int_distribution<int> syllable(0, 11);
  std::uniform_int_distribution<int> length(1, 3);
  for (int i = 0; i < count; ++i) {
    if (i) text += ' ';
    for (int s = length(rng); s > 0; --s) text += kSyllables[syllable(rng)];
  }
  return text;
}

// One request's outcome as its client saw it.
struct Outcome {
  bool ok = false;
  double ttft_ms = 0;
  std::vector<double> itl_ms;
  int64_t output_tokens = 0;
  std::string text;  // the answer, for the next turn of a conversation
  Clock::time_point end;
};

awaitable<Outcome> send_chat(http::Client& client, const std::string& url, const json& messages, int max_tokens,
                             const std::string& model, const std::string& session) {
  json body = {{"model", model},
               {"messages", messages},
               {"max_tokens", max_tokens},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  http::Headers headers = {{"Content-Type", "application/json"}};
  if (!session.empty()) headers.push_back({"X-Session-Id", session});
  Outcome outcome;
  auto start = Clock::now();
  auto response =
      co_await client.open("POST", url + "/v1/chat/completions", body.dump(), headers, milliseconds(600'000));
  if (!response || (*response)->status != 200) {
    outcome.end = Clock::now();
    co_return outcome;
  }
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  Clock::time_point last{};
  bool done = false;
  while (!done) {
    auto piece = co_await (*response)->read(milliseconds(600'000));
    if (!piece || piece->empty()) break;
    events.clear();
    parser.feed(*piece, events);
    for (const auto& event : events) {
      if (event.data == "[DONE]") {
        done = true;
        break;
      }
      auto chunk = parse_json(event.data);
      if (!chunk || !chunk->is_object()) continue;
      if (auto usage = chunk->find("usage"); usage != chunk->end() && usage->is_object()) {
        outcome.output_tokens = usage->value("completion_tokens", 0);
      }
      auto choices = chunk->find("choices");
      if (choices == chunk->end() || !choices->is_array() || choices->empty()) continue;
      const json& delta = (*choices)[0].value("delta", json::object());
      if (!delta.contains("content") || !delta["content"].is_string()) continue;
      const std::string& content = delta["content"].get_ref<const std::string&>();
      if (content.empty()) continue;
      auto now = Clock::now();
      if (outcome.text.empty()) {
        outcome.ttft_ms = std::chrono::duration<double, std::milli>(now - start).count();
      } else {
        outcome.itl_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
      }
      last = now;
      outcome.text += content;
    }
  }
  outcome.ok = done;
  outcome.end = Clock::now();
  co_return outcome;
}

struct Tally {
  std::vector<double> ttft;
  std::vector<double> itl;
  int64_t output_tokens = 0;
  int sent = 0;
  int failed = 0;
  void add(const Outcome& outcome) {
    ++sent;
    if (!outcome.ok) {
      ++failed;
      return;
    }
    ttft.push_back(outcome.ttft_ms);
    itl.insert(itl.end(), outcome.itl_ms.begin(), outcome.itl_ms.end());
    output_tokens += outcome.output_tokens;
  }
};

awaitable<void> sleep_for(double ms) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(std::chrono::microseconds(static_cast<int64_t>(ms * 1000)));
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

// The engines' own counters, summed or per replica.
struct EngineCounters {
  double queries = 0;  // prefix-cache queried tokens
  double hits = 0;
  std::map<std::string, double> generated;  // per replica
};

class Bench {
 public:
  explicit Bench(const Options& options)
      : options_(options), up_("routing-bench", fmt::format("{}xRTX4090-24GB", options.replicas)) {}

  std::string cli(std::vector<std::string> args) { return up_.cli(std::move(args)); }
  json get(const std::string& path) { return up_.get(path); }

  void deploy(const std::string& name, const std::string& policy) {
    // "default" leaves --routing out: the deployment gets the default policy.
    std::vector<std::string> routing;
    if (policy != "default") routing = {"--routing", policy};
    std::vector<std::string> args = {"deploy",     name,
                                     "--engine",   "sim",
                                     "--model",    "llama-3.1-8b-instruct",
                                     "--replicas", std::to_string(options_.replicas)};
    args.insert(args.end(), routing.begin(), routing.end());
    for (std::string arg : {std::string("--engine-arg=--profile=rtx4090-8b"),
                            fmt::format("--engine-arg=--kv-blocks={}", options_.kv_blocks),
                            std::string("--engine-arg=--step-noise=0"), std::string("--engine-arg=--startup-seconds=0"),
                            std::string("--wait"), std::string("--timeout"), std::string("180s")}) {
      args.push_back(arg);
    }
    cli(args);
  }
  void remove(const std::string& name) {
    cli({"rm", name});
    wait_until([&] { return endpoints(name).empty() && replicas_of(name) == 0; }, milliseconds(60'000),
               milliseconds(100));
  }
  int replicas_of(const std::string& deployment) {
    int count = 0;
    for (const auto& replica : get("/api/v1/replicas").value("items", json::array())) {
      if (replica["spec"].value("deployment", "") == deployment) ++count;
    }
    return count;
  }
  std::map<std::string, std::string> endpoints(const std::string& deployment) {
    std::map<std::string, std::string> found;
    for (const auto& replica : get("/api/v1/replicas").value("items", json::array())) {
      if (replica["spec"].value("deployment", "") != deployment) continue;
      std::string endpoint = replica["status"].value("endpoint", "");
      if (!endpoint.empty()) found[replica["metadata"].value("name", "")] = endpoint;
    }
    return found;
  }
  EngineCounters counters(const std::string& deployment) {
    EngineCounters counters;
    for (const auto& [replica, endpoint] : endpoints(deployment)) {
      auto response = up_.client().request("GET", endpoint + "/metrics", "", {}, milliseconds(5000));
      if (!response) continue;
      std::istringstream in(response->body);
      for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        auto space = line.rfind(' ');
        if (space == std::string::npos) continue;
        std::string name = line.substr(0, line.find_first_of("{ "));
        double value = std::atof(line.c_str() + space + 1);
        if (name == "vllm:prefix_cache_queries_total") counters.queries += value;
        if (name == "vllm:prefix_cache_hits_total") counters.hits += value;
        if (name == "vllm:generation_tokens_total") counters.generated[replica] += value;
      }
    }
    return counters;
  }
  const std::string& url() const { return up_.url(); }

 private:
  Options options_;
  Up up_;
};

struct Report {
  Tally tally;
  double tokens_per_s = 0;
  double hit_rate = 0;
  double max_min = 0;       // generated tokens, busiest replica over least busy, whole workload
  double max_min_last = 0;  // the same over the last rate step (b: the saturated one)
  double seconds = 0;
};

// (a) Multi-turn chat: each user has a system prompt of their own and sends turns of ~150
// words, each resending the whole conversation so far, with think time between turns.
awaitable<void> multi_turn(http::Client& client, std::string url, std::string model, Options options, Tally& tally) {
  const int users = 48;
  const int turns = 6;
  std::mt19937_64 rng(options.seed * 1000 + 1);
  struct User {
    json messages;
    std::string session;
    std::vector<std::string> questions;
    double start_ms = 0;
    std::vector<double> think_ms;
  };
  auto all = std::make_shared<std::vector<User>>(users);
  std::exponential_distribution<double> think(1.0 / (1000 * options.scale));
  for (int u = 0; u < users; ++u) {
    (*all)[u].messages = json::array({{{"role", "system"}, {"content", words(rng, 200)}}});
    (*all)[u].session = fmt::format("user-{}", u);
    for (int t = 0; t < turns; ++t) {
      (*all)[u].questions.push_back(words(rng, 150));
      (*all)[u].think_ms.push_back(think(rng));
    }
    (*all)[u].start_ms = 10'000.0 * options.scale * u / users;
  }
  auto executor = co_await asio::this_coro::executor;
  for (auto& user : *all) {
    asio::co_spawn(
        executor,
        [&client, &tally, url, model, &user, all, turns]() -> awaitable<void> {
          co_await sleep_for(user.start_ms);
          for (int t = 0; t < turns; ++t) {
            user.messages.push_back({{"role", "user"}, {"content", user.questions[t]}});
            auto outcome = co_await send_chat(client, url, user.messages, 64, model, user.session);
            tally.add(outcome);
            user.messages.push_back({{"role", "assistant"}, {"content", outcome.text}});
            co_await sleep_for(user.think_ms[t]);
          }
        },
        asio::detached);
  }
}

// Open-loop Poisson arrivals of `make_messages()` at each rate for `step_s` seconds.
struct Step {
  double rate;
  double seconds;
};
awaitable<void> open_loop(http::Client& client, std::string url, std::string model, std::vector<Step> steps,
                          std::function<json(std::mt19937_64&)> make_messages, int max_tokens, unsigned seed,
                          std::vector<Tally>& per_step, std::vector<Clock::time_point>& step_start) {
  std::mt19937_64 rng(seed);
  auto executor = co_await asio::this_coro::executor;
  per_step.assign(steps.size(), Tally());
  step_start.assign(steps.size(), Clock::time_point());
  // Arrival times and prompts are drawn up front, so every policy gets the same requests.
  struct Arrival {
    double at_ms;
    size_t step;
    json messages;
  };
  std::vector<Arrival> arrivals;
  double t = 0;
  double step_begin = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    std::exponential_distribution<double> gap(steps[s].rate / 1000.0);
    t = step_begin;
    while ((t += gap(rng)) < step_begin + steps[s].seconds * 1000) arrivals.push_back({t, s, make_messages(rng)});
    step_begin += steps[s].seconds * 1000;
  }
  auto begin = Clock::now();
  double offset = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    step_start[s] = begin + std::chrono::microseconds(static_cast<int64_t>(offset * 1000));
    offset += steps[s].seconds * 1000;
  }
  for (auto& arrival : arrivals) {
    double wait = arrival.at_ms - ms_since(begin);
    if (wait > 0) co_await sleep_for(wait);
    asio::co_spawn(
        executor,
        [&client, &per_step, url, model, max_tokens, step = arrival.step,
         messages = std::move(arrival.messages)]() -> awaitable<void> {
          auto outcome = co_await send_chat(client, url, messages, max_tokens, model, "");
          per_step[step].add(outcome);
        },
        asio::detached);
  }
}

// Generated tokens per replica between two readings: the busiest over the least busy.
double max_over_min(const EngineCounters& before, const EngineCounters& after) {
  double most = 0;
  double least = -1;
  for (const auto& [replica, generated] : after.generated) {
    auto earlier = before.generated.find(replica);
    double served = generated - (earlier == before.generated.end() ? 0 : earlier->second);
    most = std::max(most, served);
    least = least < 0 ? served : std::min(least, served);
  }
  return least > 0 ? most / least : (most > 0 ? INFINITY : 1);
}

Report run_workload(Bench& bench, const std::string& workload, const std::string& deployment, const Options& options) {
  asio::io_context io;
  http::ClientOptions client_options;
  client_options.max_idle_per_host = 1024;
  http::Client client(io, client_options);
  Report report;
  auto before = bench.counters(deployment);
  auto start = Clock::now();
  std::vector<Tally> per_step;
  std::vector<Clock::time_point> step_start;
  if (workload == "a") {
    asio::co_spawn(io, multi_turn(client, bench.url(), deployment, options, report.tally), asio::detached);
  } else if (workload == "b") {
    // 32 system prompts of 2k-6k tokens; each request one of them (Zipf-free, uniform) and a
    // short question.
    auto prompts = std::make_shared<std::vector<std::string>>();
    std::mt19937_64 rng(options.seed * 1000 + 2);
    std::uniform_int_distribution<int> length(2000, 6000);
    for (int i = 0; i < 32; ++i) prompts->push_back(words(rng, length(rng)));
    double step_s = 15 * options.scale;
    std::vector<Step> steps = {{2, step_s}, {4, step_s}, {8, step_s}, {16, step_s}};
    asio::co_spawn(io,
                   open_loop(
                       client, bench.url(), deployment, steps,
                       [prompts](std::mt19937_64& rng) {
                         std::uniform_int_distribution<size_t> pick(0, prompts->size() - 1);
                         return json::array({{{"role", "system"}, {"content", (*prompts)[pick(rng)]}},
                                             {{"role", "user"}, {"content", words(rng, 30)}}});
                       },
                       48, options.seed * 1000 + 3, per_step, step_start),
                   asio::detached);
  } else {
    std::vector<Step> steps = {{12, 30 * options.scale}};
    asio::co_spawn(io,
                   open_loop(
                       client, bench.url(), deployment, steps,
                       [](std::mt19937_64& rng) {
                         std::lognormal_distribution<double> length(6.2, 0.9);  // median ~500 words
                         int count = std::clamp(static_cast<int>(length(rng)), 20, 6000);
                         return json::array({{{"role", "user"}, {"content", words(rng, count)}}});
                       },
                       48, options.seed * 1000 + 4, per_step, step_start),
                   asio::detached);
  }
  // The engines' counters when the last rate step begins, read by a thread of its own while the
  // requests run on this one (the blocking client is not used here meanwhile).
  EngineCounters at_last_step;
  std::thread snapshot;
  if (workload != "a") {
    double before_last_s = 0;
    if (workload == "b") before_last_s = 3 * 15 * options.scale;
    snapshot = std::thread([&, before_last_s] {
      std::this_thread::sleep_until(start + std::chrono::milliseconds(static_cast<int64_t>(before_last_s * 1000)));
      at_last_step = bench.counters(deployment);
    });
  }
  // Until the generators have sent everything and every request ended.
  io.run();
  if (snapshot.joinable()) snapshot.join();
  report.seconds = ms_since(start) / 1000;
  for (auto& tally : per_step) {
    report.tally.ttft.insert(report.tally.ttft.end(), tally.ttft.begin(), tally.ttft.end());
    report.tally.itl.insert(report.tally.itl.end(), tally.itl.begin(), tally.itl.end());
    report.tally.output_tokens += tally.output_tokens;
    report.tally.sent += tally.sent;
    report.tally.failed += tally.failed;
  }
  if (workload == "b" && !per_step.empty()) {
    // Throughput at saturation: the last step's output tokens over the time from its start until
    // its last request ended (a backlog makes that longer).
    const auto& last = per_step.back();
    double seconds = std::chrono::duration<double>(Clock::now() - step_start.back()).count();
    report.tokens_per_s = seconds > 0 ? static_cast<double>(last.output_tokens) / seconds : 0;
  } else {
    report.tokens_per_s = report.seconds > 0 ? static_cast<double>(report.tally.output_tokens) / report.seconds : 0;
  }
  auto after = bench.counters(deployment);
  double queries = after.queries - before.queries;
  report.hit_rate = queries > 0 ? (after.hits - before.hits) / queries : 0;
  report.max_min = max_over_min(before, after);
  report.max_min_last = workload == "a" ? report.max_min : max_over_min(at_last_step, after);
  return report;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--policies") {
        options.policies = split(value(), ';');
        if (options.policies.size() == 1 && options.policies[0].find(',') != std::string::npos &&
            options.policies[0].find('=') == std::string::npos) {
          options.policies = split(options.policies[0], ',');
        }
      } else if (arg == "--workloads") {
        options.workloads = split(value(), ',');
      } else if (arg == "--replicas") {
        options.replicas = std::max(1, std::stoi(value()));
      } else if (arg == "--kv-blocks") {
        options.kv_blocks = std::max(1, std::stoi(value()));
      } else if (arg == "--scale") {
        options.scale = std::stod(value());
      } else if (arg == "--seed") {
        options.seed = static_cast<unsigned>(std::stoul(value()));
      } else if (arg == "--runs") {
        options.runs = std::max(1, std::stoi(value()));
      } else {
        throw std::invalid_argument("unknown argument " + arg);
      }
    } catch (const std::exception& error) {
      std::cerr << "routing_bench: " << error.what()
                << "\nusage: routing_bench [--policies a,b | 'p1;p2,k=v'] [--workloads a,b,c] [--replicas N]"
                   " [--kv-blocks N] [--scale X] [--seed N] [--runs N]\n";
      return 2;
    }
  }
  try {
    signal(SIGPIPE, SIG_IGN);
    Bench bench(options);
    fmt::print("{:<4} {:<22} {:>5} {:>5} {:>8} {:>8} {:>8} {:>7} {:>9} {:>6} {:>7} {:>8}\n", "wl", "policy", "sent",
               "fail", "TTFT p50", "p90", "p99", "ITL p50", "out tok/s", "hit %", "max/min", "last max/min");
    for (int run = 0; run < options.runs; ++run) {
      for (const auto& policy : options.policies) {
        for (const auto& workload : options.workloads) {
          // A fresh deployment per workload: every policy starts from cold caches.
          std::string deployment = fmt::format("r{}-{}-{}", run, workload, std::hash<std::string>()(policy) % 100000);
          bench.deploy(deployment, policy);
          auto report = run_workload(bench, workload, deployment, options);
          const auto& tally = report.tally;
          fmt::print(
              "{:<4} {:<22} {:>5} {:>5} {:>8.0f} {:>8.0f} {:>8.0f} {:>7.1f} {:>9.0f} {:>6.1f} {:>7.2f} {:>8.2f}\n",
              workload, policy, tally.sent, tally.failed, quantile(tally.ttft, 0.5), quantile(tally.ttft, 0.9),
              quantile(tally.ttft, 0.99), quantile(tally.itl, 0.5), report.tokens_per_s, report.hit_rate * 100,
              report.max_min, report.max_min_last);
          std::fflush(stdout);
          bench.remove(deployment);
        }
      }
    }
  } catch (const std::exception& error) {
    std::cerr << "routing_bench: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
