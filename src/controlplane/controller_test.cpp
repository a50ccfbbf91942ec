#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <optional>

#include "controlplane/controlplane.h"
#include "controlplane/node_admission.h"
#include "etcd_cluster.h"
#include "store/etcd_store.h"
#include "store/forwarding_store.h"
#include "store/memory_store.h"

namespace nebula::controlplane {
namespace {

class ControllerTest : public ::testing::Test {
 protected:
  ControllerTest() : store_(clock_), resources_(store_, clock_), controller_(resources_, Options{}) {}

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

  std::vector<api::Replica> replicas(const std::string& deployment, bool include_stopping = false) {
    std::vector<api::Replica> result;
    for (auto& replica : resources_.list<api::Replica>()) {
      if (replica.spec.deployment == deployment && (include_stopping || !replica.spec.stop)) {
        result.push_back(replica);
      }
    }
    return result;
  }

  void mark_ready(const std::string& deployment) {
    for (const auto& replica : replicas(deployment)) {
      ASSERT_TRUE(resources_.modify<api::Replica>(replica.metadata.name, [](api::Replica& current) {
        current.status.phase = api::phase::kReady;
        return true;
      }));
    }
  }

  FakeClock clock_;
  store::MemoryStore store_;
  Resources resources_;
  Controller controller_;
};

TEST_F(ControllerTest, ReplicasFollowTheSpecAndArePlaced) {
  add_node("n1", 80 * 1024);
  deploy("chat", 2);
  controller_.reconcile();
  auto placed = replicas("chat");
  ASSERT_EQ(placed.size(), 2u);
  for (const auto& replica : placed) {
    EXPECT_EQ(replica.spec.node, "n1");
    EXPECT_EQ(replica.spec.gpus, std::vector<int>{0});
    EXPECT_EQ(replica.spec.plan_version, 1);
    EXPECT_EQ(replica.status.phase, api::phase::kScheduled);
  }
  controller_.reconcile();  // idempotent: nothing new
  EXPECT_EQ(replicas("chat").size(), 2u);

  mark_ready("chat");
  controller_.reconcile();
  auto deployment = resources_.get<api::Deployment>("chat");
  ASSERT_TRUE(deployment);
  EXPECT_EQ(deployment->status.ready_replicas, 2);
  EXPECT_EQ(deployment->status.phase, "Ready");
}

TEST_F(ControllerTest, ScaleDownStopsTheExtraReplicasAndDeleteStopsAll) {
  add_node("n1", 80 * 1024);
  deploy("chat", 3);
  controller_.reconcile();
  ASSERT_TRUE(resources_.modify<api::Deployment>("chat", [](api::Deployment& d) {
    d.spec.replicas = 1;
    return true;
  }));
  controller_.reconcile();
  EXPECT_EQ(replicas("chat").size(), 1u);
  EXPECT_EQ(replicas("chat", true).size(), 3u);  // the agent removes stopped replicas once their engine is gone

  ASSERT_TRUE(resources_.remove<api::Deployment>("chat"));
  controller_.reconcile();
  EXPECT_TRUE(replicas("chat").empty());
  for (const auto& replica : replicas("chat", true)) EXPECT_TRUE(replica.spec.stop);
}

TEST_F(ControllerTest, UnplaceableReplicasStayPendingWithTheReason) {
  add_node("n1", 24 * 1024);
  deploy("big", 1, 40 * 1024);
  controller_.reconcile();
  auto pending = replicas("big");
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_TRUE(pending[0].spec.node.empty());
  EXPECT_EQ(pending[0].status.phase, api::phase::kPending);
  EXPECT_NE(pending[0].status.message.find("no node fits"), std::string::npos);
  controller_.reconcile();
  auto deployment = resources_.get<api::Deployment>("big");
  EXPECT_EQ(deployment->status.phase, "Pending");
  EXPECT_NE(deployment->status.message.find("24.0 GiB free"), std::string::npos) << deployment->status.message;
}

TEST_F(ControllerTest, UnschedulableReplicasBackOffAndRetryWhenCapacityChanges) {
  add_node("n1", 24 * 1024);
  deploy("big", 2, 40 * 1024);
  controller_.reconcile();
  EXPECT_EQ(controller_.placement_attempts(), 2u);
  // Nothing changed: no new attempt, however often the controller wakes.
  for (int pass = 0; pass < 5; ++pass) controller_.reconcile();
  EXPECT_EQ(controller_.placement_attempts(), 2u);
  // The backoff runs out (1 s, then 2 s...): tried again once, still no room.
  clock_.advance(std::chrono::milliseconds(1'000));
  controller_.reconcile();
  EXPECT_EQ(controller_.placement_attempts(), 4u);
  clock_.advance(std::chrono::milliseconds(1'500));
  controller_.reconcile();
  EXPECT_EQ(controller_.placement_attempts(), 4u);
  // A node joins: both are placed at once, without waiting for their backoff.
  add_node("n2", 80 * 1024);
  controller_.reconcile();
  EXPECT_EQ(controller_.placement_attempts(), 6u);
  auto placed = replicas("big");
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].spec.node, "n2");
  EXPECT_EQ(placed[1].spec.node, "n2");
}

TEST_F(ControllerTest, AReplicaGoingAwayRetriesThePendingOnes) {
  add_node("n1", 80 * 1024);
  deploy("a", 2, 50 * 1024);  // one fits
  controller_.reconcile();
  auto attempts = controller_.placement_attempts();
  controller_.reconcile();
  EXPECT_EQ(controller_.placement_attempts(), attempts);
  // The placed replica is removed (its engine stopped): the pending one takes its place.
  for (const auto& replica : replicas("a")) {
    if (!replica.spec.node.empty()) {
      ASSERT_TRUE(resources_.remove<api::Replica>(replica.metadata.name));
    }
  }
  controller_.reconcile();
  int placed = 0;
  for (const auto& replica : replicas("a")) placed += replica.spec.node.empty() ? 0 : 1;
  EXPECT_EQ(placed, 1);
}

TEST_F(ControllerTest, ALeaseKeepsANodeReadyWithoutItsDocumentBeingRewritten) {
  add_node("n1", 80 * 1024);
  auto written = resources_.get<api::Node>("n1")->metadata.revision;
  clock_.advance(std::chrono::seconds(31));
  ASSERT_TRUE(renew_node_lease(store_, "n1", to_unix_ms(clock_.wall_now())));
  controller_.reconcile();
  auto node = resources_.get<api::Node>("n1");
  EXPECT_TRUE(node->status.ready);
  EXPECT_EQ(node->metadata.revision, written);
  // Once the lease is as old as node_timeout too, the node is NotReady.
  clock_.advance(std::chrono::seconds(31));
  controller_.reconcile();
  node = resources_.get<api::Node>("n1");
  EXPECT_FALSE(node->status.ready);
  EXPECT_NE(node->status.message.find("no heartbeat for 31 s"), std::string::npos) << node->status.message;
  // A lease that is not one (hostile or damaged) is ignored, not trusted.
  ASSERT_TRUE(store_.put(node_lease_key("n1"), "{\"renewed_ms\": \"soon\"}"));
  EXPECT_EQ(node_lease_ms(store_, "n1"), 0);
  ASSERT_TRUE(store_.put(node_lease_key("n1"), "not json"));
  controller_.reconcile();
  EXPECT_FALSE(resources_.get<api::Node>("n1")->status.ready);
}

TEST(NodeStatusWrite, OnlyAChangeOrTheRefreshRewritesTheNode) {
  api::NodeStatus stored;
  stored.ready = true;
  stored.heartbeat_ms = 1'000'000;
  stored.engines = {"sim"};
  stored.gpus.push_back({0, "GPU-0", "H100-80GB", 81920, 1000, 10, 40, 100});
  api::NodeStatus reported = stored;
  reported.ready = false;  // what an agent sends: ready and heartbeat are the server's
  reported.heartbeat_ms = 0;
  int64_t now = stored.heartbeat_ms + 2'000;
  EXPECT_FALSE(needs_status_write(stored, reported, now));
  reported.gpus[0].utilization = 99;  // changes all the time: refreshed at kNodeStatusRefreshMs
  reported.gpus[0].temperature_c = 70;
  EXPECT_FALSE(needs_status_write(stored, reported, now));
  EXPECT_TRUE(needs_status_write(stored, reported, stored.heartbeat_ms + kNodeStatusRefreshMs));
  EXPECT_TRUE(needs_status_write(stored, reported, stored.heartbeat_ms - 1)) << "a clock that went back";
  auto changed = reported;
  changed.gpus[0].memory_used_mb = 30000;
  EXPECT_TRUE(needs_status_write(stored, changed, now));
  changed = reported;
  changed.engines.push_back("vllm");
  EXPECT_TRUE(needs_status_write(stored, changed, now));
  changed = reported;
  changed.models = {"org/m@main"};
  EXPECT_TRUE(needs_status_write(stored, changed, now));
  changed = reported;
  changed.gpus.clear();
  EXPECT_TRUE(needs_status_write(stored, changed, now));
  auto not_ready = stored;
  not_ready.ready = false;
  EXPECT_TRUE(needs_status_write(not_ready, reported, now));
}

TEST_F(ControllerTest, ReplicasOfANodeThatNeverJoinedAreRemovedDirectly) {
  deploy("chat", 1);
  controller_.reconcile();  // nothing to place on: stays Pending
  ASSERT_TRUE(resources_.modify<api::Deployment>("chat", [](api::Deployment& d) {
    d.spec.replicas = 0;
    return true;
  }));
  controller_.reconcile();
  EXPECT_TRUE(replicas("chat", true).empty());
}

TEST_F(ControllerTest, SilentNodesBecomeNotReady) {
  add_node("n1", 80 * 1024);
  deploy("old", 1);
  controller_.reconcile();
  mark_ready("old");
  EXPECT_TRUE(resources_.get<api::Node>("n1")->status.ready);
  clock_.advance(std::chrono::seconds(31));
  controller_.reconcile();
  auto node = resources_.get<api::Node>("n1");
  EXPECT_FALSE(node->status.ready);
  EXPECT_NE(node->status.message.find("no heartbeat"), std::string::npos);
  // Its replicas leave the router's table until the agent reports again.
  EXPECT_EQ(replicas("old")[0].status.phase, api::phase::kUnknown);
  // A NotReady node gets no new replicas.
  deploy("chat", 1);
  controller_.reconcile();
  EXPECT_TRUE(replicas("chat")[0].spec.node.empty());
}

TEST_F(ControllerTest, ConcurrentPendingReplicasNeverShareFreeMemory) {
  add_node("n1", 80 * 1024);
  deploy("a", 3, 30 * 1024);  // only two fit
  controller_.reconcile();
  int placed = 0;
  for (const auto& replica : replicas("a")) placed += replica.spec.node.empty() ? 0 : 1;
  EXPECT_EQ(placed, 2);
}

TEST_F(ControllerTest, IdleDeploymentsSleepAndWakeOnRequest) {
  add_node("n1", 80 * 1024);
  api::Deployment deployment;
  deployment.metadata.name = "sleepy";
  deployment.spec.model = "m";
  deployment.spec.vram_mb = 1024;
  deployment.spec.idle_timeout_ms = 60'000;
  deployment.spec.on_idle = "sleep-l2";
  ASSERT_TRUE(resources_.create(deployment));
  controller_.reconcile();
  mark_ready("sleepy");
  controller_.reconcile();
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 0);
  clock_.advance(std::chrono::seconds(61));
  controller_.reconcile();
  EXPECT_GT(resources_.get<api::Deployment>("sleepy")->status.idle_since_ms, 0);
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 2);
  EXPECT_EQ(resources_.get<api::Deployment>("sleepy")->status.phase, "Idle");
  // The gateway asks for it: awake again, and a new idle period starts from now.
  ASSERT_TRUE(resources_.modify<api::Deployment>("sleepy", [&](api::Deployment& d) {
    d.status.wake_requested_ms = to_unix_ms(clock_.wall_now());
    return true;
  }));
  controller_.reconcile();
  EXPECT_EQ(resources_.get<api::Deployment>("sleepy")->status.idle_since_ms, 0);
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 0);
  clock_.advance(std::chrono::seconds(30));
  controller_.reconcile();
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 0);
}

