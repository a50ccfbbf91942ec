#include <gtest/gtest.h>

#include "controlplane/controlplane.h"
#include "controlplane/modes.h"
#include "store/memory_store.h"

// A mode switch advanced by the controller pass by pass, on a MemoryStore and a fake clock; the
// agent's part (phases, GPU memory reports, removing stopped replicas) is played by the test.
namespace nebula::controlplane {
namespace {

class ModeSwitchTest : public ::testing::Test {
 protected:
  ModeSwitchTest() : store_(clock_), resources_(store_, clock_) {
    api::Node node;
    node.metadata.name = "n1";
    node.status.ready = true;
    node.status.engines = {"sim"};
    node.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
    node.status.gpus.push_back({0, "GPU-0", "H100-80GB", 80 * 1024, 0, 0, 0});
    EXPECT_TRUE(resources_.create(node));
    deploy("a", 1);
    deploy("b", 0);
    for (const auto& [name, members, active] :
         {std::tuple<std::string, std::string, bool>{"ma", "a", true}, {"mb", "b", false}}) {
      api::Mode mode;
      mode.metadata.name = name;
      mode.deployments = {members};
      mode.active = active;
      EXPECT_TRUE(resources_.create(mode));
    }
  }

  void deploy(const std::string& name, int replicas) {
    api::Deployment deployment;
    deployment.metadata.name = name;
    deployment.spec.model = "m";
    deployment.spec.replicas = replicas;
    deployment.spec.vram_mb = 60 * 1024;  // a and b do not fit together
    EXPECT_TRUE(resources_.create(deployment));
  }

  // What the handler records: a switch from ma to mb.
  void request_switch() {
    ASSERT_TRUE(resources_.modify<api::Mode>("mb", [&](api::Mode& mode) {
      mode.switching.id = "s1";
      mode.switching.phase = switch_phase::kLeaving;
      mode.switching.from = "ma";
      mode.switching.stop = {"a"};
      mode.switching.start = {"b"};
      mode.switching.started_ms = to_unix_ms(clock_.wall_now());
      mode.switching.phase_started_ms = mode.switching.started_ms;
      return true;
    }));
  }

  // The agent: stopped replicas go, placed ones become Ready (or fail), the GPU reports what the
  // running engines use, and the node heartbeats.
  void agent_step(const std::string& failing = "") {
    int64_t used = 0;
    for (const auto& replica : resources_.list<api::Replica>()) {
      if (replica.spec.stop) {
        ASSERT_TRUE(resources_.remove<api::Replica>(replica.metadata.name));
        continue;
      }
      if (replica.spec.node.empty()) continue;
      bool fails = replica.spec.deployment == failing;
      if (!fails) used += replica.spec.vram_mb;
      ASSERT_TRUE(resources_.modify<api::Replica>(replica.metadata.name, [&](api::Replica& current) {
        current.status.phase = fails ? api::phase::kFailed : api::phase::kReady;
        current.status.last_error = fails ? "engine exited with status 1 while starting" : "";
        current.status.plan_version = current.spec.plan_version;
        return true;
      }));
    }
    ASSERT_TRUE(resources_.modify<api::Node>("n1", [&](api::Node& node) {
      node.status.gpus[0].memory_used_mb = used;
      node.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
      return true;
    }));
  }

  api::ModeSwitch state() { return resources_.get<api::Mode>("mb")->switching; }
  int replicas_of(const std::string& deployment) { return resources_.get<api::Deployment>(deployment)->spec.replicas; }

  FakeClock clock_;
  store::MemoryStore store_;
  Resources resources_;
};

TEST_F(ModeSwitchTest, TheControllerStopsWaitsForVramThenStarts) {
  Controller controller(resources_, Options{});
  controller.reconcile();
  agent_step();
  request_switch();
  controller.reconcile();
  EXPECT_EQ(state().phase, switch_phase::kReleasing);
  EXPECT_EQ(replicas_of("a"), 0);
  EXPECT_EQ(replicas_of("b"), 0) << "nothing starts before the outgoing VRAM is released";
  controller.reconcile();
  EXPECT_EQ(state().phase, switch_phase::kReleasing) << "the GPU still reports a's memory";
  agent_step();  // a's engine is gone, the GPU reports its memory free
  controller.reconcile();
  EXPECT_EQ(state().phase, switch_phase::kEntering);
  EXPECT_EQ(replicas_of("b"), 1);
  controller.reconcile();  // b is placed
  agent_step();
  controller.reconcile();
  EXPECT_EQ(state().phase, switch_phase::kDone);
  EXPECT_TRUE(resources_.get<api::Mode>("mb")->active);
  EXPECT_FALSE(resources_.get<api::Mode>("ma")->active);
}

TEST_F(ModeSwitchTest, ANewControllerResumesASwitchTheOldOneLeftHalfWay) {
  {
    Controller controller(resources_, Options{});
    controller.reconcile();
    agent_step();
    request_switch();
    controller.reconcile();
    ASSERT_EQ(state().phase, switch_phase::kReleasing);
  }  // the server dies here
  agent_step();
  Controller controller(resources_, Options{});
  for (int pass = 0; pass < 4; ++pass) {
    controller.reconcile();
    agent_step();
  }
  controller.reconcile();
  EXPECT_EQ(state().phase, switch_phase::kDone) << state().message;
  EXPECT_TRUE(resources_.get<api::Mode>("mb")->active);
  EXPECT_EQ(replicas_of("b"), 1);
}

TEST_F(ModeSwitchTest, AFailedStartRollsBackToThePreviousMode) {
  Controller controller(resources_, Options{});
  controller.reconcile();
  agent_step();
  request_switch();
  for (int pass = 0; pass < 8 && state().phase != switch_phase::kFailed; ++pass) {
    controller.reconcile();
    agent_step("b");
  }
  auto failed = state();
  EXPECT_EQ(failed.phase, switch_phase::kFailed);
  EXPECT_TRUE(failed.rolled_back);
  EXPECT_NE(failed.message.find("b failed to start"), std::string::npos) << failed.message;
  EXPECT_EQ(replicas_of("a"), 1);
  EXPECT_EQ(replicas_of("b"), 0);
  EXPECT_TRUE(resources_.get<api::Mode>("ma")->active);
}

}  // namespace
}  // namespace nebula::controlplane
