#include "router/breaker.h"

#include <gtest/gtest.h>

namespace nebula::router {
namespace {

using namespace std::chrono_literals;
using State = Breaker::State;

const BreakerRules kRules{3, 5'000ms};
const Breaker::TimePoint kT0 = Breaker::TimePoint(100s);

TEST(Breaker, ClosedTakesEverything) {
  Breaker breaker;
  EXPECT_EQ(breaker.state(kT0), State::Closed);
  for (int i = 0; i < 5; ++i) breaker.sent();  // requests in flight at once
  EXPECT_TRUE(breaker.allows(kT0));
  breaker.succeeded();
  EXPECT_EQ(breaker.state(kT0), State::Closed);
}

TEST(Breaker, AFailureBelowTheThresholdLetsOneRequestThroughAtATime) {
  Breaker breaker;
  breaker.failed(kT0, kRules);
  EXPECT_EQ(breaker.state(kT0), State::Suspect);
  EXPECT_TRUE(breaker.allows(kT0));
  breaker.sent();
  EXPECT_EQ(breaker.state(kT0), State::Probing);
  EXPECT_FALSE(breaker.allows(kT0)) << "one request at a time while suspect";
  breaker.succeeded();
  EXPECT_EQ(breaker.state(kT0), State::Closed);
  EXPECT_EQ(breaker.consecutive_failures(), 0);
}

TEST(Breaker, OpensAtExactlyTheThresholdForTheCooldown) {
  Breaker breaker;
  breaker.failed(kT0, kRules);
  breaker.failed(kT0, kRules);
  EXPECT_EQ(breaker.state(kT0), State::Suspect);
  breaker.failed(kT0 + 1s, kRules);
  EXPECT_EQ(breaker.consecutive_failures(), 3);
  EXPECT_EQ(breaker.open_until(), kT0 + 6s);
  EXPECT_EQ(breaker.state(kT0 + 1s), State::Open);
  EXPECT_FALSE(breaker.allows(kT0 + 1s));
  EXPECT_FALSE(breaker.allows(kT0 + 6s - 1ms));
  EXPECT_TRUE(breaker.allows(kT0 + 6s)) << "due a probe once the cool-down is over";
}

TEST(Breaker, AFailedProbeReopensAGoodOneCloses) {
  Breaker breaker;
  for (int i = 0; i < 3; ++i) breaker.failed(kT0, kRules);
  auto after = kT0 + 5s;
  ASSERT_TRUE(breaker.allows(after));
  breaker.sent();
  EXPECT_EQ(breaker.state(after), State::Probing);
  EXPECT_FALSE(breaker.allows(after + 1h)) << "a single probe, however long it takes";
  breaker.failed(after + 1s, kRules);
  EXPECT_EQ(breaker.state(after + 1s), State::Open);
  EXPECT_EQ(breaker.open_until(), after + 6s);
  EXPECT_FALSE(breaker.allows(after + 6s - 1ms));

  ASSERT_TRUE(breaker.allows(after + 6s));
  breaker.sent();
  breaker.succeeded();
  EXPECT_EQ(breaker.state(after + 6s), State::Closed);
  EXPECT_TRUE(breaker.allows(after + 6s));
  // A later single failure does not reopen it: the count starts again.
  breaker.failed(after + 7s, kRules);
  EXPECT_EQ(breaker.state(after + 7s), State::Suspect);
}

TEST(Breaker, AThresholdOfOneOpensAtTheFirstFailure) {
  Breaker breaker;
  breaker.failed(kT0, {1, 1s});
  EXPECT_EQ(breaker.state(kT0), State::Open);
  EXPECT_TRUE(breaker.allows(kT0 + 1s));
}

}  // namespace
}  // namespace nebula::router