TEST_F(ControllerTest, IdleStopScalesToZeroAndBack) {
  add_node("n1", 80 * 1024);
  api::Deployment deployment;
  deployment.metadata.name = "cold";
  deployment.spec.model = "m";
  deployment.spec.vram_mb = 1024;
  deployment.spec.replicas = 2;
  deployment.spec.idle_timeout_ms = 1000;
  deployment.spec.on_idle = "stop";
  ASSERT_TRUE(resources_.create(deployment));
  controller_.reconcile();
  mark_ready("cold");
  clock_.advance(std::chrono::seconds(2));
  controller_.reconcile();
  EXPECT_TRUE(replicas("cold").empty());  // all marked stop
  ASSERT_TRUE(resources_.modify<api::Deployment>("cold", [&](api::Deployment& d) {
    d.status.wake_requested_ms = to_unix_ms(clock_.wall_now());
    return true;
  }));
  controller_.reconcile();
  EXPECT_EQ(replicas("cold").size(), 2u);
}

// `nebula sleep` on a deployment without scale-to-zero: asleep at its on_idle level (sleep-l1 by
// default) and held asleep by the controller, pass after pass, until a request or a wake.
TEST_F(ControllerTest, SleepOnDemandSurvivesReconcilesAndARequestWakesIt) {
  add_node("n1", 80 * 1024);
  deploy("chat", 2, 1024);
  controller_.reconcile();
  mark_ready("chat");
  controller_.reconcile();
  auto asked = request_sleep(resources_, "chat");
  ASSERT_TRUE(asked);
  EXPECT_TRUE(asked->changed);
  EXPECT_EQ(api::sleep_state(asked->deployment), "sleep-requested");
  controller_.reconcile();
  auto deployment = resources_.get<api::Deployment>("chat");
  EXPECT_GT(deployment->status.idle_since_ms, 0);
  EXPECT_EQ(deployment->status.phase, "Idle");
  EXPECT_EQ(api::sleep_state(*deployment), "asleep");
  for (const auto& replica : replicas("chat")) EXPECT_EQ(replica.spec.sleep_level, 1);
  EXPECT_EQ(replicas("chat").size(), 2u);  // asleep, not stopped
  // Its idle timeout is 0, which alone would wake it at once: the ask holds it asleep.
  for (int pass = 0; pass < 3; ++pass) {
    clock_.advance(std::chrono::minutes(10));
    controller_.reconcile();
  }
  EXPECT_EQ(api::sleep_state(*resources_.get<api::Deployment>("chat")), "asleep");
  for (const auto& replica : replicas("chat")) EXPECT_EQ(replica.spec.sleep_level, 1);

  // A second sleep changes nothing and is no error.
  auto again = request_sleep(resources_, "chat");
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->changed);
  EXPECT_EQ(again->deployment.status.sleep_requested_ms, deployment->status.sleep_requested_ms);

  // A request arrives: the gateway writes wake_requested_ms, as for an idle deployment.
  ASSERT_TRUE(resources_.modify<api::Deployment>("chat", [&](api::Deployment& d) {
    d.status.wake_requested_ms = to_unix_ms(clock_.wall_now());
    return true;
  }));
  controller_.reconcile();
  EXPECT_EQ(api::sleep_state(*resources_.get<api::Deployment>("chat")), "awake");
  for (const auto& replica : replicas("chat")) EXPECT_EQ(replica.spec.sleep_level, 0);
  // And it stays awake: no idle timeout, no sleep asked for since.
  clock_.advance(std::chrono::minutes(10));
  controller_.reconcile();
  EXPECT_EQ(resources_.get<api::Deployment>("chat")->status.idle_since_ms, 0);
}

