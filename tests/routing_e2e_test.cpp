// Routing through the gateway's Policy seam against real processes: `nebula up` with simulated
// GPUs, engine-sim replicas, their /metrics read by the gateway, a rolling restart and a crash.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "nebula_fixture.h"

namespace nebula::testing {
namespace {

using namespace std::chrono_literals;

class RoutingE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A crashed engine stays down for the whole test (the first restart waits a minute); the
    // gateway reads engine load every 100 ms.
    up_ = new NebulaUp({"--restart-backoff", "60s", "--load-scrape-interval", "100ms"}, "2xH100-80GB");
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
  }

  // Deploys `name` on the simulator, 20 ms per token so a long answer keeps its replica busy.
  void deploy(const std::string& name, int replicas, const std::string& routing = "") {
    std::vector<std::string> args = {"deploy",
                                     name,
                                     "--engine",
                                     "sim",
                                     "--model",
                                     "qwen2.5-0.5b",
                                     "--replicas",
                                     std::to_string(replicas),
                                     "--engine-arg=--step-base-ms",
                                     "--engine-arg=20",
                                     "--wait",
                                     "--timeout",
                                     "60s"};
    if (!routing.empty()) {
      args.push_back("--routing");
      args.push_back(routing);
    }
    auto deployed = up_->cli(args);
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  }

  static std::string body(const std::string& model, int max_tokens, bool stream = false) {
    return R"({"model":")" + model + R"(","max_tokens":)" + std::to_string(max_tokens) +
           (stream ? R"(,"stream":true)" : "") + R"(,"messages":[{"role":"user","content":"hello there"}]})";
  }

  // A chat completion tagged with `id` (X-Request-Id); its status.
  int chat(const std::string& model, const std::string& id) {
    http::BlockingClient client;
    auto response =
        client.request("POST", up_->server() + "/v1/chat/completions", body(model, 4), {{"X-Request-Id", id}});
    return response ? response->status : -1;
  }

  // A chat completion with these messages and headers, tagged with `id`; its status.
  int chat_with(const std::string& model, const json& messages, const std::string& id, http::Headers headers = {},
                const json& extra = json::object()) {
    json request = {{"model", model}, {"max_tokens", 4}, {"messages", messages}};
    request.update(extra);
    headers.push_back({"X-Request-Id", id});
    http::BlockingClient client;
    auto response = client.request("POST", up_->server() + "/v1/chat/completions", request.dump(), headers);
    return response ? response->status : -1;
  }

  std::string metrics() {
    http::BlockingClient client;
    auto response = client.request("GET", up_->server() + "/metrics");
    return response && response->status == 200 ? response->body : "";
  }

  // The value of the sample `series` (name and labels as written) in /metrics; -1 when absent.
  double sample(const std::string& series) {
    std::string text = metrics();
    size_t at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + series.size() + 2));
  }

  // The replica the access log says served request `id`, once the log has it (it is written
  // once a second); "" after 10 s.
  std::string served_by(const std::string& id) {
    std::string replica;
    eventually(
        [&] {
          std::ifstream log(up_->data_dir() + "/access.log");
          std::string line;
          while (std::getline(log, line)) {
            auto entry = parse_json(line);
            if (entry && (*entry)["id"] == id) {
              replica = (*entry)["replica"].get<std::string>();
              return true;
            }
          }
          return false;
        },
        10s);
    return replica;
  }

  static std::string name_of(const json& replica) { return replica["metadata"]["name"].get<std::string>(); }

  static NebulaUp* up_;
};

NebulaUp* RoutingE2E::up_ = nullptr;

// A stream held open from its own thread until stop(): it keeps its replica's slot taken.
class HeldStream {
 public:
  HeldStream(const std::string& server, const std::string& body) {
    thread_ = std::thread([this, server, body] {
      http::BlockingClient client;
      auto status = client.stream("POST", server + "/v1/chat/completions", body, {}, [this](std::string_view piece) {
        if (!piece.empty()) started_ = true;
        return !stopping_;
      });
      status_ = status ? *status : -1;
      done_ = true;
    });
  }
  ~HeldStream() { stop(); }
  bool started() const { return started_; }
  bool done() const { return done_; }
  int status() const { return status_; }
  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::thread thread_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> done_{false};
  std::atomic<int> status_{0};
};

