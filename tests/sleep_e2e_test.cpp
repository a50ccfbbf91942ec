// Sleep and wake on demand against a real `nebula up --auth keys` with engine-sim replicas: the
// engine itself says it sleeps (its /is_sleeping), a chat request wakes it, `nebula wake` wakes it,
// and bad asks get clear answers while the server keeps serving.
#include <gtest/gtest.h>

#include "nebula_fixture.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::eventually;

class SleepE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new testing::NebulaUp({"--auth", "keys"});
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    admin_ = up_->admin_key();
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
  }

  Result<http::Response> post(const std::string& path, const std::string& body = "", const std::string& key = admin_) {
    http::BlockingClient client;
    return client.request("POST", up_->server() + path, body, bearer(key));
  }

  // The phase of every replica of the deployment, "" when it has none.
  std::string phases(const std::string& deployment) {
    std::string all;
    for (const auto& replica : up_->replicas_of(deployment)) {
      all += (all.empty() ? "" : ",") + replica["status"].value("phase", std::string("?"));
    }
    return all;
  }

  // What each replica's engine answers on GET /is_sleeping: "true", "false", or "?" when it did not.
  std::string engines_sleeping(const std::string& deployment) {
    std::string all;
    http::BlockingClient client;
    for (const auto& replica : up_->replicas_of(deployment)) {
      std::string answer = "?";
      auto response = client.request("GET", replica["status"].value("endpoint", std::string()) + "/is_sleeping");
      if (response && response->status == 200) {
        auto body = parse_json(response->body);
        if (body && body->is_object() && (*body)["is_sleeping"].is_boolean()) {
          answer = (*body)["is_sleeping"].get<bool>() ? "true" : "false";
        }
      }
      all += (all.empty() ? "" : ",") + answer;
    }
    return all;
  }

  std::string create_key(const std::string& scope) {
    auto created = up_->cli({"keys", "create", "k-" + scope, "--scope", scope, "-o", "json"});
    EXPECT_EQ(created.exit_code, 0) << created.out;
    auto parsed = parse_json(created.out);
    return parsed ? (*parsed).value("secret", "") : "";
  }

  static testing::NebulaUp* up_;
  static std::string admin_;
};

testing::NebulaUp* SleepE2E::up_ = nullptr;
std::string SleepE2E::admin_;

const std::string kChat = R"({"model":"nap","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})";