TEST_F(ControllerTest, WakeOnDemandEndsASleepAndAnIdlePeriod) {
  add_node("n1", 80 * 1024);
  api::Deployment deployment;
  deployment.metadata.name = "sleepy";
  deployment.spec.model = "m";
  deployment.spec.vram_mb = 1024;
  deployment.spec.idle_timeout_ms = 10'000;  // short: the node's heartbeat is never renewed here
  deployment.spec.on_idle = "sleep-l2";
  ASSERT_TRUE(resources_.create(deployment));
  controller_.reconcile();
  mark_ready("sleepy");

  // Awake: a wake changes nothing.
  auto awake = request_wake(resources_, "sleepy");
  ASSERT_TRUE(awake);
  EXPECT_FALSE(awake->changed);
  EXPECT_EQ(api::sleep_state(awake->deployment), "awake");

  // Asleep on demand, at the spec's level, then woken within the same millisecond.
  ASSERT_TRUE(request_sleep(resources_, "sleepy"));
  controller_.reconcile();
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 2);
  auto woken = request_wake(resources_, "sleepy");
  ASSERT_TRUE(woken);
  EXPECT_TRUE(woken->changed);
  EXPECT_EQ(api::sleep_state(woken->deployment), "wake-requested");
  auto twice = request_wake(resources_, "sleepy");
  ASSERT_TRUE(twice);
  EXPECT_FALSE(twice->changed);
  controller_.reconcile();
  EXPECT_EQ(api::sleep_state(*resources_.get<api::Deployment>("sleepy")), "awake");
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 0);

  // Asleep by idleness: a wake ends that too, and a fresh idle period starts from it.
  clock_.advance(std::chrono::seconds(11));
  controller_.reconcile();
  ASSERT_EQ(api::sleep_state(*resources_.get<api::Deployment>("sleepy")), "asleep");
  ASSERT_TRUE(request_wake(resources_, "sleepy"));
  controller_.reconcile();
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 0);
  clock_.advance(std::chrono::seconds(5));
  controller_.reconcile();
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 0);

  // A sleep asked for while a wake is still pending wins: the deployment stays asleep.
  clock_.advance(std::chrono::seconds(6));
  controller_.reconcile();
  ASSERT_EQ(api::sleep_state(*resources_.get<api::Deployment>("sleepy")), "asleep");
  ASSERT_TRUE(request_wake(resources_, "sleepy"));
  ASSERT_TRUE(request_sleep(resources_, "sleepy"));
  controller_.reconcile();
  EXPECT_EQ(api::sleep_state(*resources_.get<api::Deployment>("sleepy")), "asleep");
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 2);
}

TEST_F(ControllerTest, SleepOfAStopOnIdleDeploymentStopsItsReplicasAndWakeStartsThem) {
  add_node("n1", 80 * 1024);
  api::Deployment deployment;
  deployment.metadata.name = "cold";
  deployment.spec.model = "m";
  deployment.spec.vram_mb = 1024;
  deployment.spec.replicas = 2;
  deployment.spec.on_idle = "stop";  // no idle timeout: on_idle still applies to an on-demand sleep
  ASSERT_TRUE(resources_.create(deployment));
  controller_.reconcile();
  mark_ready("cold");
  ASSERT_TRUE(request_sleep(resources_, "cold"));
  controller_.reconcile();
  EXPECT_TRUE(replicas("cold").empty());
  EXPECT_EQ(api::sleep_state(*resources_.get<api::Deployment>("cold")), "stopped");
  auto again = request_sleep(resources_, "cold");
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->changed);
  ASSERT_TRUE(request_wake(resources_, "cold"));
  controller_.reconcile();
  EXPECT_EQ(replicas("cold").size(), 2u);
}

