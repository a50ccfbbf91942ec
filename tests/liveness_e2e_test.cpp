// Liveness of Ready engines across real processes: an engine that stops answering (SIGSTOP) leaves
// routing at its first failed probe and is restarted after the threshold, while the other replica
// keeps serving.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <iostream>

#include "common/json.h"
#include "http/http.h"
#include "nebula_fixture.h"
#include "process_helpers.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::eventually;

int chat(const std::string& server) {
  http::BlockingClient client;
  auto response = client.request("POST", server + "/v1/chat/completions",
                                 R"({"model":"chat","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})",
                                 {{"Content-Type", "application/json"}}, 30s);
  return response ? response->status : 0;
}

json replica_named(testing::NebulaUp& up, const std::string& name) {
  for (const json& replica : up.replicas_of("chat")) {
    if (replica["metadata"]["name"] == name) return replica;
  }
  return json();
}

// Kills (SIGKILL) a process the test stopped, should the agent not have done it.
struct KillAtExit {
  int pid;
  ~KillAtExit() {
    if (!testing::process_gone(pid)) ::kill(pid, SIGKILL);
  }
};

TEST(Liveness, AStoppedEngineLeavesRoutingAndIsReplaced) {
  // Probes every second, 500 ms to answer, restart after 3 failures in a row.
  testing::NebulaUp up(
      {"--probe-period", "1s", "--probe-timeout", "500ms", "--probe-failures", "3", "--restart-backoff", "1s"});
  ASSERT_TRUE(up.wait_node_ready());
  auto deployed = up.cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--replicas", "2", "--wait",
                          "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto replicas = up.replicas_of("chat");
  ASSERT_EQ(replicas.size(), 2u);
  const std::string victim = replicas[0]["metadata"]["name"];
  const int pid = replicas[0]["status"]["pid"];
  const int restarts = replicas[0]["status"].value("restarts", 0);
  ASSERT_GT(pid, 0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(chat(up.server()), 200);

  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  KillAtExit cleanup{pid};
  auto stopped = std::chrono::steady_clock::now();
  // Out of routing within one period (plus the probe's timeout and the status report).
  ASSERT_TRUE(eventually([&] { return replica_named(up, victim)["status"]["phase"] == "Unhealthy"; }, 3s, 20ms))
      << replica_named(up, victim).dump();
  std::cout << "unhealthy after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - stopped).count()
            << " ms\n";
  // Every request meanwhile is served by the other replica.
  for (int i = 0; i < 10; ++i) EXPECT_EQ(chat(up.server()), 200) << i;

  // Replaced: killed after the threshold, restarted (counted), Ready again with a new process.
  ASSERT_TRUE(eventually(
      [&] {
        json replica = replica_named(up, victim);
        return replica["status"]["phase"] == "Ready" && replica["status"].value("pid", 0) != pid;
      },
      30s))
      << replica_named(up, victim).dump();
  std::cout << "replaced after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - stopped).count()
            << " ms\n";
  json replaced = replica_named(up, victim);
  EXPECT_EQ(replaced["status"].value("restarts", 0), restarts + 1);
  EXPECT_NE(replaced["status"].value("last_error", "").find("unhealthy"), std::string::npos) << replaced.dump();
  EXPECT_TRUE(testing::process_gone(pid));
  json events = up.get_json("/api/v1/events", up.admin_key());
  bool unhealthy_event = false;
  for (const json& event : events["items"]) {
    unhealthy_event = unhealthy_event || (event["object"] == "replica/" + victim && event["reason"] == "Unhealthy");
  }
  EXPECT_TRUE(unhealthy_event) << events.dump();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(chat(up.server()), 200);
}

}  // namespace
}  // namespace nebula
