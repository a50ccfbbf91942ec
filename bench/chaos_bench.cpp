// Chaos: kill -9 a random agent, engine or the server every few seconds under a streaming load,
// and count what was lost. Starts `nebula server` and two `nebula agent --sim-gpus 1xH100-80GB`
// on fixed loopback ports (a killed process comes back on the same port), deploys 4 replicas
// (2 per node), streams chat completions from --clients threads, and writes (API keys and
// deployments) once a second. At the end: requests sent, failed before the first byte, streams
// cut, acknowledged writes lost, usage as the gateway accounted it vs the engines' own counters
// vs what clients received, and the time to converge after the last kill. Not run by CI.
//
//   build/bench/chaos_bench [--minutes 10] [--kill-every 5] [--clients 8] [--seed N]
//                           [--agent-ports fixed|ephemeral] [--keep]
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/json.h"
#include "http/http.h"
#include "process_helpers.h"

namespace {
using namespace nebula;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Options {
  double minutes = 10;
  double kill_every_s = 5;
  int clients = 8;
  unsigned seed = 0;
  bool keep = false;
  // The agents' --listen: a fixed port each (as a real node's :9091), or port 0 (a new one per
  // start, so a restart never finds its old port held).
  bool fixed_agent_ports = true;
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One `nebula` process that can be killed and started again with the same arguments.
class Process {
 public:
  Process(std::string name, std::vector<std::string> argv, std::string log_dir)
      : name_(std::move(name)), argv_(std::move(argv)), log_dir_(std::move(log_dir)) {}
  void start() {
    log_ = fmt::format("{}/{}-{}.log", log_dir_, name_, ++runs_);
    child_ = std::make_unique<testing::Child>(argv_, log_);
  }
  bool exited() { return child_ && !child_->running(); }
  // The last line of the current run's log (why it exited).
  std::string last_line() const {
    std::ifstream in(log_);
    std::string line, last;
    while (std::getline(in, line)) {
      if (!line.empty()) last = line;
    }
    return last;
  }
  void kill9() {
    if (child_) child_->stop(SIGKILL, 5s);
  }
  void stop() {
    if (child_) child_->stop(SIGTERM, 30s);
  }
  pid_t pid() const { return child_ ? child_->pid() : -1; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::vector<std::string> argv_;
  std::string log_dir_;
  std::unique_ptr<testing::Child> child_;
  std::string log_;
  int runs_ = 0;
};

struct Kill {
  double at_s;
  std::string victim;  // server, agent-a, agent-b, engine
};

// What the load saw, per request.
struct Tally {
  std::mutex mutex;
  int64_t sent = 0, completed = 0, failed_before_first_byte = 0, cut = 0;
  int64_t client_completion_tokens = 0, client_prompt_tokens = 0;
  std::map<std::string, int64_t> failures_by_last_kill;  // victim of the kill before the failure
  std::map<std::string, int64_t> failure_reasons;
};

// The engines' own counters (vllm:generation_tokens_total), sampled; an engine that dies takes
// its last unsampled second with it.
struct EngineCounters {
  std::mutex mutex;
  std::map<std::string, double> generation_by_engine;  // key: endpoint + pid
  std::map<std::string, double> prompt_by_engine;
  double generation() {
    std::lock_guard lock(mutex);
    double sum = 0;
    for (const auto& [engine, value] : generation_by_engine) sum += value;
    return sum;
  }
  double prompt() {
    std::lock_guard lock(mutex);
    double sum = 0;
    for (const auto& [engine, value] : prompt_by_engine) sum += value;
    return sum;
  }
};

double metric_sum(const std::string& text, const std::string& name) {
  double sum = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + "{", 0) != 0 && line.rfind(name + " ", 0) != 0) continue;
    sum += std::atof(line.c_str() + line.rfind(' ') + 1);
  }
  return sum;
}

json get_json(http::BlockingClient& client, const std::string& url) {
  auto response = client.request("GET", url, "", {}, 5s);
  if (!response || response->status != 200) return json();
  auto parsed = parse_json(response->body);
  return parsed ? *parsed : json();
}