TEST_F(SleepE2E, SleepPutsTheEnginesToSleepAndARequestOrAWakeWakesThem) {
  // No idle timeout: only the ask puts it to sleep, at the default on_idle level (sleep-l1).
  auto deployed = up_->cli(
      {"deploy", "nap", "--engine", "sim", "--model", "qwen2.5-0.5b", "--replicas", "2", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto pids = up_->engine_pids("nap");
  ASSERT_EQ(pids.size(), 2u);
  ASSERT_EQ(engines_sleeping("nap"), "false,false");

  auto slept = up_->cli({"sleep", "nap"});
  ASSERT_EQ(slept.exit_code, 0) << slept.out;
  EXPECT_NE(slept.out.find("goes to sleep at level 1"), std::string::npos) << slept.out;
  ASSERT_TRUE(eventually([&] { return phases("nap") == "Sleeping,Sleeping"; }, 20s)) << phases("nap");
  EXPECT_EQ(engines_sleeping("nap"), "true,true");  // the engines' own sleep endpoint was called
  json deployment = up_->get_json("/api/v1/deployments/nap", admin_);
  EXPECT_EQ(deployment["status"]["phase"], "Idle");
  EXPECT_GT(deployment["status"]["sleep_requested_ms"].get<int64_t>(), 0);

  // A second sleep: 200, nothing changed, the state said.
  auto again = up_->cli({"sleep", "nap", "-o", "json"});
  ASSERT_EQ(again.exit_code, 0) << again.out;
  auto answer = parse_json(again.out);
  ASSERT_TRUE(answer && answer->is_object()) << again.out;
  EXPECT_EQ((*answer)["changed"], false);
  EXPECT_EQ((*answer)["state"], "asleep");
  EXPECT_EQ((*answer)["replicas"].size(), 2u);

  // A request wakes it, as for an idle deployment: held, then served by the same engines.
  std::string key = create_key("inference");
  auto response = post("/v1/chat/completions", kChat, key);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200) << response->body;
  ASSERT_TRUE(eventually([&] { return phases("nap") == "Ready,Ready"; }, 20s)) << phases("nap");
  EXPECT_EQ(engines_sleeping("nap"), "false,false");
  EXPECT_EQ(up_->engine_pids("nap"), pids);

  // Asleep again, then `nebula wake`.
  ASSERT_EQ(up_->cli({"sleep", "nap"}).exit_code, 0);
  ASSERT_TRUE(eventually([&] { return phases("nap") == "Sleeping,Sleeping"; }, 20s)) << phases("nap");
  auto woken = up_->cli({"wake", "nap"});
  ASSERT_EQ(woken.exit_code, 0) << woken.out;
  EXPECT_NE(woken.out.find("waking"), std::string::npos) << woken.out;
  ASSERT_TRUE(eventually([&] { return phases("nap") == "Ready,Ready"; }, 20s)) << phases("nap");
  EXPECT_EQ(engines_sleeping("nap"), "false,false");
  EXPECT_TRUE(
      eventually([&] { return up_->get_json("/api/v1/deployments/nap", admin_)["status"]["phase"] == "Ready"; }, 10s));
  auto awake = up_->cli({"wake", "nap"});
  ASSERT_EQ(awake.exit_code, 0) << awake.out;
  EXPECT_NE(awake.out.find("nap is awake"), std::string::npos) << awake.out;
  EXPECT_EQ(up_->engine_pids("nap"), pids);
  EXPECT_EQ(up_->cli({"rm", "nap"}).exit_code, 0);
}

TEST_F(SleepE2E, BadAsksGetClearAnswersAndTheServerKeepsServing) {
  // Management auth, like every deployment action.
  std::string inference = create_key("inference");
  auto refused = post("/api/v1/deployments/nosuch/sleep", "", inference);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 403) << refused->body;
  auto anonymous = post("/api/v1/deployments/nosuch/wake", "", "");
  ASSERT_TRUE(anonymous);
  EXPECT_EQ(anonymous->status, 401) << anonymous->body;

  for (const char* action : {"sleep", "wake"}) {
    SCOPED_TRACE(action);
    auto unknown = post(std::string("/api/v1/deployments/nosuch/") + action);
    ASSERT_TRUE(unknown);
    EXPECT_EQ(unknown->status, 404) << unknown->body;
    EXPECT_NE(unknown->body.find("nosuch"), std::string::npos) << unknown->body;
    // Hostile names: encoded CR/LF and slashes, 10 KB, a body of garbage. A clear 4xx each time.
    for (const std::string& name : {std::string("a%0D%0AX-Injected:%201"), std::string("..%2F..%2Fkeys"),
                                    std::string(10'000, 'n'), std::string("%00")}) {
      auto hostile = post("/api/v1/deployments/" + name + "/" + action, "{not json");
      ASSERT_TRUE(hostile);
      EXPECT_GE(hostile->status, 400) << hostile->body;
      EXPECT_LT(hostile->status, 500) << hostile->body;
      EXPECT_EQ(hostile->header("x-injected"), "");
    }
    auto get = post(std::string("/api/v1/deployments/nosuch/") + action + "?level=99", std::string(64 * 1024, '{'));
    ASSERT_TRUE(get);
    EXPECT_EQ(get->status, 404) << get->body;
  }
  auto unknown_cli = up_->cli({"sleep", "nosuch"});
  EXPECT_EQ(unknown_cli.exit_code, 1) << unknown_cli.out;
  EXPECT_NE(unknown_cli.out.find("not found"), std::string::npos) << unknown_cli.out;

  // Zero replicas: nothing to sleep or wake, and it says what to do.
  auto deployed = up_->cli({"deploy", "empty", "--engine", "sim", "--model", "qwen2.5-0.5b", "--replicas", "0"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  for (const char* action : {"sleep", "wake"}) {
    auto zero = post(std::string("/api/v1/deployments/empty/") + action);
    ASSERT_TRUE(zero);
    EXPECT_EQ(zero->status, 409) << zero->body;
    EXPECT_NE(zero->body.find("0 replicas"), std::string::npos) << zero->body;
    EXPECT_NE(zero->body.find("nebula scale empty"), std::string::npos) << zero->body;
    auto cli = up_->cli({action, "empty"});
    EXPECT_EQ(cli.exit_code, 1) << cli.out;
    EXPECT_NE(cli.out.find("0 replicas"), std::string::npos) << cli.out;
  }
  EXPECT_EQ(up_->cli({"rm", "empty"}).exit_code, 0);

  http::BlockingClient client;
  auto health = client.request("GET", up_->server() + "/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

// on_idle: stop: sleeping stops the replicas (as idleness would), and wake starts new ones.
TEST_F(SleepE2E, SleepOfAStopOnIdleDeploymentStopsItsEngines) {
  // No idle timeout: on_idle still says what an on-demand sleep does.
  auto deployed = up_->cli({"deploy", "halt", "--engine", "sim", "--model", "qwen2.5-0.5b", "--on-idle", "stop",
                            "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto pids = up_->engine_pids("halt");
  ASSERT_EQ(pids.size(), 1u);
  auto slept = up_->cli({"sleep", "halt"});
  ASSERT_EQ(slept.exit_code, 0) << slept.out;
  EXPECT_NE(slept.out.find("on_idle is stop"), std::string::npos) << slept.out;
  ASSERT_TRUE(eventually([&] { return up_->replicas_of("halt").empty(); }, 20s)) << phases("halt");
  EXPECT_TRUE(eventually([&] { return testing::process_gone(*pids.begin()); }, 10s));
  auto woken = up_->cli({"wake", "halt"});
  ASSERT_EQ(woken.exit_code, 0) << woken.out;
  EXPECT_NE(woken.out.find("start again"), std::string::npos) << woken.out;
  ASSERT_TRUE(eventually([&] { return phases("halt") == "Ready"; }, 30s)) << phases("halt");
  EXPECT_EQ(up_->cli({"rm", "halt"}).exit_code, 0);
}

}  // namespace
}  // namespace nebula