TEST_F(ControllerTest, SleepAndWakeRefuseUnknownAndZeroReplicaDeployments) {
  auto unknown = request_sleep(resources_, "nope");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, ErrorCode::NotFound);
  EXPECT_EQ(request_wake(resources_, "nope").error().code, ErrorCode::NotFound);
  for (const std::string& hostile :
       std::vector<std::string>{"", "../deployments/x", std::string(10'000, 'a'), "a\r\nb"}) {
    EXPECT_FALSE(request_sleep(resources_, hostile)) << hostile.size();
    EXPECT_FALSE(request_wake(resources_, hostile)) << hostile.size();
  }
  deploy("empty", 0);
  controller_.reconcile();
  auto sleep = request_sleep(resources_, "empty");
  ASSERT_FALSE(sleep);
  EXPECT_EQ(sleep.error().code, ErrorCode::Conflict);
  EXPECT_NE(sleep.error().message.find("0 replicas"), std::string::npos) << sleep.error().message;
  auto wake = request_wake(resources_, "empty");
  ASSERT_FALSE(wake);
  EXPECT_EQ(wake.error().code, ErrorCode::Conflict);
  EXPECT_EQ(resources_.get<api::Deployment>("empty")->status.sleep_requested_ms, 0);
}

TEST(ApiJson, RoundTripsAndNamesBadFields) {
  api::Deployment deployment;
  deployment.metadata.name = "chat";
  deployment.spec.model = "llama";
  deployment.spec.replicas = 3;
  deployment.spec.env = {{"K", "V"}};
  deployment.spec.engine_args = {"--x"};
  auto back = api::deployment_from_json(api::to_json(deployment));
  ASSERT_TRUE(back);
  EXPECT_EQ(api::to_json(*back), api::to_json(deployment));

  auto bad = api::deployment_from_json(json{{"spec", {{"replicas", "two"}}}});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("'replicas'"), std::string::npos) << bad.error().message;
  EXPECT_FALSE(api::deployment_from_json(json::array()));
  EXPECT_FALSE(api::validate_name("Bad_Name"));
  EXPECT_TRUE(api::validate_name("chat-2"));
  api::DeploymentSpec spec;
  spec.model = "m";
  spec.engine = "nope";
  EXPECT_FALSE(api::validate(spec));
}

TEST_F(ControllerTest, DrainStartsTheReplacementBeforeStoppingTheOld) {
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  controller_.reconcile();
  mark_ready("chat");
  add_node("n2", 80 * 1024);
  std::string old = replicas("chat")[0].metadata.name;
  ASSERT_EQ(replicas("chat")[0].spec.node, "n1");

  ASSERT_TRUE(resources_.modify<api::Node>("n1", [](api::Node& node) {
    node.spec.drain = true;
    return true;
  }));
  controller_.reconcile();
  // A replacement on n2; the old one keeps serving until it is Ready.
  auto now = replicas("chat");
  ASSERT_EQ(now.size(), 2u);
  for (const auto& replica : now) {
    if (replica.metadata.name == old) {
      EXPECT_FALSE(replica.spec.stop);
    } else {
      EXPECT_EQ(replica.spec.node, "n2");
    }
  }
  controller_.reconcile();
  EXPECT_EQ(replicas("chat").size(), 2u) << "nothing stops while the replacement is not Ready";

  mark_ready("chat");
  controller_.reconcile();
  now = replicas("chat");
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0].spec.node, "n2");
  auto stopping = resources_.get<api::Replica>(old);
  ASSERT_TRUE(stopping);
  EXPECT_TRUE(stopping->spec.stop);
}

TEST_F(ControllerTest, ReplicasOfASilentNodeMoveOnlyAfterTheGrace) {
  Options options;
  options.node_timeout = std::chrono::seconds(30);
  options.reschedule_grace = std::chrono::seconds(60);
  Controller controller(resources_, options);
  add_node("n1", 80 * 1024);
  add_node("n2", 80 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  mark_ready("chat");
  std::string lost_node = replicas("chat")[0].spec.node;
  std::string other = lost_node == "n1" ? "n2" : "n1";
  std::string original = replicas("chat")[0].metadata.name;
  // Only the other node keeps heartbeating.
  auto heartbeat = [&] {
    ASSERT_TRUE(resources_.modify<api::Node>(other, [&](api::Node& node) {
      node.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
      return true;
    }));
  };

  clock_.advance(std::chrono::seconds(31));
  heartbeat();
  controller.reconcile();
  auto now = replicas("chat");
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0].metadata.name, original);
  EXPECT_EQ(now[0].status.phase, api::phase::kUnknown) << "NotReady: out of the routing table, not yet replaced";

  clock_.advance(std::chrono::seconds(59));
  heartbeat();
  controller.reconcile();
  EXPECT_EQ(replicas("chat")[0].metadata.name, original) << "still within the grace period";

  clock_.advance(std::chrono::seconds(2));
  heartbeat();
  controller.reconcile();
  controller.reconcile();
  now = replicas("chat", true);
  ASSERT_EQ(now.size(), 1u) << "the lost replica is removed, its replacement placed";
  EXPECT_NE(now[0].metadata.name, original);
  EXPECT_EQ(now[0].spec.node, other);
}

TEST_F(ControllerTest, AReturningNodesStaleEngineKeepsItsMemoryUntilItStops) {
  Options options;
  options.node_timeout = std::chrono::seconds(30);
  options.reschedule_grace = std::chrono::seconds(60);
  Controller controller(resources_, options);
  add_node("n1", 80 * 1024);
  deploy("big", 1, 50 * 1024);
  controller.reconcile();
  mark_ready("big");
  std::string lost = replicas("big")[0].metadata.name;

  // n1 goes silent past timeout + grace: its replica is given up (no other node to take it).
  clock_.advance(std::chrono::seconds(95));
  controller.reconcile();
  controller.reconcile();
  EXPECT_FALSE(resources_.get<api::Replica>(lost)) << "the lost replica is removed";

  // n1 comes back, its agent not yet having stopped the stale engine: it reports 50 GB in use.
  ASSERT_TRUE(resources_.modify<api::Node>("n1", [&](api::Node& node) {
    node.status.ready = true;
    node.status.heartbeat_ms = to_unix_ms(clock_.wall_now());
    node.status.gpus[0].memory_used_mb = 50 * 1024;
    return true;
  }));
  deploy("other", 1, 40 * 1024);
  controller.reconcile();
  for (const auto& replica : resources_.list<api::Replica>()) {
    EXPECT_TRUE(replica.spec.node.empty()) << replica.metadata.name << " placed into the stale engine's memory";
  }
  // The stale engine stops: its memory is free again and the next pass places one replica (the
  // two pending ones never share it).
  ASSERT_TRUE(resources_.modify<api::Node>("n1", [&](api::Node& node) {
    node.status.gpus[0].memory_used_mb = 0;
    return true;
  }));
  controller.reconcile();
  int placed = 0;
  int64_t claimed = 0;
  for (const auto& replica : resources_.list<api::Replica>()) {
    if (replica.spec.node.empty()) continue;
    ++placed;
    claimed += replica.spec.vram_mb;
  }
  EXPECT_EQ(placed, 1);
  EXPECT_LE(claimed, 80 * 1024);
}

}  // namespace
}  // namespace nebula::controlplane

