// Rolling updates end to end: real `nebula` processes and engine-sim engines on loopback.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "http/sse.h"
#include "nebula_fixture.h"

namespace nebula::testing {
namespace {

using namespace std::chrono_literals;

std::string cmdline_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  for (char& c : text) {
    if (c == '\0') c = ' ';
  }
  return text;
}

// Streams chat completions to `model` from a few threads until stopped, counting every request
// that did not end in a 200 with a complete stream ([DONE]).
class StreamLoad {
 public:
  StreamLoad(std::string server, std::string model, int threads)
      : server_(std::move(server)), model_(std::move(model)) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  ~StreamLoad() { stop(); }
  void stop() {
    stopping_ = true;
    for (auto& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }
  int sent() const { return sent_; }
  int failed() const { return failed_; }
  std::string first_failure() {
    std::lock_guard lock(mutex_);
    return first_failure_;
  }

 private:
  void run() {
    http::BlockingClient client;
    std::string body =
        R"({"model":")" + model_ + R"(","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"count"}]})";
    while (!stopping_) {
      http::SseParser parser;
      std::vector<http::SseEvent> events;
      std::string raw;
      auto status = client.stream("POST", server_ + "/v1/chat/completions", body, {}, [&](std::string_view piece) {
        raw.append(piece);
        parser.feed(piece, events);
        return true;
      });
      ++sent_;
      bool complete = status && *status == 200 && !events.empty() && events.back().data == "[DONE]";
      if (!complete) {
        ++failed_;
        std::lock_guard lock(mutex_);
        if (first_failure_.empty()) {
          first_failure_ =
              status ? "HTTP " + std::to_string(*status) + ": " + raw.substr(0, 300) : status.error().message;
        }
      }
    }
  }

  std::string server_;
  std::string model_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
  std::atomic<int> sent_{0};
  std::atomic<int> failed_{0};
  std::mutex mutex_;
  std::string first_failure_;
};

json rollout_of(NebulaUp& up, const std::string& name) {
  return up.get_json("/api/v1/deployments/" + name + "/rollout", up.admin_key());
}

bool rollout_is(const json& view, const std::string& state, int64_t plan) {
  return view.is_object() && view["rollout"]["state"] == state && view["plan_version"] == plan;
}

