#include "router/endpoint_table.h"

#include <gtest/gtest.h>

#include "api/api.h"
#include "common/json.h"

namespace nebula::router {
namespace {

using namespace std::chrono_literals;

const auto kNow = std::chrono::steady_clock::time_point(1000s);

class EndpointTableTest : public ::testing::Test {
 protected:
  void deployment(const std::string& name, int max_seqs = 0) {
    api::Deployment document;
    document.metadata.name = name;
    document.metadata.created_ms = 42'000;
    document.spec.model = name;
    document.spec.max_seqs = max_seqs;
    put(api::store_key("deployments", name), api::to_json(document).dump());
  }
  api::Replica replica(const std::string& name, const std::string& phase = api::phase::kReady, int port = 0) {
    api::Replica document;
    document.metadata.name = name;
    document.spec.deployment = "m";
    document.status.phase = phase;
    if (port == 0) port = 9000 + static_cast<int>(std::hash<std::string>()(name) % 1000);
    document.status.endpoint = "http://127.0.0.1:" + std::to_string(port);
    return document;
  }
  void put(const api::Replica& document) {
    put(api::store_key("replicas", document.metadata.name), api::to_json(document).dump());
  }
  void put(const std::string& key, const std::string& value) { table.apply(key, &value); }
  void remove(const std::string& key) { table.apply(key, nullptr); }
  std::string pick(const std::set<std::string>& exclude = {}, int capacity = 256) {
    auto endpoint = table.pick("m", exclude, capacity, kNow);
    return endpoint ? endpoint->replica : "";
  }

