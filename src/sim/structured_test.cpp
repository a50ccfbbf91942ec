#include "sim/structured.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

namespace nebula::sim {
namespace {

// A small JSON Schema validator written apart from the generator (the subset schema_error()
// accepts), so the generator is checked against the rules, not against itself.
class Validator {
 public:
  explicit Validator(const ordered_json& root) : root_(root) {}

  // "" when `value` conforms, else where and why not.
  std::string check(const ordered_json& value, const ordered_json& schema, const std::string& path) const {
    if (schema.is_boolean()) return schema.get<bool>() ? "" : path + ": false schema";
    if (schema.contains("$ref")) {
      std::string ref = schema["$ref"];
      const ordered_json* target = nullptr;
      if (ref == "#") {
        target = &root_;
      } else if (ref.rfind("#/$defs/", 0) == 0) {
        target = &root_["$defs"][ref.substr(8)];
      } else if (ref.rfind("#/definitions/", 0) == 0) {
        target = &root_["definitions"][ref.substr(14)];
      }
      if (!target) return path + ": bad $ref";
      if (auto error = check(value, *target, path); !error.empty()) return error;
    }
    if (schema.contains("const") && value != schema["const"]) return path + ": not the const";
    if (schema.contains("enum")) {
      bool found = false;
      for (const ordered_json& option : schema["enum"]) found = found || option == value;
      if (!found) return path + ": not in the enum";
    }
    if (schema.contains("type")) {
      bool any = false;
      if (schema["type"].is_array()) {
        for (const ordered_json& type : schema["type"]) any = any || has_type(value, type);
      } else {
        any = has_type(value, schema["type"]);
      }
      if (!any) return path + ": wrong type for " + value.dump();
    }
    if (schema.contains("anyOf")) {
      int matches = count_matches(value, schema["anyOf"], path);
      if (matches == 0) return path + ": no anyOf branch matches";
    }
    if (schema.contains("oneOf")) {
      int matches = count_matches(value, schema["oneOf"], path);
      if (matches != 1) return path + ": " + std::to_string(matches) + " oneOf branches match";
    }
    if (schema.contains("allOf")) {
      for (const ordered_json& branch : schema["allOf"]) {
        if (auto error = check(value, branch, path); !error.empty()) return error;
      }
    }
    if (value.is_object()) return check_object(value, schema, path);
    if (value.is_array()) return check_array(value, schema, path);
    if (value.is_string()) {
      size_t length = value.get<std::string>().size();
      if (schema.contains("minLength") && length < schema["minLength"].get<size_t>()) return path + ": too short";
      if (schema.contains("maxLength") && length > schema["maxLength"].get<size_t>()) return path + ": too long";
    }
    if (value.is_number()) {
      double number = value.get<double>();
      if (schema.contains("minimum") && number < schema["minimum"].get<double>()) return path + ": below minimum";
      if (schema.contains("maximum") && number > schema["maximum"].get<double>()) return path + ": above maximum";
      if (schema.contains("exclusiveMinimum") && number <= schema["exclusiveMinimum"].get<double>()) {
        return path + ": not above exclusiveMinimum";
      }
      if (schema.contains("exclusiveMaximum") && number >= schema["exclusiveMaximum"].get<double>()) {
        return path + ": not below exclusiveMaximum";
      }
    }
    return "";
  }

 private:
  static bool has_type(const ordered_json& value, const ordered_json& type) {
    if (type == "object") return value.is_object();
    if (type == "array") return value.is_array();
    if (type == "string") return value.is_string();
    if (type == "integer") return value.is_number_integer();
    if (type == "number") return value.is_number();
    if (type == "boolean") return value.is_boolean();
    if (type == "null") return value.is_null();
    return false;
  }

  int count_matches(const ordered_json& value, const ordered_json& branches, const std::string& path) const {
    int matches = 0;
    for (const ordered_json& branch : branches) matches += check(value, branch, path).empty() ? 1 : 0;
    return matches;
  }

