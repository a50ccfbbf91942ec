#include "scheduler/scheduler.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

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

TEST(EstimateVram, UsesTheModelsEstimator) {
  api::DeploymentSpec spec;
  spec.model = "llama-3.1-8b-instruct";
  spec.max_context = 8192;
  // Catalog: 16,060,522,496 bytes of BF16 weights + 1 GiB KV (8,192 × 128 KiB) + 1 GiB overhead.
  EXPECT_EQ(estimate_vram_mb(spec), (16'060'522'496 + 2 * models::kGiB + models::kMiB - 1) / models::kMiB);
  spec.model = "mixtral-8x7b";  // not in the catalog under this name: the name's 56B
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

TEST(Place, PrefersANodeThatHasTheModelFiles) {
  // Spread would pick the emptier node b; a has the model in its cache, so it wins.
  auto a = make_node("a", 1, 81920);
  auto b = make_node("b", 1, 81920);
  a.status.models = {"Qwen/Qwen2.5-7B@main"};
  std::vector<api::Replica> placed = {make_replica("other", 20000, "a", {0})};
  auto request = request_for(make_replica("r", 16000), api::DeploymentSpec{});
  request.model_key = api::hub_repo_key("hf://Qwen/Qwen2.5-7B");
  EXPECT_EQ(request.model_key, "Qwen/Qwen2.5-7B@main");
  auto placement = place(request, {a, b}, placed);
  ASSERT_TRUE(placement);
  EXPECT_EQ(placement->node, "a");
  // Another revision is another model; locality never overrides fit.
  request.model_key = api::hub_repo_key("Qwen/Qwen2.5-7B@v2");
  EXPECT_EQ(place(request, {a, b}, placed)->node, "b");
  // One file of a repository the node has whole; and a single cached file.
  request.model_key = api::hub_repo_key("Qwen/Qwen2.5-7B/model-00001.safetensors");
  EXPECT_EQ(place(request, {a, b}, placed)->node, "a");
  b.status.models = {"acme/tiny@main/model.gguf"};
  request.model_key = api::hub_repo_key("hf://acme/tiny/model.gguf");
  EXPECT_EQ(place(request, {a, b}, placed)->node, "b");
  request.model_key = "Qwen/Qwen2.5-7B@main";
  request.need_per_gpu_mb = 70000;
  EXPECT_EQ(place(request, {a, b}, placed)->node, "b");
}

TEST(HubRepoKey, NamesRepositoriesOnly) {
  EXPECT_EQ(api::hub_repo_key("Qwen/Qwen2.5-7B"), "Qwen/Qwen2.5-7B@main");
  EXPECT_EQ(api::hub_repo_key("hf.co/acme/tiny@abc/model.gguf"), "acme/tiny@abc/model.gguf");
  EXPECT_EQ(api::hub_repo_key("https://huggingface.co/acme/tiny/file.gguf"), "acme/tiny@main/file.gguf");
  EXPECT_EQ(api::hub_repo_key("llama-3-8b"), "");
  EXPECT_EQ(api::hub_repo_key("/models/llama.gguf"), "");
  EXPECT_EQ(api::hub_repo_key("./models/x"), "");
  EXPECT_EQ(api::hub_repo_key("acme/@rev"), "");
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

// ---- accounting: allocated vs reported, reserved ---------------------------------------------

api::Replica running(const std::string& name, int64_t vram_mb, const std::string& node, std::vector<int> gpus) {
  auto replica = make_replica(name, vram_mb, node, std::move(gpus));
  replica.status.phase = api::phase::kReady;
  return replica;
}

Request request(int64_t per_gpu_mb, int gpus = 1) {
  Request r;
  r.replica = "r";
  r.engine = "sim";
  r.gpus = gpus;
  r.need_per_gpu_mb = per_gpu_mb;
  return r;
}

TEST(FreeVram, RespectsMemoryUsedByForeignProcesses) {
  auto node = make_node("n1", 1, 80 * 1024);
  node.status.gpus[0].memory_used_mb = 60 * 1024;  // something Nebula did not start
  auto gpus = free_vram(node, {});
  EXPECT_EQ(gpus[0].foreign_mb, 60 * 1024);
  EXPECT_EQ(gpus[0].free_mb, 20 * 1024);
  auto refused = place(request(30 * 1024), {node}, {});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("gpu0 20.0 GiB free (60.0 GiB used outside Nebula)"), std::string::npos)
      << refused.error().message;
  EXPECT_TRUE(place(request(20 * 1024), {node}, {}));
}

TEST(FreeVram, DoesNotCountTheAgentsReportOfItsOwnEnginesTwice) {
  auto node = make_node("n1", 1, 80 * 1024);
  node.status.gpus[0].memory_used_mb = 30 * 1024;  // the sim agent reports its engine's 30 GiB
  std::vector<api::Replica> placed = {running("a", 30 * 1024, "n1", {0})};
  auto gpus = free_vram(node, placed);
  EXPECT_EQ(gpus[0].allocated_mb, 30 * 1024);
  EXPECT_EQ(gpus[0].foreign_mb, 0);
  EXPECT_EQ(gpus[0].free_mb, 50 * 1024);
  EXPECT_TRUE(place(request(50 * 1024), {node}, placed));
}

TEST(FreeVram, AddsForeignUseToPlacementsWhoseEnginesHaveNotStarted) {
  auto node = make_node("n1", 1, 80 * 1024);
  node.status.gpus[0].memory_used_mb = 20 * 1024;                                // foreign
  std::vector<api::Replica> placed = {make_replica("a", 30 * 1024, "n1", {0})};  // Pending: no engine yet
  // max(allocated, reported) would say 30 GiB used; it is 50.
  EXPECT_EQ(free_vram(node, placed)[0].used_mb, 50 * 1024);
  EXPECT_FALSE(place(request(31 * 1024), {node}, placed));
  EXPECT_TRUE(place(request(30 * 1024), {node}, placed));
}

TEST(FreeVram, KeepsTheNodesReservedVramFree) {
  auto node = make_node("n1", 2, 80 * 1024);
  node.spec.reserved_vram_mb = 10 * 1024;
  auto refused = place(request(71 * 1024), {node}, {});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("10.0 GiB reserved"), std::string::npos) << refused.error().message;
  EXPECT_TRUE(place(request(70 * 1024), {node}, {}));
}

// Whatever arrives, in whatever order, no GPU is ever promised more than it has.
TEST(Place, NeverOvercommitsAnyGpu) {
  std::vector<api::Node> nodes = {make_node("a", 2, 24 * 1024), make_node("b", 4, 80 * 1024)};
  nodes[1].spec.reserved_vram_mb = 2048;
  nodes[1].status.gpus[3].memory_used_mb = 50 * 1024;
  std::vector<api::Replica> placed;
  uint32_t seed = 7;
  for (int i = 0; i < 200; ++i) {
    seed = seed * 1103515245 + 12345;
    auto r = request(1024 + static_cast<int64_t>((seed >> 8) % (40 * 1024)), 1 + static_cast<int>((seed >> 4) % 2));
    r.strategy = (seed & 1) ? "binpack" : "spread";
    auto placement = place(r, nodes, placed);
    if (!placement) continue;
    auto replica = running("r" + std::to_string(i), placement->vram_mb, placement->node, placement->gpus);
    placed.push_back(replica);
  }
  EXPECT_GT(placed.size(), 5u);
  for (const auto& node : nodes) {
    for (const auto& gpu : free_vram(node, placed)) EXPECT_GE(gpu.free_mb, 0) << node.metadata.name << gpu.index;
  }
}

// ---- scoring ----------------------------------------------------------------------------------

TEST(Place, SpreadTakesTheEmptiestGpuAndBinpackTheFullestThatFits) {
  std::vector<api::Node> nodes = {make_node("n1", 2, 80 * 1024)};
  std::vector<api::Replica> placed = {running("a", 40 * 1024, "n1", {0})};
  auto spread = request(20 * 1024);
  EXPECT_EQ(place(spread, nodes, placed)->gpus, std::vector<int>{1});
  auto binpack = spread;
  binpack.strategy = "binpack";
  EXPECT_EQ(place(binpack, nodes, placed)->gpus, std::vector<int>{0});
  // The same across nodes.
  std::vector<api::Node> two = {make_node("busy", 1, 80 * 1024), make_node("idle", 1, 80 * 1024)};
  std::vector<api::Replica> on_busy = {running("a", 40 * 1024, "busy", {0})};
  EXPECT_EQ(place(spread, two, on_busy)->node, "idle");
  EXPECT_EQ(place(binpack, two, on_busy)->node, "busy");
}

TEST(Place, TensorParallelTakesIdenticalGpusOnOneNode) {
  auto mixed = make_node("mixed", 2, 80 * 1024);
  mixed.status.gpus[1].name = "A100-80GB";
  auto refused = place(request(30 * 1024, 2), {mixed}, {});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("not 2 identical ones"), std::string::npos) << refused.error().message;
  // Same name, different memory: not identical either.
  auto sizes = make_node("sizes", 2, 80 * 1024);
  sizes.status.gpus[1].memory_total_mb = 40 * 1024;
  EXPECT_FALSE(place(request(30 * 1024, 2), {sizes}, {}));
  // Two H100s and an A100: the pair of H100s.
  auto three = make_node("three", 3, 80 * 1024);
  three.status.gpus[1].name = "A100-80GB";
  auto placement = place(request(30 * 1024, 2), {three}, {});
  ASSERT_TRUE(placement) << placement.error().message;
  EXPECT_EQ(placement->gpus, (std::vector<int>{0, 2}));
  EXPECT_EQ(placement->vram_mb, 60 * 1024);
}

TEST(Place, NodeSelectorAndGpuTypeFilterNodes) {
  auto east = make_node("east", 1, 80 * 1024);
  east.metadata.labels = {{"zone", "east"}};
  auto west = make_node("west", 1, 40 * 1024);
  west.metadata.labels = {{"zone", "west"}};
  west.status.gpus[0].name = "A100-40GB";
  auto r = request(10 * 1024);
  r.node_selector = {{"zone", "west"}};
  EXPECT_EQ(place(r, {east, west}, {})->node, "west");
  r.node_selector = {{"zone", "north"}};
  auto refused = place(r, {east, west}, {});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("node east does not match node_selector zone=north"), std::string::npos);
  r.node_selector = {};
  r.gpu_type = "a100";
  EXPECT_EQ(place(r, {east, west}, {})->node, "west");
  r.gpu_type = "l4";
  auto no_type = place(r, {east, west}, {});
  ASSERT_FALSE(no_type);
  EXPECT_NE(no_type.error().message.find("node east has no l4 GPU (H100-80GB)"), std::string::npos)
      << no_type.error().message;
}

