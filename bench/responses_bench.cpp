// Stored responses: what a conversation's turn costs in each store, and what storing each turn
// once saves against keeping the whole conversation with every response (as the gateway did
// when they lived in its memory), side by side in one run.
//
// For each store, C conversations of T turns (~200 bytes of question, ~400 of answer), each turn
// as the gateway makes it: read the conversation the request continues (not for the first), then
// store the new response. Reports CPU per turn (this process; Redis's own too) and, in memory, the
// bytes kept.
//
//   build/bench/responses_bench [--conversations 50] [--turns 20]
#include <fmt/format.h>
#include <sys/resource.h>

#include <cstring>
#include <filesystem>
#include <iostream>

#include "bench_support.h"
#include "gateway/response_store.h"

using namespace nebula;
using namespace nebula::gateway;

namespace {

double self_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

json message(const std::string& role, const std::string& text) {
  return json{{"type", "message"}, {"role", role}, {"content", text}};
}

struct Row {
  std::string store;
  double us_per_turn = 0;        // this process
  double redis_us_per_turn = 0;  // the redis-server's
  double bytes = 0;              // kept at the end
};

// whole: the old way, every response keeping the whole conversation up to it.
Row run(const std::string& name, ResponseStore& store, int conversations, int turns, bool whole, pid_t redis_pid,
        const std::function<double()>& bytes) {
  std::string question(200, 'q');
  std::string answer(400, 'a');
  double cpu = self_cpu_seconds();
  double redis_cpu = redis_pid ? bench::cpu_seconds(redis_pid) : 0;
  for (int c = 0; c < conversations; ++c) {
    std::string previous;
    std::string root;
    json everything = json::array();
    for (int t = 0; t < turns; ++t) {
      std::string id = fmt::format("resp_{}_{}", c, t);
      json input = json::array({message("user", question)});
      if (!previous.empty()) {
        auto prior = store.conversation("key", previous);
        if (!prior) throw std::runtime_error(name + ": " + prior.error().message);
        root = prior->root;
      } else {
        root = id;
      }
      json response = {{"id", id}, {"object", "response"}, {"output", json::array({message("assistant", answer)})}};
      everything.push_back(input[0]);
      StoredTurn turn{response, whole ? everything : input, whole ? "" : previous, root};
      if (auto stored = store.put("key", id, turn); !stored) throw std::runtime_error(stored.error().message);
      everything.push_back(response["output"][0]);
      previous = id;
    }
  }
  int total = conversations * turns;
  Row result;
  result.store = name + (whole ? " (whole conversation per response)" : "");
  result.us_per_turn = (self_cpu_seconds() - cpu) * 1e6 / total;
  if (redis_pid) result.redis_us_per_turn = (bench::cpu_seconds(redis_pid) - redis_cpu) * 1e6 / total;
  result.bytes = bytes();
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  int conversations = 50;
  int turns = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--conversations")) conversations = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--turns")) turns = std::atoi(argv[i + 1]);
  }
  ResponseStoreOptions options;
  options.per_key = 1'000'000;
  options.per_key_bytes = size_t{4} << 30;
  std::vector<Row> results;

  for (bool whole : {true, false}) {
    MemoryResponseStore memory(options, 10'000'000, size_t{4} << 30);
    results.push_back(run("memory", memory, conversations, turns, whole, 0, [&] { return double(memory.bytes()); }));
  }

  auto dir = std::filesystem::temp_directory_path() / fmt::format("responses-bench-{}", getpid());
  std::filesystem::create_directories(dir);
  {
    std::string path = (dir / "responses.db").string();
    auto sqlite = open_response_store("sqlite://" + path, options);
    if (!sqlite) throw std::runtime_error(sqlite.error().message);
    results.push_back(run("sqlite", **sqlite, conversations, turns, false, 0, [] { return -1.0; }));
  }

  pid_t redis = 0;
  int port = bench::free_port();
  try {
    redis = bench::spawn({"/usr/bin/redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", dir.string()},
                         (dir / "redis.log").string());
    std::shared_ptr<ResponseStore> store;
    bench::wait_until(
        [&] {
          auto opened = open_response_store("redis://127.0.0.1:" + std::to_string(port), options);
          if (opened) store = *opened;
          return static_cast<bool>(opened);
        },
        std::chrono::seconds(10), std::chrono::milliseconds(50));
    if (!store) throw std::runtime_error("redis-server did not start");
    results.push_back(run("redis", *store, conversations, turns, false, redis, [] { return -1.0; }));
  } catch (const std::exception& error) {
    std::cerr << "redis skipped: " << error.what() << "\n";
  }
  if (redis) bench::stop(redis);
  std::filesystem::remove_all(dir);

  std::cout << fmt::format("{} conversations x {} turns\n\n", conversations, turns);
  std::cout << "| store | CPU per turn (µs) | redis-server CPU per turn (µs) | bytes kept |\n|---|---:|---:|---:|\n";
  for (const auto& result : results) {
    std::cout << fmt::format("| {} | {:.1f} | {} | {} |\n", result.store, result.us_per_turn,
                             result.redis_us_per_turn > 0 ? fmt::format("{:.1f}", result.redis_us_per_turn) : "-",
                             result.bytes >= 0 ? fmt::format("{:.0f}", result.bytes) : "-");
  }
}