  std::string check_object(const ordered_json& value, const ordered_json& schema, const std::string& path) const {
    if (schema.contains("required")) {
      for (const ordered_json& name : schema["required"]) {
        if (!value.contains(name.get<std::string>())) return path + ": missing " + name.get<std::string>();
      }
    }
    for (const auto& [key, member] : value.items()) {
      bool declared = schema.contains("properties") && schema["properties"].contains(key);
      if (declared) {
        if (auto error = check(member, schema["properties"][key], path + "." + key); !error.empty()) return error;
      } else if (schema.contains("additionalProperties")) {
        const ordered_json& additional = schema["additionalProperties"];
        if (additional == false) return path + ": unexpected member " + key;
        if (auto error = check(member, additional, path + "." + key); !error.empty()) return error;
      }
    }
    return "";
  }

  std::string check_array(const ordered_json& value, const ordered_json& schema, const std::string& path) const {
    if (schema.contains("minItems") && value.size() < schema["minItems"].get<size_t>()) return path + ": too few";
    if (schema.contains("maxItems") && value.size() > schema["maxItems"].get<size_t>()) return path + ": too many";
    if (schema.contains("items")) {
      for (size_t index = 0; index < value.size(); ++index) {
        auto error = check(value[index], schema["items"], path + "[" + std::to_string(index) + "]");
        if (!error.empty()) return error;
      }
    }
    return "";
  }

  const ordered_json& root_;
};

// Random schemas over every keyword the generator claims. oneOf branches have distinct types so
// exactly one can match.
class SchemaMaker {
 public:
  explicit SchemaMaker(uint64_t seed) : state_(seed) {}

  ordered_json root() {
    ordered_json schema = object(0);
    if (below(2) == 0) {
      schema["$defs"]["Item"] = object(2);
      schema["properties"]["ref"] = {{"$ref", "#/$defs/Item"}};
      if (below(2) == 0) schema["required"].push_back("ref");
    }
    return schema;
  }

 private:
  uint64_t below(uint64_t bound) {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return (state_ >> 33) % bound;
  }

  ordered_json any(int depth) {
    uint64_t kind = below(depth >= 3 ? 9 : 12);
    switch (kind) {
      case 0: return {{"type", "string"}};
      case 1: {
        ordered_json schema = {{"type", "string"}, {"minLength", below(5)}};
        schema["maxLength"] = schema["minLength"].get<uint64_t>() + below(20);
        return schema;
      }
      case 2: return {{"type", "integer"}, {"minimum", static_cast<int>(below(50)) - 25}, {"maximum", 30}};
      case 3: return {{"type", "number"}, {"exclusiveMinimum", 0}, {"maximum", 1}};
      case 4: return {{"type", "boolean"}};
      case 5: return {{"type", "null"}};
      case 6: return {{"enum", {"red", "green", 3, nullptr}}};
      case 7: return {{"const", "fixed"}};
      case 8: return {{"type", ordered_json::array({"integer", "null"})}};
      case 9: return object(depth + 1);
      case 10: {
        ordered_json schema = {{"type", "array"}, {"items", any(depth + 1)}, {"minItems", below(3)}};
        if (below(2) == 0) schema["maxItems"] = schema["minItems"].get<uint64_t>() + below(3);
        return schema;
      }
      default:
        if (below(2) == 0) return {{"anyOf", {any(depth + 1), any(depth + 1)}}};
        return {{"oneOf", {{{"type", "string"}}, {{"type", "integer"}}, {{"type", "boolean"}}}}};
    }
  }

  ordered_json object(int depth) {
    ordered_json schema = {{"type", "object"}, {"properties", ordered_json::object()}};
    int members = 1 + static_cast<int>(below(4));
    for (int index = 0; index < members; ++index) {
      std::string name = "p" + std::to_string(index);
      schema["properties"][name] = any(depth + 1);
      if (below(3) != 0) schema["required"].push_back(name);
    }
    if (below(2) == 0) schema["additionalProperties"] = false;
    return schema;
  }