TEST_F(RoutingE2E, TheGatewayReadsEachReplicasEngineLoad) {
  deploy("load", 2);
  auto replicas = up_->replicas_of("load");
  ASSERT_EQ(replicas.size(), 2u);
  auto labels = [](const std::string& replica) { return R"({deployment="load",replica=")" + replica + R"("})"; };
  for (const auto& replica : replicas) {
    std::string name = name_of(replica);
    EXPECT_TRUE(eventually([&] { return sample("nebula_router_engine_load_age_seconds" + labels(name)) >= 0; }, 10s))
        << metrics();
    EXPECT_TRUE(
        eventually([&] { return sample("nebula_router_engine_kv_cache_usage_ratio" + labels(name)) == 0; }, 10s));
    EXPECT_TRUE(eventually([&] { return sample("nebula_router_engine_requests_running" + labels(name)) == 0; }, 10s));
  }
  // A long answer in flight: its engine says it runs one request, and the gateway reads that.
  HeldStream stream(up_->server(), body("load", 2000, true));
  ASSERT_TRUE(eventually([&] { return stream.started(); }, 10s));
  auto running = [&] {
    double total = 0;
    for (const auto& replica : replicas)
      total += sample("nebula_router_engine_requests_running" + labels(name_of(replica)));
    return total;
  };
  EXPECT_TRUE(eventually([&] { return running() == 1; }, 10s)) << metrics();
  stream.stop();
  EXPECT_TRUE(eventually([&] { return running() == 0; }, 10s)) << "the cancelled stream ends in the engine too";
}

// During a rolling restart the old replica drains: the stream in flight to it goes on, and every
// new request goes to the new replica.
TEST_F(RoutingE2E, ADrainingReplicaGetsNothing) {
  deploy("drain", 1);
  auto before = up_->replicas_of("drain");
  ASSERT_EQ(before.size(), 1u);
  const std::string old_replica = name_of(before[0]);
  HeldStream stream(up_->server(), body("drain", 2000, true));
  ASSERT_TRUE(eventually([&] { return stream.started(); }, 10s));

  auto restarted = up_->cli({"restart", "drain"});
  ASSERT_EQ(restarted.exit_code, 0) << restarted.out;
  std::string new_replica;
  bool draining = eventually(
      [&] {
        bool old_draining = false;
        new_replica.clear();
        for (const auto& replica : up_->replicas_of("drain")) {
          if (name_of(replica) == old_replica) {
            old_draining = replica["spec"].value("draining_since_ms", int64_t{0}) > 0;
          } else if (replica["status"]["phase"] == "Ready") {
            new_replica = name_of(replica);
          }
        }
        return old_draining && !new_replica.empty();
      },
      60s, 100ms);
  ASSERT_TRUE(draining) << json(up_->replicas_of("drain")).dump(2);
  ASSERT_FALSE(stream.done()) << "the stream still holds the old replica";

  for (int i = 0; i < 8; ++i) EXPECT_EQ(chat("drain", "drain-" + std::to_string(i)), 200) << i;
  for (int i = 0; i < 8; ++i) EXPECT_EQ(served_by("drain-" + std::to_string(i)), new_replica) << i;
  EXPECT_FALSE(stream.done()) << "a draining replica's stream is not cut";

  // Its last request over, the old replica is stopped.
  stream.stop();
  EXPECT_TRUE(eventually(
      [&] {
        for (const auto& replica : up_->replicas_of("drain")) {
          if (name_of(replica) == old_replica) return false;
        }
        return true;
      },
      30s));
}

// A crashed engine: its replica leaves routing at once and gets no attempt (no upstream error)
// while it waits for its restart.
TEST_F(RoutingE2E, ACrashedReplicaGetsNothing) {
  deploy("sick", 2);
  auto replicas = up_->replicas_of("sick");
  ASSERT_EQ(replicas.size(), 2u);
  const std::string sick = name_of(replicas[0]);
  const std::string healthy = name_of(replicas[1]);
  int pid = replicas[0]["status"].value("pid", 0);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ASSERT_TRUE(eventually(
      [&] {
        for (const auto& replica : up_->replicas_of("sick")) {
          if (name_of(replica) == sick) return replica["status"]["phase"] != "Ready";
        }
        return false;
      },
      20s))
      << json(up_->replicas_of("sick")).dump(2);

  const std::string errors = R"(nebula_upstream_errors_total{model="sick"})";
  double errors_before = std::max(0.0, sample(errors));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(chat("sick", "sick-" + std::to_string(i)), 200) << i;
  for (int i = 0; i < 8; ++i) EXPECT_EQ(served_by("sick-" + std::to_string(i)), healthy) << i;
  EXPECT_EQ(std::max(0.0, sample(errors)), errors_before) << "no attempt reached the crashed replica";
}