  EndpointTable table;
};

TEST_F(EndpointTableTest, KnowsDeploymentsAndTheirReadyReplicas) {
  deployment("m");
  EXPECT_TRUE(table.has_deployment("m"));
  EXPECT_FALSE(table.has_deployment("other"));
  EXPECT_EQ(table.created_ms("m"), 42'000);
  EXPECT_EQ(table.deployments(), std::vector<std::string>{"m"});
  EXPECT_EQ(pick(), "");
  put(replica("a", api::phase::kStarting));
  EXPECT_EQ(table.starting_count("m"), 1u);
  EXPECT_EQ(table.ready_count("m"), 0u);
  EXPECT_EQ(pick(), "") << "a starting replica takes nothing";
  put(replica("a"));
  EXPECT_EQ(table.starting_count("m"), 0u);
  EXPECT_EQ(table.ready_count("m"), 1u);
  EXPECT_EQ(pick(), "a");
  EXPECT_EQ(pick({"a"}), "");
  remove(api::store_key("deployments", "m"));
  EXPECT_FALSE(table.has_deployment("m"));
}

TEST_F(EndpointTableTest, PicksTheLeastOutstandingRoundRobinOnTies) {
  deployment("m");
  put(replica("a"));
  put(replica("b"));
  std::map<std::string, int> picked;
  for (int i = 0; i < 10; ++i) picked[pick()] += 1;
  EXPECT_EQ(picked["a"], 5);
  EXPECT_EQ(picked["b"], 5);
  table.pick("m", {"b"}, 256, kNow)->outstanding += 1;  // a busy
  for (int i = 0; i < 4; ++i) EXPECT_EQ(pick(), "b");
}

TEST_F(EndpointTableTest, AFullReplicaTakesNothingAndMaxSeqsIsItsCapacity) {
  deployment("m", 2);
  put(replica("a"));
  auto a = table.pick("m", {}, 256, kNow);
  a->outstanding = 2;
  EXPECT_EQ(pick(), "") << "max_seqs 2 overrides the default capacity";
  a->outstanding = 1;
  EXPECT_EQ(pick(), "a");
  deployment("m");  // no max_seqs: the default
  a->outstanding = 5;
  EXPECT_EQ(pick({}, 6), "a");
  EXPECT_EQ(pick({}, 5), "");
}

TEST_F(EndpointTableTest, AnOpenBreakerTakesNothingUntilItsProbe) {
  deployment("m");
  put(replica("a"));
  auto a = table.pick("m", {}, 256, kNow);
  for (int i = 0; i < 3; ++i) a->breaker.failed(kNow, {3, 5s});
  EXPECT_EQ(pick(), "");
  EXPECT_EQ(table.pick("m", {}, 256, kNow + 5s), a);
}

TEST_F(EndpointTableTest, DrainingReplicasTakeNothingAndReportDrainedWhenIdle) {
  deployment("m");
  put(replica("a"));
  put(replica("b"));
  auto a = table.pick("m", {"b"}, 256, kNow);
  ASSERT_TRUE(a);
  a->outstanding += 1;
  EXPECT_FALSE(table.drained("a")) << "not draining";
  auto draining = replica("a");
  draining.spec.draining_since_ms = 5;
  put(draining);
  EXPECT_EQ(table.ready_count("m"), 1u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(pick(), "b");
  EXPECT_FALSE(table.drained("a")) << "a request is still in flight to it";
  a->outstanding -= 1;
  EXPECT_TRUE(table.drained("a"));
  EXPECT_TRUE(table.drained("unknown"));
}

TEST_F(EndpointTableTest, AReplicaOfAnOlderPlanOrStoppingIsNotRouted) {
  deployment("m");
  auto old_plan = replica("a");
  old_plan.spec.plan_version = 2;
  old_plan.status.plan_version = 1;
  put(old_plan);
  EXPECT_EQ(pick(), "");
  old_plan.status.plan_version = 2;
  put(old_plan);
  EXPECT_EQ(pick(), "a");
  old_plan.spec.stop = true;
  put(old_plan);
  EXPECT_EQ(pick(), "");
}

TEST_F(EndpointTableTest, TellsWhenAnEndpointLeaves) {
  deployment("m");
  std::vector<std::string> gone;
  std::vector<std::string> changed;
  table.set_on_endpoint_gone([&](const std::string& url) { gone.push_back(url); });
  table.set_on_change([&](const std::string& deployment) { changed.push_back(deployment); });
  put(replica("a", api::phase::kReady, 9001));
  EXPECT_EQ(changed, std::vector<std::string>{"m"});
  put(replica("a", api::phase::kReady, 9002));  // moved
  EXPECT_EQ(gone, std::vector<std::string>{"http://127.0.0.1:9001"});
  remove(api::store_key("replicas", "a"));
  EXPECT_EQ(gone.back(), "http://127.0.0.1:9002");
  EXPECT_EQ(gone.size(), 2u);
  remove(api::store_key("replicas", "never-seen"));
  EXPECT_EQ(gone.size(), 2u);
}

TEST_F(EndpointTableTest, GarbageDocumentsChangeNothing) {
  deployment("m");
  put(replica("a"));
  put(api::store_key("replicas", "a"), "{not json");
  put(api::store_key("replicas", "b"), "[1,2,3]");
  put(api::store_key("deployments", "m"), "\"a string\"");
  put(api::store_key("deployments", "x"), "");
  put("/unrelated/key", "{}");
  EXPECT_TRUE(table.has_deployment("m"));
  EXPECT_FALSE(table.has_deployment("x"));
  EXPECT_EQ(pick(), "a");
}

TEST_F(EndpointTableTest, ScaleToZeroAndUnschedulableStateComesFromTheDeployment) {
  api::Deployment document;
  document.metadata.name = "m";
  document.status.phase = "Pending";
  document.status.message = "no GPU fits";
  document.status.idle_since_ms = 7;
  document.status.wake_requested_ms = 9;
  put(api::store_key("deployments", "m"), api::to_json(document).dump());
  EXPECT_EQ(table.unschedulable("m"), "no GPU fits");
  EXPECT_EQ(table.idle_since_ms("m"), 7);
  EXPECT_EQ(table.wake_requested_ms("m"), 9);
  EXPECT_EQ(table.unschedulable("unknown"), "");
}

}  // namespace
}  // namespace nebula::router