namespace nebula::controlplane {
namespace {

// A store whose transactions misbehave in the ways the controller must survive: refused (a store
// that cannot batch), applied with the answer lost, or beaten by a concurrent write to one key.
class BatchTroubleStore final : public store::ForwardingStore {
 public:
  enum class Trouble { None, Unsupported, AnswerLost, OneKeyChanged };
  explicit BatchTroubleStore(const Clock& clock) : ForwardingStore(inner), inner(clock) {}
  Trouble trouble = Trouble::None;
  int batches = 0;
  store::MemoryStore inner;

  Result<std::vector<int64_t>> put_all(const std::vector<store::Put>& puts) override {
    ++batches;
    switch (trouble) {
      case Trouble::None: return inner.put_all(puts);
      case Trouble::Unsupported: return store::Store::put_all(puts);
      case Trouble::AnswerLost: {
        auto written = inner.put_all(puts);
        if (!written) return written;
        return make_error(ErrorCode::Unavailable, "the answer was lost");
      }
      case Trouble::OneKeyChanged: {
        auto current = inner.get(puts.front().key);
        if (current && *current) (void)inner.put((*current)->key, (*current)->value);
        return inner.put_all(puts);
      }
    }
    return make_error(ErrorCode::Internal, "unreachable");
  }
};

TEST(ControllerBatches, EveryReplicaIsPlacedOnceWhateverTheTransactionsDo) {
  using Trouble = BatchTroubleStore::Trouble;
  for (Trouble trouble : {Trouble::None, Trouble::Unsupported, Trouble::AnswerLost, Trouble::OneKeyChanged}) {
    FakeClock clock;
    BatchTroubleStore store(clock);
    store.trouble = trouble;
    Resources resources(store, clock);
    Controller controller(resources, Options{});
    // 10 nodes of one 80 GiB GPU, 300 replicas of 2 GiB: 40 fit on a node, 400 in all.
    for (int n = 0; n < 10; ++n) {
      api::Node node;
      node.metadata.name = "n" + std::to_string(n);
      node.status.ready = true;
      node.status.engines = {"sim"};
      node.status.heartbeat_ms = to_unix_ms(clock.wall_now());
      node.status.gpus.push_back({0, "GPU-0", "H100-80GB", 80 * 1024, 0, 0, 0});
      ASSERT_TRUE(resources.create(node));
    }
    api::Deployment deployment;
    deployment.metadata.name = "chat";
    deployment.spec.model = "m";
    deployment.spec.replicas = 300;
    deployment.spec.vram_mb = 2 * 1024;
    ASSERT_TRUE(resources.create(deployment));
    controller.reconcile();
    controller.reconcile();
    auto replicas = resources.list<api::Replica>();
    ASSERT_EQ(replicas.size(), 300u) << static_cast<int>(trouble);
    std::map<std::string, int64_t> claimed;
    for (const auto& replica : replicas) {
      EXPECT_FALSE(replica.spec.node.empty()) << replica.metadata.name;
      EXPECT_EQ(replica.status.phase, api::phase::kScheduled) << replica.metadata.name;
      claimed[replica.spec.node] += replica.spec.vram_mb;
    }
    for (const auto& [node, mb] : claimed) EXPECT_LE(mb, 80 * 1024) << node;
    EXPECT_GE(store.batches, 3) << static_cast<int>(trouble);  // 300 placements: 128 + 128 + 44
  }
}

// On a real etcd, a pass's transactions several at once (Store::put_batches), one refused by a
// real concurrent write and one applied with its answer lost: every replica is placed once.
class TroubleOnEtcd final : public store::ForwardingStore {
 public:
  explicit TroubleOnEtcd(store::Store& etcd) : ForwardingStore(etcd), etcd_(etcd) {}
  int calls = 0;
  std::string changed_key;  // written behind the controller's back, before its transaction
  std::string lost_key;     // in the batch whose answer is lost

  std::vector<Result<std::vector<int64_t>>> put_batches(const std::vector<std::vector<store::Put>>& batches) override {
    ++calls;
    if (batches.size() < 4 || !changed_key.empty()) return etcd_.put_batches(batches);
    changed_key = batches[1][5].key;
    lost_key = batches[2][0].key;
    auto current = etcd_.get(changed_key);
    if (current && *current) (void)etcd_.put(changed_key, (*current)->value);
    auto outcomes = etcd_.put_batches(batches);
    if (outcomes[2]) outcomes[2] = make_error(ErrorCode::Unavailable, "etcd: the answer was lost");
    return outcomes;
  }
  Result<std::unique_ptr<store::WatchHandle>> watch_values(const std::string& prefix, int64_t from,
                                                           store::WatchCallback cb,
                                                           store::WatchEndCallback on_end = {}) override {
    return etcd_.watch_values(prefix, from, std::move(cb), std::move(on_end));
  }