TEST(RolloutE2E, ARolloutUnderLoadDropsNothingAndABadOneRollsBack) {
  NebulaUp up;
  ASSERT_TRUE(up.wait_node_ready());
  auto deployed = up.cli({"deploy", "chat", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--vram", "20GB",
                          "--replicas", "2", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  std::set<int> plan1_pids = up.engine_pids("chat");
  ASSERT_EQ(plan1_pids.size(), 2u);

  StreamLoad load(up.server(), "chat", 3);
  ASSERT_TRUE(eventually([&] { return load.sent() >= 6; }, 20s));

  // A changed engine argument is a new plan: replicas roll over to it, surging (3 x 20 GB fit).
  auto changed = up.cli({"deploy", "chat", "--engine-arg=--seed=7"});
  ASSERT_EQ(changed.exit_code, 0) << changed.out;
  bool complete = eventually([&] { return rollout_is(rollout_of(up, "chat"), "Complete", 2); }, 90s, 200ms);
  ASSERT_TRUE(complete) << rollout_of(up, "chat").dump(2);
  int sent_during_rollout = load.sent();
  EXPECT_EQ(load.failed(), 0) << load.first_failure();

  // The last old replica may still be stopping.
  ASSERT_TRUE(eventually([&] { return up.replicas_of("chat").size() == 2; }, 20s));
  auto replicas = up.replicas_of("chat");
  ASSERT_EQ(replicas.size(), 2u);
  for (const auto& replica : replicas) {
    EXPECT_EQ(replica["spec"]["plan_version"], 2);
    EXPECT_EQ(replica["status"]["phase"], "Ready");
    int pid = replica["status"]["pid"].get<int>();
    EXPECT_EQ(plan1_pids.count(pid), 0u) << "a plan-1 engine still serves";
    EXPECT_NE(cmdline_of(pid).find("--seed=7"), std::string::npos) << cmdline_of(pid);
  }
  for (int pid : plan1_pids) EXPECT_TRUE(eventually([&] { return process_gone(pid); }, 15s)) << pid;
  auto history = up.cli({"rollout", "history", "chat"});
  ASSERT_EQ(history.exit_code, 0) << history.out;
  EXPECT_NE(history.out.find("spec changed"), std::string::npos) << history.out;
  auto events = up.cli({"events"});
  EXPECT_NE(events.out.find("RolloutStarted"), std::string::npos) << events.out;
  EXPECT_NE(events.out.find("Draining"), std::string::npos) << events.out;
  EXPECT_NE(events.out.find("RolloutComplete"), std::string::npos) << events.out;

  // An engine argument engine-sim refuses: its replicas crash-loop, the rollout rolls back, and
  // plan 2 keeps serving throughout.
  std::set<int> plan2_pids = up.engine_pids("chat");
  auto bad = up.cli({"deploy", "chat", "--engine-arg=--no-such-flag"});
  ASSERT_EQ(bad.exit_code, 0) << bad.out;
  bool rolled_back = eventually([&] { return rollout_is(rollout_of(up, "chat"), "RolledBack", 2); }, 90s, 200ms);
  ASSERT_TRUE(rolled_back) << rollout_of(up, "chat").dump(2);
  json view = rollout_of(up, "chat");
  EXPECT_NE(view["rollout"]["message"].get<std::string>().find("rolled back to plan 2"), std::string::npos)
      << view.dump(2);
  ASSERT_TRUE(eventually(
      [&] {
        auto now = up.replicas_of("chat");
        return now.size() == 2 && now[0]["spec"]["plan_version"] == 2 && now[1]["spec"]["plan_version"] == 2;
      },
      30s))
      << json(up.replicas_of("chat")).dump(2);
  EXPECT_EQ(up.engine_pids("chat"), plan2_pids) << "the old plan's engines were never touched\n"
                                                << up.cli({"events"}).out << json(up.replicas_of("chat")).dump(2);
  ASSERT_TRUE(eventually([&] { return load.sent() >= sent_during_rollout + 6; }, 20s));
  load.stop();
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  auto status = up.cli({"rollout", "status", "chat"});
  ASSERT_EQ(status.exit_code, 0) << status.out;
  EXPECT_NE(status.out.find("RolledBack"), std::string::npos) << status.out;

  // Undo puts plan 2's spec back (a new plan, 4, like plan 2).
  auto undo = up.cli({"rollout", "undo", "chat"});
  ASSERT_EQ(undo.exit_code, 0) << undo.out;
  EXPECT_NE(undo.out.find("plan 2"), std::string::npos) << undo.out;
  ASSERT_TRUE(eventually([&] { return rollout_is(rollout_of(up, "chat"), "Complete", 4); }, 90s, 200ms))
      << rollout_of(up, "chat").dump(2);
  auto spec = up.get_json("/api/v1/deployments/chat", up.admin_key())["spec"];
  EXPECT_EQ(spec["engine_args"], json::array({"--seed=7"})) << spec.dump();
  auto unknown = up.cli({"rollout", "undo", "chat", "--to-plan", "99"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("plan 99 is not in the history"), std::string::npos) << unknown.out;
}

TEST(RolloutE2E, RequestsForStartingReplicasWaitInTheQueueAndRestartRolls) {
  NebulaUp up;
  ASSERT_TRUE(up.wait_node_ready());
  // Replicas that take 3 s to start: a request sent meanwhile waits for them instead of a 503.
  auto deployed = up.cli({"deploy", "slow", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--vram", "20GB",
                          "--engine-arg=--startup-seconds=3"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  ASSERT_TRUE(eventually(
      [&] {
        auto replicas = up.replicas_of("slow");
        return replicas.size() == 1 && replicas[0]["status"]["phase"] == "Starting";
      },
      20s, 20ms));
  http::BlockingClient client;
  auto answer = client.request("POST", up.server() + "/v1/chat/completions",
                               R"({"model":"slow","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200) << answer->body;

  // nebula restart: a new plan with the same spec, rolled out replica by replica.
  int before = *up.engine_pids("slow").begin();
  auto restarted = up.cli({"restart", "slow"});
  ASSERT_EQ(restarted.exit_code, 0) << restarted.out;
  ASSERT_TRUE(eventually([&] { return rollout_is(rollout_of(up, "slow"), "Complete", 2); }, 60s, 200ms))
      << rollout_of(up, "slow").dump(2);
  ASSERT_TRUE(eventually([&] { return up.engine_pids("slow").size() == 1; }, 20s));
  auto pids = up.engine_pids("slow");
  ASSERT_EQ(pids.size(), 1u);
  EXPECT_NE(*pids.begin(), before);
  EXPECT_EQ(rollout_of(up, "slow")["plans"][1]["cause"], "restart");
  auto missing = up.cli({"restart", "nope"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.out.find("not found"), std::string::npos) << missing.out;
}

// Two 35 GB replicas on an 80 GB card leave no room for a third: the rollout replaces them one at
// a time, and the other replica serves meanwhile.
TEST(RolloutE2E, WithoutVramForASurgeReplicasAreReplacedOneAtATime) {
  NebulaUp up;
  ASSERT_TRUE(up.wait_node_ready());
  auto deployed = up.cli({"deploy", "big", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--vram", "35GB",
                          "--replicas", "2", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  StreamLoad load(up.server(), "big", 2);
  ASSERT_TRUE(eventually([&] { return load.sent() >= 4; }, 20s));
  auto changed = up.cli({"deploy", "big", "--engine-arg=--seed=3"});
  ASSERT_EQ(changed.exit_code, 0) << changed.out;
  ASSERT_TRUE(eventually([&] { return rollout_is(rollout_of(up, "big"), "Complete", 2); }, 90s, 200ms))
      << rollout_of(up, "big").dump(2);
  load.stop();
  EXPECT_EQ(load.failed(), 0) << load.first_failure();
  auto events = up.cli({"events"});
  EXPECT_NE(events.out.find("RolloutOneAtATime"), std::string::npos) << events.out;
  ASSERT_TRUE(eventually([&] { return up.replicas_of("big").size() == 2; }, 20s));
  for (const auto& replica : up.replicas_of("big")) {
    EXPECT_EQ(replica["spec"]["plan_version"], 2);
    EXPECT_NE(cmdline_of(replica["status"]["pid"].get<int>()).find("--seed=3"), std::string::npos);
  }
}

// kill -9 of the server in the middle of a rollout: the rollout's state is in the store, so the
// server that comes back finishes it (and does not call the node silent for the time it was gone).
TEST(RolloutE2E, AServerKilledMidRolloutResumesIt) {
  TempDir temp;
  std::string data_dir = temp.path() + "/server";
  int port = free_port();
  std::string url = "http://127.0.0.1:" + std::to_string(port);
  std::vector<std::string> server_argv = {NEBULA_BINARY, "server", "--listen",    "127.0.0.1:" + std::to_string(port),
                                          "--data-dir",  data_dir, "--log-level", "warn"};
  http::BlockingClient client;
  auto start_server = [&](const std::string& log) {
    auto child = std::make_unique<Child>(server_argv, temp.path() + "/" + log);
    bool healthy = eventually(
        [&] {
          auto health = client.request("GET", url + "/healthz");
          return health && health->status == 200;
        },
        20s);
    EXPECT_TRUE(healthy) << child->output();
    return child;
  };
  auto server = start_server("server1.log");
  std::string token;
  ASSERT_TRUE(eventually(
      [&] {
        std::ifstream in(data_dir + "/join-token");
        return static_cast<bool>(std::getline(in, token)) && !token.empty();
      },
      10s));
  Child agent(agent_argv(url, token, "n1", "1xH100-80GB", temp.path() + "/agent"), temp.path() + "/agent.log");
  // Engines belong to the agent's successor when it dies: whatever this test leaves is killed.
  std::set<int> engines;
  struct KillEngines {
    std::set<int>& pids;
    ~KillEngines() {
      for (int pid : pids) {
        if (!process_gone(pid)) ::kill(-pid, SIGKILL);
      }
    }
  } kill_engines{engines};
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), NEBULA_BINARY);
    return run_command(args, {"NEBULA_SERVER=" + url});
  };
  auto get = [&](const std::string& path) {
    auto response = client.request("GET", url + path);
    if (!response || response->status != 200) return json();
    auto parsed = parse_json(response->body);
    return parsed ? *parsed : json();
  };
  auto deployed = cli({"deploy", "chat", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--vram", "20GB",
                       "--replicas", "2", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out << agent.output();

  // New engines that take 3 s to start: the rollout is still going when the server dies.
  auto changed = cli({"deploy", "chat", "--engine-arg=--startup-seconds=3"});
  ASSERT_EQ(changed.exit_code, 0) << changed.out;
  ASSERT_TRUE(eventually(
      [&] {
        json replicas = get("/api/v1/replicas");
        if (!replicas.is_object()) return false;
        for (const auto& replica : replicas["items"]) {
          if (replica["spec"]["plan_version"] == 2) return true;
        }
        return false;
      },
      20s, 20ms));
  ASSERT_EQ(server->stop(SIGKILL, 10s), 128 + SIGKILL);
  server = start_server("server2.log");

  bool complete = eventually(
      [&] {
        json view = get("/api/v1/deployments/chat/rollout");
        return view.is_object() && view["rollout"]["state"] == "Complete" && view["plan_version"] == 2;
      },
      90s, 200ms);
  ASSERT_TRUE(complete) << get("/api/v1/deployments/chat/rollout").dump(2) << server->output();
  ASSERT_TRUE(eventually([&] { return get("/api/v1/replicas")["items"].size() == 2; }, 20s));
  json replicas = get("/api/v1/replicas");
  ASSERT_EQ(replicas["items"].size(), 2u) << replicas.dump(2);
  for (const auto& replica : replicas["items"]) engines.insert(replica["status"]["pid"].get<int>());
  for (const auto& replica : replicas["items"]) {
    EXPECT_EQ(replica["spec"]["plan_version"], 2);
    EXPECT_EQ(replica["status"]["phase"], "Ready");
    EXPECT_NE(cmdline_of(replica["status"]["pid"].get<int>()).find("--startup-seconds=3"), std::string::npos);
  }
  auto answer = client.request("POST", url + "/v1/chat/completions",
                               R"({"model":"chat","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})");
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->status, 200) << answer->body;
  (void)cli({"rm", "chat"});
  EXPECT_TRUE(eventually([&] { return get("/api/v1/replicas")["items"].empty(); }, 20s));
}

}  // namespace
}  // namespace nebula::testing
