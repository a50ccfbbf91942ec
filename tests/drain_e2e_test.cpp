// A rollout's drain with more than one gateway: the leader's own gateway has nothing in flight
// to the old replica, but a `nebula gateway` is streaming through it. The old replica stops only
// once its engine, which counts every gateway's requests, is idle.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "nebula_fixture.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::Child;
using testing::eventually;

// 300 tokens at 10 ms each: a stream of about 3 s.
const std::string kLongStream =
    R"({"model":"chat","max_tokens":300,"stream":true,"messages":[{"role":"user","content":"tell me a story"}]})";

TEST(DrainE2E, AnOldReplicaOutlivesAStreamRelayedByAnotherGateway) {
  testing::NebulaUp up({"--auth", "keys"});
  ASSERT_TRUE(up.wait_node_ready()) << up.process().output();
  std::string admin = up.admin_key();
  auto deploy = [&](const std::string& step_ms) {
    return up.cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--engine-arg=--step-base-ms",
                   "--engine-arg=" + step_ms, "--wait", "--timeout", "60s"},
                  admin);
  };
  auto deployed = deploy("10");
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto before = up.replicas_of("chat");
  ASSERT_EQ(before.size(), 1u);
  std::string old_replica = before[0]["metadata"]["name"];

  testing::TempDir temp;
  int port = testing::free_port();
  std::string url = testing::local_url(port);
  auto gateway = testing::start_gateway(up.server(), admin, port, {}, temp.path() + "/gateway.log");
  ASSERT_TRUE(eventually(
      [&] {
        http::BlockingClient client;
        auto models = client.request("GET", url + "/v1/models", "", bearer(admin), 2s);
        return models && models->status == 200 && models->body.find("\"chat\"") != std::string::npos;
      },
      20s))
      << gateway->output();

  std::atomic<bool> streaming{false};
  std::string text;
  int status = 0;
  std::thread stream([&] {
    http::BlockingClient client;
    auto result =
        client.stream("POST", url + "/v1/chat/completions", kLongStream, bearer(admin), [&](std::string_view piece) {
          text += piece;
          streaming = true;
          return true;
        });
    status = result ? *result : -1;
  });
  ASSERT_TRUE(eventually([&] { return streaming.load(); }, 20s));
  // A changed spec rolls out: a new replica, then the old one drains.
  auto rolled = deploy("11");
  EXPECT_EQ(rolled.exit_code, 0) << rolled.out;
  stream.join();
  EXPECT_EQ(status, 200);
  EXPECT_NE(text.find("[DONE]"), std::string::npos)
      << "the stream through the other gateway was cut: " << text.substr(text.size() > 400 ? text.size() - 400 : 0)
      << "\n"
      << up.cli({"events"}, admin).out;
  EXPECT_EQ(text.find("error"), std::string::npos) << text;
  // And the old replica does go, once its engine is idle.
  EXPECT_TRUE(eventually(
      [&] {
        for (const auto& replica : up.replicas_of("chat")) {
          if (replica["metadata"]["name"] == old_replica) return false;
        }
        return true;
      },
      30s));
}

}  // namespace
}  // namespace nebula
