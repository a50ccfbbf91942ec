#include "controlplane/modes.h"

#include <gtest/gtest.h>

namespace nebula::controlplane {
namespace {

constexpr int64_t kGpuMb = 81920;
constexpr int64_t kModelMb = 51200;

api::Deployment deployment(const std::string& name, int replicas, int64_t vram_mb = kModelMb) {
  api::Deployment value;
  value.metadata.name = name;
  value.spec.model = "qwen2.5-0.5b";
  value.spec.engine = "sim";
  value.spec.replicas = replicas;
  value.spec.vram_mb = vram_mb;
  return value;
}

api::Mode mode(const std::string& name, std::vector<std::string> deployments, bool active = false) {
  api::Mode value;
  value.metadata.name = name;
  value.deployments = std::move(deployments);
  value.active = active;
  return value;
}

api::Node node(int64_t used_mb) {
  api::Node value;
  value.metadata.name = "n1";
  value.status.ready = true;
  value.status.engines = {"sim"};
  api::Gpu gpu;
  gpu.index = 0;
  gpu.name = "NVIDIA H100 80GB HBM3";
  gpu.memory_total_mb = kGpuMb;
  gpu.memory_used_mb = used_mb;
  value.status.gpus = {gpu};
  return value;
}

api::Replica replica(const std::string& name, const std::string& deployment, int64_t vram_mb,
                     const std::string& phase = api::phase::kReady) {
  api::Replica value;
  value.metadata.name = name;
  value.spec.deployment = deployment;
  value.spec.node = "n1";
  value.spec.gpus = {0};
  value.spec.vram_mb = vram_mb;
  value.status.phase = phase;
  return value;
}

TEST(ModePlan, StopsTheActiveModesOthersAndStartsTheNewOnes) {
  auto a = deployment("a", 1);
  auto b = deployment("b", 0);
  auto shared = deployment("shared", 1);
  auto plan = plan_switch(mode("ma", {"a", "shared"}, true), mode("mb", {"b", "shared"}), {a, b, shared}, true);
  EXPECT_EQ(plan.from, "ma");
  EXPECT_EQ(plan.stop, std::vector<std::string>{"a"});
  EXPECT_EQ(plan.start, std::vector<std::string>{"b"});
  EXPECT_TRUE(plan.sleep.empty());
  EXPECT_TRUE(plan.wake.empty()) << "a deployment in both modes is left alone";
}

TEST(ModePlan, WithoutAnActiveModeStopsEverythingElseThatRuns) {
  auto plan =
      plan_switch(std::nullopt, mode("mb", {"b"}), {deployment("a", 2), deployment("b", 0), deployment("c", 0)}, true);
  EXPECT_EQ(plan.from, "");
  EXPECT_EQ(plan.stop, std::vector<std::string>{"a"}) << "c has no replicas: nothing to stop";
  EXPECT_EQ(plan.start, std::vector<std::string>{"b"});
}

TEST(ModePlan, SleepsWhatIsConfiguredToSleepAndWakesWhatIsIdle) {
  auto a = deployment("a", 1);
  a.spec.idle_timeout_ms = 60'000;
  a.spec.on_idle = "sleep-l2";
  auto b = deployment("b", 1);
  b.status.idle_since_ms = 1000;
  auto plan = plan_switch(mode("ma", {"a"}, true), mode("mb", {"b"}), {a, b}, true);
  EXPECT_EQ(plan.sleep, std::vector<std::string>{"a"});
  EXPECT_EQ(plan.wake, std::vector<std::string>{"b"});
  auto without_sleep = plan_switch(mode("ma", {"a"}, true), mode("mb", {"b"}), {a, b}, false);
  EXPECT_EQ(without_sleep.stop, std::vector<std::string>{"a"});
  EXPECT_TRUE(without_sleep.sleep.empty());
}

TEST(ModePlan, RestoresTheReplicaCountAStopRemembered) {
  auto a = deployment("a", 0);
  EXPECT_EQ(replicas_to_restore(a), 1);
  a.metadata.labels[api::kModeReplicasLabel] = "3";
  EXPECT_EQ(replicas_to_restore(a), 3);
  a.metadata.labels[api::kModeReplicasLabel] = "garbage";
  EXPECT_EQ(replicas_to_restore(a), 1);
}

TEST(ModeFit, IncomingFitsOnlyOnceTheOutgoingIsGone) {
  auto a = deployment("a", 1);
  auto b = deployment("b", 0);
  std::vector<api::Replica> replicas = {replica("a-1", "a", kModelMb)};
  std::vector<api::Deployment> deployments = {a, b};
  SwitchPlan stop_a;
  stop_a.stop = {"a"};
  stop_a.start = {"b"};
  EXPECT_TRUE(incoming_fits(stop_a, {node(kModelMb)}, replicas, deployments));
  SwitchPlan keep_a;
  keep_a.start = {"b"};
  auto refused = incoming_fits(keep_a, {node(kModelMb)}, replicas, deployments);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::ResourceExhausted);
  EXPECT_NE(refused.error().message.find("b does not fit"), std::string::npos) << refused.error().message;
  SwitchPlan sleep_a;
  sleep_a.sleep = {"a"};
  sleep_a.start = {"b"};
  EXPECT_FALSE(incoming_fits(sleep_a, {node(kModelMb)}, replicas, deployments))
      << "a sleeping replica keeps its placement";
}

TEST(ModeFit, TwoIncomingDeploymentsDoNotClaimTheSameMemory) {
  std::vector<api::Deployment> deployments = {deployment("a", 1), deployment("b", 0, 40960), deployment("c", 0, 40960),
                                              deployment("d", 0, 40960)};
  SwitchPlan two;
  two.stop = {"a"};
  two.start = {"b", "c"};
  EXPECT_TRUE(incoming_fits(two, {node(kModelMb)}, {replica("a-1", "a", kModelMb)}, deployments));
  SwitchPlan three = two;
  three.start.push_back("d");
  EXPECT_FALSE(incoming_fits(three, {node(kModelMb)}, {replica("a-1", "a", kModelMb)}, deployments));
}

TEST(ModeRelease, WaitsForTheReplicaToGoAndTheGpuToReportItsMemoryFree) {
  const int64_t foreign = 1000;
  const int64_t other = 8192;
  std::vector<api::Replica> before = {replica("a-1", "a", kModelMb), replica("x-1", "x", other)};
  auto targets = release_targets({node(kModelMb + other + foreign)}, before, {"a"});
  ASSERT_EQ(targets.size(), 1u);
  EXPECT_EQ((targets[{"n1", 0}]), other + foreign) << "the other engine and the foreign process stay";

  std::set<std::string> stopped = {"a"};
  // The replica is still there: not released, whatever the GPU says.
  EXPECT_FALSE(vram_not_released({node(other + foreign)}, before, stopped, {}, targets).empty());
  // The replica is gone but the last report still shows its memory.
  std::vector<api::Replica> after = {replica("x-1", "x", other)};
  auto waiting = vram_not_released({node(kModelMb + other + foreign)}, after, stopped, {}, targets);
  ASSERT_EQ(waiting.size(), 1u);
  EXPECT_NE(waiting[0].find("GPU 0"), std::string::npos) << waiting[0];
  // Reported free: done.
  EXPECT_TRUE(vram_not_released({node(other + foreign)}, after, stopped, {}, targets).empty());
}

TEST(ModeRelease, ASleptDeploymentIsReleasedOnceItsReplicasSleep) {
  std::vector<api::Replica> awake = {replica("a-1", "a", kModelMb)};
  auto targets = release_targets({node(kModelMb)}, awake, {"a"});
  EXPECT_FALSE(vram_not_released({node(0)}, awake, {}, {"a"}, targets).empty());
  std::vector<api::Replica> asleep = {replica("a-1", "a", kModelMb, api::phase::kSleeping)};
  EXPECT_TRUE(vram_not_released({node(0)}, asleep, {}, {"a"}, targets).empty());
  EXPECT_EQ(ready_replicas(asleep, "a"), 0);
  EXPECT_EQ(ready_replicas(awake, "a"), 1);
}

}  // namespace
}  // namespace nebula::controlplane
