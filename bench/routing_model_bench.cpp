// Routing policies compared in virtual time: the same stream of chat requests replayed through
// every policy against a model of R engine replicas, each with S sequence slots, a FIFO queue and
// a prefix cache (LRU over 64-character blocks, as the router's own index counts them). Prefill
// costs time per uncached prompt token, so a policy that finds cached prefixes answers sooner;
// one that piles requests up answers later. The gateway side is modelled as Nebula's: requests in
// flight per replica, and engine figures scraped every second.
//
// Workload: conversations, each on one of a few shared system prompts, each turn resending the
// whole history plus a new message (the session key is the conversation); arrivals are Poisson.
//
//   build/bench/routing_model_bench [--replicas R] [--slots S] [--rate REQ_PER_S] [--requests N]
//                            [--conversations C] [--system-prompts P] [--cache-blocks B] [--seed X]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "router/lru.h"
#include "router/policy.h"

namespace {

using namespace nebula;
using router::SteadyClock;

struct Settings {
  int replicas = 4;
  int slots = 8;
  double rate = 8;  // requests per second
  int requests = 20000;
  int conversations = 400;
  int system_prompts = 8;
  size_t system_blocks = 48;    // ~770 tokens
  size_t turn_blocks = 6;       // each turn adds ~100 tokens
  size_t max_blocks = 256;      // history beyond this is cut (a context window)
  size_t cache_blocks = 16000;  // per replica, ~256k tokens
  int output_tokens = 120;
  double prefill_ms_per_token = 0.5;
  double decode_ms_per_token = 15;
  double scrape_ms = 1000;
  uint64_t seed = 7;
};

struct Request {
  int id = 0;
  double arrival_ms = 0;
  std::string session;
  std::vector<uint64_t> blocks;  // chained block hashes of the prompt
};

struct Replica {
  std::string name;
  router::Lru<uint64_t, char> cache{0};
  std::deque<int> waiting;  // request ids
  int running = 0;
  int outstanding = 0;  // the gateway's count
  int64_t inflight_tokens = 0;
  router::EngineLoad scraped;
};

struct Event {
  double at_ms;
  int kind;  // 0 arrival, 1 finish, 2 scrape
  int request;
  int replica;
  bool operator>(const Event& other) const { return at_ms > other.at_ms; }
};

struct Outcome {
  double hit_ratio = 0;
  double mean_ms = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double ttft_mean_ms = 0;
  double spread = 0;  // max / min requests served per replica
};

std::vector<Request> make_workload(const Settings& settings) {
  std::mt19937_64 random(settings.seed);
  std::exponential_distribution<double> gap(settings.rate / 1000.0);
  std::uniform_int_distribution<int> pick_conversation(0, settings.conversations - 1);
  std::vector<std::vector<uint64_t>> history(settings.conversations);
  std::vector<uint64_t> chain(settings.conversations);
  for (int c = 0; c < settings.conversations; ++c) {
    // The system prompt's blocks: the same chain for every conversation on that prompt.
    uint64_t hash = 1469598103934665603ull ^ static_cast<uint64_t>(c % settings.system_prompts);
    for (size_t block = 0; block < settings.system_blocks; ++block) {
      hash = (hash ^ block) * 1099511628211ull;
      history[c].push_back(hash);
    }
    chain[c] = hash;
  }
  std::vector<Request> requests;
  double now = 0;
  for (int id = 0; id < settings.requests; ++id) {
    now += gap(random);
    int c = pick_conversation(random);
    for (size_t block = 0; block < settings.turn_blocks; ++block) {
      chain[c] = (chain[c] ^ (static_cast<uint64_t>(c) << 20 | history[c].size())) * 1099511628211ull;
      history[c].push_back(chain[c]);
    }
    if (history[c].size() > settings.max_blocks) history[c].resize(settings.system_blocks);  // a new conversation
    requests.push_back({id, now, "conversation-" + std::to_string(c), history[c]});
  }
  return requests;
}

Outcome run(const std::string& spec, const Settings& settings, const std::vector<Request>& requests) {
  auto made = router::make_policy(spec, {.seed = settings.seed, .load_freshness = std::chrono::milliseconds(5000)});
  if (!made) throw std::runtime_error(made.error().message);
  auto& policy = **made;
  std::vector<Replica> replicas(settings.replicas);
  for (int r = 0; r < settings.replicas; ++r) {
    replicas[r].name = "r" + std::to_string(r);
    replicas[r].cache.set_capacity(settings.cache_blocks);
  }
  const int64_t capacity_tokens = static_cast<int64_t>(settings.cache_blocks) * 16;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  for (const auto& request : requests) events.push({request.arrival_ms, 0, request.id, -1});
  events.push({0, 2, -1, -1});
  std::vector<double> latency(requests.size()), first_token(requests.size());
  std::vector<int> served(settings.replicas);
  size_t cached_blocks = 0, prompt_blocks = 0, done = 0;
  auto to_time = [](double ms) {
    return SteadyClock::time_point{} + std::chrono::microseconds(static_cast<int64_t>(ms * 1000) + 1'000'000);
  };
  auto start = [&](Replica& replica, int id, double now) {
    const auto& request = requests[id];
    size_t hit = 0;
    while (hit < request.blocks.size() && replica.cache.contains(request.blocks[hit])) ++hit;
    cached_blocks += hit;
    prompt_blocks += request.blocks.size();
    for (auto it = request.blocks.rbegin(); it != request.blocks.rend(); ++it) replica.cache.put(*it, 0);
    double prefill = static_cast<double>((request.blocks.size() - hit) * 16) * settings.prefill_ms_per_token;
    first_token[id] = now + prefill - request.arrival_ms;
    ++replica.running;
    events.push({now + prefill + settings.output_tokens * settings.decode_ms_per_token, 1, id,
                 static_cast<int>(&replica - replicas.data())});
  };
  while (done < requests.size()) {
    Event event = events.top();
    events.pop();
    double now = event.at_ms;
    if (event.kind == 2) {
      for (auto& replica : replicas) {
        int64_t tokens = 0;
        replica.scraped.waiting = static_cast<double>(replica.waiting.size());
        replica.scraped.running = replica.running;
        tokens = replica.inflight_tokens;
        replica.scraped.kv_usage = std::min(1.0, static_cast<double>(tokens) / static_cast<double>(capacity_tokens));
        replica.scraped.kv_capacity_tokens = capacity_tokens;
        replica.scraped.at = to_time(now);
      }
      events.push({now + settings.scrape_ms, 2, -1, -1});
      continue;
    }
    if (event.kind == 0) {
      const auto& request = requests[event.request];
      std::vector<router::Candidate> candidates;
      for (const auto& replica : replicas) {
        candidates.push_back({replica.name, replica.outstanding, replica.inflight_tokens, 256, replica.scraped});
      }
      router::RouteContext context;
      context.session_key = request.session;
      context.prefix_hashes = request.blocks;
      context.prompt_tokens = static_cast<int64_t>(request.blocks.size() * 16);
      context.output_tokens = settings.output_tokens;
      context.now = to_time(now);
      auto index = policy.choose(context, candidates);
      auto& replica = replicas.at(*index);
      policy.routed(context, replica.name);
      ++replica.outstanding;
      replica.inflight_tokens += context.prompt_tokens + context.output_tokens;
      ++served[*index];
      if (replica.running < settings.slots) {
        start(replica, event.request, now);
      } else {
        replica.waiting.push_back(event.request);
      }
      continue;
    }
    auto& replica = replicas[event.replica];
    --replica.running;
    --replica.outstanding;
    replica.inflight_tokens -=
        static_cast<int64_t>(requests[event.request].blocks.size() * 16) + settings.output_tokens;
    latency[event.request] = now - requests[event.request].arrival_ms;
    ++done;
    if (!replica.waiting.empty()) {
      int next = replica.waiting.front();
      replica.waiting.pop_front();
      start(replica, next, now);
    }
  }
  Outcome outcome;
  outcome.hit_ratio = static_cast<double>(cached_blocks) / static_cast<double>(prompt_blocks);
  std::vector<double> sorted = latency;
  std::sort(sorted.begin(), sorted.end());
  for (double value : latency) outcome.mean_ms += value / static_cast<double>(latency.size());
  for (double value : first_token) outcome.ttft_mean_ms += value / static_cast<double>(first_token.size());
  outcome.p50_ms = sorted[sorted.size() / 2];
  outcome.p99_ms = sorted[sorted.size() * 99 / 100];
  auto [fewest, most] = std::minmax_element(served.begin(), served.end());
  outcome.spread = *fewest > 0 ? static_cast<double>(*most) / *fewest : 0;
  return outcome;
}

// What one decision costs: choose() then routed() for 8 candidates with fresh engine figures and
// a 1,600-character prompt (25 blocks), over 1,000 sessions and 16 shared prefixes; wall clock.
double decision_ns(const std::string& spec) {
  auto made = router::make_policy(spec, {.seed = 1, .load_freshness = std::chrono::milliseconds(5000)});
  if (!made) throw std::runtime_error(made.error().message);
  auto& policy = **made;
  const auto now = SteadyClock::now();
  std::vector<router::Candidate> candidates(8);
  for (size_t i = 0; i < candidates.size(); ++i) {
    candidates[i].replica = "chat-" + std::to_string(i);
    candidates[i].outstanding = static_cast<int>(i % 3);
    candidates[i].capacity = 256;
    candidates[i].engine = {static_cast<double>(i % 2), 4, 0.1 * static_cast<double>(i), 1 << 18, now};
  }
  std::vector<std::vector<uint64_t>> prompts;
  for (int p = 0; p < 16; ++p) prompts.push_back(router::block_hashes(std::string(1600, static_cast<char>('a' + p))));
  std::vector<std::string> sessions;
  for (int s = 0; s < 1000; ++s) sessions.push_back("user-" + std::to_string(s));
  const int calls = 200'000;
  size_t checksum = 0;
  auto started = std::chrono::steady_clock::now();
  for (int call = 0; call < calls; ++call) {
    router::RouteContext context;
    context.session_key = sessions[call % sessions.size()];
    context.prefix_hashes = prompts[call % prompts.size()];
    context.prompt_tokens = 400;
    context.output_tokens = 100;
    context.now = now;
    auto index = policy.choose(context, candidates);
    checksum += *index;
    policy.routed(context, candidates[*index].replica);
  }
  double elapsed = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - started).count();
  if (checksum == static_cast<size_t>(-1)) fmt::print("");  // keeps the loop's result alive
  return elapsed / calls;
}

}  // namespace

