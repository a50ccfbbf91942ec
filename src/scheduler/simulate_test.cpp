#include "scheduler/scheduler.h"

#include <gtest/gtest.h>

namespace nebula::scheduler {
namespace {

api::Node gpu_node(const std::string& name, int count, int64_t memory_mb) {
  api::Node node;
  node.metadata.name = name;
  node.status.ready = true;
  node.status.engines = {"sim", "vllm"};
  for (int i = 0; i < count; ++i)
    node.status.gpus.push_back({i, "GPU-" + std::to_string(i), "L4-24GB", memory_mb, 0, 0, 0});
  return node;
}

api::Replica holding(const std::string& deployment, int64_t vram_mb, const std::string& node, int gpu) {
  api::Replica replica;
  replica.metadata.name = deployment + "-x";
  replica.spec.deployment = deployment;
  replica.spec.engine = "sim";
  replica.spec.node = node;
  replica.spec.gpus = {gpu};
  replica.spec.vram_mb = vram_mb;
  replica.status.phase = api::phase::kReady;
  return replica;
}

api::Deployment deployment(const std::string& name, const std::string& model, int max_context = 0) {
  api::Deployment d;
  d.metadata.name = name;
  d.spec.model = model;
  d.spec.max_context = max_context;
  return d;
}

const Alternative* find_kind(const Plan& plan, const std::string& kind) {
  for (const auto& alternative : plan.alternatives) {
    if (alternative.kind == kind) return &alternative;
  }
  return nullptr;
}

TEST(Simulate, ShowsEveryGpuBeforeAndAfter) {
  std::vector<api::Node> nodes = {gpu_node("n1", 2, 24 * 1024)};
  std::vector<api::Replica> replicas = {holding("a", 10 * 1024, "n1", 0)};
  auto plan = simulate(deployment("qwen", "qwen2.5-7b-instruct", 4096), nodes, replicas, {});
  ASSERT_TRUE(plan.fits) << plan.reason;
  EXPECT_EQ(plan.estimate.source, "catalog:Qwen/Qwen2.5-7B-Instruct");
  ASSERT_EQ(plan.placements.size(), 1u);
  EXPECT_EQ(plan.placements[0].gpus, std::vector<int>{1});  // spread: the empty GPU
  ASSERT_EQ(plan.gpus.size(), 2u);
  EXPECT_EQ(plan.gpus[0].used_before_mb, 10 * 1024);
  EXPECT_EQ(plan.gpus[0].used_after_mb, 10 * 1024);
  EXPECT_EQ(plan.gpus[1].used_before_mb, 0);
  EXPECT_EQ(plan.gpus[1].used_after_mb, plan.estimate.vram_mb);
  EXPECT_EQ(plan.gpus[1].replicas, std::vector<std::string>{"qwen-0"});
  EXPECT_TRUE(plan.alternatives.empty());
}

TEST(Simulate, ReplacesTheDeploymentsOwnReplicas) {
  std::vector<api::Node> nodes = {gpu_node("n1", 1, 24 * 1024)};
  std::vector<api::Replica> replicas = {holding("qwen", 20 * 1024, "n1", 0)};
  auto plan = simulate(deployment("qwen", "qwen2.5-7b-instruct", 4096), nodes, replicas, {});
  EXPECT_TRUE(plan.fits) << plan.reason;
}

// Llama-3.1-8B at 64k context: 14.96 GiB of weights + 8 GiB of KV + 1 GiB overhead = 23.96 GiB
// does not fit on a 24 GiB card where another deployment holds 6 GiB.
TEST(Simulate, OffersConcreteAlternativesThatFit) {
  std::vector<api::Node> nodes = {gpu_node("n1", 1, 24 * 1024)};
  std::vector<api::Replica> replicas = {holding("small", 6 * 1024, "n1", 0)};
  std::vector<api::Deployment> deployments = {deployment("small", "qwen2.5-0.5b-instruct")};
  deployments[0].spec.priority = 3;
  auto wanted = deployment("llama", "llama-3.1-8b-instruct", 65536);
  auto plan = simulate(wanted, nodes, replicas, deployments);
  ASSERT_FALSE(plan.fits);
  EXPECT_NE(plan.reason.find("no node fits replica llama-0"), std::string::npos) << plan.reason;
  EXPECT_EQ(plan.gpus[0].used_after_mb, plan.gpus[0].used_before_mb);

  // 18 GiB free − 14.96 GiB weights − 1 GiB overhead leaves 2.04 GiB for the KV cache: 16,384
  // tokens at 128 KiB each.
  const Alternative* context = find_kind(plan, "max_context");
  ASSERT_NE(context, nullptr);
  EXPECT_EQ(context->value, "16384");
  EXPECT_EQ(context->saves_mb, 6 * 1024);                 // 8 GiB of KV → 2 GiB
  EXPECT_EQ(find_kind(plan, "kv_cache_dtype"), nullptr);  // 4 GiB of FP8 KV cache: 0.04 GiB short
  const Alternative* model = find_kind(plan, "model");
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->value, "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4");
  EXPECT_GT(model->saves_mb, 9 * 1024);  // 14.96 GiB of weights → 5.33 GiB
  const Alternative* stop = find_kind(plan, "stop");
  ASSERT_NE(stop, nullptr);
  EXPECT_EQ(stop->value, "small");
  EXPECT_EQ(stop->summary, "stop deployment small (priority 3) (frees 6.0 GiB)");
  EXPECT_EQ(find_kind(plan, "gpus_per_replica"), nullptr);  // one GPU only

