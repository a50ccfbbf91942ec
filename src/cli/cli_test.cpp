#include "cli/cli.h"

#include <gtest/gtest.h>

#include <limits>

namespace nebula::cli {
namespace {

TEST(ApiPath, PercentEncodesEverySegmentAndQueryValue) {
  EXPECT_EQ(api_path({"deployments", "chat"}), "/api/v1/deployments/chat");
  EXPECT_EQ(api_path({"deployments", "a/b", "logs"}, {{"replica", "0"}, {"tail", "x y&z=1"}}),
            "/api/v1/deployments/a%2Fb/logs?replica=0&tail=x%20y%26z%3D1");
  EXPECT_EQ(api_path({"keys", "k\r\nDELETE /api/v1/deployments/victim HTTP/1.1"}),
            "/api/v1/keys/k%0D%0ADELETE%20%2Fapi%2Fv1%2Fdeployments%2Fvictim%20HTTP%2F1.1");
  EXPECT_EQ(api_path({"modes", ".."}), "/api/v1/modes/..");  // unreserved, and refused as a name
}

TEST(CheckName, FollowsTheServersRuleAndSaysIt) {
  EXPECT_TRUE(check_name("chat-1").ok());
  for (const char* bad : {"my model", "a/b", "Chat", "-x", "", "x\r\nDELETE", ".."}) {
    auto checked = check_name(bad);
    ASSERT_FALSE(checked.ok()) << bad;
    EXPECT_NE(checked.error().message.find("invalid name"), std::string::npos);
    EXPECT_NE(checked.error().message.find("lowercase letters, digits and '-'"), std::string::npos);
  }
  EXPECT_FALSE(check_name(std::string(64, 'a')).ok());
}

std::string check(const CLI::Validator& validator, std::string input) {
  return validator(input);
}

TEST(WholeNumber, SaysWhatIsWrong) {
  auto replicas = whole_number(0, 1000);
  EXPECT_EQ(check(replicas, "3"), "");
  EXPECT_EQ(check(replicas, "+3"), "");
  EXPECT_EQ(check(replicas, "two"), "'two' is not a whole number");
  EXPECT_EQ(check(replicas, "1.5"), "'1.5' is not a whole number");
  EXPECT_EQ(check(replicas, ""), "'' is not a whole number");
  EXPECT_EQ(check(replicas, "5000"), "5000 is too large (at most 1000)");
  EXPECT_EQ(check(replicas, "-5"), "-5 cannot be negative");
  EXPECT_EQ(check(replicas, "99999999999999999999"), "'99999999999999999999' is too large (at most 1000)");
  auto any = whole_number(0, std::numeric_limits<int64_t>::max());
  EXPECT_EQ(check(any, "99999999999999999999"), "'99999999999999999999' is too large");
  EXPECT_EQ(check(whole_number(1, 64), "0"), "0 is too small (at least 1)");
  EXPECT_EQ(check(whole_number(-10, 10), "-99999999999999999999"), "'-99999999999999999999' is too small");
}

TEST(FlagValues, NumbersSayWhatIsWrongWithoutAHugeRange) {
  EXPECT_EQ(check(non_negative_number(), "0"), "");
  EXPECT_EQ(check(non_negative_number(), "2.5"), "");
  EXPECT_EQ(check(non_negative_number(), "-1"), "-1 cannot be negative");
  EXPECT_EQ(check(non_negative_number(), "lots"), "'lots' is not a number");
  EXPECT_EQ(check(non_negative_number(), "1e999"), "'1e999' is too large");
  EXPECT_EQ(check(positive_number(), "0"), "0 must be more than 0");
  EXPECT_EQ(check(positive_number(), "nan"), "'nan' is not a number");
}

TEST(FlagValues, DurationsSizesAndLogLevels) {
  EXPECT_EQ(check(duration_value(), "10m"), "");
  EXPECT_EQ(check(duration_value(), "0"), "");
  EXPECT_EQ(check(duration_value(1), "0"), "'0' is too short (at least 1 ms)");
  EXPECT_NE(check(duration_value(), "5parsecs").find("unknown unit 'parsecs'"), std::string::npos);
  EXPECT_NE(check(duration_value(), "99999999999999999999d").find("too large"), std::string::npos);
  EXPECT_EQ(check(size_value(), "24GB"), "");
  EXPECT_NE(check(size_value(), "24XB").find("unknown unit 'XB'"), std::string::npos);
  EXPECT_EQ(check(log_level_value(), "warn"), "");
  EXPECT_EQ(check(log_level_value(), "loud"), "unknown log level 'loud' (trace, debug, info, warn, error or off)");
}

}  // namespace
TEST(ServerList, OneOrSeveralUrlsAndClearErrorsForTheRest) {
  auto one = parse_server_list("http://10.0.0.1:8080/");
  ASSERT_TRUE(one) << one.error().message;
  EXPECT_EQ(*one, (std::vector<std::string>{"http://10.0.0.1:8080"}));
  auto three = parse_server_list("http://a:8080,https://b,http://c:1");
  ASSERT_TRUE(three) << three.error().message;
  EXPECT_EQ(three->size(), 3u);
  std::string many;
  for (int i = 0; i < 17; ++i) many += (i ? ",http://h" : "http://h") + std::to_string(i);
  struct Bad {
    std::string text;
    std::string says;
  };
  for (const Bad& bad : std::vector<Bad>{{"", "empty entry"},
                                         {",", "empty entry"},
                                         {"http://a,,http://b", "empty entry"},
                                         {"http://a,", "empty entry"},
                                         {"ftp://a", "'ftp://a'"},
                                         {"a:8080", "'a:8080'"},
                                         {"http://a/api/v1", "without a path"},
                                         {"http://a?x=1", "'http://a?x=1'"},
                                         {"http://user@a", "'http://user@a'"},
                                         {"http://a b", "'http://a b'"},
                                         {"http://a:99999", "'http://a:99999'"},
                                         {"http://a:0", "'http://a:0'"},
                                         {"http://a,http://a", "twice"},
                                         {many, "more than 16"}}) {
    auto parsed = parse_server_list(bad.text);
    ASSERT_FALSE(parsed) << bad.text;
    EXPECT_NE(parsed.error().message.find(bad.says), std::string::npos) << bad.text << ": " << parsed.error().message;
    EXPECT_EQ(parsed.error().message.rfind("--server: ", 0), 0u) << parsed.error().message;
  }
}

}  // namespace nebula::cli