int main(int argc, char** argv) {
  Settings settings;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    double value = std::atof(argv[i + 1]);
    if (flag == "--replicas")
      settings.replicas = static_cast<int>(value);
    else if (flag == "--slots")
      settings.slots = static_cast<int>(value);
    else if (flag == "--rate")
      settings.rate = value;
    else if (flag == "--requests")
      settings.requests = static_cast<int>(value);
    else if (flag == "--conversations")
      settings.conversations = static_cast<int>(value);
    else if (flag == "--system-prompts")
      settings.system_prompts = static_cast<int>(value);
    else if (flag == "--cache-blocks")
      settings.cache_blocks = static_cast<size_t>(value);
    else if (flag == "--seed")
      settings.seed = static_cast<uint64_t>(value);
    else {
      fmt::print(stderr, "unknown flag {}\n", flag);
      return 2;
    }
  }
  if (settings.replicas < 1 || settings.slots < 1 || settings.rate <= 0 || settings.requests < 1 ||
      settings.conversations < 1 || settings.system_prompts < 1 || settings.cache_blocks < 1) {
    fmt::print(stderr, "every setting must be positive\n");
    return 2;
  }
  auto requests = make_workload(settings);
  fmt::print(
      "{} requests at {} req/s over {} replicas x {} slots; {} conversations on {} system prompts; "
      "prefix cache {} blocks per replica\n\n",
      settings.requests, settings.rate, settings.replicas, settings.slots, settings.conversations,
      settings.system_prompts, settings.cache_blocks);
  fmt::print("{:<48} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8}\n", "policy", "cache hit", "TTFT mean", "mean", "p50",
             "p99", "spread");
  for (const char* spec :
       {"least-outstanding", "round-robin", "power-of-two", "session", "session,load-bound=2", "prefix", "kv-load",
        "prefix+load,prefix=2,queue=1,kv=1", "prefix+load,prefix=1,queue=1,kv=1,outstanding=1"}) {
    auto outcome = run(spec, settings, requests);
    fmt::print("{:<48} {:>8.1f}% {:>8.0f}ms {:>8.0f}ms {:>8.0f}ms {:>8.0f}ms {:>8.2f}\n", spec, 100 * outcome.hit_ratio,
               outcome.ttft_mean_ms, outcome.mean_ms, outcome.p50_ms, outcome.p99_ms, outcome.spread);
  }
  fmt::print("\nper decision (choose + routed, 8 candidates, 25-block prompt; wall clock):\n");
  for (const char* spec :
       {"least-outstanding", "round-robin", "power-of-two", "session", "prefix", "kv-load", "prefix+load"}) {
    fmt::print("{:<48} {:>8.0f} ns\n", spec, decision_ns(spec));
  }
  return 0;
}