TEST(Place, VllmClaimsItsFractionOfTheCard) {
  std::vector<api::Node> nodes = {make_node("n1", 1, 80 * 1024)};
  auto r = request(18 * 1024);
  r.engine = "sim";
  r.gpu_memory_utilization = 0.9;
  auto placement = place(r, nodes, {});
  ASSERT_TRUE(placement) << placement.error().message;
  EXPECT_EQ(placement->vram_mb, 73'728);  // 0.9 × 81,920 MiB, not the 18 GiB the model needs
  std::vector<api::Replica> placed = {running("a", placement->vram_mb, "n1", {0})};
  EXPECT_FALSE(place(r, nodes, placed));  // a second one would need another 72 GiB
  r.need_per_gpu_mb = 75 * 1024;          // the model does not fit in what vLLM would claim
  auto too_big = place(r, nodes, {});
  ASSERT_FALSE(too_big);
  EXPECT_NE(too_big.error().message.find("does not fit in gpu_memory_utilization 0.90"), std::string::npos)
      << too_big.error().message;
}

TEST(RequestFor, TakesPlacementFieldsFromTheSpec) {
  api::DeploymentSpec spec;
  spec.engine = "vllm";
  spec.gpus_per_replica = 2;
  spec.placement = "binpack";
  spec.gpu_type = "H100";
  spec.node_selector = {{"pool", "gpu"}};
  auto replica = make_replica("r", 40'001);
  auto r = request_for(replica, spec);
  EXPECT_EQ(r.need_per_gpu_mb, 20'001);
  EXPECT_DOUBLE_EQ(r.gpu_memory_utilization, 0.9);
  EXPECT_EQ(r.strategy, "binpack");
  EXPECT_EQ(r.gpu_type, "H100");
  EXPECT_EQ(r.node_selector.at("pool"), "gpu");
  spec.vram_mb = 1000;  // an explicit size is what the replica claims
  EXPECT_DOUBLE_EQ(request_for(replica, spec).gpu_memory_utilization, 0);
}

// Places `count` single-GPU replicas one after another, as the controller does in one pass.
std::vector<Placement> place_all(int count, int64_t vram_mb, const std::vector<api::Node>& nodes,
                                 const std::string& strategy = "spread") {
  Capacity capacity(nodes, {});
  std::vector<Placement> placements;
  for (int i = 0; i < count; ++i) {
    auto request = request_for(make_replica("r" + std::to_string(i), vram_mb), api::DeploymentSpec{});
    request.strategy = strategy;
    auto placement = capacity.place(request);
    if (!placement) break;
    capacity.add(*placement);
    placements.push_back(*placement);
  }
  return placements;
}

std::vector<api::Node> many_nodes(int count, int gpus) {
  std::vector<api::Node> nodes;
  for (int i = 0; i < count; ++i) nodes.push_back(make_node(fmt::format("node-{:03}", i), gpus, 81920));
  return nodes;
}

TEST(Place, SpreadTakesTheEmptiestNodeFirstThenTheEmptiestGpu) {
  auto nodes = many_nodes(100, 8);
  // Eight replicas on a hundred empty nodes: eight nodes, so one node's loss takes one replica.
  auto eight = place_all(8, 16 * 1024, nodes);
  ASSERT_EQ(eight.size(), 8u);
  std::set<std::string> used;
  for (const auto& placement : eight) used.insert(placement.node);
  EXPECT_EQ(used.size(), 8u);
  // A hundred: every node gets one; a second round then fills the next GPU of each.
  auto hundred = place_all(200, 16 * 1024, nodes);
  ASSERT_EQ(hundred.size(), 200u);
  std::map<std::string, std::set<int>> gpus_of;
  for (const auto& placement : hundred) gpus_of[placement.node].insert(placement.gpus.at(0));
  EXPECT_EQ(gpus_of.size(), 100u);
  for (const auto& [node, gpus] : gpus_of) EXPECT_EQ(gpus.size(), 2u) << node << " has two replicas on one GPU";
  // Emptiest by share of memory: a half-full big node loses to an emptier small one.
  auto big = make_node("big", 8, 81920);
  auto small = make_node("small", 1, 81920);
  std::vector<api::Replica> placed;
  for (int gpu = 0; gpu < 8; ++gpu) placed.push_back(make_replica("b" + std::to_string(gpu), 40960, "big", {gpu}));
  placed.push_back(make_replica("s", 20480, "small", {0}));
  EXPECT_EQ(place(make_replica("r", 8192), 1, {big, small}, placed)->node, "small");
  // Binpack is unchanged: the fullest GPU that fits, on the first node.
  auto packed = place_all(8, 16 * 1024, nodes, "binpack");
  for (const auto& placement : packed) EXPECT_EQ(placement.node, "node-000");
}

TEST(Place, ReasonsCountNodesPerCauseWhateverTheClusterSize) {
  auto nodes = many_nodes(100, 8);
  for (int i = 0; i < 13; ++i) nodes[static_cast<size_t>(i)].status.ready = false;
  nodes[20].status.engines = {"vllm"};
  auto refused = place(make_replica("huge", 100 * 1024), 1, nodes, {});
  ASSERT_FALSE(refused.ok());
  const std::string& message = refused.error().message;
  EXPECT_NE(message.find("no node fits replica huge (1 GPU(s), 100.0 GiB VRAM): 0/100 nodes are available"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("86 without enough free VRAM, e.g. node node-013 has 0 of 1 GPUs with 100.0 GiB free (gpu0 "
                         "80.0 GiB free"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("13 not ready, e.g. node node-000 is not ready"), std::string::npos) << message;
  EXPECT_NE(message.find("node node-020 cannot run engine sim"), std::string::npos) << message;
  // One example per cause: the same length with a hundred nodes or a thousand.
  auto thousand = many_nodes(1000, 8);
  auto refused_big = place(make_replica("huge", 100 * 1024), 1, thousand, {});
  ASSERT_FALSE(refused_big.ok());
  EXPECT_LT(message.size(), 600u) << message;
  EXPECT_LT(refused_big.error().message.size(), 600u) << refused_big.error().message;
}

TEST(Place, CapacityCountsWhatWasPlacedInThisPass) {
  auto nodes = many_nodes(2, 1);
  Capacity capacity(nodes, {});
  auto request = request_for(make_replica("r", 50 * 1024), api::DeploymentSpec{});
  auto first = capacity.place(request);
  ASSERT_TRUE(first);
  capacity.add(*first);
  auto second = capacity.place(request);
  ASSERT_TRUE(second);
  EXPECT_NE(second->node, first->node);
  capacity.add(*second);
  EXPECT_FALSE(capacity.place(request).ok());
  EXPECT_EQ(capacity.gpus_of(first->node)->at(0).allocated_mb, 50 * 1024);
  EXPECT_EQ(capacity.gpus_of("nowhere"), nullptr);
  capacity.add(Placement{"nowhere", {0}, 1024});   // a node it does not know: ignored
  capacity.add(Placement{first->node, {}, 1024});  // no GPUs: nothing to claim
  EXPECT_EQ(capacity.gpus_of(first->node)->at(0).allocated_mb, 50 * 1024);
}

}  // namespace
}  // namespace nebula::scheduler

namespace nebula::scheduler {
namespace {

Request tie_request() {
  Request request;
  request.replica = "r";
  request.engine = "sim";
  request.gpus = 1;
  request.need_per_gpu_mb = 10 * 1024;
  return request;
}

TEST(PlaceUtilization, BreaksTiesBetweenEqualGpusWithTheSignalWhenItHasOne) {
  std::vector<api::Node> nodes = {make_node("n1", 3, 80 * 1024)};
  nodes[0].status.gpus[0].utilization = 5;  // the node's own report: GPU 0 is the idlest
  Request request = tie_request();
  request.gpu_utilization = [](const std::string& node, int gpu) -> std::optional<double> {
    EXPECT_EQ(node, "n1");
    if (gpu == 2) return 1.0;  // the signal knows GPU 2 is idler still
    if (gpu == 0) return 90.0;
    return std::nullopt;  // GPU 1: nothing fresh, its own report (0) stands
  };
  auto placement = place(request, nodes, {});
  ASSERT_TRUE(placement) << placement.error().message;
  // GPU 1 (0, its own report) beats GPU 2 (1, the signal) beats GPU 0 (90, the signal over its own 5).
  EXPECT_EQ(placement->gpus, std::vector<int>{1});
}

TEST(PlaceUtilization, FallsBackToTheNodesReportAndIgnoresNonsense) {
  std::vector<api::Node> nodes = {make_node("n1", 2, 80 * 1024)};
  nodes[0].status.gpus[0].utilization = 70;
  nodes[0].status.gpus[1].utilization = 20;
  Request request = tie_request();
  request.gpu_utilization = [](const std::string&, int gpu) -> std::optional<double> {
    return gpu == 1 ? std::optional<double>(500) : std::nullopt;  // out of range: not trusted
  };
  auto placement = place(request, nodes, {});
  ASSERT_TRUE(placement);
  EXPECT_EQ(placement->gpus, std::vector<int>{1});
  // Without any source, the node's report decides too.
  request.gpu_utilization = nullptr;
  EXPECT_EQ(place(request, nodes, {})->gpus, std::vector<int>{1});
}

TEST(PlaceUtilization, NeverOverridesFreeMemory) {
  std::vector<api::Node> nodes = {make_node("n1", 2, 80 * 1024)};
  std::vector<api::Replica> placed = {make_replica("a", 30 * 1024, "n1", {0})};
  Request request = tie_request();
  request.gpu_utilization = [](const std::string&, int gpu) -> std::optional<double> { return gpu == 0 ? 0 : 99; };
  EXPECT_EQ(place(request, nodes, placed)->gpus, std::vector<int>{1});  // spread: the emptier GPU
}

TEST(PlaceUtilization, BreaksTiesBetweenNodes) {
  std::vector<api::Node> nodes = {make_node("a", 1, 80 * 1024), make_node("b", 1, 80 * 1024)};
  Request request = tie_request();
  request.gpu_utilization = [](const std::string& node, int) -> std::optional<double> {
    return node == "a" ? 60.0 : 10.0;
  };
  EXPECT_EQ(place(request, nodes, {})->node, "b");
}

}  // namespace
}  // namespace nebula::scheduler
