// The walking skeleton's user story against real processes: `nebula up` on a free loopback
// port, the CLI as a user runs it, the gateway over HTTP, and real engine-sim children.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "common/json.h"
#include "gguf_fixtures.h"
#include "http/http.h"
#include "http/sse.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::Child;
using testing::eventually;
using testing::process_gone;
using testing::run_command;

class UserStory : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(up_.wait_node_ready()) << up_.process().output(); }

  testing::CommandResult cli(std::vector<std::string> args) { return up_.cli(std::move(args)); }
  json get_json(const std::string& path) { return up_.get_json(path); }
  std::vector<json> replicas_of(const std::string& deployment) { return up_.replicas_of(deployment); }
  std::set<int> engine_pids(const std::string& deployment) { return up_.engine_pids(deployment); }

  testing::NebulaUp up_{{}, "1xH100-80GB"};
  const std::string& server_ = up_.server();
  http::BlockingClient client_;
};

TEST_F(UserStory, DeployStreamScaleHealRemove) {
  // nebula deploy chat --engine sim --model llama-3.1-8b-instruct --replicas 2 --wait
  auto deployed = cli({"deploy", "chat", "--engine", "sim", "--model", "llama-3.1-8b-instruct", "--replicas", "2",
                       "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  EXPECT_NE(deployed.out.find("chat: 2/2 ready"), std::string::npos) << deployed.out;

  auto listed = cli({"ls"});
  ASSERT_EQ(listed.exit_code, 0);
  EXPECT_NE(listed.out.find("chat"), std::string::npos);
  EXPECT_NE(listed.out.find("2/2"), std::string::npos) << listed.out;
  std::set<int> first_pids = engine_pids("chat");
  ASSERT_EQ(first_pids.size(), 2u);

  // A streamed chat through the gateway: every chunk is JSON, and the text reassembles to the
  // non-streamed answer.
  std::string body = R"({"model":"chat","max_tokens":24,"messages":[{"role":"user","content":"hi"}],"stream":true})";
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  std::vector<size_t> piece_sizes;
  auto status = client_.stream("POST", server_ + "/v1/chat/completions", body, {}, [&](std::string_view piece) {
    piece_sizes.push_back(piece.size());
    parser.feed(piece, events);
    return true;
  });
  ASSERT_TRUE(status) << status.error().message;
  ASSERT_EQ(*status, 200);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back().data, "[DONE]");
  EXPECT_GT(piece_sizes.size(), 3u) << "the gateway buffered the stream instead of relaying it";
  std::string streamed;
  std::string finish_reason;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    auto chunk = parse_json(events[i].data);
    ASSERT_TRUE(chunk) << "chunk " << i << " is not JSON: " << events[i].data;
    EXPECT_EQ((*chunk)["object"], "chat.completion.chunk");
    const auto& choice = (*chunk)["choices"][0];
    if (choice["delta"].contains("content")) streamed += choice["delta"]["content"].get<std::string>();
    if (choice["finish_reason"].is_string()) finish_reason = choice["finish_reason"];
  }
  EXPECT_EQ(finish_reason, "length");

  std::string plain_body = R"({"model":"chat","max_tokens":24,"messages":[{"role":"user","content":"hi"}]})";
  auto plain = client_.request("POST", server_ + "/v1/chat/completions", plain_body);
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  EXPECT_FALSE(plain->header("x-request-id").empty());
  auto answer = parse_json(plain->body);
  ASSERT_TRUE(answer);
  EXPECT_EQ((*answer)["choices"][0]["message"]["content"].get<std::string>(), streamed);
  EXPECT_EQ((*answer)["usage"]["completion_tokens"], 24);

  // OpenAI errors: unknown model, malformed body.
  auto unknown = client_.request("POST", server_ + "/v1/chat/completions",
                                 R"({"model":"nope","messages":[{"role":"user","content":"hi"}]})");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ((*parse_json(unknown->body))["error"]["code"], "model_not_found");
  auto malformed = client_.request("POST", server_ + "/v1/chat/completions", "{not json");
  ASSERT_TRUE(malformed);
  EXPECT_EQ(malformed->status, 400);
  auto models = get_json("/v1/models");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "chat");

  // nebula scale chat 1: one engine stops, one keeps serving.
  auto scaled = cli({"scale", "chat", "1"});
  ASSERT_EQ(scaled.exit_code, 0) << scaled.out;
  ASSERT_TRUE(eventually([&] { return replicas_of("chat").size() == 1; }, 20s));
  std::set<int> remaining = engine_pids("chat");
  ASSERT_EQ(remaining.size(), 1u);
  int survivor = *remaining.begin();
  for (int pid : first_pids) {
    if (pid != survivor) {
      EXPECT_TRUE(eventually([&] { return process_gone(pid); }, 15s)) << "pid " << pid;
    }
  }

  // Kill the engine: the agent restarts it and the replica comes back Ready.
  ASSERT_EQ(::kill(survivor, SIGKILL), 0);
  bool healed = eventually(
      [&] {
        auto replicas = replicas_of("chat");
        return replicas.size() == 1 && replicas[0]["status"]["phase"] == "Ready" &&
               replicas[0]["status"]["restarts"].get<int>() >= 1 && replicas[0]["status"]["pid"] != survivor;
      },
      30s);
  ASSERT_TRUE(healed) << get_json("/api/v1/replicas").dump(2);
  auto after_heal = client_.request("POST", server_ + "/v1/chat/completions", plain_body);
  ASSERT_TRUE(after_heal);
  EXPECT_EQ(after_heal->status, 200) << after_heal->body;
  int restarted = *engine_pids("chat").begin();

  // nebula rm chat: the engine stops, the replica disappears, the gateway stops serving it.
  auto removed = cli({"rm", "chat"});
  ASSERT_EQ(removed.exit_code, 0) << removed.out;
  ASSERT_TRUE(eventually([&] { return replicas_of("chat").empty(); }, 20s));
  EXPECT_TRUE(eventually([&] { return process_gone(restarted); }, 15s));
  auto gone = client_.request("POST", server_ + "/v1/chat/completions", plain_body);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, 404);

  // Stopping `nebula up` stops every engine it started.
  auto kept = cli({"deploy", "kept", "--engine", "sim", "--model", "qwen2.5-0.5b", "--wait", "--timeout", "60s"});
  ASSERT_EQ(kept.exit_code, 0) << kept.out;
  std::set<int> kept_pids = engine_pids("kept");
  ASSERT_EQ(kept_pids.size(), 1u);
  EXPECT_EQ(up_.process().stop(SIGTERM, 30s), 0);
  for (int pid : kept_pids) EXPECT_TRUE(eventually([&] { return process_gone(pid); }, 5s)) << "pid " << pid;
}