  // Every alternative, applied, fits.
  for (const auto& alternative : plan.alternatives) {
    auto changed = wanted;
    auto kept = replicas;
    if (alternative.kind == "max_context") changed.spec.max_context = std::stoi(alternative.value);
    if (alternative.kind == "model") changed.spec.model = alternative.value;
    if (alternative.kind == "stop") kept.clear();
    EXPECT_TRUE(simulate(changed, nodes, kept, deployments).fits) << alternative.summary;
  }
}

TEST(Simulate, NamesTheDeploymentsToStop) {
  std::vector<api::Node> nodes = {gpu_node("n1", 1, 80 * 1024)};
  std::vector<api::Replica> replicas = {holding("a", 40 * 1024, "n1", 0), holding("b", 30 * 1024, "n1", 0)};
  std::vector<api::Deployment> deployments = {deployment("a", "m"), deployment("b", "m")};
  deployments[0].spec.priority = 5;
  auto wanted = deployment("big", "my-model");
  wanted.spec.vram_mb = 50 * 1024;
  auto plan = simulate(wanted, nodes, replicas, deployments);
  ASSERT_FALSE(plan.fits);
  std::vector<std::string> stops;
  for (const auto& alternative : plan.alternatives) {
    if (alternative.kind == "stop") stops.push_back(alternative.value);
  }
  // Stopping b frees 30 GiB (40 free: not enough); stopping a frees 40 (50 free: enough).
  EXPECT_EQ(stops, std::vector<std::string>{"a"});
  EXPECT_EQ(find_kind(plan, "stop")->saves_mb, 40 * 1024);
  EXPECT_NE(find_kind(plan, "stop")->summary.find("stop deployment a (priority 5) (frees 40.0 GiB)"), std::string::npos)
      << find_kind(plan, "stop")->summary;
  // An explicit size has no context or model to shrink.
  EXPECT_EQ(find_kind(plan, "max_context"), nullptr);
  EXPECT_EQ(find_kind(plan, "model"), nullptr);
}

// An idle 8B deployment on an 80 GB card: its engine holds its memory, and the GPU says so. A
// 75 GB replica fits once it stops: the dry run must count what the stopped engine releases, not
// mistake the memory the GPU reports for use outside Nebula.
TEST(Simulate, OffersToStopADeploymentWhoseEngineHoldsReportedMemory) {
  std::vector<api::Node> nodes = {gpu_node("n1", 1, 80 * 1024)};
  nodes[0].status.gpus[0].memory_used_mb = 18 * 1024;  // the 8B engine, as the GPU reports it
  std::vector<api::Replica> replicas = {holding("llama-8b", 18 * 1024, "n1", 0)};
  std::vector<api::Deployment> deployments = {deployment("llama-8b", "llama-3.1-8b-instruct")};
  auto wanted = deployment("big", "my-model");
  wanted.spec.vram_mb = 75 * 1024;
  auto plan = simulate(wanted, nodes, replicas, deployments);
  ASSERT_FALSE(plan.fits);
  const Alternative* stop = find_kind(plan, "stop");
  ASSERT_NE(stop, nullptr) << "no stop alternative offered";
  EXPECT_EQ(stop->value, "llama-8b");
  EXPECT_NE(stop->summary.find("stop deployment llama-8b"), std::string::npos) << stop->summary;

  // Memory held by something outside Nebula is not freed by stopping a deployment.
  nodes[0].status.gpus[0].memory_used_mb = 18 * 1024 + 10 * 1024;
  plan = simulate(wanted, nodes, replicas, deployments);
  EXPECT_EQ(find_kind(plan, "stop"), nullptr);
}

TEST(Scheduler, WithoutEnginesTakesTheirReportedMemoryOut) {
  std::vector<api::Node> nodes = {gpu_node("n1", 2, 80 * 1024)};
  nodes[0].status.gpus[0].memory_used_mb = 30 * 1024;
  nodes[0].status.gpus[1].memory_used_mb = 5 * 1024;
  api::Replica pending = holding("p", 8 * 1024, "n1", 0);
  pending.status.phase = api::phase::kScheduled;  // no engine yet: nothing of it in the report
  auto after = without_engines(nodes, {holding("a", 20 * 1024, "n1", 0), pending});
  EXPECT_EQ(after[0].status.gpus[0].memory_used_mb, 10 * 1024);
  EXPECT_EQ(after[0].status.gpus[1].memory_used_mb, 5 * 1024);
}

TEST(Simulate, StopsSeveralDeploymentsWhenNoneAloneIsEnough) {
  std::vector<api::Node> nodes = {gpu_node("n1", 1, 80 * 1024)};
  std::vector<api::Replica> replicas = {holding("a", 30 * 1024, "n1", 0), holding("b", 30 * 1024, "n1", 0),
                                        holding("c", 10 * 1024, "n1", 0)};
  auto wanted = deployment("big", "my-model");
  wanted.spec.vram_mb = 65 * 1024;
  auto plan = simulate(wanted, nodes, replicas, {});
  const Alternative* stop = find_kind(plan, "stop");
  ASSERT_NE(stop, nullptr);
  EXPECT_EQ(stop->value, "b,a");  // largest first until it fits: 10 + 60 freed = 70 free
  EXPECT_EQ(stop->saves_mb, 60 * 1024);
}

TEST(Simulate, VllmCanClaimLessOfTheCard) {
  std::vector<api::Node> nodes = {gpu_node("n1", 1, 80 * 1024)};
  std::vector<api::Replica> replicas = {holding("a", 20 * 1024, "n1", 0)};
  auto wanted = deployment("llama", "llama-3.1-8b-instruct", 8192);
  wanted.spec.engine = "vllm";
  auto plan = simulate(wanted, nodes, replicas, {});
  ASSERT_FALSE(plan.fits);  // 0.9 × 80 GiB = 72 GiB > 60 GiB free
  const Alternative* fraction = find_kind(plan, "gpu_memory_utilization");
  ASSERT_NE(fraction, nullptr);
  EXPECT_EQ(fraction->value, "0.75");             // 60 GiB of 80
  EXPECT_NEAR(fraction->saves_mb, 12 * 1024, 1);  // 0.15 of 80 GiB
}

TEST(Simulate, OffersTensorParallelismAndFewerReplicas) {
  std::vector<api::Node> nodes = {gpu_node("n1", 2, 24 * 1024)};
  auto wanted = deployment("big", "my-model");
  wanted.spec.vram_mb = 40 * 1024;
  auto plan = simulate(wanted, nodes, {}, {});
  const Alternative* tp = find_kind(plan, "gpus_per_replica");
  ASSERT_NE(tp, nullptr);
  EXPECT_EQ(tp->value, "2");
  auto two = deployment("two", "my-model");
  two.spec.vram_mb = 20 * 1024;
  two.spec.replicas = 3;
  auto partial = simulate(two, nodes, {}, {});
  ASSERT_FALSE(partial.fits);
  EXPECT_EQ(partial.placements.size(), 2u);
  ASSERT_NE(find_kind(partial, "replicas"), nullptr);
  EXPECT_EQ(find_kind(partial, "replicas")->value, "2");
}

}  // namespace
}  // namespace nebula::scheduler
