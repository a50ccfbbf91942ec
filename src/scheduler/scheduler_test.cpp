#include "scheduler/scheduler.h"

#include <gtest/gtest.h>

namespace nebula::scheduler {
namespace {

api::Node make_node(const std::string& name, int gpu_count, int64_t memory_mb, bool ready = true) {
  api::Node node;
  node.metadata.name = name;
  node.status.ready = ready;
  node.status.engines = {"sim"};
  for (int i = 0; i < gpu_count; ++i) {
    node.status.gpus.push_back({i, "GPU-" + std::to_string(i), "H100-80GB", memory_mb, 0, 0, 0});
  }
  return node;
}

api::Replica make_replica(const std::string& name, int64_t vram_mb, std::string node = "", std::vector<int> gpus = {}) {
  api::Replica replica;
  replica.metadata.name = name;
  replica.spec.engine = "sim";
  replica.spec.vram_mb = vram_mb;
  replica.spec.node = std::move(node);
  replica.spec.gpus = std::move(gpus);
  return replica;
}

TEST(EstimateVram, FromModelName) {
  api::DeploymentSpec spec;
  spec.model = "llama-3.1-8b-instruct";
  // 8e9 × 2 bytes = 15,259 MiB; × 1.2 + 2,048 = 20,359 MiB.
  EXPECT_EQ(estimate_vram_mb(spec), 20359);
  spec.model = "Qwen/Qwen2.5-0.5B-Instruct";
  EXPECT_EQ(estimate_vram_mb(spec), 3193);
  spec.model = "mixtral-8x7b";
  EXPECT_GT(estimate_vram_mb(spec), 100 * 1024);
  spec.model = "my-model";
  EXPECT_EQ(estimate_vram_mb(spec), 8 * 1024);
  spec.vram_mb = 1234;
  EXPECT_EQ(estimate_vram_mb(spec), 1234);
  spec.vram_mb = 0;
  spec.gpus_per_replica = 0;
  EXPECT_EQ(estimate_vram_mb(spec), 0);
}

TEST(Place, FitsOnTheGpuWithMostFreeMemory) {
  std::vector<api::Node> nodes = {make_node("n1", 2, 80 * 1024)};
  std::vector<api::Replica> placed = {make_replica("a", 30 * 1024, "n1", {0})};
  auto placement = place(make_replica("b", 30 * 1024), 1, nodes, placed);
  ASSERT_TRUE(placement) << placement.error().message;
  EXPECT_EQ(placement->node, "n1");
  EXPECT_EQ(placement->gpus, std::vector<int>{1});
}

TEST(Place, NeverOvercommits) {
  std::vector<api::Node> nodes = {make_node("n1", 1, 80 * 1024)};
  std::vector<api::Replica> placed;
  for (int i = 0; i < 3; ++i) {
    auto replica = make_replica("r" + std::to_string(i), 25 * 1024);
    auto placement = place(replica, 1, nodes, placed);
    ASSERT_TRUE(placement) << i << ": " << placement.error().message;
    replica.spec.node = placement->node;
    replica.spec.gpus = placement->gpus;
    placed.push_back(replica);
  }
  auto refused = place(make_replica("r3", 25 * 1024), 1, nodes, placed);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::ResourceExhausted);
  EXPECT_NE(refused.error().message.find("gpu0 5.0 GiB free"), std::string::npos) << refused.error().message;
}

TEST(Place, RefusesWithReasonsForEveryNode) {
  auto down = make_node("down", 1, 80 * 1024, false);
  auto draining = make_node("draining", 1, 80 * 1024);
  draining.spec.drain = true;
  auto no_engine = make_node("cpu", 1, 80 * 1024);
  no_engine.status.engines = {"vllm"};
  auto refused = place(make_replica("r", 1024), 1, {down, draining, no_engine}, {});
  ASSERT_FALSE(refused);
  const auto& message = refused.error().message;
  EXPECT_NE(message.find("node down is not ready"), std::string::npos) << message;
  EXPECT_NE(message.find("node draining is draining"), std::string::npos) << message;
  EXPECT_NE(message.find("node cpu cannot run engine sim"), std::string::npos) << message;
  EXPECT_NE(place(make_replica("r", 1024), 1, {}, {}).error().message.find("no nodes have joined"), std::string::npos);
}

TEST(Place, MultiGpuReplicasStayOnOneNode) {
  std::vector<api::Node> nodes = {make_node("small", 1, 80 * 1024), make_node("big", 4, 80 * 1024)};
  auto placement = place(make_replica("tp", 140 * 1024), 2, nodes, {});
  ASSERT_TRUE(placement) << placement.error().message;
  EXPECT_EQ(placement->node, "big");
  EXPECT_EQ(placement->gpus.size(), 2u);
  EXPECT_FALSE(place(make_replica("tp8", 8 * 70 * 1024), 8, nodes, {}));
}

TEST(Place, StoppingReplicasStillHoldTheirMemory) {
  std::vector<api::Node> nodes = {make_node("n1", 1, 40 * 1024)};
  auto stopping = make_replica("old", 30 * 1024, "n1", {0});
  stopping.spec.stop = true;
  EXPECT_FALSE(place(make_replica("new", 30 * 1024), 1, nodes, {stopping}));
}

}  // namespace
}  // namespace nebula::scheduler