class Chaos {
 public:
  explicit Chaos(Options options) : options_(options), random_(options.seed ? options.seed : std::random_device()()) {}

  int run() {
    if (!setup()) return 1;
    start_ = Clock::now();
    std::atomic<bool> stop_load{false};
    std::vector<std::thread> threads;
    for (int i = 0; i < options_.clients; ++i) threads.emplace_back([&] { client_loop(stop_load); });
    threads.emplace_back([&] { writer_loop(stop_load); });
    threads.emplace_back([&] { sampler_loop(stop_load); });
    threads.emplace_back([&] { supervise_loop(stop_load); });

    auto end =
        start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.minutes * 60));
    auto next_kill =
        start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.kill_every_s));
    // The last kill is the last one due before the end; convergence is timed from it at once.
    while (next_kill < end) {
      std::this_thread::sleep_until(next_kill);
      kill_one();
      next_kill += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options_.kill_every_s));
      std::cerr << fmt::format("\r{:.0f}/{:.0f} s, {} kills, {} requests", seconds_since(start_), options_.minutes * 60,
                               kills_.size(), sent());
    }
    std::cerr << "\n";
    double last_kill_s = kills_.empty() ? 0 : kills_.back().at_s;
    double converged_s = wait_converged();
    // Keep the load on for a moment after convergence, then stop it.
    std::this_thread::sleep_for(2s);
    stop_load = true;
    for (auto& thread : threads) thread.join();
    report(last_kill_s, converged_s);
    teardown();
    return 0;
  }

 private:
  int64_t sent() {
    std::lock_guard lock(tally_.mutex);
    return tally_.sent;
  }

  bool setup() {
    dir_ = std::filesystem::temp_directory_path() / fmt::format("nebula-chaos-{}", ::getpid());
    std::filesystem::create_directories(dir_);
    server_port_ = testing::free_port();
    server_url_ = fmt::format("http://127.0.0.1:{}", server_port_);
    // Nodes are judged quickly so that convergence is measured, not the default 30 s timeout.
    server_ = std::make_unique<Process>(
        "server",
        std::vector<std::string>{NEBULA_BINARY, "server", "--listen", fmt::format("127.0.0.1:{}", server_port_),
                                 "--data-dir", (dir_ / "server").string(), "--log-level", "info", "--node-timeout",
                                 "5s", "--reschedule-after", "5s"},
        dir_.string());
    server_->start();
    if (!wait_healthy(30s)) return fail("the server did not start");
    std::string token;
    for (int i = 0; i < 100 && token.empty(); ++i) {
      std::ifstream in(dir_ / "server" / "join-token");
      std::getline(in, token);
      if (token.empty()) std::this_thread::sleep_for(50ms);
    }
    if (token.empty()) return fail("no join token");
    for (const std::string name : {"agent-a", "agent-b"}) {
      auto argv =
          std::vector<std::string>{NEBULA_BINARY,
                                   "agent",
                                   "--server",
                                   server_url_,
                                   "--token",
                                   token,
                                   "--name",
                                   name,
                                   "--listen",
                                   fmt::format("127.0.0.1:{}", options_.fixed_agent_ports ? testing::free_port() : 0),
                                   "--sim-gpus",
                                   "1xH100-80GB",
                                   "--data-dir",
                                   (dir_ / name).string(),
                                   "--heartbeat-interval",
                                   "500ms",
                                   "--restart-backoff",
                                   "1s",
                                   "--log-level",
                                   "info",
                                   "--exit-with-parent"};
      agents_.push_back(std::make_unique<Process>(name, argv, dir_.string()));
      agents_.back()->start();
    }
    // 4 replicas of 30 GB: two fit on each 80 GB GPU, so both nodes serve. 10 ms per token.
    auto deployed = testing::run_command(
        {NEBULA_BINARY, "deploy", "chat", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--vram", "30GB",
         "--replicas", "4", "--engine-arg=--itl-ms=10", "--wait", "--timeout", "120s"},
        {"NEBULA_SERVER=" + server_url_});
    if (deployed.exit_code != 0) return fail("deploy failed: " + deployed.out);
    std::cerr << "chaos: server " << server_url_ << ", logs in " << dir_.string() << "\n";
    return true;
  }

  bool fail(const std::string& why) {
    std::cerr << "chaos: " << why << " (logs in " << dir_.string() << ")\n";
    teardown();
    return false;
  }

  bool wait_healthy(std::chrono::milliseconds timeout) {
    http::BlockingClient client;
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto health = client.request("GET", server_url_ + "/healthz", "", {}, 1s);
      if (health && health->status == 200) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // Streams one completion after another; counts what reached the client.
  void client_loop(std::atomic<bool>& stop) {
    http::BlockingClient client;
    const std::string body = R"({"model":"chat","stream":true,"stream_options":{"include_usage":true},"max_tokens":64,)"
                             R"("messages":[{"role":"user","content":"tell me something"}]})";
    while (!stop) {
      std::string received;
      bool first_byte = false;
      auto status = client.stream(
          "POST", server_url_ + "/v1/chat/completions", body, {{"Content-Type", "application/json"}},
          [&](std::string_view piece) {
            first_byte = true;
            received.append(piece);
            return true;
          },
          30s);
      if (!record(status, first_byte, received)) std::this_thread::sleep_for(100ms);  // a client backs off
    }
  }

  // Counts one request; false when it failed.
  bool record(const Result<int>& status, bool first_byte, const std::string& received) {
    std::string victim = last_victim();
    std::lock_guard lock(tally_.mutex);
    ++tally_.sent;
    bool done = status && *status == 200 && received.find("data: [DONE]") != std::string::npos;
    if (done) {
      ++tally_.completed;
      // The usage chunk: the last event with a "usage" object.
      std::istringstream events(received);
      std::string line;
      json usage;
      while (std::getline(events, line)) {
        if (line.rfind("data: {", 0) != 0 || line.find("\"usage\":{") == std::string::npos) continue;
        if (auto chunk = parse_json(line.substr(6)); chunk && (*chunk)["usage"].is_object()) usage = (*chunk)["usage"];
      }
      if (usage.is_object()) {
        tally_.client_completion_tokens += usage.value("completion_tokens", 0);
        tally_.client_prompt_tokens += usage.value("prompt_tokens", 0);
      }
      return true;
    }
    std::string reason = !status ? status.error().message.substr(0, 70) : fmt::format("HTTP {}", *status);
    if (!first_byte) {
      ++tally_.failed_before_first_byte;
      tally_.failure_reasons["before the first byte: " + reason]++;
    } else {
      ++tally_.cut;  // part of the body came, not its end
      tally_.failure_reasons["cut: " + reason]++;
    }
    tally_.failures_by_last_kill[victim]++;
    return false;
  }

  std::string last_victim() {
    std::lock_guard lock(kills_mutex_);
    return kills_.empty() ? "none" : kills_.back().victim;
  }

  // A write a second, alternating API keys and (replica-less) deployments; every 2xx is an
  // acknowledged write that must be there at the end.
  void writer_loop(std::atomic<bool>& stop) {
    http::BlockingClient client;
    for (int i = 0; !stop; ++i) {
      if (i % 2 == 0) {
        auto created =
            client.request("POST", server_url_ + "/api/v1/keys", json{{"name", fmt::format("chaos-{}", i)}}.dump(),
                           {{"Content-Type", "application/json"}}, 5s);
        std::lock_guard lock(writes_mutex_);
        ++writes_attempted_;
        if (created && created->status / 100 == 2) {
          auto parsed = parse_json(created->body);
          std::string id = parsed && (*parsed)["key"].is_object() ? (*parsed)["key"]["metadata"].value("name", "") : "";
          if (!id.empty()) acknowledged_keys_.insert(id);
        }
      } else {
        std::string name = fmt::format("chaos-{}", i);
        auto created =
            testing::run_command({NEBULA_BINARY, "deploy", name, "--engine", "sim", "--model", "m", "--replicas", "0"},
                                 {"NEBULA_SERVER=" + server_url_});
        std::lock_guard lock(writes_mutex_);
        ++writes_attempted_;
        if (created.exit_code == 0) acknowledged_deployments_.insert(name);
      }
      std::this_thread::sleep_for(1s);
    }
  }

  // Samples every Ready engine's own counters once a second.
  void sampler_loop(std::atomic<bool>& stop) {
    http::BlockingClient client;
    std::map<std::string, std::string> engines;  // endpoint -> pid, from the last listing
    while (!stop) {
      json replicas = get_json(client, server_url_ + "/api/v1/replicas");
      if (replicas.is_object()) {
        std::lock_guard lock(pids_mutex_);
        engine_pids_.clear();
        engines.clear();
        for (const auto& item : replicas["items"]) {
          int pid = item["status"].value("pid", 0);
          std::string endpoint = item["status"].value("endpoint", "");
          if (pid > 0) engine_pids_.push_back(pid);
          if (pid > 0 && !endpoint.empty()) engines[endpoint] = std::to_string(pid);
        }
      }
      for (const auto& [endpoint, pid] : engines) {
        auto metrics = client.request("GET", endpoint + "/metrics", "", {}, 1s);
        if (!metrics || metrics->status != 200) continue;
        std::lock_guard lock(counters_.mutex);
        counters_.generation_by_engine[endpoint + "/" + pid] =
            metric_sum(metrics->body, "vllm:generation_tokens_total");
        counters_.prompt_by_engine[endpoint + "/" + pid] = metric_sum(metrics->body, "vllm:prompt_tokens_total");
      }
      std::this_thread::sleep_for(1s);
    }
  }

  // As systemd's Restart=always would: a server or agent that exited on its own (not killed here)
  // is started again after a second; each such exit is counted with its last log line.
  void supervise_loop(std::atomic<bool>& stop) {
    while (!stop) {
      std::this_thread::sleep_for(1s);
      std::lock_guard lock(processes_mutex_);
      std::vector<Process*> all = {server_.get()};
      for (auto& agent : agents_) all.push_back(agent.get());
      for (Process* process : all) {
        if (!process->exited()) continue;
        unplanned_exits_[process->name() + ": " + process->last_line().substr(0, 120)]++;
        process->start();
      }
    }
  }

  void kill_one() {
    std::lock_guard processes_lock(processes_mutex_);
    std::vector<std::string> victims = {"server", "agent-a", "agent-b", "engine", "engine"};
    std::string victim = victims[random_() % victims.size()];
    if (victim == "engine") {
      std::lock_guard lock(pids_mutex_);
      if (engine_pids_.empty()) {
        victim = "server";
      } else if (::kill(engine_pids_[random_() % engine_pids_.size()], SIGKILL) != 0) {
        victim = "engine (already gone)";
      }
    }
    {
      std::lock_guard lock(kills_mutex_);
      kills_.push_back({seconds_since(start_), victim});
    }
    if (victim == "server") {
      server_->kill9();
      std::this_thread::sleep_for(500ms);
      server_->start();
    } else if (victim != "engine") {
      auto& agent = victim == "agent-a" ? agents_[0] : agents_[1];
      agent->kill9();
      std::this_thread::sleep_for(500ms);
      agent->start();
    }
  }

  // Seconds from the last kill until every replica is Ready, both nodes are Ready and a request
  // through the gateway succeeds (polled every 100 ms); -1 if that takes more than two minutes.
  double wait_converged() {
    double last_kill_s = kills_.empty() ? 0 : kills_.back().at_s;
    http::BlockingClient client;
    auto deadline = Clock::now() + 120s;
    while (Clock::now() < deadline) {
      json replicas = get_json(client, server_url_ + "/api/v1/replicas");
      json nodes = get_json(client, server_url_ + "/api/v1/nodes");
      int ready = 0, nodes_ready = 0;
      if (replicas.is_object()) {
        for (const auto& item : replicas["items"]) {
          if (item["spec"].value("deployment", "") == "chat" && item["status"].value("phase", "") == "Ready" &&
              !item["spec"].value("stop", false)) {
            ++ready;
          }
        }
      }
      if (nodes.is_object()) {
        for (const auto& node : nodes["items"]) nodes_ready += node["status"].value("ready", false) ? 1 : 0;
      }
      if (ready == 4 && nodes_ready == 2) {
        auto answer = client.request("POST", server_url_ + "/v1/chat/completions",
                                     R"({"model":"chat","max_tokens":2,"messages":[{"role":"user","content":"hi"}]})",
                                     {{"Content-Type", "application/json"}}, 5s);
        if (answer && answer->status == 200) return seconds_since(start_) - last_kill_s;
      }
      std::this_thread::sleep_for(100ms);
    }
    return -1;
  }

  void report(double last_kill_s, double converged_s) {
    http::BlockingClient client;
    json keys = get_json(client, server_url_ + "/api/v1/keys");
    std::set<std::string> present_keys;
    if (keys.is_object()) {
      for (const auto& key : keys["items"]) present_keys.insert(key["metadata"].value("name", ""));
    }
    int keys_lost = 0, deployments_lost = 0;
    for (const auto& id : acknowledged_keys_) keys_lost += present_keys.count(id) ? 0 : 1;
    for (const auto& name : acknowledged_deployments_) {
      auto found = client.request("GET", server_url_ + "/api/v1/deployments/" + name, "", {}, 5s);
      deployments_lost += found && found->status == 200 ? 0 : 1;
    }
    // The gateway's usage accounting (flushed to the store once a second).
    std::this_thread::sleep_for(2s);
    json usage = get_json(client, server_url_ + "/api/v1/usage?model=chat");
    int64_t accounted_completion = 0, accounted_prompt = 0, accounted_requests = 0;
    if (usage.is_object()) {
      accounted_completion = usage["total"].value("completion_tokens", int64_t{0});
      accounted_prompt = usage["total"].value("prompt_tokens", int64_t{0});
      accounted_requests = usage["total"].value("requests", int64_t{0});
    }
    std::map<std::string, int> kills_by_victim;
    for (const auto& kill : kills_) kills_by_victim[kill.victim]++;

    std::cout << fmt::format("\n{} min, a kill -9 every {} s, {} streaming clients, seed {}, {} agent ports\n\n",
                             options_.minutes, options_.kill_every_s, options_.clients, options_.seed,
                             options_.fixed_agent_ports ? "fixed" : "ephemeral");
    std::cout << "| measure | value |\n|---|---|\n";
    std::string kills_text;
    for (const auto& [victim, count] : kills_by_victim) kills_text += fmt::format("{} {}, ", victim, count);
    if (!kills_text.empty()) kills_text.resize(kills_text.size() - 2);
    std::cout << fmt::format("| kills | {} ({}) |\n", kills_.size(), kills_text);
    std::cout << fmt::format("| requests sent | {} |\n", tally_.sent);
    std::cout << fmt::format("| completed | {} |\n", tally_.completed);
    std::cout << fmt::format("| failed before the first byte | {} |\n", tally_.failed_before_first_byte);
    std::cout << fmt::format("| streams cut | {} |\n", tally_.cut);
    std::string by_kill;
    for (const auto& [victim, count] : tally_.failures_by_last_kill) by_kill += fmt::format("{} {}, ", victim, count);
    if (!by_kill.empty()) by_kill.resize(by_kill.size() - 2);
    std::cout << fmt::format("| failures by the last kill before them | {} |\n", by_kill.empty() ? "-" : by_kill);
    std::cout << fmt::format("| acknowledged writes lost | {} of {} (keys {} of {}, deployments {} of {}) |\n",
                             keys_lost + deployments_lost, acknowledged_keys_.size() + acknowledged_deployments_.size(),
                             keys_lost, acknowledged_keys_.size(), deployments_lost, acknowledged_deployments_.size());
    std::cout << fmt::format(
        "| completion tokens: clients received / gateway accounted / engines counted | {} / {} / {:.0f} |\n",
        tally_.client_completion_tokens, accounted_completion, counters_.generation());
    std::cout << fmt::format(
        "| prompt tokens: clients received / gateway accounted / engines counted | {} / {} / {:.0f} |\n",
        tally_.client_prompt_tokens, accounted_prompt, counters_.prompt());
    std::cout << fmt::format("| requests the gateway accounted | {} |\n", accounted_requests);
    std::cout << fmt::format("| last kill at | {:.1f} s |\n", last_kill_s);
    std::cout << fmt::format("| time to converge after the last kill | {} |\n",
                             converged_s < 0 ? std::string("not within 120 s") : fmt::format("{:.1f} s", converged_s));
    int exits = 0;
    for (const auto& [why, count] : unplanned_exits_) exits += count;
    std::cout << fmt::format("| server or agent exits not caused by a kill (restarted after 1 s) | {} |\n", exits);
    std::cout << fmt::format("| writes attempted | {} |\n", writes_attempted_);
    std::cout << "\nexits not caused by a kill:\n";
    for (const auto& [why, count] : unplanned_exits_) std::cout << fmt::format("  {:>6}  {}\n", count, why);
    std::cout << "failure reasons:\n";
    for (const auto& [reason, count] : tally_.failure_reasons) std::cout << fmt::format("  {:>6}  {}\n", count, reason);
    std::cout << "kills (s: victim):";
    for (const auto& kill : kills_) std::cout << fmt::format(" {:.0f}:{}", kill.at_s, kill.victim);
    std::cout << "\n";
  }

  void teardown() {
    // Remove the deployment so the agents stop the engines, then stop everything.
    testing::run_command({NEBULA_BINARY, "rm", "chat"}, {"NEBULA_SERVER=" + server_url_});
    http::BlockingClient client;
    for (int i = 0; i < 100; ++i) {
      json replicas = get_json(client, server_url_ + "/api/v1/replicas");
      if (!replicas.is_object() || replicas["items"].empty()) break;
      std::this_thread::sleep_for(100ms);
    }
    for (auto& agent : agents_) agent->stop();
    if (server_) server_->stop();
    // Engines an agent left behind (adopted ones are not its children): their process groups.
    std::lock_guard lock(pids_mutex_);
    for (int pid : engine_pids_) ::kill(-pid, SIGKILL);
    if (!options_.keep) std::filesystem::remove_all(dir_);
  }

  Options options_;
  std::mt19937 random_;
  std::filesystem::path dir_;
  int server_port_ = 0;
  std::string server_url_;
  std::unique_ptr<Process> server_;
  std::vector<std::unique_ptr<Process>> agents_;
  Clock::time_point start_;
  Tally tally_;
  EngineCounters counters_;
  std::mutex kills_mutex_, pids_mutex_, writes_mutex_, processes_mutex_;
  std::map<std::string, int> unplanned_exits_;  // "process: last log line" -> count
  std::vector<Kill> kills_;
  std::vector<int> engine_pids_;
  int writes_attempted_ = 0;
  std::set<std::string> acknowledged_keys_, acknowledged_deployments_;
};

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "chaos_bench: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    try {
      if (arg == "--minutes") {
        options.minutes = std::stod(value());
      } else if (arg == "--kill-every") {
        options.kill_every_s = std::stod(value());
      } else if (arg == "--clients") {
        options.clients = std::stoi(value());
      } else if (arg == "--seed") {
        options.seed = static_cast<unsigned>(std::stoul(value()));
      } else if (arg == "--keep") {
        options.keep = true;
      } else if (arg == "--agent-ports") {
        std::string mode = value();
        if (mode != "fixed" && mode != "ephemeral") throw std::invalid_argument(mode);
        options.fixed_agent_ports = mode == "fixed";
      } else {
        std::cerr << "usage: chaos_bench [--minutes 10] [--kill-every 5] [--clients 8] [--seed N] "
                     "[--agent-ports fixed|ephemeral] [--keep]\n";
        return 2;
      }
    } catch (const std::exception&) {
      std::cerr << "chaos_bench: " << arg << ": not a valid value\n";
      return 2;
    }
  }
  if (options.minutes <= 0 || options.kill_every_s <= 0 || options.clients <= 0) {
    std::cerr << "chaos_bench: --minutes, --kill-every and --clients must be positive\n";
    return 2;
  }
  if (options.seed == 0) options.seed = std::random_device()();
  return Chaos(options).run();
}
