// Cluster membership and supervision across real processes: a `nebula server`, `nebula agent`s
// with simulated GPUs joining it, engines they supervise. Everything on loopback.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include <mutex>

#include "common/ids.h"
#include "common/json.h"
#include "gguf_fixtures.h"
#include "http/http.h"
#include "http/test_server.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::eventually;
using testing::process_gone;

class Cluster : public ::testing::Test {
 protected:
  void SetUp() override {
    // A node is NotReady after 3 s of silence and its replicas move 2 s after that.
    nebula_ = std::make_unique<testing::NebulaServer>(
        temp_.path() + "/server", temp_.path() + "/server.log",
        std::vector<std::string>{"--node-timeout", "3s", "--reschedule-after", "2s"});
    ASSERT_TRUE(nebula_->start());
    server_ = nebula_->url();
    token_ = nebula_->token();
  }

  void TearDown() override {
    // Agents leave their engines running by design: remove the deployments so the agents stop
    // them, then stop the agents; kill whatever engine is left over.
    nebula_->remove_deployments();
    eventually([&] { return get_json("/api/v1/replicas")["items"].empty(); }, 15s);
    for (auto& [name, agent] : agents_) {
      if (agent && agent->running()) agent->stop(SIGTERM, 20s);
    }
    for (int pid : all_engine_pids_) {
      if (!process_gone(pid)) ::kill(-pid, SIGKILL);
    }
    nebula_->process().stop(SIGTERM, 20s);
    if (HasFailure()) {
      std::cerr << "---- server ----\n" << nebula_->process().output() << "\n";
      for (auto& [name, agent] : agents_) {
        if (agent) std::cerr << "---- agent " << name << " ----\n" << agent->output() << "\n";
      }
    }
  }

  // The agent keeps its data dir per node name, so a restarted agent finds its agent.db.
  std::unique_ptr<Child> start_agent(const std::string& name, const std::string& gpus, const std::string& token,
                                     std::vector<std::string> extra = {}) {
    extra.insert(extra.begin(), {"--restart-backoff", "2s"});
    return std::make_unique<Child>(
        testing::agent_argv(server_, token, name, gpus, temp_.path() + "/agent-" + name, extra),
        temp_.path() + "/agent-" + name + "-" + std::to_string(++agent_runs_) + ".log");
  }
  void add_agent(const std::string& name, const std::string& gpus) { agents_[name] = start_agent(name, gpus, token_); }

  json get_json(const std::string& path) { return nebula_->get_json(path); }
  bool node_ready(const std::string& name) { return nebula_->node_ready(name); }
  // Every engine pid seen is remembered, so TearDown can kill what an agent left behind.
  std::vector<json> remember_pids(std::vector<json> replicas) {
    for (const auto& item : replicas) {
      int pid = item["status"].value("pid", 0);
      if (pid > 0) all_engine_pids_.insert(pid);
    }
    return replicas;
  }
  std::vector<json> replicas_of(const std::string& deployment) {
    return remember_pids(nebula_->replicas_of(deployment));
  }
  std::vector<json> ready_replicas(const std::string& deployment) {
    return remember_pids(nebula_->ready_replicas(deployment));
  }
  testing::CommandResult cli(std::vector<std::string> args) { return nebula_->cli(std::move(args)); }

  testing::TempDir temp_;
  std::unique_ptr<testing::NebulaServer> nebula_;
  std::string server_;
  std::string token_;
  std::map<std::string, std::unique_ptr<Child>> agents_;
  std::set<int> all_engine_pids_;
  int agent_runs_ = 0;
  http::BlockingClient client_;
};