// With `--routing session` every request of a session goes to one replica, whether the session
// is named by X-Session-Id or by the body's `user`; different sessions spread over replicas.
TEST_F(RoutingE2E, OneSessionStaysOnOneReplica) {
  deploy("sessions", 3, "session");
  json hello = json::array({{{"role", "user"}, {"content", "hello there"}}});
  std::set<std::string> by_header, by_user, all;
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(chat_with("sessions", hello, "h-" + std::to_string(i), {{"X-Session-Id", "chat-42"}}), 200);
    ASSERT_EQ(chat_with("sessions", hello, "u-" + std::to_string(i), {}, {{"user", "alice"}}), 200);
  }
  for (int i = 0; i < 6; ++i) {
    by_header.insert(served_by("h-" + std::to_string(i)));
    by_user.insert(served_by("u-" + std::to_string(i)));
  }
  EXPECT_EQ(by_header.size(), 1u) << "one X-Session-Id, one replica";
  EXPECT_EQ(by_user.size(), 1u) << "one user, one replica";
  for (int i = 0; i < 24; ++i) {
    ASSERT_EQ(chat_with("sessions", hello, "s-" + std::to_string(i), {{"X-Session-Id", "s" + std::to_string(i)}}), 200);
  }
  for (int i = 0; i < 24; ++i) all.insert(served_by("s-" + std::to_string(i)));
  EXPECT_GE(all.size(), 2u) << "24 sessions all landed on one replica";
}

// With `--routing prefix` a shared system prompt goes to the replica that has it cached, until
// that replica is overloaded (here: 3 requests in flight against 0 elsewhere, past
// balance-abs=2 and balance-rel=1.5); then to the least loaded.
TEST_F(RoutingE2E, ASharedPrefixGoesToTheReplicaThatHasItUntilItIsOverloaded) {
  deploy("prefixes", 3, "prefix,balance-abs=2,balance-rel=1.5");
  std::string system;
  for (int i = 0; i < 200; ++i) system += "policy" + std::to_string(i) + " ";
  auto messages = [&](const std::string& question) {
    return json::array({{{"role", "system"}, {"content", system}}, {{"role", "user"}, {"content", question}}});
  };
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(chat_with("prefixes", messages("question " + std::to_string(i)), "p-" + std::to_string(i)), 200);
  }
  std::set<std::string> home;
  for (int i = 0; i < 6; ++i) home.insert(served_by("p-" + std::to_string(i)));
  ASSERT_EQ(home.size(), 1u) << "the prefix stays where it is cached";
  const std::string cached = *home.begin();

  // Three long answers with the prefix hold its replica; the next request goes elsewhere.
  std::vector<std::unique_ptr<HeldStream>> held;
  for (int i = 0; i < 3; ++i) {
    json request = {{"model", "prefixes"}, {"max_tokens", 2000}, {"stream", true}, {"messages", messages("long")}};
    held.push_back(std::make_unique<HeldStream>(up_->server(), request.dump()));
    ASSERT_TRUE(eventually([&] { return held.back()->started(); }, 10s));
  }
  ASSERT_EQ(chat_with("prefixes", messages("one more"), "p-over"), 200);
  EXPECT_NE(served_by("p-over"), cached) << "an overloaded replica takes no more of its prefix";
  for (auto& stream : held) stream->stop();
  // Load even again: the prefix goes home.
  ASSERT_TRUE(eventually(
      [&] {
        static int attempt = 0;
        std::string id = "p-back-" + std::to_string(attempt++);
        return chat_with("prefixes", messages("back"), id) == 200 && served_by(id) == cached;
      },
      20s, 200ms));
}

}  // namespace
}  // namespace nebula::testing
