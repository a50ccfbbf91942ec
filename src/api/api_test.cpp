#include "api/api.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace nebula::api
