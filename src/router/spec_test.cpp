#include "router/spec.h"

#include <gtest/gtest.h>

#include <random>

#include "router/policy.h"

namespace nebula::router {
namespace {

std::string error_of(std::string_view spec) {
  auto policy = make_policy(spec);
  EXPECT_FALSE(policy.ok()) << spec << " was accepted as " << (policy ? (*policy)->describe() : "");
  return policy ? "" : policy.error().message;
}

std::string canonical(std::string_view spec) {
  auto policy = make_policy(spec);
  EXPECT_TRUE(policy.ok()) << spec << ": " << (policy ? "" : policy.error().message);
  return policy ? (*policy)->describe() : "";
}

TEST(RouterSpec, EveryPolicyByNameAndTheDefault) {
  EXPECT_EQ(canonical(""), "prefix+load,prefix=2,queue=1,kv=1") << "the default";
  for (const char* name : {"least-outstanding", "round-robin", "power-of-two", "session", "prefix"}) {
    EXPECT_EQ(canonical(name), name);
  }
  EXPECT_EQ(canonical("kv-load"), "kv-load,queue=1,kv=1");
  EXPECT_EQ(canonical("prefix+load"), "prefix+load,prefix=2,queue=1,kv=1");
}

TEST(RouterSpec, CanonicalFormReadsBackToItself) {
  for (const char* spec :
       {"session,vnodes=200,load-bound=2", "prefix,threshold=0.75,balance-abs=8,balance-rel=2,max-blocks=100",
        "prefix+load,prefix=2,queue=1,kv=1", "prefix+load,kv=0.25,outstanding=3,kv-max=0.9", "kv-load,queue=1",
        "prefix+load,max-blocks=64,prefix=1", "session,load-bound=1.25"}) {
    std::string once = canonical(spec);
    EXPECT_EQ(canonical(once), once) << spec;
  }
  // Parameters come out in the policy's order; defaults are left out.
  EXPECT_EQ(canonical("session,vnodes=200,load-bound=2"), "session,load-bound=2,vnodes=200");
  EXPECT_EQ(canonical("session,load-bound=1.25"), "session");
  EXPECT_EQ(canonical("prefix,threshold=0.75"), "prefix,threshold=0.75");
}

TEST(RouterSpec, GivenWeightsAreAllTheWeights) {
  // A spec that names scorers uses exactly those: the others are 0.
  EXPECT_EQ(canonical("prefix+load,queue=3"), "prefix+load,queue=3");
  EXPECT_EQ(canonical("prefix+load,prefix=1,outstanding=1"), "prefix+load,prefix=1,outstanding=1");
  EXPECT_EQ(canonical("prefix+load,prefix=0,kv=2"), "prefix+load,kv=2");
  // Tunables alone leave the default weights.
  EXPECT_EQ(canonical("prefix+load,kv-max=0.9"), "prefix+load,prefix=2,queue=1,kv=1,kv-max=0.9");
}

TEST(RouterSpec, RefusesBadSpecsNamingTheBadPart) {
  EXPECT_EQ(error_of("fastest"),
            "unknown routing policy 'fastest' (one of: least-outstanding, round-robin, power-of-two, session, prefix, "
            "kv-load, prefix+load)");
  EXPECT_EQ(error_of("sesion"), "unknown routing policy 'sesion' (did you mean 'session'?)");
  EXPECT_EQ(error_of("session,ttl=3"),
            "unknown parameter 'ttl' for routing policy 'session' (it takes: load-bound, vnodes)");
  EXPECT_EQ(error_of("round-robin,x=1"), "unknown parameter 'x' for routing policy 'round-robin' (it takes: none)");
  EXPECT_EQ(error_of("prefix+load,kv=1,kv=2"), "routing parameter 'kv' is given twice");
  EXPECT_EQ(error_of("prefix+load,kv=abc"), "routing parameter 'kv' must be a number, got 'abc'");
  EXPECT_EQ(error_of("prefix+load,kv=-1"), "routing parameter 'kv' must be between 0 and 1000, got -1");
  EXPECT_EQ(error_of("prefix+load,kv=nan"), "routing parameter 'kv' must be a number, got 'nan'");
  EXPECT_EQ(error_of("prefix+load,kv=inf"), "routing parameter 'kv' must be a number, got 'inf'");
  EXPECT_EQ(error_of("prefix+load,kv=1e999"), "routing parameter 'kv' must be a number, got '1e999'");
  EXPECT_EQ(error_of("prefix+load,kv="), "routing parameter 'kv' must be a number, got ''");
  EXPECT_EQ(error_of("prefix+load,kv=1x"), "routing parameter 'kv' must be a number, got '1x'");
  EXPECT_EQ(error_of("prefix+load,kv= 1"), "routing parameter 'kv' must be a number, got ' 1'");
  EXPECT_EQ(error_of("prefix+load,prefix=0,queue=0"),
            "routing policy 'prefix+load' needs a weight above 0 for one of: prefix, queue, kv, outstanding");
  EXPECT_EQ(error_of("kv-load,queue=0,kv=0"), "routing policy 'kv-load' needs a weight above 0 for one of: queue, kv");
  EXPECT_EQ(error_of("session,vnodes=1.5"), "routing parameter 'vnodes' must be a whole number, got 1.5");
  EXPECT_EQ(error_of("session,vnodes=0"), "routing parameter 'vnodes' must be between 1 and 1000, got 0");
  EXPECT_EQ(error_of("session,load-bound=0.5"), "routing parameter 'load-bound' must be between 1 and 100, got 0.5");
  EXPECT_EQ(error_of("prefix,threshold=2"), "routing parameter 'threshold' must be between 0 and 1, got 2");
  EXPECT_EQ(error_of("session,"), "routing spec 'session,' has an empty parameter");
  EXPECT_EQ(error_of("prefix+load,,kv=1"), "routing spec 'prefix+load,,kv=1' has an empty parameter");
  EXPECT_EQ(error_of(",kv=1"), "routing spec ',kv=1' has no policy name");
  EXPECT_EQ(error_of("session,vnodes"), "routing parameter 'vnodes' needs a value (name=number)");
  EXPECT_EQ(error_of("session,=3"), "routing parameter '=3' has no valid name before '='");
  EXPECT_EQ(error_of("Session"), "routing policy name 'Session' may only hold a-z, 0-9, '-' and '+'");
  EXPECT_EQ(error_of(" session"), "routing policy name ' session' may only hold a-z, 0-9, '-' and '+'");
  EXPECT_EQ(error_of("sess\nion"), "routing policy name 'sess\\x0aion' may only hold a-z, 0-9, '-' and '+'");
  EXPECT_EQ(error_of("session,vnodes=\xff"), "routing parameter 'vnodes' must be a number, got '\\xff'");
  EXPECT_EQ(error_of(std::string(300, 'a')), "routing spec is too long (300 characters; at most 256)");
  EXPECT_EQ(error_of(std::string_view("session\0x", 9)),
            "routing policy name 'session\\x00x' may only hold a-z, 0-9, '-' and '+'");
}

TEST(RouterSpec, SplitsIntoNameAndTextValues) {
  auto parts = split_spec("prefix+load,prefix=2,kv=0.5");
  ASSERT_TRUE(parts.ok());
  EXPECT_EQ(parts->name, "prefix+load");
  ASSERT_EQ(parts->params.size(), 2u);
  EXPECT_EQ(parts->params[1], (std::pair<std::string, std::string>{"kv", "0.5"}));
  EXPECT_EQ(format_number(2), "2");
  EXPECT_EQ(format_number(0.5), "0.5");
  EXPECT_EQ(format_number(1.25), "1.25");
}

// Random strings, and random edits of good specs, never crash the reader; whatever it accepts
// describes itself as a spec that reads back to the same description.
TEST(RouterSpec, RandomSpecsNeverCrashAndAcceptedOnesRoundTrip) {
  std::mt19937_64 random(7);
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz+-=,.0123456789e \t\x01\xff";
  const std::vector<std::string> seeds = {"prefix+load,prefix=2,queue=1,kv=1", "session,load-bound=1.5,vnodes=10",
                                          "prefix,threshold=0.3", "kv-load,kv-max=0.8", "power-of-two"};
  int accepted = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string spec;
    if (round % 2 == 0) {
      size_t length = random() % 40;
      for (size_t i = 0; i < length; ++i) spec += alphabet[random() % alphabet.size()];
    } else {
      spec = seeds[random() % seeds.size()];
      for (int edit = 0, edits = 1 + static_cast<int>(random() % 3); edit < edits && !spec.empty(); ++edit) {
        size_t at = random() % spec.size();
        switch (random() % 3) {
          case 0: spec[at] = alphabet[random() % alphabet.size()]; break;
          case 1: spec.erase(at, 1); break;
          default: spec.insert(at, 1, alphabet[random() % alphabet.size()]);
        }
      }
    }
    auto policy = make_policy(spec);
    if (!policy) {
      EXPECT_FALSE(policy.error().message.empty());
      continue;
    }
    ++accepted;
    std::string described = (*policy)->describe();
    auto again = make_policy(described);
    ASSERT_TRUE(again.ok()) << spec << " -> " << described;
    EXPECT_EQ((*again)->describe(), described);
  }
  EXPECT_GT(accepted, 100);  // the edits keep some specs valid, so the round trip is exercised
}

TEST(RouterSpec, PolicyNamesListsPoliciesAndScorers) {
  EXPECT_EQ(policy_names(),
            "least-outstanding, round-robin, power-of-two, session, prefix, kv-load, prefix+load; scorers of "
            "prefix+load: prefix, queue, kv, outstanding");
}

}  // namespace
}  // namespace nebula::router
