#include "api/modes.h"

#include <gtest/gtest.h>

namespace nebula::api {
namespace {

TEST(ModeJson, RoundTrips) {
  Mode mode;
  mode.metadata.name = "coding";
  mode.metadata.uid = "u1";
  mode.deployments = {"coder", "embed"};
  mode.active = true;
  mode.switched_ms = 1234;
  mode.last_switch = "from chat: stopped chat";
  auto parsed = mode_from_json(to_json(mode));
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->metadata.name, "coding");
  EXPECT_EQ(parsed->metadata.uid, "u1");
  EXPECT_EQ(parsed->deployments, mode.deployments);
  EXPECT_TRUE(parsed->active);
  EXPECT_EQ(parsed->switched_ms, 1234);
  EXPECT_EQ(parsed->last_switch, mode.last_switch);
}

TEST(ModeJson, RejectsWrongTypes) {
  EXPECT_FALSE(mode_from_json(json::array()));
  EXPECT_FALSE(mode_from_json(json{{"deployments", "a,b"}}));
}

}  // namespace
}  // namespace nebula::api