TEST_F(Cluster, TwoAgentsJoinDrainMovesTrafficAndLostNodesAreReplaced) {
  // A join token from `nebula token create`; a made-up one is refused.
  auto created = cli({"token", "create", "--ttl", "1h", "--description", "e2e", "-o", "json"});
  ASSERT_EQ(created.exit_code, 0) << created.out;
  auto created_json = parse_json(created.out);
  ASSERT_TRUE(created_json) << created.out;
  std::string issued = created_json->value("token", "");
  ASSERT_EQ(issued.rfind("nbt-", 0), 0u) << created.out;
  auto refused = client_.request("POST", server_ + "/api/v1/nodes/join",
                                 R"({"token":"nbt-nothere-0123456789abcdef","name":"intruder"})");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);

  agents_["big"] = start_agent("big", "1xH100-80GB", issued);
  add_agent("small", "2x24GB");
  ASSERT_TRUE(eventually([&] { return node_ready("big") && node_ready("small"); }, 20s));
  json big = get_json("/api/v1/nodes/big");
  json small = get_json("/api/v1/nodes/small");
  ASSERT_EQ(big["status"]["gpus"].size(), 1u);
  EXPECT_EQ(big["status"]["gpus"][0]["memory_total_mb"], 81920);
  ASSERT_EQ(small["status"]["gpus"].size(), 2u);
  EXPECT_EQ(small["status"]["gpus"][1]["memory_total_mb"], 24576);
  EXPECT_NE(big["status"]["engines"].dump().find("\"sim\""), std::string::npos) << big.dump();
  EXPECT_EQ(big["status"]["engine_versions"]["sim"], NEBULA_VERSION) << big.dump();

  // One replica of 10 GB; wherever it lands, draining that node moves it without a failed request.
  auto deployed =
      cli({"deploy", "svc", "--engine", "sim", "--model", "m", "--vram", "10GB", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto first = ready_replicas("svc");
  ASSERT_EQ(first.size(), 1u);
  std::string from = first[0]["spec"]["node"];
  std::string to = from == "big" ? "small" : "big";
  int old_pid = first[0]["status"]["pid"];

  std::atomic<bool> stop_traffic{false};
  std::atomic<int> ok{0}, failed{0};
  std::string last_failure;
  std::thread traffic([&] {
    http::BlockingClient client;
    const std::string body = R"({"model":"svc","messages":[{"role":"user","content":"hi"}],"max_tokens":4})";
    while (!stop_traffic) {
      auto response = client.request("POST", server_ + "/v1/chat/completions", body, {}, 10s);
      if (response && response->status == 200) {
        ++ok;
      } else {
        ++failed;
        last_failure = response ? response->body : response.error().message;
      }
      std::this_thread::sleep_for(20ms);
    }
  });
  auto drained = cli({"nodes", "drain", from});
  ASSERT_EQ(drained.exit_code, 0) << drained.out;
  bool moved = eventually(
      [&] {
        auto replicas = replicas_of("svc");
        return replicas.size() == 1 && replicas[0]["spec"]["node"] == to && replicas[0]["status"]["phase"] == "Ready";
      },
      40s);
  // Traffic goes on after the move: a few more answers, from the new replica (and more than ten
  // in all: a move without a surge can take less time than ten requests).
  int answered = ok.load();
  eventually([&] { return ok.load() >= std::max(answered + 5, 11) || failed.load() > 0; }, 10s, 20ms);
  stop_traffic = true;
  traffic.join();
  ASSERT_TRUE(moved) << get_json("/api/v1/replicas").dump(2);
  EXPECT_GT(ok.load(), 10);
  EXPECT_EQ(failed.load(), 0) << last_failure;
  EXPECT_TRUE(eventually([&] { return process_gone(old_pid); }, 15s)) << "the drained engine still runs";
  auto nodes_table = cli({"nodes"});
  EXPECT_NE(nodes_table.out.find("Draining"), std::string::npos) << nodes_table.out;
  // Draining a draining node is a no-op: it succeeds and records no second event.
  ASSERT_EQ(cli({"nodes", "drain", from}).exit_code, 0);
  int draining_events = 0;
  json drain_events = get_json("/api/v1/events");
  for (const auto& event : drain_events["items"]) {
    if (event.value("object", "") == "node/" + from && event.value("reason", "") == "Draining") ++draining_events;
  }
  EXPECT_EQ(draining_events, 1) << drain_events.dump(2);
  ASSERT_EQ(cli({"nodes", "undrain", from}).exit_code, 0);

  // The node serving it goes silent (its agent stops; the engine is left running, as after a
  // crash of the machine's agent): after node timeout + grace the replica is replaced on the other
  // node; when the agent comes back it stops the stale engine.
  int stale_pid = ready_replicas("svc")[0]["status"]["pid"];
  ASSERT_EQ(agents_[to]->stop(SIGKILL, 10s), 128 + SIGKILL);
  bool replaced = eventually(
      [&] {
        auto ready = ready_replicas("svc");
        return ready.size() == 1 && ready[0]["spec"]["node"] == from;
      },
      40s);
  ASSERT_TRUE(replaced) << get_json("/api/v1/replicas").dump(2);
  EXPECT_FALSE(process_gone(stale_pid)) << "the lost node's engine was expected to run on until its agent returns";
  json events = get_json("/api/v1/events");
  EXPECT_NE(events.dump().find("Rescheduling"), std::string::npos);
  agents_[to] = start_agent(to, to == "big" ? "1xH100-80GB" : "2x24GB", token_);
  EXPECT_TRUE(eventually([&] { return process_gone(stale_pid); }, 20s)) << "the stale engine was not stopped";
  EXPECT_TRUE(eventually([&] { return node_ready(to); }, 10s));
  EXPECT_EQ(ready_replicas("svc").size(), 1u);
}

TEST_F(Cluster, AgentKilledMidStreamReadoptsItsEngineAndCrashesBackOff) {
  add_agent("n1", "1xH100-80GB");
  ASSERT_TRUE(eventually([&] { return node_ready("n1"); }, 20s));
  // 20 ms per token: a 150-token stream lasts about 3 s.
  auto deployed = cli({"deploy", "slow", "--engine", "sim", "--model", "m", "--vram", "10GB",
                       "--engine-arg=--itl-ms=20", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto ready = ready_replicas("slow");
  ASSERT_EQ(ready.size(), 1u);
  int engine_pid = ready[0]["status"]["pid"];

  std::string streamed;
  std::atomic<bool> first_chunk{false};
  int status = 0;
  std::thread stream([&] {
    http::BlockingClient client;
    const std::string body =
        R"({"model":"slow","stream":true,"max_tokens":150,"messages":[{"role":"user","content":"tell me"}]})";
    auto result = client.stream(
        "POST", server_ + "/v1/chat/completions", body, {{"Content-Type", "application/json"}},
        [&](std::string_view piece) {
          streamed.append(piece);
          first_chunk = true;
          return true;
        },
        20s);
    status = result ? *result : -1;
  });
  ASSERT_TRUE(eventually([&] { return first_chunk.load(); }, 10s));
  ASSERT_EQ(agents_["n1"]->stop(SIGKILL, 10s), 128 + SIGKILL);
  agents_["n1"] = start_agent("n1", "1xH100-80GB", token_);
  stream.join();
  EXPECT_EQ(status, 200);
  EXPECT_NE(streamed.find("data: [DONE]"), std::string::npos)
      << streamed.substr(streamed.size() > 300 ? streamed.size() - 300 : 0);
  EXPECT_NE(streamed.find("\"finish_reason\":\"length\""), std::string::npos);

  // The new agent took the engine over: same pid, no restart, still Ready.
  EXPECT_TRUE(eventually([&] { return agents_["n1"]->output().find("re-adopted") != std::string::npos; }, 10s))
      << agents_["n1"]->output();
  ASSERT_TRUE(nebula_->wait_heartbeats("n1", 3, 10s));  // status reports from the new agent
  ready = ready_replicas("slow");
  ASSERT_EQ(ready.size(), 1u) << get_json("/api/v1/replicas").dump(2);
  EXPECT_EQ(ready[0]["status"]["pid"], engine_pid);
  EXPECT_EQ(ready[0]["status"]["restarts"], 0);
  EXPECT_FALSE(process_gone(engine_pid));

  // The agent's /metrics: GPU gauges and the engine's, read from the engine's own metrics.
  std::string agent_url = get_json("/api/v1/nodes/n1")["status"]["agent_url"];
  std::string metrics;
  ASSERT_TRUE(eventually(
      [&] {
        auto response =
            client_.request("GET", agent_url + "/metrics", "", testing::agent_credential(temp_.path() + "/agent-n1"));
        metrics = response && response->status == 200 ? response->body : "";
        return metrics.find("nebula_engine_requests_running{") != std::string::npos;
      },
      10s))
      << metrics;
  EXPECT_NE(metrics.find("nebula_gpu_memory_total_bytes{gpu=\"0\",uuid=\"GPU-sim-n1-0\"} 85899345920"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("nebula_engine_up{replica=\"" + ready[0]["metadata"]["name"].get<std::string>() +
                         "\",deployment=\"slow\",engine=\"sim\"} 1"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("nebula_engine_kv_cache_usage_ratio{"), std::string::npos) << metrics;

  // kill -9 the engine: Failed with the restart and its delay visible, then Ready again.
  ASSERT_EQ(::kill(engine_pid, SIGKILL), 0);
  bool backing_off = eventually(
      [&] {
        auto replicas = replicas_of("slow");
        return replicas.size() == 1 && replicas[0]["status"]["phase"] == "Failed" &&
               replicas[0]["status"]["restarts"] == 1 && replicas[0]["status"]["next_restart_ms"].get<int64_t>() > 0;
      },
      10s);
  EXPECT_TRUE(backing_off) << get_json("/api/v1/replicas").dump(2);
  // The backoff is in the replica's Failed event (the phase itself lasts only the 2 s delay).
  auto events = cli({"events"});
  EXPECT_NE(events.out.find("restart 1 in 2 s"), std::string::npos) << events.out;
  bool healed = eventually(
      [&] {
        auto now_ready = ready_replicas("slow");
        return now_ready.size() == 1 && now_ready[0]["status"]["pid"] != engine_pid &&
               now_ready[0]["status"]["restarts"] == 1;
      },
      20s);
  EXPECT_TRUE(healed) << get_json("/api/v1/replicas").dump(2);
  auto shown = cli({"get", "slow"});
  // LAST ERROR: the engine was adopted, so not this agent's child: its exit status is unknown.
  EXPECT_NE(shown.out.find("exit status unknown"), std::string::npos) << shown.out;
}

// Sum of every sample of a Prometheus counter family in text (all label sets).
double metric_sum(const std::string& text, const std::string& name) {
  double sum = 0;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(name + "{", 0) != 0 && line.rfind(name + " ", 0) != 0) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

// A replica whose engine is gone but still listed (its agent is paused, so nothing reports the
// death): every request the router sends there fails to connect, is counted as an upstream error
// and is served by the other replica; the client sees only 200s.
TEST_F(Cluster, RetriesAnotherReplicaBeforeTheFirstByte) {
  add_agent("n1", "1xH100-80GB");
  ASSERT_TRUE(eventually([&] { return node_ready("n1"); }, 20s));
  auto deployed = cli({"deploy", "pair", "--engine", "sim", "--model", "m", "--vram", "10GB", "--replicas", "2",
                       "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto ready = ready_replicas("pair");
  ASSERT_EQ(ready.size(), 2u);
  int dead_pid = ready[0]["status"]["pid"];
  std::string survivor = ready[1]["status"]["endpoint"];
  auto metrics_of = [&](const std::string& url) {
    auto response = client_.request("GET", url + "/metrics");
    return response && response->status == 200 ? response->body : std::string();
  };
  std::string before = metrics_of(survivor);
  ASSERT_FALSE(before.empty());
  double served_before = metric_sum(before, "vllm:request_success_total");
  double errors_before = metric_sum(metrics_of(server_), "nebula_upstream_errors_total");

  ASSERT_EQ(::kill(agents_["n1"]->pid(), SIGSTOP), 0);
  ASSERT_EQ(::kill(dead_pid, SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return process_gone(dead_pid); }, 5s));
  constexpr int kRequests = 6;
  for (int i = 0; i < kRequests; ++i) {
    auto response = client_.request("POST", server_ + "/v1/chat/completions",
                                    R"({"model":"pair","max_tokens":2,"messages":[{"role":"user","content":"hi"}]})",
                                    {{"Content-Type", "application/json"}}, 10s);
    ASSERT_TRUE(response) << response.error().message;
    EXPECT_EQ(response->status, 200) << response->body;
  }
  double errors_after = metric_sum(metrics_of(server_), "nebula_upstream_errors_total");
  double served_after = metric_sum(metrics_of(survivor), "vllm:request_success_total");
  ASSERT_EQ(::kill(agents_["n1"]->pid(), SIGCONT), 0);
  EXPECT_GE(errors_after, errors_before + 1) << "no request was tried on the dead replica";
  EXPECT_EQ(served_after, served_before + kRequests) << "every answer comes from the surviving replica";
  // Back from its pause, the agent sees the death and restarts the engine.
  EXPECT_TRUE(eventually([&] { return ready_replicas("pair").size() == 2; }, 30s))
      << get_json("/api/v1/replicas").dump(2);
}

TEST_F(Cluster, AnEngineThatNeverBecomesReadyFailsWithItsLastLogLines) {
  agents_["n1"] = start_agent("n1", "1xH100-80GB", token_, {"--startup-timeout", "2s"});
  ASSERT_TRUE(eventually([&] { return node_ready("n1"); }, 20s));
  auto deployed = cli(
      {"deploy", "stuck", "--engine", "sim", "--model", "m", "--vram", "10GB", "--engine-arg=--startup-seconds=600"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  bool failed = eventually(
      [&] {
        auto replicas = replicas_of("stuck");
        return replicas.size() == 1 && replicas[0]["status"]["last_error"].get<std::string>().find(
                                           "not ready after 2 s; last log lines:") != std::string::npos;
      },
      15s);
  ASSERT_TRUE(failed) << get_json("/api/v1/replicas").dump(2);
  std::string error = replicas_of("stuck")[0]["status"]["last_error"];
  EXPECT_NE(error.find("engine-sim serving model"), std::string::npos) << error;
  json events = get_json("/api/v1/events");
  EXPECT_NE(events.dump().find("last log lines"), std::string::npos);
  ASSERT_EQ(cli({"rm", "stuck"}).exit_code, 0);
}

// The real llama.cpp server, when one is on PATH: the agent finds it, runs the tiny Llama of
// tests/gguf_fixtures.h, and the gateway serves a completion from it.
TEST_F(Cluster, RealLlamaServerServesThroughTheGateway) {
  if (testing::find_on_path("llama-server").empty())
    GTEST_SKIP() << "llama-server is not on PATH; the real llama.cpp test needs it";
  std::string model = testing::gguf_fixture("tiny-llama.gguf");
  add_agent("cpu", "1x24GB");
  ASSERT_TRUE(eventually([&] { return node_ready("cpu"); }, 20s));
  json node = get_json("/api/v1/nodes/cpu");
  ASSERT_NE(node["status"]["engines"].dump().find("llamacpp"), std::string::npos) << node.dump();
  auto deployed = cli({"deploy", "tiny", "--engine", "llamacpp", "--model", model, "--vram", "1GB", "--max-context",
                       "512", "--max-seqs", "2", "--wait", "--timeout", "120s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out << agents_["cpu"]->output();
  auto answer = client_.request("POST", server_ + "/v1/chat/completions",
                                R"({"model":"tiny","max_tokens":8,"messages":[{"role":"user","content":"Hello"}]})",
                                {{"Content-Type", "application/json"}}, 60s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200) << answer->body;
  auto parsed = parse_json(answer->body);
  ASSERT_TRUE(parsed) << answer->body;
  EXPECT_GT((*parsed)["usage"]["completion_tokens"].get<int>(), 0) << answer->body;
  EXPECT_EQ((*parsed)["model"], "tiny") << answer->body;
}

TEST_F(Cluster, BadAgentSettingsAreRefusedWithTheReason) {
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = {NEBULA_BINARY, "agent",       "--server",   server_,
                                     "--token",     token_,        "--name",     "bad",
                                     "--listen",    "127.0.0.1:0", "--data-dir", temp_.path() + "/agent-bad"};
    for (auto& arg : extra) argv.push_back(arg);
    return testing::run_command(argv);
  };
  std::string config = temp_.path() + "/bad.yaml";
  std::ofstream(config) << "server: " << server_ << "\nbogus: 1\n";
  auto unknown = run({"--config", config});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("unknown setting 'bogus'"), std::string::npos) << unknown.out;
  std::ofstream(config) << "engines: [vllm]\n";
  auto shape = run({"--config", config});
  EXPECT_EQ(shape.exit_code, 1);
  EXPECT_NE(shape.out.find("engines: expected a mapping"), std::string::npos) << shape.out;
  auto duration = run({"--restart-backoff", "soon"});
  EXPECT_EQ(duration.exit_code, 2) << "a bad flag value is a usage error";
  EXPECT_NE(duration.out.find("--restart-backoff"), std::string::npos) << duration.out;
  auto binary = run({"--engine-binary", "vllm"});
  EXPECT_EQ(binary.exit_code, 1);
  EXPECT_NE(binary.out.find("expected NAME=BINARY"), std::string::npos) << binary.out;
  auto gpus = run({"--sim-gpus", "lots"});
  EXPECT_EQ(gpus.exit_code, 1);
  EXPECT_NE(gpus.out.find("invalid --sim-gpus"), std::string::npos) << gpus.out;
  EXPECT_FALSE(node_ready("bad"));
}

// A one-file Hugging Face hub: the listing API (size + sha256) and resolve with Range. The first
// download is cut halfway, so the agent must resume.
class TinyHub {
 public:
  explicit TinyHub(std::string content) : content_(std::move(content)) {
    http::Router router;
    router.add("GET", "/api/models/acme/tiny/revision/main",
               [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
                 co_await writer.send(http::Response::json_body(200, listing()));
               });
    router.add("GET", "/acme/tiny/resolve/main/model.gguf",
               [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
                 std::string range = request.header("range");
                 size_t start = range.rfind("bytes=", 0) == 0 ? std::stoul(range.substr(6)) : 0;
                 bool cut = false;
                 {
                   std::lock_guard lock(mutex_);
                   ranges_.push_back(range);
                   cut = !cut_done_;
                   cut_done_ = true;
                 }
                 if (cut) {
                   co_await writer.start_stream(200, octet_stream());
                   co_await writer.write(std::string_view(content_).substr(0, content_.size() / 2));
                   writer.abort();
                   co_return;
                 }
                 co_await writer.send(body_from(start));
               });
    auto port = server_.start(std::move(router));
    EXPECT_TRUE(port) << port.error().message;
  }
  ~TinyHub() { server_.stop(); }  // before the state its handlers use goes
  std::string endpoint() const { return server_.url(); }
  std::vector<std::string> ranges() {
    std::lock_guard lock(mutex_);
    return ranges_;
  }

 private:
  json listing() const {
    json file = {{"rfilename", "model.gguf"},
                 {"size", content_.size()},
                 {"lfs", {{"sha256", sha256_hex(content_)}, {"size", content_.size()}}}};
    return json{{"id", "acme/tiny"}, {"sha", "abc123"}, {"siblings", json::array({file})}};
  }
  static http::Headers octet_stream() { return {{"Content-Type", "application/octet-stream"}}; }
  http::Response body_from(size_t start) const {
    http::Response response;
    response.status = start > 0 ? 206 : 200;
    response.headers = octet_stream();
    if (start > 0) {
      response.headers.push_back(
          {"Content-Range", fmt::format("bytes {}-{}/{}", start, content_.size() - 1, content_.size())});
    }
    response.body = content_.substr(start);
    return response;
  }

  std::string content_;
  http::testing::ServerThread server_;
  std::mutex mutex_;
  std::vector<std::string> ranges_;
  bool cut_done_ = false;
};

TEST_F(Cluster, ModelsAreDownloadedResumedAndHandedToTheEngine) {
  std::string content(3 << 20, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>((i * 7919) >> 3);
  TinyHub hub(content);
  // agent.yaml: the hub, and a command engine that runs the simulator and records the model path
  // it was given in its served name.
  std::string config_path = temp_.path() + "/agent.yaml";
  std::ofstream(config_path) << "hf_endpoint: " << hub.endpoint() << "\n"
                             << "engines:\n"
                             << "  command:\n"
                             << "    command: [" << NEBULA_BINARY
                             << ", engine-sim, --host, '{host}', --port, '{port}', --model, '{served_name}']\n";
  agents_["n1"] = start_agent("n1", "1xH100-80GB", token_, {"--config", config_path});
  ASSERT_TRUE(eventually([&] { return node_ready("n1"); }, 20s));
  json node = get_json("/api/v1/nodes/n1");
  ASSERT_NE(node["status"]["engines"].dump().find("command"), std::string::npos) << node.dump();

  auto deployed = cli({"deploy", "fetched", "--engine", "command", "--model", "hf://acme/tiny/model.gguf", "--vram",
                       "4GB", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out << agents_["n1"]->output();
  std::string path = temp_.path() + "/agent-n1/models/hf/acme/tiny/main/model.gguf";
  std::ifstream file(path, std::ios::binary);
  std::string downloaded((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  EXPECT_EQ(downloaded.size(), content.size()) << path;
  EXPECT_TRUE(downloaded == content);
  // The first request was cut halfway; the retry asked for the rest only.
  auto ranges = hub.ranges();
  ASSERT_GE(ranges.size(), 2u);
  EXPECT_EQ(ranges[0], "");
  EXPECT_EQ(ranges[1], "bytes=" + std::to_string(content.size() / 2) + "-");
  EXPECT_NE(agents_["n1"]->output().find(path), std::string::npos)
      << "the agent did not resolve the model to the downloaded file";
  json events = get_json("/api/v1/events");
  EXPECT_NE(events.dump().find("Downloading"), std::string::npos);
  // The node now reports the model as cached: the scheduler prefers it for the next replica.
  EXPECT_TRUE(eventually(
      [&] { return get_json("/api/v1/nodes/n1")["status"]["models"] == json::array({"acme/tiny@main/model.gguf"}); },
      5s))
      << get_json("/api/v1/nodes/n1").dump();
}

}  // namespace
}  // namespace nebula
