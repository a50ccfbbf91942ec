#include <gtest/gtest.h>

#include <algorithm>

#include "controlplane/controlplane.h"
#include "store/memory_store.h"

// Rolling updates and the node grace period, driven pass by pass on a MemoryStore and a fake
// clock; the agent's part (phases, removing stopped replicas) is played by the test.
namespace nebula::controlplane {
namespace {

class RolloutTest : public ::testing::Test {
 protected:
  RolloutTest() : store_(clock_), resources_(store_, clock_) {}

  Options options() {
    Options result;
    result.drain_timeout = std::chrono::seconds(20);  // below the node timeout: the loops below heartbeat
    return result;
  }

  void add_node(const std::string& name, int64_t memory_mb) {
    api::Node node;
    node.metadata.name = name;
    node.status.ready = true;
    node.status.engines = {"sim"};
    node.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
    node.status.gpus.push_back({0, "GPU-0", "H100-80GB", memory_mb, 0, 0, 0});
    ASSERT_TRUE(resources_.create(node));
  }

  void deploy(const std::string& name, int replicas, int64_t vram_mb = 10 * 1024) {
    api::Deployment deployment;
    deployment.metadata.name = name;
    deployment.spec.model = "m";
    deployment.spec.replicas = replicas;
    deployment.spec.vram_mb = vram_mb;
    ASSERT_TRUE(resources_.create(deployment));
  }

  void change_spec(const std::string& name, const std::function<void(api::DeploymentSpec&)>& change) {
    ASSERT_TRUE(resources_.modify<api::Deployment>(name, [&](api::Deployment& current) {
      change(current.spec);
      return true;
    }));
  }

  std::vector<api::Replica> replicas(const std::string& deployment) {
    std::vector<api::Replica> result;
    for (auto& replica : resources_.list<api::Replica>()) {
      if (replica.spec.deployment == deployment) result.push_back(replica);
    }
    return result;
  }
  // Neither stopping nor draining.
  std::vector<api::Replica> serving_set(const std::string& deployment) {
    auto all = replicas(deployment);
    std::erase_if(all, [](const api::Replica& r) { return r.spec.stop || r.spec.draining_since_ms > 0; });
    return all;
  }
  int count_plan(const std::string& deployment, int64_t plan) {
    auto set = serving_set(deployment);
    return static_cast<int>(
        std::count_if(set.begin(), set.end(), [&](const api::Replica& r) { return r.spec.plan_version == plan; }));
  }

  // The agent's part: it heartbeats, placed replicas become Ready (or crash), stopped ones go away.
  void agent_step(int crashes_for_plan = 0, int64_t crashing_plan = -1) {
    for (const auto& node : resources_.list<api::Node>()) {
      ASSERT_TRUE(resources_.modify<api::Node>(node.metadata.name, [&](api::Node& current) {
        current.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
        return true;
      }));
    }
    for (const auto& replica : resources_.list<api::Replica>()) {
      if (replica.spec.stop) {
        ASSERT_TRUE(resources_.remove<api::Replica>(replica.metadata.name));
        continue;
      }
      if (replica.spec.node.empty() || replica.status.phase == api::phase::kReady) continue;
      ASSERT_TRUE(resources_.modify<api::Replica>(replica.metadata.name, [&](api::Replica& current) {
        if (current.spec.plan_version == crashing_plan) {
          current.status.phase = api::phase::kFailed;
          current.status.restarts = crashes_for_plan;
          current.status.last_error = "engine exited with status 2 while starting";
        } else {
          current.status.phase = api::phase::kReady;
          current.status.plan_version = current.spec.plan_version;
        }
        return true;
      }));
    }
  }

  api::Deployment deployment(const std::string& name) { return *resources_.get<api::Deployment>(name); }

