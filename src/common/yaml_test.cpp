// The YAML and JSON readers refuse documents built to exhaust memory or the stack, and keep
// reading ordinary specs as before.
#include <gtest/gtest.h>

#include <string>

#include "common/config.h"
#include "common/json.h"

namespace nebula {
namespace {

TEST(YamlToJson, ReadsScalarsListsAndMappings) {
  auto document = yaml_to_json("name: chat\nreplicas: 2\nratio: 0.5\non: true\nquoted: \"7\"\nargs: [a, b]\nnone:\n");
  ASSERT_TRUE(document.ok()) << document.error().message;
  EXPECT_EQ((*document)["name"], "chat");
  EXPECT_EQ((*document)["replicas"], 2);
  EXPECT_EQ((*document)["ratio"], 0.5);
  EXPECT_EQ((*document)["on"], true);
  EXPECT_EQ((*document)["quoted"], "7");
  EXPECT_EQ((*document)["args"], json::array({"a", "b"}));
  EXPECT_TRUE((*document)["none"].is_null());
}

TEST(YamlToJson, ExpandsSmallAliases) {
  auto document = yaml_to_json("base: &b {model: m, engine: sim}\ncopy: *b\nkey: &k name\nlist: [*k, *k]\n");
  ASSERT_TRUE(document.ok()) << document.error().message;
  EXPECT_EQ((*document)["copy"], (*document)["base"]);
  EXPECT_EQ((*document)["list"], json::array({"name", "name"}));
}

TEST(YamlToJson, EmptyTextIsNull) {
  auto document = yaml_to_json("");
  ASSERT_TRUE(document.ok());
  EXPECT_TRUE(document->is_null());
}

// The "billion laughs": nine levels of ten aliases each would expand to 10^9 strings.
TEST(YamlToJson, RefusesAnAliasBomb) {
  std::string text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int level = 1; level <= 9; ++level) {
    std::string previous = "*a" + std::to_string(level - 1);
    text += "a" + std::to_string(level) + ": &a" + std::to_string(level) + " [";
    for (int i = 0; i < 10; ++i) text += (i ? ", " : "") + previous;
    text += "]\n";
  }
  auto document = yaml_to_json(text);
  ASSERT_FALSE(document.ok());
  EXPECT_NE(document.error().message.find("more than 100000 values"), std::string::npos) << document.error().message;
}

TEST(YamlToJson, RefusesDeepNestingOfEveryKind) {
  std::string flow(20'000, '[');
  std::string block;
  for (int level = 0; level < 20'000; ++level) block += "- ";
  block += "x\n";
  std::string mapping;
  for (int level = 0; level < 100; ++level) mapping += std::string(level, ' ') + "k:\n";
  for (const auto& text : {flow, block, mapping}) {
    auto document = yaml_to_json(text);
    ASSERT_FALSE(document.ok());
    EXPECT_NE(document.error().message.find("nested deeper than 64"), std::string::npos) << document.error().message;
  }
  std::string fine;
  for (int level = 0; level < 30; ++level) fine += std::string(level, ' ') + "k:\n";
  EXPECT_TRUE(yaml_to_json(fine).ok());
}

TEST(YamlToJson, RefusesALargeDocument) {
  std::string text = "args: \"" + std::string(2 << 20, 'x') + "\"\n";
  auto document = yaml_to_json(text);
  ASSERT_FALSE(document.ok());
  EXPECT_NE(document.error().message.find("refused"), std::string::npos);
}

TEST(YamlToJson, RefusesDuplicateAndComplexKeys) {
  auto duplicate = yaml_to_json("replicas: 1\nmodel: m\nreplicas: 2\n");
  ASSERT_FALSE(duplicate.ok());
  EXPECT_NE(duplicate.error().message.find("duplicate key 'replicas'"), std::string::npos);
  EXPECT_NE(duplicate.error().message.find("line 3"), std::string::npos) << duplicate.error().message;
  EXPECT_FALSE(yaml_to_json("? [a, b]\n: c\n").ok());
  EXPECT_FALSE(yaml_to_json("{a: 1, a: 2}").ok());
}

TEST(YamlToJson, KeepsNonFiniteNumbersAsText) {
  auto document = yaml_to_json("a: inf\nb: nan\nc: 1e999\n");
  ASSERT_TRUE(document.ok());
  EXPECT_EQ((*document)["a"], "inf");
  EXPECT_EQ((*document)["b"], "nan");
  EXPECT_EQ((*document)["c"], "1e999");
}

TEST(ParseJson, RefusesDeepNestingBeforeParsing) {
  auto deep = parse_json(std::string(100'000, '['));
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.error().message.find("nested deeper"), std::string::npos);
  EXPECT_TRUE(parse_json("{\"a\": [[[\"[[[[[[\"]]]}").ok());
}

TEST(ParseDuration, RefusesOverflowAsTooLarge) {
  auto huge = parse_duration("99999999999999999999d");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.error().message.find("too large"), std::string::npos);
  auto size = parse_size_mb("99999999999999999999TB");
  ASSERT_FALSE(size.ok());
  EXPECT_NE(size.error().message.find("too large"), std::string::npos);
  EXPECT_EQ(parse_duration("10m")->count(), 600'000);
}

}  // namespace
}  // namespace nebula