 private:
  store::Store& etcd_;
};

TEST(ControllerBatches, ConcurrentTransactionsOnEtcdOneRefusedOneUnheardEachReplicaPlacedOnce) {
  using namespace std::chrono_literals;
  if (!testing::EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
  testing::EtcdCluster cluster(1);
  store::EtcdOptions options;
  options.endpoints = cluster.endpoints();
  auto etcd = store::EtcdStore::open(options);
  ASSERT_TRUE(etcd) << etcd.error().message;
  TroubleOnEtcd store(**etcd);
  Resources resources(store);
  int64_t now_ms = to_unix_ms(SystemClock::instance().wall_now());
  // 10 nodes of 8 × 80 GiB, 600 pending replicas of 2 GiB (5 transactions), made before the
  // controller starts so that its first pass places them all.
  for (int n = 0; n < 10; ++n) {
    api::Node node;
    node.metadata.name = "n" + std::to_string(n);
    node.status.ready = true;
    node.status.engines = {"sim"};
    node.status.heartbeat_ms = now_ms;
    for (int gpu = 0; gpu < 8; ++gpu) node.status.gpus.push_back({gpu, "GPU-" + std::to_string(gpu), "H100", 81920});
    ASSERT_TRUE(resources.create(node));
  }
  api::Deployment deployment;
  deployment.metadata.name = "chat";
  deployment.spec.model = "m";
  deployment.spec.replicas = 600;
  deployment.spec.vram_mb = 2048;
  ASSERT_TRUE(resources.create(deployment));
  std::vector<store::Put> puts;
  for (int r = 0; r < 600; ++r) {
    api::Replica replica;
    replica.metadata.name = fmt::format("chat-{:05}", r);
    replica.metadata.uid = "uid-" + replica.metadata.name;
    replica.spec.deployment = "chat";
    replica.spec.model = "m";
    replica.spec.engine = "sim";
    replica.spec.vram_mb = 2048;
    replica.spec.plan_version = 1;
    puts.push_back({api::store_key("replicas", replica.metadata.name), api::to_json(replica).dump(),
                    store::Precondition::absent()});
    if (puts.size() == store::kMaxBatch || r == 599) {
      ASSERT_TRUE(store.put_all(puts));
      puts.clear();
    }
  }
  Controller controller(resources, Options{});
  ASSERT_TRUE(testing::eventually(
      [&] {
        controller.reconcile();
        auto replicas = resources.list<api::Replica>();
        return std::all_of(replicas.begin(), replicas.end(),
                           [](const api::Replica& replica) { return !replica.spec.node.empty(); });
      },
      30s, 10ms));
  ASSERT_FALSE(store.changed_key.empty()) << "no pass wrote 4 transactions or more";
  auto listing = store.list(api::store_prefix("replicas"));
  ASSERT_TRUE(listing);
  ASSERT_EQ(listing->kvs.size(), 600u);
  std::map<std::pair<std::string, int>, int64_t> claimed;  // by node and GPU
  for (const auto& kv : listing->kvs) {
    auto replica = decode<api::Replica>(kv);
    ASSERT_TRUE(replica) << kv.value;
    EXPECT_EQ(replica->status.phase, api::phase::kScheduled) << kv.key;
    ASSERT_EQ(replica->spec.gpus.size(), 1u) << kv.key;
    claimed[{replica->spec.node, replica->spec.gpus[0]}] += replica->spec.vram_mb;
    // Created, then placed once; the key changed behind the controller's back has that put too.
    EXPECT_EQ(kv.version, kv.key == store.changed_key ? 3 : 2) << kv.key;
  }
  for (const auto& [gpu, mb] : claimed) EXPECT_LE(mb, 81920) << gpu.first << " GPU " << gpu.second;
}

// ---- reconciling only what changed -------------------------------------------------------------

// Incremental passes until one reconciles nothing: the controller's own writes come back to it as
// changes, as they do to a running controller.
void settle(Controller& controller) {
  for (int pass = 0; pass < 10; ++pass) {
    uint64_t before = controller.stats().deployments_reconciled;
    controller.reconcile_changes();
    if (controller.stats().deployments_reconciled == before) return;
  }
  ADD_FAILURE() << "the controller never settled";
}

using Passes = std::map<std::string, int>;

// Options that count the passes per deployment, with no full resync in the tests' time.
Options counting(Passes& passes) {
  Options options;
  options.full_resync_interval = std::chrono::hours(1);
  options.on_reconcile = [&passes](const std::string& deployment) { ++passes[deployment]; };
  return options;
}

TEST_F(ControllerTest, AChangeToOneReplicaReconcilesOnlyItsDeployment) {
  Passes passes;
  Controller controller(resources_, counting(passes));
  add_node("n1", 80 * 1024);
  deploy("a", 1);
  deploy("b", 2);
  deploy("c", 1);
  controller.reconcile();
  EXPECT_EQ(passes, (Passes{{"a", 1}, {"b", 1}, {"c", 1}})) << "a full pass reconciles every deployment";
  settle(controller);
  mark_ready("a");
  mark_ready("b");
  mark_ready("c");
  settle(controller);
  ASSERT_EQ(resources_.get<api::Deployment>("b")->status.phase, "Ready");

  passes.clear();
  uint64_t scheduler_runs = controller.stats().scheduling_passes;
  controller.reconcile_changes();
  EXPECT_TRUE(passes.empty()) << "nothing changed, nothing is due";

  // One replica of b changes (its engine restarted): b alone is reconciled, and its status follows.
  std::string changed = replicas("b")[0].metadata.name;
  ASSERT_TRUE(resources_.modify<api::Replica>(changed, [](api::Replica& replica) {
    replica.status.phase = api::phase::kStarting;
    return true;
  }));
  controller.reconcile_changes();
  EXPECT_EQ(passes, (Passes{{"b", 1}}));
  EXPECT_EQ(resources_.get<api::Deployment>("b")->status.ready_replicas, 1);
  EXPECT_EQ(controller.stats().scheduling_passes, scheduler_runs) << "nothing was waiting for a placement";

  // A deployment deleted: its replicas stop; nobody else is looked at.
  settle(controller);
  passes.clear();
  ASSERT_TRUE(resources_.remove<api::Deployment>("c"));
  controller.reconcile_changes();
  EXPECT_EQ(passes, (Passes{{"c", 1}}));
  EXPECT_TRUE(replicas("c").empty());
  EXPECT_EQ(replicas("c", true).size(), 1u) << "stop-marked; its node's agent removes it";
  EXPECT_EQ(controller.stats().full_passes, 1u);
}

TEST_F(ControllerTest, HostileObjectsReachingTheQueueAreHandledLikeTheFullPassHandlesThem) {
  Passes passes;
  Controller controller(resources_, counting(passes));
  add_node("n1", 80 * 1024);
  add_node("n2", 80 * 1024);
  deploy("chat", 2);
  controller.reconcile();
  settle(controller);
  mark_ready("chat");
  settle(controller);

  // A replica naming a deployment that does not exist (and one naming none): stopped, never placed.
  for (const std::string owner : {"ghost", ""}) {
    api::Replica stray;
    stray.metadata.name = "stray-" + (owner.empty() ? std::string("none") : owner);
    stray.spec.deployment = owner;
    stray.spec.model = "m";
    stray.spec.vram_mb = 1024;
    ASSERT_TRUE(resources_.create(stray));
  }
  passes.clear();
  controller.reconcile_changes();
  EXPECT_EQ(passes, (Passes{{"", 1}, {"ghost", 1}}));
  EXPECT_FALSE(resources_.get<api::Replica>("stray-ghost")) << "never placed: removed at once";
  EXPECT_FALSE(resources_.get<api::Replica>("stray-none"));

  // A node document that is not one: the node is as good as gone, its replicas are replaced.
  std::string broken = replicas("chat")[0].spec.node;
  ASSERT_TRUE(store_.put(api::store_key("nodes", broken), "{\"metadata\": 7"));
  settle(controller);
  for (const auto& replica : replicas("chat")) EXPECT_NE(replica.spec.node, broken) << replica.metadata.name;
  EXPECT_EQ(replicas("chat").size(), 2u);
}

TEST_F(ControllerTest, ASilentNodeIsNoticedAtItsDeadlineWithNothingElseChanging) {
  Passes passes;
  Controller controller(resources_, counting(passes));  // node_timeout 30 s, reschedule_grace 60 s
  const int64_t start = to_unix_ms(clock_.wall_now());
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  add_node("n2", 80 * 1024);
  settle(controller);
  mark_ready("chat");
  settle(controller);
  ASSERT_EQ(replicas("chat")[0].spec.node, "n1");
  EXPECT_EQ(controller.next_due_ms(), start + 30'001) << "both nodes' heartbeat deadline";

  // n2's agent renews its lease (a write that wakes nothing); n1 says nothing.
  auto renew_n2 = [&] { ASSERT_TRUE(renew_node_lease(store_, "n2", to_unix_ms(clock_.wall_now()))); };
  passes.clear();
  const uint64_t checked = controller.stats().nodes_checked;
  clock_.advance(std::chrono::seconds(20));
  renew_n2();
  controller.reconcile_changes();
  clock_.advance(std::chrono::seconds(10));
  controller.reconcile_changes();
  EXPECT_TRUE(resources_.get<api::Node>("n1")->status.ready) << "silent for exactly node_timeout: still Ready";
  EXPECT_EQ(controller.stats().nodes_checked, checked) << "no node looked at before the deadline";
  EXPECT_TRUE(passes.empty());

  clock_.advance(std::chrono::milliseconds(1));
  controller.reconcile_changes();
  EXPECT_FALSE(resources_.get<api::Node>("n1")->status.ready);
  EXPECT_TRUE(resources_.get<api::Node>("n2")->status.ready);
  settle(controller);
  EXPECT_EQ(replicas("chat")[0].status.phase, api::phase::kUnknown);
  EXPECT_EQ(controller.next_due_ms(), start + 50'001) << "n2's deadline, from its lease";

  // The grace runs out with nothing else changing: the replica is replaced on n2.
  for (int seconds : {45, 65, 85}) {
    clock_.advance(std::chrono::milliseconds(start + seconds * 1000 - to_unix_ms(clock_.wall_now())));
    renew_n2();
    controller.reconcile_changes();
  }
  EXPECT_EQ(replicas("chat")[0].spec.node, "n1") << "still within the grace";
  EXPECT_EQ(controller.next_due_ms(), start + 90'001) << "n1's grace ends";
  clock_.advance(std::chrono::milliseconds(start + 90'001 - to_unix_ms(clock_.wall_now())));
  controller.reconcile_changes();
  settle(controller);
  auto now = replicas("chat", true);
  ASSERT_EQ(now.size(), 1u);
  EXPECT_EQ(now[0].spec.node, "n2");
  EXPECT_TRUE(resources_.get<api::Node>("n2")->status.ready);
}

TEST_F(ControllerTest, AnUnschedulableReplicaIsTriedAgainWhenANodeJoins) {
  Passes passes;
  Controller controller(resources_, counting(passes));
  add_node("n1", 24 * 1024);
  deploy("big", 2, 40 * 1024);
  controller.reconcile();
  settle(controller);
  EXPECT_EQ(controller.placement_attempts(), 2u);
  const int64_t now = to_unix_ms(clock_.wall_now());
  EXPECT_EQ(controller.next_due_ms(), now + 1'000) << "the first backoff";

  // The backoff runs out with nothing changing: both are tried again, by one run of the scheduler.
  clock_.advance(std::chrono::milliseconds(999));
  controller.reconcile_changes();
  EXPECT_EQ(controller.placement_attempts(), 2u);
  uint64_t runs = controller.stats().scheduling_passes;
  clock_.advance(std::chrono::milliseconds(1));
  controller.reconcile_changes();
  EXPECT_EQ(controller.placement_attempts(), 4u);
  EXPECT_EQ(controller.stats().scheduling_passes, runs + 1);
  EXPECT_EQ(controller.next_due_ms(), now + 1'000 + 2'000) << "the second backoff, twice the first";

  // n1's periodic status refresh (heartbeat, GPU utilization) frees nothing: no new attempt.
  ASSERT_TRUE(resources_.modify<api::Node>("n1", [&](api::Node& node) {
    node.status.heartbeat_ms = now;
    node.status.gpus[0].utilization = 97;
    return true;
  }));
  controller.reconcile_changes();
  EXPECT_EQ(controller.placement_attempts(), 4u);

  // A node joins: tried at once, before the backoff runs out.
  add_node("n2", 80 * 1024);
  controller.reconcile_changes();
  EXPECT_EQ(controller.placement_attempts(), 6u);
  auto placed = replicas("big");
  ASSERT_EQ(placed.size(), 2u);
  EXPECT_EQ(placed[0].spec.node, "n2");
  EXPECT_EQ(placed[1].spec.node, "n2");
  settle(controller);
  EXPECT_EQ(resources_.get<api::Deployment>("big")->status.message, "");
}

TEST_F(ControllerTest, ADrainTimeoutFiresWithNothingElseChanging) {
  Passes passes;
  Options options = counting(passes);
  options.node_timeout = std::chrono::hours(1);
  options.drain_timeout = std::chrono::seconds(60);
  Controller controller(resources_, options);
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  settle(controller);
  mark_ready("chat");
  settle(controller);
  // The replica starts draining (as a rollout drains a replica of an older plan).
  std::string draining = replicas("chat")[0].metadata.name;
  const int64_t since = to_unix_ms(clock_.wall_now());
  ASSERT_TRUE(resources_.modify<api::Replica>(draining, [&](api::Replica& replica) {
    replica.spec.draining_since_ms = since;
    return true;
  }));
  settle(controller);
  mark_ready("chat");  // its replacement serves
  settle(controller);
  ASSERT_EQ(replicas("chat").size(), 2u);
  EXPECT_EQ(controller.next_due_ms(), since + 60'000);

  passes.clear();
  clock_.advance(std::chrono::milliseconds(59'999));
  controller.reconcile_changes();
  EXPECT_TRUE(passes.empty());
  EXPECT_FALSE(resources_.get<api::Replica>(draining)->spec.stop);
  clock_.advance(std::chrono::milliseconds(1));
  controller.reconcile_changes();
  EXPECT_EQ(passes, (Passes{{"chat", 1}}));
  EXPECT_TRUE(resources_.get<api::Replica>(draining)->spec.stop) << "stopped at the drain timeout";
}

TEST_F(ControllerTest, AnIdleTimeoutFallsDueWithoutAnyChange) {
  Passes passes;
  Options options = counting(passes);
  options.node_timeout = std::chrono::hours(1);
  Controller controller(resources_, options);
  add_node("n1", 80 * 1024);
  api::Deployment deployment;
  deployment.metadata.name = "sleepy";
  deployment.spec.model = "m";
  deployment.spec.vram_mb = 1024;
  deployment.spec.idle_timeout_ms = 60'000;
  deployment.spec.on_idle = "sleep-l1";
  ASSERT_TRUE(resources_.create(deployment));
  const int64_t created = to_unix_ms(clock_.wall_now());
  controller.reconcile();
  settle(controller);
  mark_ready("sleepy");
  settle(controller);
  EXPECT_EQ(controller.next_due_ms(), created + 60'001);
  clock_.advance(std::chrono::milliseconds(60'001));
  controller.reconcile_changes();
  EXPECT_GT(resources_.get<api::Deployment>("sleepy")->status.idle_since_ms, 0);
  settle(controller);
  EXPECT_EQ(replicas("sleepy")[0].spec.sleep_level, 1);
}

// A store that refuses writes of deployments while told to, as a store that fails for a moment.
class RefusingStore final : public store::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  Result<int64_t> put(const std::string& key, const std::string& value,
                      store::Precondition precondition = store::Precondition::none(), int64_t lease = 0) override {
    if (refuse_deployments && key.rfind(api::store_prefix("deployments"), 0) == 0) {
      ++refused;
      return make_error(ErrorCode::Unavailable, "the store is away");
    }
    return ForwardingStore::put(key, value, precondition, lease);
  }

  std::atomic<bool> refuse_deployments{false};
  std::atomic<int> refused{0};
};

TEST_F(ControllerTest, TheFullResyncRepairsWhatTheQueueMissed) {
  Passes passes;
  Options options = counting(passes);
  options.full_resync_interval = std::chrono::seconds(30);
  options.node_timeout = std::chrono::hours(1);
  RefusingStore refusing(store_);
  Resources resources(refusing, clock_);
  Controller controller(resources, options);
  add_node("n1", 80 * 1024);
  deploy("chat", 1);
  controller.reconcile();
  settle(controller);
  const int64_t resync_at = to_unix_ms(clock_.wall_now()) + 30'000;

  // The replica turns Ready while the deployment's status cannot be written: the change is taken
  // from the queue, its write fails, and no later change brings the deployment back.
  refusing.refuse_deployments = true;
  mark_ready("chat");
  controller.reconcile_changes();
  EXPECT_GT(refusing.refused, 0);
  refusing.refuse_deployments = false;
  controller.reconcile_changes();
  EXPECT_EQ(resources_.get<api::Deployment>("chat")->status.ready_replicas, 0);
  EXPECT_EQ(controller.next_due_ms(), resync_at) << "only the full resync is due";

  // What the loop runs at that time.
  clock_.advance(std::chrono::seconds(30));
  controller.reconcile();
  auto repaired = resources_.get<api::Deployment>("chat");
  EXPECT_EQ(repaired->status.ready_replicas, 1);
  EXPECT_EQ(repaired->status.phase, "Ready");
}

// The loop itself, on the real clock: polls until the condition holds, for up to 20 s.
bool wait_for(const std::function<bool()>& condition) {
  return testing::eventually(condition, std::chrono::seconds(20), std::chrono::milliseconds(10));
}

api::Node live_node(const std::string& name) {
  api::Node node;
  node.metadata.name = name;
  node.status.ready = true;
  node.status.engines = {"sim"};
  node.status.heartbeat_ms = to_unix_ms(SystemClock::instance().wall_now());
  node.status.gpus.push_back({0, "GPU-0", "H100-80GB", 80 * 1024, 0, 0, 0});
  return node;
}

TEST(ControllerLoop, RunsTheFullResyncOnItsOwn) {
  store::MemoryStore inner;
  RefusingStore store(inner);
  Resources writer(inner);
  Resources resources(store);
  Options options;
  options.full_resync_interval = std::chrono::milliseconds(300);
  Controller controller(resources, options);
  ASSERT_TRUE(writer.create(live_node("n1")));
  api::Deployment deployment;
  deployment.metadata.name = "chat";
  deployment.spec.model = "m";
  deployment.spec.vram_mb = 1024;
  ASSERT_TRUE(writer.create(deployment));
  controller.start();
  auto replica = [&] {
    auto all = writer.list<api::Replica>();
    return all.empty() ? api::Replica{} : all[0];
  };
  ASSERT_TRUE(wait_for([&] { return !replica().spec.node.empty(); }));

  // The deployment's status write fails once the replica is Ready; only the resync repairs it.
  store.refuse_deployments = true;
  ASSERT_TRUE(writer.modify<api::Replica>(replica().metadata.name, [](api::Replica& current) {
    current.status.phase = api::phase::kReady;
    return true;
  }));
  ASSERT_TRUE(wait_for([&] { return store.refused > 0; }));
  store.refuse_deployments = false;
  EXPECT_TRUE(wait_for([&] { return writer.get<api::Deployment>("chat")->status.ready_replicas == 1; }));
  controller.stop();
}

TEST(ControllerLoop, WakesAtAHeartbeatDeadlineWithNothingChanging) {
  store::MemoryStore store;
  Resources resources(store);
  Options options;
  options.node_timeout = std::chrono::milliseconds(300);
  options.full_resync_interval = std::chrono::hours(1);
  ASSERT_TRUE(resources.create(live_node("n1")));
  Controller controller(resources, options);
  controller.start();
  // No heartbeat comes and nothing else is written: only the deadline can wake the loop.
  EXPECT_TRUE(wait_for([&] { return !resources.get<api::Node>("n1")->status.ready; }));
  controller.stop();
  EXPECT_EQ(controller.stats().full_passes, 1u);
}

}  // namespace
}  // namespace nebula::controlplane