  FakeClock clock_;
  store::MemoryStore store_;
  Resources resources_;
};

TEST(RolloutSpec, CountsAndPlanFields) {
  EXPECT_EQ(*api::rollout_count("1", 4, true, "f"), 1);
  EXPECT_EQ(*api::rollout_count("25%", 3, true, "f"), 1);   // surge rounds up
  EXPECT_EQ(*api::rollout_count("25%", 3, false, "f"), 0);  // unavailable rounds down
  EXPECT_EQ(*api::rollout_count("50%", 4, false, "f"), 2);
  EXPECT_FALSE(api::rollout_count("x", 4, true, "spec.max_surge"));
  EXPECT_FALSE(api::rollout_count("150%", 4, true, "spec.max_surge"));
  EXPECT_NE(api::rollout_count("-1", 4, true, "spec.max_surge").error().message.find("spec.max_surge"),
            std::string::npos);
  api::DeploymentSpec spec;
  spec.model = "m";
  spec.max_surge = "0";
  spec.max_unavailable = "0";
  EXPECT_FALSE(api::validate(spec));
  spec.max_unavailable = "1";
  EXPECT_TRUE(api::validate(spec));

  api::DeploymentSpec other = spec;
  other.replicas = 7;  // scaling is not a new plan
  other.priority = 3;
  EXPECT_TRUE(api::same_plan(spec, other));
  other.engine_args = {"--seed", "2"};
  EXPECT_FALSE(api::same_plan(spec, other));
  other = spec;
  other.env["A"] = "1";
  EXPECT_FALSE(api::same_plan(spec, other));
}

TEST_F(RolloutTest, ASpecChangeRollsReplicasOverWithSurgeAndDrainsTheOld) {
  Controller controller(resources_, options());
  add_node("n1", 80 * 1024);
  deploy("chat", 2);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  auto first = deployment("chat");
  EXPECT_EQ(first.status.plan_version, 1);
  EXPECT_EQ(first.status.rollout.state, api::rollout_state::kComplete);
  ASSERT_EQ(count_plan("chat", 1), 2);

  change_spec("chat", [](api::DeploymentSpec& spec) { spec.engine_args = {"--seed", "7"}; });
  controller.reconcile();
  auto rolling = deployment("chat");
  EXPECT_EQ(rolling.status.plan_version, 2);
  EXPECT_EQ(rolling.status.rollout.state, api::rollout_state::kProgressing);
  EXPECT_EQ(rolling.status.rollout.from_version, 1);
  EXPECT_EQ(rolling.status.phase, "Progressing");
  // One surge replica of plan 2; both old ones keep serving (max_unavailable 0).
  EXPECT_EQ(count_plan("chat", 2), 1);
  EXPECT_EQ(count_plan("chat", 1), 2);
  for (const auto& replica : serving_set("chat")) {
    if (replica.spec.plan_version == 2) {
      EXPECT_EQ(replica.spec.engine_args, (std::vector<std::string>{"--seed", "7"}));
    }
  }
  controller.reconcile();  // nothing changes until the new replica is Ready
  EXPECT_EQ(serving_set("chat").size(), 3u);

  agent_step();  // the new replica is Ready
  controller.reconcile();
  // One old replica drains: out of routing, not yet stopped.
  std::vector<api::Replica> draining;
  for (const auto& replica : replicas("chat")) {
    if (replica.spec.draining_since_ms > 0) draining.push_back(replica);
  }
  ASSERT_EQ(draining.size(), 1u);
  EXPECT_FALSE(draining[0].spec.stop);
  EXPECT_EQ(draining[0].spec.plan_version, 1);
  controller.reconcile();
  EXPECT_EQ(count_plan("chat", 2), 2) << "the next surge replica starts while the old one drains";

  // The drain ends at the drain timeout (no gateway here to say it is idle).
  clock_.advance(std::chrono::seconds(21));
  for (int pass = 0; pass < 8; ++pass) {
    controller.reconcile();
    agent_step();
    clock_.advance(std::chrono::seconds(21));
  }
  controller.reconcile();
  auto done = deployment("chat");
  EXPECT_EQ(done.status.rollout.state, api::rollout_state::kComplete) << done.status.rollout.message;
  EXPECT_EQ(count_plan("chat", 2), 2);
  EXPECT_EQ(replicas("chat").size(), 2u);
  ASSERT_EQ(done.status.plans.size(), 2u);
  EXPECT_EQ(done.status.plans[0].outcome, api::rollout_state::kSuperseded);
  EXPECT_EQ(done.status.plans[1].outcome, api::rollout_state::kComplete);
  EXPECT_EQ(done.status.plans[1].cause, "spec changed");

  // Scaling is not a new plan.
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.replicas = 3; });
  controller.reconcile();
  EXPECT_EQ(deployment("chat").status.plan_version, 2);
  EXPECT_EQ(count_plan("chat", 2), 3);
}

TEST_F(RolloutTest, ARoutingChangeIsNotANewPlanAndTouchesNoReplica) {
  Controller controller(resources_, options());
  add_node("n1", 80 * 1024);
  deploy("chat", 2);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  ASSERT_EQ(deployment("chat").status.plan_version, 1);
  auto before = replicas("chat");
  ASSERT_EQ(before.size(), 2u);

  for (const char* routing : {"session", "prefix+load,prefix=2,queue=1,kv=1", ""}) {
    change_spec("chat", [&](api::DeploymentSpec& spec) { spec.routing = routing; });
    for (int pass = 0; pass < 3; ++pass) {
      controller.reconcile();
      agent_step();
    }
    auto after = deployment("chat");
    EXPECT_EQ(after.status.plan_version, 1) << routing;
    EXPECT_EQ(after.status.plans.size(), 1u) << routing;
    EXPECT_EQ(after.spec.routing, routing);
    auto now = replicas("chat");
    ASSERT_EQ(now.size(), before.size()) << routing;
    for (size_t i = 0; i < now.size(); ++i) {
      EXPECT_EQ(now[i].metadata.name, before[i].metadata.name);
      EXPECT_EQ(now[i].spec.draining_since_ms, 0);
      EXPECT_FALSE(now[i].spec.stop);
    }
  }
  // An engine change after it is one (the check above is not blind).
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.engine_args = {"--seed", "7"}; });
  controller.reconcile();
  EXPECT_EQ(deployment("chat").status.plan_version, 2);
}