TEST_F(UserStory, RefusesWhatDoesNotFitWithAReason) {
  // 100 GB does not fit on one 80 GB GPU: the deployment stays Pending with the reason, and
  // --wait gives up with it instead of hanging.
  auto deployed = cli({"deploy", "huge", "--engine", "sim", "--model", "m", "--vram", "100GB", "--wait"});
  EXPECT_EQ(deployed.exit_code, 1) << deployed.out;
  EXPECT_NE(deployed.out.find("no node fits"), std::string::npos) << deployed.out;
  auto shown = cli({"get", "huge"});
  EXPECT_NE(shown.out.find("Pending"), std::string::npos) << shown.out;
  EXPECT_TRUE(engine_pids("huge").empty());

  auto bad_engine = cli({"deploy", "x", "--engine", "nope", "--model", "m"});
  EXPECT_EQ(bad_engine.exit_code, 2) << "a bad flag value is a usage error";
  EXPECT_NE(bad_engine.out.find("unknown engine"), std::string::npos) << bad_engine.out;
  auto bad_usage = cli({"deploy", "x", "--replicas", "many"});
  EXPECT_EQ(bad_usage.exit_code, 2) << bad_usage.out;
}

TEST(Agent, JoinsWithTheServersTokenOnly) {
  testing::TempDir data;
  int port = testing::free_port();
  std::string server = "http://127.0.0.1:" + std::to_string(port);
  Child server_process({NEBULA_BINARY, "server", "--listen", "127.0.0.1:" + std::to_string(port), "--data-dir",
                        data.path() + "/server", "--log-level", "warn"},
                       data.path() + "/server.log");
  http::BlockingClient client;
  ASSERT_TRUE(eventually(
      [&] {
        auto health = client.request("GET", server + "/healthz");
        return health && health->status == 200;
      },
      10s));
  std::string token;
  ASSERT_TRUE(eventually(
      [&] {
        std::ifstream in(data.path() + "/server/join-token");
        return static_cast<bool>(std::getline(in, token)) && !token.empty();
      },
      5s));
  auto refused = client.request("POST", server + "/api/v1/nodes/join", R"({"token":"wrong","name":"x"})");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);

  Child agent({NEBULA_BINARY, "agent", "--server", server, "--token", token, "--name", "gpu-box", "--listen",
               "127.0.0.1:" + std::to_string(testing::free_port()), "--sim-gpus", "2x24GB", "--reserved-vram", "2GB",
               "--data-dir", data.path() + "/agent", "--log-level", "warn"},
              data.path() + "/agent.log");
  bool joined = eventually(
      [&] {
        auto node = client.request("GET", server + "/api/v1/nodes/gpu-box");
        if (!node || node->status != 200) return false;
        auto parsed = parse_json(node->body);
        return parsed && (*parsed)["status"]["ready"] == true && (*parsed)["status"]["gpus"].size() == 2 &&
               (*parsed)["spec"]["reserved_vram_mb"] == 2048;
      },
      15s);
  EXPECT_TRUE(joined) << agent.output();
  EXPECT_EQ(agent.stop(SIGTERM, 15s), 0);
  EXPECT_EQ(server_process.stop(SIGTERM, 15s), 0);
}

}  // namespace
}  // namespace nebula