  uint64_t state_;
};

TEST(JsonTokens, SplitLikeATokenizerAndJoinBack) {
  std::string text = R"({"name": "Lorem ipsum", "n": [1, 2.5], "ok": true})";
  std::vector<std::string> tokens = json_tokens(text);
  std::string joined;
  for (const std::string& token : tokens) joined += token;
  EXPECT_EQ(joined, text);
  ASSERT_GE(tokens.size(), 4u);
  EXPECT_EQ(tokens[0], "{\"");
  EXPECT_EQ(tokens[1], "name");
  EXPECT_EQ(tokens[2], "\":");
  EXPECT_EQ(tokens[3], " \"");
  EXPECT_TRUE(json_tokens("").empty());
  EXPECT_EQ(json_tokens("  ").size(), 1u);
}

TEST(SchemaError, RefusesWhatAGrammarCompilerRefuses) {
  auto error_of = [](const char* text) { return schema_error(ordered_json::parse(text)); };
  EXPECT_FALSE(error_of(R"({"type":"object","properties":{"a":{"type":"string"}}})"));
  EXPECT_FALSE(error_of("true"));
  EXPECT_FALSE(error_of(R"({"$defs":{"A":{"type":"integer"}},"$ref":"#/$defs/A"})"));
  EXPECT_FALSE(error_of(R"({"definitions":{"N":{"type":"object","properties":{"next":{"$ref":"#/definitions/N"}}}},
                          "$ref":"#/definitions/N"})"))
      << "a recursive schema is fine";
  struct Case {
    const char* schema;
    const char* says;
  };
  for (const Case& bad :
       {Case{R"("a string")", "must be a JSON object"}, Case{"[1]", "must be a JSON object"},
        Case{"false", "matches nothing"}, Case{R"({"type":"text"})", "unknown type"},
        Case{R"({"type":["string","date"]})", "unknown type"},
        Case{R"({"properties":{"a":{"type":"strin"}}})", "$.properties.a.type"},
        Case{R"({"$ref":"#/$defs/Missing"})", "does not resolve"},
        Case{R"({"type":"array","minItems":3,"maxItems":1})", "minItems is greater"},
        Case{R"({"type":"array","minItems":-1})", "non-negative"}, Case{R"({"enum":[]})", "non-empty"},
        Case{R"({"anyOf":[]})", "non-empty"}, Case{R"({"anyOf":[{"type":"nope"}]})", "anyOf[0]"},
        Case{R"({"type":"number","minimum":5,"maximum":1})", "minimum is greater"},
        Case{R"({"type":"object","properties":{},"required":["x"],"additionalProperties":false})", "'x' is required"},
        Case{R"({"properties":[]})", "properties"}}) {
    auto error = error_of(bad.schema);
    ASSERT_TRUE(error) << bad.schema;
    EXPECT_NE(error->find(bad.says), std::string::npos) << *error;
  }
}

TEST(GenerateJson, FollowsTheSchemaInOrder) {
  ordered_json schema = ordered_json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "minLength": 3, "maxLength": 12},
      "age": {"type": "integer", "minimum": 18, "maximum": 20},
      "color": {"enum": ["red", "blue"]},
      "kind": {"const": "person"},
      "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
      "address": {"$ref": "#/$defs/Address"}
    },
    "required": ["name", "age", "color", "kind", "tags", "address"],
    "additionalProperties": false,
    "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
  })");
  std::string text = generate_json(&schema, 42).text;
  ordered_json value = ordered_json::parse(text);
  EXPECT_EQ(Validator(schema).check(value, schema, "$"), "") << text;
  std::vector<std::string> keys;
  for (const auto& [key, member] : value.items()) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"name", "age", "color", "kind", "tags", "address"})) << text;
  EXPECT_EQ(text.rfind("{\"name\": \"", 0), 0u) << "written with a space after ':' and ','";
  EXPECT_EQ(generate_json(&schema, 42).text, text);
  EXPECT_NE(generate_json(&schema, 43).text, text);
}