TEST_F(RolloutTest, ADrainedReplicaStopsAsSoonAsTheGatewaySaysSo) {
  Options with_gateway = options();
  std::set<std::string> idle_replicas;
  with_gateway.replica_drained = [&](const std::string& replica) { return idle_replicas.count(replica) > 0; };
  Controller controller(resources_, with_gateway);
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  std::string old = replicas("chat")[0].metadata.name;
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.model = "m2"; });
  controller.reconcile();
  agent_step();
  controller.reconcile();
  ASSERT_GT(resources_.get<api::Replica>(old)->spec.draining_since_ms, 0);
  controller.reconcile();
  EXPECT_FALSE(resources_.get<api::Replica>(old)->spec.stop) << "requests still in flight";
  idle_replicas.insert(old);
  controller.reconcile();
  EXPECT_TRUE(resources_.get<api::Replica>(old)->spec.stop);
}

TEST_F(RolloutTest, WithoutRoomForASurgeReplicaOneOldReplicaAtATimeMakesRoom) {
  Controller controller(resources_, options());
  add_node("n1", 24 * 1024);  // two 10 GiB replicas fit, a third does not
  deploy("chat", 2);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.max_context = 4096; });
  controller.reconcile();
  controller.reconcile();
  // The surge replica cannot be placed; one old replica drains to make room, not both.
  int draining = 0;
  for (const auto& replica : replicas("chat")) draining += replica.spec.draining_since_ms > 0 ? 1 : 0;
  EXPECT_EQ(draining, 1);
  EXPECT_EQ(count_plan("chat", 1), 1);
  for (int pass = 0; pass < 12; ++pass) {
    clock_.advance(std::chrono::seconds(21));
    controller.reconcile();
    agent_step();
  }
  controller.reconcile();
  auto done = deployment("chat");
  EXPECT_EQ(done.status.rollout.state, api::rollout_state::kComplete) << done.status.rollout.message;
  EXPECT_EQ(count_plan("chat", 2), 2);
  for (const auto& replica : replicas("chat")) EXPECT_EQ(replica.spec.max_context, 4096);
}

TEST_F(RolloutTest, ANewPlanThatCannotFitEvenAloneNeverTakesTheOldDown) {
  Controller controller(resources_, options());
  add_node("n1", 24 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.vram_mb = 40 * 1024; });
  for (int pass = 0; pass < 3; ++pass) controller.reconcile();
  EXPECT_EQ(count_plan("chat", 1), 1) << "stopping the old replica would not make room: it keeps serving";
}

TEST_F(RolloutTest, ACrashLoopingRolloutRollsBackAndTheOldPlanKeepsServing) {
  Controller controller(resources_, options());
  add_node("n1", 80 * 1024);
  deploy("chat", 2);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.engine_args = {"--fail-on-start"}; });
  controller.reconcile();
  agent_step(1, 2);  // a first crash: not yet a crash loop
  controller.reconcile();
  EXPECT_EQ(deployment("chat").status.rollout.state, api::rollout_state::kProgressing);
  EXPECT_EQ(count_plan("chat", 1), 2);
  // An old replica that is briefly not Ready meanwhile is kept: the new plan has nothing Ready to
  // replace it with.
  std::string flickering;
  for (const auto& replica : serving_set("chat")) {
    if (replica.spec.plan_version == 1) flickering = replica.metadata.name;
  }
  ASSERT_TRUE(resources_.modify<api::Replica>(flickering, [](api::Replica& current) {
    current.status.phase = api::phase::kStarting;
    return true;
  }));
  controller.reconcile();
  EXPECT_FALSE(resources_.get<api::Replica>(flickering)->spec.stop);
  EXPECT_EQ(count_plan("chat", 1), 2);
  agent_step(2, 2);
  controller.reconcile();
  auto rolled = deployment("chat");
  EXPECT_EQ(rolled.status.plan_version, 1);
  EXPECT_EQ(rolled.status.rollout.state, api::rollout_state::kRolledBack);
  EXPECT_NE(rolled.status.rollout.message.find("crashed 2 times"), std::string::npos) << rolled.status.rollout.message;
  EXPECT_NE(rolled.status.rollout.message.find("rolled back to plan 1"), std::string::npos);
  EXPECT_EQ(rolled.status.plans.back().outcome, api::rollout_state::kRolledBack);
  controller.reconcile();
  controller.reconcile();
  // The failed replica is stopped, the old ones never left routing, and no new plan is made
  // although the spec still holds the failed change.
  EXPECT_EQ(count_plan("chat", 2), 0);
  EXPECT_EQ(count_plan("chat", 1), 2);
  for (const auto& replica : serving_set("chat")) EXPECT_EQ(replica.spec.draining_since_ms, 0);
  EXPECT_EQ(deployment("chat").status.plan_version, 1);
  EXPECT_EQ(deployment("chat").status.plans.size(), 2u);
  bool event = false;
  for (const auto& e : resources_.list<api::Event>()) event = event || e.reason == "RolledBack";
  EXPECT_TRUE(event);

  // Fixing the spec starts plan 3.
  change_spec("chat", [](api::DeploymentSpec& spec) { spec.engine_args = {"--seed", "1"}; });
  controller.reconcile();
  EXPECT_EQ(deployment("chat").status.plan_version, 3);
}

