#pragma once
// Structured output: the JSON text a model constrained by `response_format` writes. vLLM compiles
// the schema into a grammar and lets the model sample inside it; the simulator writes a value
// that conforms to the schema directly, seeded, then cuts it into tokens like any other answer.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace nebula::sim {

// Schemas keep the order of their properties as the client wrote them (as a model writes them).
using ordered_json = nlohmann::ordered_json;

enum class OutputFormat { Text, JsonObject, JsonSchema };

// Why `schema` cannot be followed, or nullopt. Accepted: types object, array, string, number,
// integer, boolean, null (or a list of them); properties, required, additionalProperties; enum,
// const; items (a schema, or a list of them: a tuple, as prefixItems), minItems, maxItems; minimum, maximum (and the
// exclusive ones); minLength, maxLength; anyOf, oneOf, allOf; $ref to #/$defs/... or #/definitions/...; `true`.
// Anything else (a schema that is not an object, an unknown type, a $ref that leads nowhere, minItems > maxItems, an
// empty enum) is an error, as vLLM's grammar compiler refuses it.
std::optional<std::string> schema_error(const ordered_json& schema);

// A JSON text that conforms to `schema` (a checked one), deterministic in `seed`. With no schema
// (response_format json_object) any JSON object. Written as models write JSON: `{"a": 1, "b": [2]}`.
// Writing stops at `max_bytes` (a hostile schema can ask for more than any context holds): the
// text is then cut there and `complete` is false.
struct GeneratedJson {
  std::string text;
  bool complete = true;
};
GeneratedJson generate_json(const ordered_json* schema, uint64_t seed, size_t max_bytes = 1 << 20);

// The tokens the simulator emits for a JSON text: a run of letters and digits (with the spaces
// before it), or up to two other characters. Joined, they give the text back.
std::vector<std::string> json_tokens(std::string_view text);

}  // namespace nebula::sim
