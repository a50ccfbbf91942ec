#include "api/api.h"

#include <gtest/gtest.h>

#include <functional>

namespace nebula::api {
namespace {

TEST(DeploymentSpecJson, PlacementFieldsRoundTrip) {
  DeploymentSpec spec;
  spec.model = "llama-3.1-8b-instruct";
  spec.engine = "vllm";
  spec.dtype = "fp8";
  spec.kv_cache_dtype = "fp8";
  spec.gpu_memory_utilization = 0.5;
  spec.placement = "binpack";
  spec.node_selector = {{"zone", "east"}};
  spec.gpu_type = "H100";
  spec.shape = {1000, 32, 8, 128, 2048};
  json document = to_json(spec);
  auto parsed = deployment_spec_from_json(document);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(to_json(*parsed), document);
  EXPECT_EQ(parsed->shape.head_dim, 128);
  EXPECT_EQ(parsed->node_selector.at("zone"), "east");
  EXPECT_TRUE(validate(*parsed));
}

TEST(DeploymentSpecJson, UnsetPlacementFieldsAreLeftOut) {
  DeploymentSpec spec;
  spec.model = "m";
  json document = to_json(spec);
  for (const char* field :
       {"dtype", "kv_cache_dtype", "gpu_memory_utilization", "placement", "node_selector", "gpu_type", "shape"}) {
    EXPECT_FALSE(document.contains(field)) << field;
  }
  auto parsed = deployment_spec_from_json(document);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->placement, "spread");
  auto wrong = deployment_spec_from_json(json{{"model", "m"}, {"shape", {{"layers", "many"}}}});
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("'layers'"), std::string::npos) << wrong.error().message;
}

TEST(DeploymentSpecJson, RoutingRoundTripsAndIsLeftOutWhenDefault) {
  DeploymentSpec spec;
  spec.model = "m";
  EXPECT_FALSE(to_json(spec).contains("routing"));
  spec.routing = "prefix+load,prefix=2,queue=1,kv=1";
  json document = to_json(spec);
  EXPECT_EQ(document["routing"], "prefix+load,prefix=2,queue=1,kv=1");
  auto parsed = deployment_spec_from_json(document);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->routing, spec.routing);
  auto wrong = deployment_spec_from_json(json{{"model", "m"}, {"routing", 3}});
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("'routing'"), std::string::npos) << wrong.error().message;
  // Routing is not part of a plan: the engines stay as they are.
  DeploymentSpec other = spec;
  other.routing = "session";
  EXPECT_TRUE(same_plan(spec, other));
}

TEST(DeploymentSpecValidation, RefusesBadPlacementFields) {
  DeploymentSpec spec;
  spec.model = "m";
  auto message = [&](DeploymentSpec changed) {
    auto valid = validate(changed);
    return valid ? std::string("(valid)") : valid.error().message;
  };
  auto s = spec;
  s.placement = "random";
  EXPECT_NE(message(s).find("unknown placement 'random'"), std::string::npos);
  s = spec;
  s.gpu_memory_utilization = 1.5;
  EXPECT_NE(message(s).find("gpu_memory_utilization"), std::string::npos);
  s = spec;
  s.dtype = "fp4";
  EXPECT_NE(message(s).find("unknown dtype 'fp4'"), std::string::npos);
  s = spec;
  s.kv_cache_dtype = "int4";
  EXPECT_NE(message(s).find("kv_cache_dtype int4"), std::string::npos);
  s = spec;
  s.shape.layers = -1;
  EXPECT_NE(message(s).find("spec.shape"), std::string::npos);
  s = spec;
  s.dtype = "bfloat16";
  s.kv_cache_dtype = "fp8_e5m2";
  EXPECT_EQ(message(s), "(valid)");
}

TEST(NodeJson, ReservedVramRoundTrips) {
  Node node;
  node.metadata.name = "n1";
  node.spec.reserved_vram_mb = 2048;
  auto parsed = node_from_json(to_json(node));
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->spec.reserved_vram_mb, 2048);
}

// Every field of a Replica set away from its default.
Replica full_replica() {
  Replica replica;
  replica.metadata.name = "chat-abc12";
  replica.metadata.uid = "3f2a9c";
  replica.metadata.created_ms = 1'796'000'000'000;
  replica.metadata.labels = {{"team", "search"}};
  replica.spec.deployment = "chat";
  replica.spec.model = "org/model@main";
  replica.spec.engine = "vllm";
  replica.spec.node = "gpu-7";
  replica.spec.gpus = {0, 3};
  replica.spec.vram_mb = 40'960;
  replica.spec.plan_version = 4;
  replica.spec.stop = true;
  replica.spec.draining_since_ms = 17;
  replica.spec.sleep_level = 2;
  replica.spec.max_context = 8192;
  replica.spec.max_seqs = 64;
  replica.spec.engine_args = {"--enforce-eager", ""};
  replica.spec.env = {{"A", "1"}, {"B", ""}};
  replica.status.phase = phase::kReady;
  replica.status.endpoint = "http://127.0.0.1:9000";
  replica.status.port = 9000;
  replica.status.pid = 4242;
  replica.status.restarts = 3;
  replica.status.last_error = "oom";
  replica.status.next_restart_ms = 99;
  replica.status.message = "serving";
  replica.status.plan_version = 4;
  replica.status.updated_ms = 123;
  return replica;
}

