#pragma once
// The tools and resources of the MCP server, over the Api seam. Internal to src/mcp.
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mcp/mcp.h"

namespace nebula::mcp {

// A tool's outcome: structured content (an object), or a message a model can act on.
struct ToolOutcome {
  json structured = json::object();
  std::string error;  // non-empty: the call failed (isError)
};

struct Tool {
  std::string name;
  std::string title;
  std::string description;
  json input_schema;
  json output_schema;
  bool read_only = false;
  bool destructive = false;
  bool idempotent = false;
  awaitable<ToolOutcome> (*run)(Api& api, json arguments) = nullptr;
};

// Every tool, in the order tools/list shows them.
const std::vector<Tool>& tools();
// The tools/list entry of a tool.
json describe(const Tool& tool);

// Checks arguments against the subset of JSON Schema the tools' input schemas use (object,
// properties, required, additionalProperties false, type, minimum, maximum, maxLength): "" when
// they conform, else what is wrong ("replicas: expected an integer").
std::string check_arguments(const json& schema, const json& arguments);

// Management API paths: http::api_path().
using http::api_path;

// GET/POST/... of a JSON document; a non-2xx answer is an error carrying the server's message.
awaitable<Result<json>> api_json(Api& api, std::string method, std::string path, std::string body = "");

// A deployment with its replicas: {"deployment", "replicas"}.
awaitable<Result<json>> deployment_with_replicas(Api& api, std::string name);

// The resources: fixed ones, the templates, and what a URI reads as.
json resource_list();
json resource_template_list();
// The plural whose watch events change `uri`, and the deployment name for nebula://deployments/X
// ("" for the others); nullopt for an unknown URI.
struct ResourceWatch {
  std::string plural;
  std::string name;
};
std::optional<ResourceWatch> resource_watch(const std::string& uri);
// Whether a watch event (of `plural`) changes the resource.
bool changes(const ResourceWatch& resource, const std::string& plural, const json& event);
// The document a resource reads as; NotFound for an unknown URI or a missing deployment.
awaitable<Result<json>> read_resource(Api& api, std::string uri);

}  // namespace nebula::mcp
