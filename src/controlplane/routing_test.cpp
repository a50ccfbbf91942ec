#include "controlplane/controlplane.h"

#include <gtest/gtest.h>

namespace nebula::controlplane {
namespace {

TEST(CanonicalRouting, KeepsTheDefaultAndCanonicalisesTheRest) {
  api::DeploymentSpec spec;
  EXPECT_TRUE(canonical_routing(spec));
  EXPECT_EQ(spec.routing, "");
  spec.routing = "prefix+load";
  EXPECT_TRUE(canonical_routing(spec));
  EXPECT_EQ(spec.routing, "prefix+load,prefix=2,queue=1,kv=1");
  spec.routing = "session,vnodes=100";
  EXPECT_TRUE(canonical_routing(spec));
  EXPECT_EQ(spec.routing, "session");
}

TEST(CanonicalRouting, RefusesWhatTheRouterRefuses) {
  api::DeploymentSpec spec;
  spec.routing = "prefix+load,kv=-1";
  auto valid = canonical_routing(spec);
  ASSERT_FALSE(valid);
  EXPECT_EQ(valid.error().code, ErrorCode::InvalidArgument);
  EXPECT_EQ(valid.error().message, "spec.routing: routing parameter 'kv' must be between 0 and 1000, got -1");
  EXPECT_EQ(spec.routing, "prefix+load,kv=-1");  // left as given
}

}  // namespace
}  // namespace nebula::controlplane
