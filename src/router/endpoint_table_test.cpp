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
  // The candidates' names, joined: "a,b".
  std::string names(const std::set<std::string>& exclude = {}, int capacity = 256,
                    std::chrono::steady_clock::time_point now = kNow) {
    auto found = table.candidates("m", exclude, capacity, now);
    EXPECT_EQ(found.endpoints.size(), found.candidates.size());
    std::string joined;
    for (size_t i = 0; i < found.candidates.size(); ++i) {
      EXPECT_EQ(found.endpoints[i]->replica, found.candidates[i].replica);
      joined += (joined.empty() ? "" : ",") + found.candidates[i].replica;
    }
    return joined;
  }
  std::shared_ptr<Endpoint> endpoint(const std::string& name) {
    for (const auto& endpoint : table.endpoints()) {
      if (endpoint->replica == name) return endpoint;
    }
    return nullptr;
  }

  EndpointTable table;
};

TEST_F(EndpointTableTest, KnowsDeploymentsAndTheirReadyReplicas) {
  deployment("m");
  EXPECT_TRUE(table.has_deployment("m"));
  EXPECT_FALSE(table.has_deployment("other"));
  EXPECT_EQ(table.created_ms("m"), 42'000);
  EXPECT_EQ(table.deployments(), std::vector<std::string>{"m"});
  EXPECT_EQ(names(), "");
  put(replica("a", api::phase::kStarting));
  EXPECT_EQ(table.starting_count("m"), 1u);
  EXPECT_EQ(table.ready_count("m"), 0u);
  EXPECT_EQ(names(), "") << "a starting replica takes nothing";
  put(replica("a"));
  EXPECT_EQ(table.starting_count("m"), 0u);
  EXPECT_EQ(table.ready_count("m"), 1u);
  EXPECT_EQ(names(), "a");
  EXPECT_EQ(names({"a"}), "");
  EXPECT_EQ(table.candidates("other", {}, 256, kNow).candidates.size(), 0u);
  remove(api::store_key("deployments", "m"));
  EXPECT_FALSE(table.has_deployment("m"));
}

TEST_F(EndpointTableTest, CandidatesCarryTheirLiveState) {
  deployment("m", 8);
  put(replica("b"));
  put(replica("a"));
  EXPECT_EQ(names(), "a,b") << "in name order";
  auto a = endpoint("a");
  a->outstanding = 3;
  a->inflight_tokens = 1200;
  a->engine.waiting = 4;
  a->engine.kv_usage = 0.5;
  a->engine.at = kNow - 1s;
  auto found = table.candidates("m", {}, 256, kNow);
  ASSERT_EQ(found.candidates.size(), 2u);
  const Candidate& first = found.candidates[0];
  EXPECT_EQ(first.replica, "a");
  EXPECT_EQ(first.outstanding, 3);
  EXPECT_EQ(first.inflight_tokens, 1200);
  EXPECT_EQ(first.capacity, 8);
  EXPECT_EQ(first.engine.waiting, 4);
  EXPECT_EQ(first.engine.kv_usage, 0.5);
  EXPECT_EQ(first.engine.at, kNow - 1s);
  EXPECT_EQ(found.candidates[1].outstanding, 0);
  EXPECT_EQ(found.candidates[1].engine.waiting, -1) << "never scraped";
  EXPECT_EQ(found.candidates[1].engine.at, SteadyClock::time_point{});
}

TEST_F(EndpointTableTest, AFullReplicaIsNoCandidateAndMaxSeqsIsItsCapacity) {
  deployment("m", 2);
  put(replica("a"));
  auto a = endpoint("a");
  a->outstanding = 2;
  EXPECT_EQ(names(), "") << "max_seqs 2 overrides the default capacity";
  a->outstanding = 1;
  EXPECT_EQ(names(), "a");
  deployment("m");  // no max_seqs: the default
  a->outstanding = 5;
  EXPECT_EQ(names({}, 6), "a");
  EXPECT_EQ(table.candidates("m", {}, 6, kNow).candidates[0].capacity, 6);
  EXPECT_EQ(names({}, 5), "");
}

TEST_F(EndpointTableTest, AnOpenBreakerIsNoCandidateUntilItsProbe) {
  deployment("m");
  put(replica("a"));
  put(replica("b"));
  auto a = endpoint("a");
  for (int i = 0; i < 3; ++i) a->breaker.failed(kNow, {3, 5s});
  EXPECT_EQ(names(), "b");
  EXPECT_EQ(names({}, 256, kNow + 5s), "a,b");
  a->breaker.sent();  // the probe
  EXPECT_EQ(names({}, 256, kNow + 5s), "b");
}

TEST_F(EndpointTableTest, ReadsTheRoutingSpecOfADeployment) {
  deployment("m");
  EXPECT_EQ(table.routing("m"), "");
  EXPECT_EQ(table.routing("unknown"), "");
  auto with_routing = [&](const json& routing) {
    api::Deployment document;
    document.metadata.name = "m";
    json stored = api::to_json(document);
    stored["spec"]["routing"] = routing;
    put(api::store_key("deployments", "m"), stored.dump());
    return table.routing("m");
  };
  EXPECT_EQ(with_routing("session"), "session");
  // Not a Deployment (the API never stores one): the table keeps what it had.
  EXPECT_EQ(with_routing(42), "session");
  EXPECT_EQ(with_routing(json::object()), "session");
  EXPECT_EQ(with_routing("prefix+load,prefix=2"), "prefix+load,prefix=2");
}

TEST_F(EndpointTableTest, TellsWhenAReplicaLeavesRouting) {
  deployment("m");
  std::vector<std::string> left;
  table.set_on_replica_gone(
      [&](const std::string& deployment, const std::string& replica) { left.push_back(deployment + "/" + replica); });
  put(replica("a", api::phase::kReady, 9001));
  put(replica("a", api::phase::kReady, 9001));  // the same again
  EXPECT_TRUE(left.empty());
  put(replica("a", api::phase::kReady, 9002));  // a new engine
  EXPECT_EQ(left, std::vector<std::string>{"m/a"});
  auto draining = replica("a", api::phase::kReady, 9002);
  draining.spec.draining_since_ms = 1;
  put(draining);
  EXPECT_EQ(left.size(), 2u);
  remove(api::store_key("replicas", "a"));
  EXPECT_EQ(left.size(), 2u) << "already out of routing";
  put(replica("b", api::phase::kReady, 9003));
  put(replica("b", api::phase::kFailed, 9003));
  EXPECT_EQ(left.back(), "m/b");
  put(replica("c", api::phase::kReady, 9004));
  remove(api::store_key("replicas", "c"));
  EXPECT_EQ(left.back(), "m/c");
  EXPECT_EQ(left.size(), 4u);
}

TEST_F(EndpointTableTest, DrainingReplicasTakeNothingAndReportDrainedWhenIdle) {
  deployment("m");
  put(replica("a"));
  put(replica("b"));
  auto a = endpoint("a");
  ASSERT_TRUE(a);
  a->outstanding += 1;
  EXPECT_FALSE(table.drained("a")) << "not draining";
  auto draining = replica("a");
  draining.spec.draining_since_ms = 5;
  put(draining);
  EXPECT_EQ(table.ready_count("m"), 1u);
  EXPECT_EQ(names(), "b");
  EXPECT_EQ(table.endpoints().size(), 1u) << "a draining replica is not routed to";
  EXPECT_EQ(table.endpoints(true).size(), 2u) << "but its engine's load is still read";
  EXPECT_FALSE(table.drained("a")) << "a request is still in flight to it";
  a->outstanding -= 1;
  EXPECT_TRUE(table.drained("a")) << "a gateway that reads no engine counts: its own count decides";
  EXPECT_TRUE(table.drained("unknown"));
}

// Other gateways relay to the same engine: once the engine reports its load, a draining replica
// is drained only when the engine, read after the drain began, holds no request.
TEST_F(EndpointTableTest, ADrainWaitsForTheEnginesOwnCountReadAfterItBegan) {
  table.expect_engine_counts(true);
  deployment("m");
  put(replica("a"));
  put(replica("b"));
  auto a = endpoint("a");
  auto b = endpoint("b");
  ASSERT_TRUE(a && b);
  auto report = [&](double busy) {
    a->engine_busy = busy;
    a->engine_busy_at_ns = SteadyClock::now().time_since_epoch().count();
  };
  report(0);  // idle before the drain: says nothing of what came since
  auto draining = replica("a");
  draining.spec.draining_since_ms = 5;
  put(draining);
  EXPECT_FALSE(table.drained("a")) << "no reading since the drain began";
  report(2);
  EXPECT_FALSE(table.drained("a")) << "another gateway's requests are still in the engine";
  report(0);
  EXPECT_TRUE(table.drained("a"));
  a->outstanding += 1;
  EXPECT_FALSE(table.drained("a")) << "and this gateway's own count still counts";
  // An engine whose /metrics has no request counts: this gateway's count decides.
  auto leaving = replica("b");
  leaving.spec.draining_since_ms = 5;
  put(leaving);
  EXPECT_FALSE(table.drained("b")) << "not read since the drain began";
  b->engine_busy_at_ns = -1;
  EXPECT_TRUE(table.drained("b"));
}

TEST_F(EndpointTableTest, AReplicaOfAnOlderPlanOrStoppingIsNotRouted) {
  deployment("m");
  auto old_plan = replica("a");
  old_plan.spec.plan_version = 2;
  old_plan.status.plan_version = 1;
  put(old_plan);
  EXPECT_EQ(names(), "");
  old_plan.status.plan_version = 2;
  put(old_plan);
  EXPECT_EQ(names(), "a");
  old_plan.spec.stop = true;
  put(old_plan);
  EXPECT_EQ(names(), "");
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
  EXPECT_EQ(names(), "a");
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