// What zod-to-json-schema writes for a tuple and an optional (nullable) field under strict mode.
TEST(GenerateJson, TuplesAndNullableFields) {
  ordered_json schema = ordered_json::parse(R"({"$schema":"http://json-schema.org/draft-07/schema#",
      "type":"object","properties":{"point":{"type":"array","items":[{"type":"number"},{"type":"string"}],
      "minItems":2,"maxItems":2},"note":{"anyOf":[{"type":"string"},{"type":"null"}]},
      "pair":{"type":"array","prefixItems":[{"type":"integer"},{"type":"boolean"}]}},
      "required":["point","note","pair"],"additionalProperties":false})");
  ASSERT_FALSE(schema_error(schema));
  for (uint64_t seed = 0; seed < 20; ++seed) {
    ordered_json value = ordered_json::parse(generate_json(&schema, seed).text);
    ASSERT_EQ(value["point"].size(), 2u) << value.dump();
    EXPECT_TRUE(value["point"][0].is_number());
    EXPECT_TRUE(value["point"][1].is_string());
    EXPECT_TRUE(value["note"].is_string() || value["note"].is_null());
    ASSERT_EQ(value["pair"].size(), 2u);
    EXPECT_TRUE(value["pair"][0].is_number_integer());
    EXPECT_TRUE(value["pair"][1].is_boolean());
  }
  EXPECT_TRUE(schema_error(ordered_json::parse(R"({"type":"array","items":[{"type":"wat"}]})")));
}

TEST(GenerateJson, AnyObjectWithoutASchema) {
  for (uint64_t seed = 0; seed < 50; ++seed) {
    ordered_json value = ordered_json::parse(generate_json(nullptr, seed).text);
    EXPECT_TRUE(value.is_object());
    EXPECT_FALSE(value.empty());
  }
}

TEST(GenerateJson, RecursiveSchemasEnd) {
  ordered_json schema = ordered_json::parse(R"({"$defs":{"Node":{"type":"object",
      "properties":{"value":{"type":"integer"},"children":{"type":"array","items":{"$ref":"#/$defs/Node"}}},
      "required":["value","children"]}},"$ref":"#/$defs/Node"})");
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::string text = generate_json(&schema, seed).text;
    ordered_json value = ordered_json::parse(text);
    EXPECT_EQ(Validator(schema).check(value, schema, "$"), "") << text;
  }
}

// Schemas that ask for more than any context holds end at the byte budget, quickly.
TEST(GenerateJson, HostileSchemasStopAtTheBudget) {
  for (const char* text : {R"({"type":"string","minLength":1000000000000})",
                           R"({"type":"array","minItems":9223372036854775807,"items":{"type":"integer"}})",
                           R"({"$defs":{"A":{"type":"array","minItems":3,"items":{"$ref":"#/$defs/A"}}},
                               "$ref":"#/$defs/A"})",
                           R"({"type":"object","properties":{"a":{"$ref":"#"},"b":{"$ref":"#"},"c":{"$ref":"#"}},
                               "required":["a","b","c"]})"}) {
    ordered_json schema = ordered_json::parse(text);
    ASSERT_FALSE(schema_error(schema)) << text;
    GeneratedJson generated = generate_json(&schema, 1, 4096);
    EXPECT_FALSE(generated.complete) << text;
    EXPECT_LE(generated.text.size(), 4096u) << text;
  }
}

// The randomized check: many random schemas, several seeds each; every output parses, conforms,
// and is the same for the same seed.
TEST(GenerateJson, RandomSchemasAlwaysConform) {
  for (uint64_t schema_seed = 1; schema_seed <= 400; ++schema_seed) {
    ordered_json schema = SchemaMaker(schema_seed).root();
    ASSERT_FALSE(schema_error(schema)) << *schema_error(schema) << "\n" << schema.dump();
    Validator validator(schema);
    for (uint64_t seed = 0; seed < 5; ++seed) {
      std::string text = generate_json(&schema, seed * 7919 + schema_seed).text;
      ordered_json value = ordered_json::parse(text, nullptr, false);
      ASSERT_FALSE(value.is_discarded()) << "not JSON: " << text << "\nschema: " << schema.dump();
      ASSERT_EQ(validator.check(value, schema, "$"), "") << text << "\nschema: " << schema.dump();
      ASSERT_EQ(generate_json(&schema, seed * 7919 + schema_seed).text, text);
      std::string joined;
      for (const std::string& token : json_tokens(text)) joined += token;
      ASSERT_EQ(joined, text);
    }
  }
}

}  // namespace
}  // namespace nebula::sim