namespace nebula {
namespace {

using namespace std::chrono_literals;

TEST(Placement, ConcurrentDeploysNeverOvercommitAGpu) {
  testing::NebulaUp up({}, "1xH100-80GB");
  ASSERT_TRUE(up.wait_node_ready());
  // Eight 20 GB deployments race for one 80 GB GPU: exactly four fit.
  std::vector<std::thread> deployers;
  for (int i = 0; i < 8; ++i) {
    deployers.emplace_back([&up, i] {
      up.cli({"deploy", "race-" + std::to_string(i), "--engine", "sim", "--model", "m", "--vram", "20GB"});
    });
  }
  for (auto& deployer : deployers) deployer.join();
  auto placed = [&] {
    int count = 0;
    json listing = up.get_json("/api/v1/replicas");
    for (const auto& replica : listing["items"]) count += replica["spec"]["node"] == "" ? 0 : 1;
    return count;
  };
  // Replicas the scheduler has judged and refused: unplaced, with the reason in their status.
  auto refused = [&] {
    int count = 0;
    json listing = up.get_json("/api/v1/replicas");
    for (const auto& replica : listing["items"]) {
      count += replica["spec"]["node"] == "" && replica["status"].value("message", "") != "" ? 1 : 0;
    }
    return count;
  };
  ASSERT_TRUE(testing::eventually([&] { return placed() == 4 && refused() == 4; }, 10s))
      << up.get_json("/api/v1/replicas").dump();
  EXPECT_EQ(placed(), 4);
  json gpus = up.get_json("/api/v1/gpus");
  ASSERT_EQ(gpus["items"].size(), 1u);
  EXPECT_EQ(gpus["items"][0]["memory_allocated_mb"], 80 * 1024);
  EXPECT_LE(gpus["items"][0]["memory_allocated_mb"].get<int64_t>(), gpus["items"][0]["memory_total_mb"].get<int64_t>());
  // Scaling one of the placed deployments up cannot overcommit either.
  json listing = up.get_json("/api/v1/replicas");
  std::string placed_deployment;
  for (const auto& replica : listing["items"]) {
    if (replica["spec"]["node"] != "") placed_deployment = replica["spec"]["deployment"];
  }
  ASSERT_EQ(up.cli({"scale", placed_deployment, "3"}).exit_code, 0);
  EXPECT_TRUE(testing::eventually([&] { return refused() == 6; }, 10s)) << up.get_json("/api/v1/replicas").dump();
  EXPECT_EQ(placed(), 4);
}

// The tiny GGUF of tests/gguf_fixtures.h (a real llama-server runs it; the simulator ignores it).
std::string tiny_gguf() {
  return testing::gguf_fixture("tiny-llama.gguf");
}

std::string phase_of(testing::NebulaUp& up, const std::string& deployment) {
  auto replicas = up.replicas_of(deployment);
  return replicas.size() == 1 ? replicas[0]["status"]["phase"].get<std::string>() : "";
}

// The tiny GGUF on llama.cpp, two slots of 512 tokens, asleep (sleep-l1) after a second idle.
testing::CommandResult deploy_idle_tiny(testing::NebulaUp& up, const std::string& timeout) {
  return up.cli({"deploy", "tiny", "--engine", "llamacpp", "--model", tiny_gguf(), "--vram", "1GB", "--max-context",
                 "512", "--max-seqs", "2", "--idle-timeout", "1s", "--on-idle", "sleep-l1", "--wait", "--timeout",
                 timeout});
}

int chat_status(const std::string& server, const std::string& model) {
  http::BlockingClient client;
  auto response =
      client.request("POST", server + "/v1/chat/completions",
                     R"({"model":")" + model + R"(","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})",
                     {{"Content-Type", "application/json"}}, 60s);
  return response ? response->status : 0;
}

