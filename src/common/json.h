#pragma once
// JSON helpers shared by the edges (HTTP, CLI, store documents).
#include <nlohmann/json.hpp>

#include <optional>
#include <string>

#include "common/result.h"

namespace nebula {
using json = nlohmann::json;

// Parses text into JSON or returns InvalidArgument naming what was wrong and where.
Result<json> parse_json(std::string_view text);
// JSON -> YAML text (block style), for `-o yaml`.
std::string json_to_yaml(const json& value);
// YAML text -> JSON, for `-f spec.yaml`. Scalars become numbers/bools when they look like them.
Result<json> yaml_to_json(std::string_view text);

}  // namespace nebula