TEST_F(RolloutTest, ARestartIsANewPlanWithTheSameSpec) {
  Controller controller(resources_, options());
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  agent_step();
  controller.reconcile();
  clock_.advance(std::chrono::seconds(1));
  ASSERT_TRUE(resources_.modify<api::Deployment>("chat", [&](api::Deployment& current) {
    current.status.restart_requested_ms = to_unix_ms(clock_.wall_now());
    return true;
  }));
  controller.reconcile();
  auto restarted = deployment("chat");
  EXPECT_EQ(restarted.status.plan_version, 2);
  EXPECT_EQ(restarted.status.plans.back().cause, "restart");
  controller.reconcile();
  EXPECT_EQ(deployment("chat").status.plan_version, 2) << "one restart, one plan";
  EXPECT_EQ(count_plan("chat", 2), 1);
}

TEST_F(RolloutTest, AControllerThatRestartsMidRolloutResumesIt) {
  add_node("n1", 80 * 1024);
  deploy("chat", 2);
  {
    Controller controller(resources_, options());
    controller.reconcile();
    agent_step();
    controller.reconcile();
    change_spec("chat", [](api::DeploymentSpec& spec) { spec.model = "m2"; });
    controller.reconcile();
    agent_step();
    controller.reconcile();  // one old replica draining
  }
  ASSERT_EQ(count_plan("chat", 1), 1);
  // A new controller (the server came back) picks the rollout up from the store.
  Controller controller(resources_, options());
  for (int pass = 0; pass < 10; ++pass) {
    clock_.advance(std::chrono::seconds(21));
    controller.reconcile();
    agent_step();
  }
  auto done = deployment("chat");
  EXPECT_EQ(done.status.rollout.state, api::rollout_state::kComplete);
  EXPECT_EQ(done.status.plans.size(), 2u);
  EXPECT_EQ(count_plan("chat", 2), 2);
  for (const auto& replica : replicas("chat")) EXPECT_EQ(replica.spec.model, "m2");
}

TEST_F(RolloutTest, AStartingServerGivesNodesAGracePeriodBeforeJudgingHeartbeats) {
  Options grace = options();
  grace.node_timeout = std::chrono::seconds(30);
  grace.reschedule_grace = std::chrono::seconds(60);
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  {
    Controller before(resources_, grace);
    before.reconcile();
    agent_step();
  }
  std::string original = replicas("chat")[0].metadata.name;
  // The server is down for ten minutes: nobody hears the node meanwhile.
  clock_.advance(std::chrono::minutes(10));
  Controller controller(resources_, grace);
  controller.reconcile();
  EXPECT_TRUE(resources_.get<api::Node>("n1")->status.ready) << "judged before it could report";
  EXPECT_EQ(replicas("chat")[0].metadata.name, original);
  EXPECT_EQ(replicas("chat")[0].status.phase, api::phase::kReady);

  // Within the grace the agent reports: nothing was rescheduled.
  clock_.advance(std::chrono::seconds(5));
  ASSERT_TRUE(resources_.modify<api::Node>("n1", [&](api::Node& node) {
    node.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
    return true;
  }));
  controller.reconcile();
  EXPECT_EQ(replicas("chat").size(), 1u);
  EXPECT_EQ(replicas("chat")[0].metadata.name, original);

  // A node that stays silent is judged once the grace (node_timeout) from the start is over.
  clock_.advance(std::chrono::seconds(31));
  controller.reconcile();
  EXPECT_FALSE(resources_.get<api::Node>("n1")->status.ready);
}

}  // namespace
}  // namespace nebula::controlplane