// A llama.cpp deployment on a llama-server with router mode sleeps while idle: the model is
// unloaded and the router process stays; the next request loads it again. The llama-server here
// is engine-sim speaking llama-server's router, behind a script given as the engine's binary.
TEST(LlamacppRouter, AnIdleDeploymentSleepsAndTheNextRequestWakesIt) {
  testing::TempDir dir;
  std::string script = dir.path() + "/llama-server";
  std::ofstream(script) << "#!/bin/sh\n"
                        << "case \"$1\" in --version) echo 'version: 0 (nebula engine-sim)'; exit 0;; esac\n"
                        << "exec " << NEBULA_BINARY << " engine-sim --dialect llamacpp \"$@\"\n";
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  testing::NebulaUp up({"--engine-binary", "llamacpp=" + script});
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  auto deployed = deploy_idle_tiny(up, "60s");
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out << up.process().output();
  auto pids = up.engine_pids("tiny");
  ASSERT_EQ(pids.size(), 1u);
  // Its engine's address whatever its phase: with a 1 s idle timeout it may be asleep already
  // (a slow machine, a sanitizer build), and endpoints_of() lists only Ready replicas.
  std::vector<std::string> endpoints;
  for (const auto& replica : up.replicas_of("tiny")) {
    std::string endpoint = replica["status"].value("endpoint", "");
    if (!endpoint.empty()) endpoints.push_back(endpoint);
  }
  ASSERT_EQ(endpoints.size(), 1u) << up.get_json("/api/v1/replicas").dump();
  http::BlockingClient client;
  // A model's status in the router's listing, found by id ("absent" when not listed).
  auto model_status = [&](const std::string& id = "tiny") {
    auto listing = client.request("GET", endpoints[0] + "/models");
    auto parsed = listing ? parse_json(listing->body) : Result<json>(Error{ErrorCode::Unavailable, "no answer"});
    if (!parsed || !parsed->is_object() || !(*parsed)["data"].is_array()) return std::string("?");
    for (const json& entry : (*parsed)["data"]) {
      if (entry.value("id", "") == id) return entry["status"].value("value", std::string("?"));
    }
    return std::string("absent");
  };
  EXPECT_EQ(chat_status(up.server(), "tiny"), 200);
  EXPECT_EQ(model_status("default"), "absent") << "the preset has no key outside its section";

  ASSERT_TRUE(testing::eventually([&] { return phase_of(up, "tiny") == "Sleeping"; }, 15s))
      << up.get_json("/api/v1/replicas").dump();
  EXPECT_EQ(model_status(), "unloaded");
  EXPECT_EQ(up.engine_pids("tiny"), pids) << "slept, not stopped";

  // The next request waits for the wake and is served by the same router process.
  EXPECT_EQ(chat_status(up.server(), "tiny"), 200);
  EXPECT_EQ(model_status(), "loaded");
  EXPECT_EQ(up.engine_pids("tiny"), pids);
  EXPECT_EQ(up.cli({"rm", "tiny"}).exit_code, 0);
}

// An llama-server without router mode cannot sleep: the agent stops it while idle (the replica
// reports Sleeping) and starts it again for the next request. Runs the real llama-server when it
// is on PATH.
TEST(LlamacppRouter, WithoutRouterModeAnIdleDeploymentIsStoppedAndRestarted) {
  std::string binary = testing::find_on_path("llama-server");
  if (binary.empty()) GTEST_SKIP() << "llama-server is not on PATH; this test needs a real one";
  auto help = testing::run_command({binary, "--help"});
  if (help.out.find("--models-preset") != std::string::npos) GTEST_SKIP() << "this llama-server has router mode";
  testing::NebulaUp up;
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  auto deployed = deploy_idle_tiny(up, "120s");
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out << up.process().output();
  auto pids = up.engine_pids("tiny");
  ASSERT_EQ(pids.size(), 1u);
  ASSERT_TRUE(testing::eventually([&] { return phase_of(up, "tiny") == "Sleeping"; }, 20s))
      << up.get_json("/api/v1/replicas").dump();
  EXPECT_TRUE(testing::process_gone(*pids.begin())) << "stopped while idle";
  EXPECT_EQ(up.replicas_of("tiny")[0]["status"]["restarts"], 0) << "a stop, not a crash";

  EXPECT_EQ(chat_status(up.server(), "tiny"), 200);
  auto restarted = up.engine_pids("tiny");
  ASSERT_EQ(restarted.size(), 1u);
  EXPECT_NE(restarted, pids);
  EXPECT_EQ(phase_of(up, "tiny"), "Ready");
  EXPECT_EQ(up.cli({"rm", "tiny"}).exit_code, 0);
}

}  // namespace
}  // namespace nebula