// The stored form reads back to the replica it was written from (compared through to_json, which
// writes every field).
void expect_stored_round_trip(const Replica& replica) {
  json stored = to_stored_json(replica);
  auto parsed = replica_from_json(json::parse(stored.dump()));
  ASSERT_TRUE(parsed) << parsed.error().message << " for " << stored.dump();
  Replica expected = replica;
  expected.metadata.revision = 0;  // the store's, never stored
  EXPECT_EQ(to_json(*parsed), to_json(expected)) << stored.dump();
}

TEST(ReplicaStoredJson, EveryFieldSetRoundTrips) {
  expect_stored_round_trip(full_replica());
}

TEST(ReplicaStoredJson, DefaultsAreLeftOutAndReadBack) {
  Replica empty;
  EXPECT_EQ(to_stored_json(empty), json({{"metadata", json::object()}}));
  expect_stored_round_trip(empty);

  // A placed replica as the scheduler writes it: only what it holds, nothing at its default.
  Replica placed;
  placed.metadata.name = "model-00-00001";
  placed.metadata.uid = "uid";
  placed.metadata.created_ms = 5;
  placed.metadata.revision = 77;
  placed.spec.deployment = "model-00";
  placed.spec.model = "sim-8b";
  placed.spec.engine = "sim";
  placed.spec.node = "node-0001";
  placed.spec.gpus = {3};
  placed.spec.vram_mb = 4096;
  placed.spec.plan_version = 1;
  placed.status.phase = phase::kScheduled;
  json stored = to_stored_json(placed);
  EXPECT_EQ(stored, json::parse(R"({"metadata":{"name":"model-00-00001","uid":"uid","created_ms":5},
      "spec":{"deployment":"model-00","model":"sim-8b","engine":"sim","node":"node-0001","gpus":[3],
              "vram_mb":4096,"plan_version":1},
      "status":{"phase":"Scheduled"}})"));
  EXPECT_LT(stored.dump().size() * 10, to_json(placed).dump().size() * 6);  // under 60%
  expect_stored_round_trip(placed);
}

TEST(ReplicaStoredJson, EachFieldAloneRoundTrips) {
  // One field away from its default at a time: none is lost, and none is taken for a default.
  const Replica full = full_replica();
  std::vector<std::function<void(Replica&)>> setters = {
      [&](Replica& r) { r.metadata.name = full.metadata.name; },
      [&](Replica& r) { r.metadata.uid = full.metadata.uid; },
      [&](Replica& r) { r.metadata.created_ms = -1; },
      [&](Replica& r) { r.metadata.labels = full.metadata.labels; },
      [&](Replica& r) { r.spec.deployment = full.spec.deployment; },
      [&](Replica& r) { r.spec.model = full.spec.model; },
      [&](Replica& r) { r.spec.engine = full.spec.engine; },
      [&](Replica& r) { r.spec.node = full.spec.node; },
      [&](Replica& r) { r.spec.gpus = {0}; },
      [&](Replica& r) { r.spec.vram_mb = -5; },
      [&](Replica& r) { r.spec.plan_version = full.spec.plan_version; },
      [&](Replica& r) { r.spec.stop = true; },
      [&](Replica& r) { r.spec.draining_since_ms = 1; },
      [&](Replica& r) { r.spec.sleep_level = 1; },
      [&](Replica& r) { r.spec.max_context = 1; },
      [&](Replica& r) { r.spec.max_seqs = 1; },
      [&](Replica& r) { r.spec.engine_args = {""}; },
      [&](Replica& r) {
        r.spec.env = {{"", ""}};
      },
      [&](Replica& r) { r.status.phase = ""; },
      [&](Replica& r) { r.status.phase = phase::kFailed; },
      [&](Replica& r) { r.status.endpoint = full.status.endpoint; },
      [&](Replica& r) { r.status.port = 1; },
      [&](Replica& r) { r.status.pid = 1; },
      [&](Replica& r) { r.status.restarts = 1; },
      [&](Replica& r) { r.status.last_error = "x"; },
      [&](Replica& r) { r.status.next_restart_ms = 1; },
      [&](Replica& r) { r.status.message = "x"; },
      [&](Replica& r) { r.status.plan_version = 1; },
      [&](Replica& r) { r.status.updated_ms = 1; },
  };
  for (size_t i = 0; i < setters.size(); ++i) {
    SCOPED_TRACE("setter " + std::to_string(i));
    Replica replica;
    setters[i](replica);
    EXPECT_NE(to_json(replica), to_json(Replica())) << "setter " << i << " changes nothing";
    expect_stored_round_trip(replica);
  }
}

TEST(ReplicaStoredJson, HostileStoredDocumentsAreRefusedNotDefaulted) {
  // A field that is present must still have its type: leaving defaults out does not make a
  // wrong value pass for a missing one.
  for (const char* document : {R"({"spec":{"node":7}})", R"({"spec":{"gpus":"0"}})", R"({"status":[]})",
                               R"({"spec":{"stop":"yes"}})", R"({"status":{"port":1.5}})", R"({"metadata":3})",
                               R"({"spec":{"env":{"A":1}}})", R"({"status":{"pid":99999999999}})"}) {
    EXPECT_FALSE(replica_from_json(json::parse(document))) << document;
  }
  EXPECT_FALSE(replica_from_json(json::array()));
  EXPECT_FALSE(replica_from_json(json("Replica")));
}

}  // namespace
}  // namespace nebula::api
