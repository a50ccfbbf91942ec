#include "api/spec_check.h"

#include <gtest/gtest.h>

namespace nebula::api {
namespace {

json document_with_spec(json spec) {
  return json{{"kind", "Deployment"}, {"metadata", {{"name", "chat"}}}, {"spec", std::move(spec)}};
}

std::string error_of(const json& document) {
  auto deployment = deployment_from_user_json(document);
  return deployment ? "" : deployment.error().message;
}

TEST(DeploymentFromUserJson, ReadsAKnownDocument) {
  auto deployment = deployment_from_user_json(document_with_spec(
      {{"model", "m"}, {"engine", "sim"}, {"replicas", 2}, {"shape", {{"layers", 32}}}, {"env", {{"A", "b"}}}}));
  ASSERT_TRUE(deployment.ok()) << deployment.error().message;
  EXPECT_EQ(deployment->spec.replicas, 2);
  EXPECT_EQ(deployment->spec.shape.layers, 32);
  // What `nebula get -o json` prints (status included) reads back.
  EXPECT_TRUE(deployment_from_user_json(to_json(*deployment)).ok());
}

TEST(DeploymentFromUserJson, KnowsTheRoutingField) {
  auto deployment = deployment_from_user_json(document_with_spec({{"model", "m"}, {"routing", "session"}}));
  ASSERT_TRUE(deployment.ok()) << deployment.error().message;
  EXPECT_EQ(deployment->spec.routing, "session");
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"routting", "session"}})),
            "unknown field 'spec.routting' (did you mean 'spec.routing'?)");
}

TEST(DeploymentFromUserJson, NamesAnUnknownFieldAndTheClosestKnownOne) {
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"replcias", 2}})),
            "unknown field 'spec.replcias' (did you mean 'spec.replicas'?)");
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"shape", {{"layer", 2}}}})),
            "unknown field 'spec.shape.layer' (did you mean 'spec.shape.layers'?)");
  EXPECT_EQ(error_of(json{{"metdata", {{"name", "x"}}}, {"spec", {{"model", "m"}}}}),
            "unknown field 'metdata' (did you mean 'metadata'?)");
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"zzzzzzzz", 1}})), "unknown field 'spec.zzzzzzzz'");
}

TEST(DeploymentFromUserJson, RefusesFractionsAndOverflowsInCounts) {
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"replicas", 1.7}})),
            "field 'replicas' must be a whole number, got 1.7");
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"replicas", 1e12}})),
            "field 'replicas' is too large (1000000000000.0)");
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"max_context", 99999999999LL}})),
            "field 'max_context' is too large (99999999999)");
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"replicas", "two"}})),
            "field 'replicas' must be a whole number, got string");
  // 2.0 is a whole number.
  EXPECT_EQ(error_of(document_with_spec({{"model", "m"}, {"replicas", 2.0}})), "");
}

TEST(ClosestNames, FindsPlausibleMisspellingsOnly) {
  std::vector<std::string> names = {"llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "qwen2.5-7b-instruct"};
  EXPECT_EQ(closest_names("llama-3.1-8b-instrcut", names, 2),
            (std::vector<std::string>{"llama-3.1-8b-instruct", "llama-3.1-70b-instruct"}));
  EXPECT_TRUE(closest_names("mistral", names).empty());
  EXPECT_EQ(closest_names("QWEN2.5-7B-INSTRUCT", names), std::vector<std::string>{"qwen2.5-7b-instruct"});
}

}  // namespace
}  // namespace nebula::api
