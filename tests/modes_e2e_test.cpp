// Modes against real processes: `nebula up` with one simulated 80 GB GPU, two 50 GB deployments
// that cannot run together, and `nebula mode switch` between them.
#include <gtest/gtest.h>

#include "nebula_fixture.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::eventually;

class ModesE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new testing::NebulaUp({}, "1xH100-80GB");
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    auto a = up_->cli(
        {"deploy", "a", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "50GB", "--wait", "--timeout", "30s"});
    ASSERT_EQ(a.exit_code, 0) << a.out;
    auto b =
        up_->cli({"deploy", "b", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "50GB", "--replicas", "0"});
    ASSERT_EQ(b.exit_code, 0) << b.out;
    // An engine that exits at once: engine-sim refuses an unknown flag.
    auto broken = up_->cli({"deploy", "broken", "--engine", "sim", "--model", "qwen2.5-0.5b", "--vram", "30GB",
                            "--replicas", "0", "--engine-arg=--no-such-flag"});
    ASSERT_EQ(broken.exit_code, 0) << broken.out;
    for (const auto& [mode, deployment] : {std::pair{"ma", "a"}, {"mb", "b"}, {"mbroken", "broken"}}) {
      auto created = up_->cli({"mode", "create", mode, "--deployments", deployment});
      ASSERT_EQ(created.exit_code, 0) << created.out;
    }
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
  }

  json switch_to(const std::string& mode, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"mode", "switch", mode, "-o", "json"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto result = up_->cli(args);
    EXPECT_EQ(result.exit_code, 0) << result.out;
    auto parsed = parse_json(result.out);
    EXPECT_TRUE(parsed) << result.out;
    return parsed ? *parsed : json::object();
  }

  bool ready(const std::string& deployment) {
    auto status = up_->get_json("/api/v1/deployments/" + deployment, up_->admin_key())["status"];
    return status.value("phase", "") == "Ready" && status.value("ready_replicas", 0) == 1;
  }

  bool all_gone(const std::set<int>& pids) {
    for (int pid : pids) {
      if (!testing::process_gone(pid)) return false;
    }
    return true;
  }

  std::string active_mode() {
    json modes = up_->get_json("/api/v1/modes", up_->admin_key());  // a named copy: items must not dangle
    for (const auto& mode : modes["items"]) {
      if (mode.value("active", false)) return mode["metadata"].value("name", "");
    }
    return "";
  }

  // Time of the first event matching object and reason; 0 if none.
  int64_t event_time(const std::string& object, const std::string& reason) {
    json events = up_->get_json("/api/v1/events", up_->admin_key());
    for (const auto& event : events["items"]) {
      if (event.value("object", "") == object && event.value("reason", "") == reason) {
        return event.value("time_ms", int64_t{0});
      }
    }
    return 0;
  }

  static testing::NebulaUp* up_;
};
testing::NebulaUp* ModesE2E::up_ = nullptr;

TEST_F(ModesE2E, CreateRefusesUnknownDeploymentsAndDuplicates) {
  auto unknown = up_->cli({"mode", "create", "nope", "--deployments", "a,missing"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_NE(unknown.out.find("missing"), std::string::npos) << unknown.out;
  auto duplicate = up_->cli({"mode", "create", "ma", "--deployments", "a"});
  EXPECT_EQ(duplicate.exit_code, 1) << duplicate.out;
  auto listing = up_->cli({"mode", "ls"});
  EXPECT_EQ(listing.exit_code, 0);
  EXPECT_NE(listing.out.find("mbroken"), std::string::npos) << listing.out;
}

TEST_F(ModesE2E, SwitchStopsTheOutgoingBeforeStartingTheIncomingAndBack) {
  ASSERT_TRUE(ready("a"));
  auto a_pids = up_->engine_pids("a");
  ASSERT_EQ(a_pids.size(), 1u);

  // A dry run says what would happen and changes nothing.
  json dry = switch_to("mb", {"--dry-run"});
  EXPECT_EQ(dry["stopped"], json::array({"a"})) << dry.dump();
  EXPECT_EQ(dry["started"], json::array({"b"})) << dry.dump();
  EXPECT_TRUE(dry.value("dry_run", false));
  EXPECT_EQ(up_->engine_pids("a"), a_pids);
  EXPECT_EQ(up_->get_json("/api/v1/deployments/b", up_->admin_key())["spec"].value("replicas", -1), 0);

  json to_b = switch_to("mb");
  EXPECT_EQ(to_b["stopped"], json::array({"a"})) << to_b.dump();
  EXPECT_EQ(to_b["started"], json::array({"b"})) << to_b.dump();
  EXPECT_GT(to_b["phases"].value("vram_release_ms", int64_t{0}), 0) << to_b.dump();
  EXPECT_TRUE(all_gone(a_pids)) << "the outgoing engine is stopped";
  EXPECT_TRUE(ready("b"));
  EXPECT_EQ(
      up_->get_json("/api/v1/deployments/a", up_->admin_key())["metadata"]["labels"].value("nebula.dev/replicas", ""),
      "1");
  EXPECT_EQ(active_mode(), "mb");
  // Order: the GPU reported the VRAM free before b got its replica.
  int64_t released = event_time("mode/mb", "VramReleased");
  int64_t b_created = event_time("deployment/b", "ReplicaCreated");
  ASSERT_GT(released, 0);
  ASSERT_GT(b_created, 0);
  EXPECT_LE(released, b_created);
  std::cout << "switch a -> b: " << to_b.dump() << "\n";

  auto b_pids = up_->engine_pids("b");
  json to_a = switch_to("ma");
  EXPECT_EQ(to_a["stopped"], json::array({"b"})) << to_a.dump();
  EXPECT_EQ(to_a["started"], json::array({"a"})) << to_a.dump();
  EXPECT_TRUE(all_gone(b_pids));
  EXPECT_TRUE(ready("a"));
  EXPECT_EQ(active_mode(), "ma");
  std::cout << "switch b -> a: " << to_a.dump() << "\n";
}

TEST_F(ModesE2E, AFailedSwitchRollsBackToThePreviousMode) {
  if (active_mode() != "ma") switch_to("ma");
  ASSERT_TRUE(ready("a"));
  auto failed = up_->cli({"mode", "switch", "mbroken", "--ready-timeout", "15s"});
  EXPECT_EQ(failed.exit_code, 1) << failed.out;
  EXPECT_NE(failed.out.find("rolled back"), std::string::npos) << failed.out;
  EXPECT_TRUE(ready("a")) << "the outgoing deployment is back";
  EXPECT_EQ(up_->get_json("/api/v1/deployments/broken", up_->admin_key())["spec"].value("replicas", -1), 0);
  EXPECT_EQ(active_mode(), "ma");
  EXPECT_TRUE(eventually([&] { return up_->engine_pids("broken").empty(); }, 5s));
}

}  // namespace
}  // namespace nebula
