// The tools: each a JSON Schema for its input and output, annotations, and a coroutine that calls
// Nebula's HTTP API. API failures become tool errors whose message says what to do next.
#include "mcp/tools.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "api/api.h"
#include "http/status.h"

namespace nebula::mcp {

namespace {

// The message of an error answer: OpenAI's {"error": {"message"}}, else the body itself.
std::string answer_message(const ApiAnswer& answer) {
  auto document = parse_json(answer.body);
  if (document && document->is_object() && document->contains("error") && (*document)["error"].is_object()) {
    return (*document)["error"].value("message", answer.body);
  }
  return answer.body.size() > 500 ? answer.body.substr(0, 500) : answer.body;
}

// What a model can do about an error, after the server's own message.
std::string advice(ErrorCode code) {
  switch (code) {
    case ErrorCode::Unauthenticated:
      return " (the API key is missing or invalid: set NEBULA_API_KEY to a key of this server)";
    case ErrorCode::PermissionDenied: return " (this API key's scope does not allow it: an admin key is needed)";
    case ErrorCode::ResourceExhausted: return " (a rate limit or budget was reached: wait and retry)";
    default: return "";
  }
}

Error tool_error(const Error& error) {
  return Error{error.code, error.message + advice(error.code)};
}

json object_schema(json properties, std::vector<std::string> required = {}) {
  json schema = {{"type", "object"}, {"properties", std::move(properties)}, {"additionalProperties", false}};
  if (!required.empty()) schema["required"] = std::move(required);
  return schema;
}

json name_property(const std::string& what) {
  return {{"type", "string"}, {"minLength", 1}, {"maxLength", 63}, {"description", what}};
}

json integer_property(const std::string& what, int64_t minimum, int64_t maximum) {
  return {{"type", "integer"}, {"minimum", minimum}, {"maximum", maximum}, {"description", what}};
}

json string_property(const std::string& what, int max_length = 256) {
  return {{"type", "string"}, {"maxLength", max_length}, {"description", what}};
}

json boolean_property(const std::string& what) {
  return {{"type", "boolean"}, {"description", what}};
}

// {"items": [...]} listings, as the API answers them.
json listing_output(const std::string& what) {
  return {{"type", "object"},
          {"properties", {{"items", {{"type", "array"}, {"items", {{"type", "object"}}}, {"description", what}}}}},
          {"required", {"items"}}};
}

json any_object_output(const std::string& what) {
  return {{"type", "object"}, {"description", what}};
}

// The deployment fields deploy and simulate_placement take.
json spec_properties(bool with_dry_run) {
  json properties = {
      {"name", name_property("Deployment name (also the model name clients ask the gateway for)")},
      {"model", string_property("Model: a catalog id (e.g. llama-3.1-8b-instruct), a Hugging Face id or a path", 1024)},
      {"engine", string_property("sim, vllm, sglang, llamacpp, tgi, ollama, docker or command (default sim)", 32)},
      {"replicas", integer_property("Number of replicas", 0, 1000)},
      {"gpus_per_replica", integer_property("GPUs per replica", 0, 64)},
      {"max_context", integer_property("Context length in tokens (0 = the engine's default)", 0, 10'000'000)},
      {"max_seqs", integer_property("Concurrent sequences per replica (0 = the engine's default)", 0, 100'000)},
      {"priority", integer_property("Priority: a higher one may evict a lower one", -1'000'000, 1'000'000)},
  };
  if (with_dry_run) properties["dry_run"] = boolean_property("Only show the placement plan; change nothing");
  return properties;
}

// The spec fields given in arguments, over `spec`.
json merge_spec(json spec, const json& arguments) {
  if (!spec.is_object()) spec = json::object();
  for (const char* field : {"model", "engine", "replicas", "gpus_per_replica", "max_context", "max_seqs", "priority"}) {
    if (arguments.contains(field)) spec[field] = arguments[field];
  }
  return spec;
}

Status check_name_argument(const json& arguments, const char* field = "name") {
  auto valid = api::validate_name(arguments.value(field, ""));
  if (!valid) return Error{valid.error().code, std::string(field) + ": " + valid.error().message};
  return {};
}

// Paths built outside the coroutines (g++ 12 miscompiles braced lists of literals inside them).
std::string collection_path(const std::string& plural) {
  return api_path({plural});
}

std::string deployment_path(const std::string& name, const std::string& action = "") {
  return action.empty() ? api_path({"deployments", name}) : api_path({"deployments", name, action});
}

std::string switch_path(const std::string& mode, bool dry_run) {
  if (!dry_run) return api_path({"modes", mode, "switch"});
  return api_path({"modes", mode, "switch"}, {{"dry_run", "1"}});
}

std::string logs_path(const std::string& name, const std::string& replica, int64_t tail_bytes) {
  return api_path({"deployments", name, "logs"},
                  {{"replica", replica}, {"tail", std::to_string(tail_bytes)}, {"follow", "0"}});
}

std::string usage_path(const json& arguments) {
  std::vector<std::pair<std::string, std::string>> query;
  for (const char* field : {"key", "model", "since"}) {
    if (arguments.contains(field)) query.emplace_back(field, arguments[field].get<std::string>());
  }
  return api_path({"usage"}, query);
}

ToolOutcome failed(const Error& error) {
  ToolOutcome outcome;
  outcome.error = error.message;
  return outcome;
}

ToolOutcome succeeded(json structured) {
  ToolOutcome outcome;
  outcome.structured = std::move(structured);
  return outcome;
}

awaitable<ToolOutcome> listing(Api& api, std::string path) {
  auto document = co_await api_json(api, "GET", std::move(path));
  if (!document) co_return failed(document.error());
  if (!document->is_object() || !(*document)["items"].is_array()) {
    co_return failed(Error{ErrorCode::Internal, "the server answered a listing without items"});
  }
  co_return succeeded(std::move(*document));
}

awaitable<ToolOutcome> gpu_status(Api& api, json) {
  co_return co_await listing(api, collection_path("gpus"));
}

awaitable<ToolOutcome> list_nodes(Api& api, json) {
  co_return co_await listing(api, collection_path("nodes"));
}

awaitable<ToolOutcome> list_deployments(Api& api, json) {
  co_return co_await listing(api, collection_path("deployments"));
}

awaitable<ToolOutcome> list_modes(Api& api, json) {
  co_return co_await listing(api, collection_path("modes"));
}

awaitable<ToolOutcome> get_deployment(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  auto document = co_await deployment_with_replicas(api, arguments["name"].get<std::string>());
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

json deployment_body(const std::string& name, json spec) {
  json body = json::object();
  body["metadata"]["name"] = name;
  body["spec"] = std::move(spec);
  return body;
}

awaitable<ToolOutcome> simulate_placement(Api& api, json arguments) {
  std::string name = arguments.value("name", "dry-run");
  if (arguments.contains("name")) {
    if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  }
  json spec = json::object();
  // The plan of a change to an existing deployment starts from its spec, as deploy would.
  if (arguments.contains("name")) {
    auto existing = co_await api_json(api, "GET", deployment_path(name));
    if (existing && existing->is_object()) spec = (*existing)["spec"];
  }
  auto plan = co_await api_json(api, "POST", collection_path("simulate"),
                                deployment_body(name, merge_spec(spec, arguments)).dump());
  if (!plan) co_return failed(plan.error());
  co_return succeeded(std::move(*plan));
}

awaitable<ToolOutcome> deploy(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  std::string name = arguments["name"].get<std::string>();
  auto existing = co_await api_json(api, "GET", deployment_path(name));
  bool exists = existing.ok();
  if (!exists && existing.error().code != ErrorCode::NotFound) co_return failed(existing.error());
  if (!exists && !arguments.contains("model")) {
    co_return failed(
        Error{ErrorCode::InvalidArgument, "deployment '" + name + "' does not exist yet: give a model to create it"});
  }
  json spec = json::object();
  if (exists) spec = (*existing)["spec"];
  spec = merge_spec(std::move(spec), arguments);
  std::string body = deployment_body(name, spec).dump();
  if (arguments.value("dry_run", false)) {
    auto plan = co_await api_json(api, "POST", collection_path("simulate"), body);
    if (!plan) co_return failed(plan.error());
    json result = json::object();
    result["dry_run"] = true;
    result["plan"] = std::move(*plan);
    co_return succeeded(std::move(result));
  }
  auto written = co_await api_json(api, "PUT", deployment_path(name), body);
  if (!written) co_return failed(written.error());
  json result = json::object();
  result["dry_run"] = false;
  result["created"] = !exists;
  result["deployment"] = std::move(*written);
  co_return succeeded(std::move(result));
}

awaitable<ToolOutcome> scale(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  json body = json::object();
  body["replicas"] = arguments["replicas"];
  auto document =
      co_await api_json(api, "PUT", deployment_path(arguments["name"].get<std::string>(), "scale"), body.dump());
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

awaitable<ToolOutcome> restart(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  auto document =
      co_await api_json(api, "POST", deployment_path(arguments["name"].get<std::string>(), "restart"), "{}");
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

// sleep and wake: the same POST, a different action.
awaitable<ToolOutcome> sleep_or_wake(Api& api, json arguments, std::string action) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  auto document = co_await api_json(api, "POST", deployment_path(arguments["name"].get<std::string>(), action), "");
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

awaitable<ToolOutcome> sleep_tool(Api& api, json arguments) {
  return sleep_or_wake(api, std::move(arguments), "sleep");
}

awaitable<ToolOutcome> wake_tool(Api& api, json arguments) {
  return sleep_or_wake(api, std::move(arguments), "wake");
}

awaitable<ToolOutcome> remove(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  auto document = co_await api_json(api, "DELETE", deployment_path(arguments["name"].get<std::string>()));
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

awaitable<ToolOutcome> switch_mode(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  std::string path = switch_path(arguments["name"].get<std::string>(), arguments.value("dry_run", false));
  auto document = co_await api_json(api, "POST", path, "{}");
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

awaitable<ToolOutcome> logs(Api& api, json arguments) {
  if (auto valid = check_name_argument(arguments); !valid) co_return failed(valid.error());
  int64_t lines = arguments.value("lines", int64_t{50});
  std::string path = logs_path(arguments["name"].get<std::string>(), arguments.value("replica", "0"),
                               std::min<int64_t>(lines * 1024, 1 << 20));
  auto answer = co_await api.call("GET", path, "");
  if (!answer) co_return failed(tool_error(answer.error()));
  if (answer->status >= 300) {
    co_return failed(tool_error(Error{http::error_code_of(answer->status), answer_message(*answer)}));
  }
  std::vector<std::string> all;
  size_t start = 0;
  const std::string& text = answer->body;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    all.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  size_t first = all.size() > static_cast<size_t>(lines) ? all.size() - static_cast<size_t>(lines) : 0;
  json result = json::object();
  result["deployment"] = arguments["name"];
  result["lines"] = json::array();
  for (size_t index = first; index < all.size(); ++index) result["lines"].push_back(std::move(all[index]));
  co_return succeeded(std::move(result));
}

awaitable<ToolOutcome> usage(Api& api, json arguments) {
  auto document = co_await api_json(api, "GET", usage_path(arguments));
  if (!document) co_return failed(document.error());
  co_return succeeded(std::move(*document));
}

json chat_body(const json& arguments) {
  json body = {{"model", arguments["model"]},
               {"messages", json::array({{{"role", "user"}, {"content", arguments["prompt"]}}})},
               {"stream", false}};
  if (arguments.contains("max_tokens")) body["max_tokens"] = arguments["max_tokens"];
  return body;
}

// The answer of a chat completion, read without ever throwing on an odd shape.
ToolOutcome chat_outcome(const json& completion, const std::string& model) {
  auto member = [](const json& object, const char* name) {
    return object.is_object() && object.contains(name) ? object[name] : json();
  };
  json choices = member(completion, "choices");
  if (!choices.is_array() || choices.empty() || !choices[0].is_object()) {
    return failed(Error{ErrorCode::Internal, "the completion had no choices"});
  }
  json content = member(member(choices[0], "message"), "content");
  json finish_reason = member(choices[0], "finish_reason");
  json usage = member(completion, "usage");
  json served_by = member(completion, "model");
  json result = json::object();
  result["model"] = served_by.is_string() ? served_by : json(model);
  result["content"] = content.is_string() ? content : json("");
  result["finish_reason"] = finish_reason.is_string() ? finish_reason : json("");
  result["usage"] = usage.is_object() ? usage : json::object();
  return succeeded(std::move(result));
}

awaitable<ToolOutcome> chat(Api& api, json arguments) {
  auto completion = co_await api_json(api, "POST", "/v1/chat/completions", chat_body(arguments).dump());
  if (!completion) co_return failed(completion.error());
  co_return chat_outcome(*completion, arguments["model"].get<std::string>());
}

std::vector<Tool> make_tools() {
  std::vector<Tool> table;
  auto add = [&table](std::string name, std::string title, std::string description, json input, json output,
                      bool read_only, bool destructive, bool idempotent, auto run) {
    Tool tool;
    tool.name = std::move(name);
    tool.title = std::move(title);
    tool.description = std::move(description);
    tool.input_schema = std::move(input);
    tool.output_schema = std::move(output);
    tool.read_only = read_only;
    tool.destructive = destructive;
    tool.idempotent = idempotent;
    tool.run = run;
    table.push_back(std::move(tool));
  };
  json no_input = object_schema(json::object());
  json name_only = object_schema({{"name", name_property("Deployment name")}}, {"name"});
  add("gpu_status", "GPU status",
      "Every GPU of every node: memory total, used and allocated to replicas (MB), utilization, and the replicas "
      "placed on it.",
      no_input, listing_output("GPUs"), true, false, true, gpu_status);
  add("list_nodes", "List nodes", "The nodes with their GPUs, engines, heartbeat and Ready state.", no_input,
      listing_output("Nodes"), true, false, true, list_nodes);
  add("list_deployments", "List deployments",
      "Every deployment: its spec (model, engine, replicas, GPUs, context) and status (ready replicas, conditions).",
      no_input, listing_output("Deployments"), true, false, true, list_deployments);
  add("get_deployment", "Get a deployment", "One deployment with its replicas (phase, node, GPUs, endpoint, errors).",
      name_only,
      {{"type", "object"},
       {"properties", {{"deployment", {{"type", "object"}}}, {"replicas", {{"type", "array"}}}}},
       {"required", {"deployment", "replicas"}}},
      true, false, true, get_deployment);
  add("simulate_placement", "Simulate a placement",
      "Dry-run placement of a deployment (a new one, or a change to an existing one when its name is given): "
      "whether it fits, the VRAM per GPU before and after, and concrete alternatives when it does not fit. "
      "Changes nothing.",
      object_schema(spec_properties(false)),
      {{"type", "object"}, {"properties", {{"fits", {{"type", "boolean"}}}}}, {"required", {"fits"}}}, true, false,
      true, simulate_placement);
  add("deploy", "Create or update a deployment",
      "Creates a deployment, or changes the given fields of an existing one (a change to what its engines run rolls "
      "its replicas over). With dry_run, only the placement plan.",
      object_schema(spec_properties(true), {"name"}),
      {{"type", "object"}, {"properties", {{"dry_run", {{"type", "boolean"}}}}}, {"required", {"dry_run"}}}, false,
      true, true, deploy);
  add("scale", "Scale a deployment", "Sets a deployment's replica count (0 stops it; scaling down stops replicas).",
      object_schema(
          {{"name", name_property("Deployment name")}, {"replicas", integer_property("The replica count", 0, 1000)}},
          {"name", "replicas"}),
      any_object_output("The deployment"), false, true, true, scale);
  add("restart", "Restart a deployment",
      "Restarts a deployment's replicas as a rolling update (new ones Ready before old ones stop).", name_only,
      any_object_output("The rollout"), false, true, false, restart);
  json sleep_output = {{"type", "object"},
                       {"properties",
                        {{"name", {{"type", "string"}}},
                         {"state",
                          {{"type", "string"},
                           {"enum", {"awake", "sleep-requested", "asleep", "stopped", "wake-requested"}},
                           {"description", "Where the deployment stands after the call"}}},
                         {"changed", {{"type", "boolean"}, {"description", "False when it already was in that state"}}},
                         {"message", {{"type", "string"}}}}},
                       {"required", {"name", "state", "changed"}}};
  add("sleep", "Put a deployment to sleep",
      "Puts a deployment to sleep now, as idleness would: its replicas sleep at its on_idle level (sleep-l1 frees "
      "the weights' GPU memory, sleep-l2 more) or stop (on_idle: stop). The next request for it, or wake, wakes it. "
      "A deployment already asleep stays so (changed: false).",
      name_only, sleep_output, false, true, true, sleep_tool);
  add("wake", "Wake a deployment",
      "Wakes a sleeping or idle deployment now (a stopped one starts again); it takes requests once its replicas "
      "are Ready. A deployment already awake is left as it is (changed: false).",
      name_only, sleep_output, false, false, true, wake_tool);
  add("remove", "Remove a deployment", "Removes a deployment and stops its replicas.", name_only,
      any_object_output("The deleted deployment"), false, true, true, remove);
  add("list_modes", "List modes", "The modes (named sets of deployments) and which one is active.", no_input,
      listing_output("Modes"), true, false, true, list_modes);
  add("switch_mode", "Switch mode",
      "Switches to a mode: stops the deployments outside it, waits for their VRAM to be released, starts its own. "
      "With dry_run, only what would stop and start.",
      object_schema({{"name", name_property("Mode name")}, {"dry_run", boolean_property("Change nothing")}}, {"name"}),
      any_object_output("The switch's outcome"), false, true, true, switch_mode);
  add("logs", "Engine logs", "The last lines of the engine log of one of a deployment's replicas.",
      object_schema({{"name", name_property("Deployment name")},
                     {"replica", string_property("A replica name, or an index into the deployment's replicas "
                                                 "(default 0)",
                                                 63)},
                     {"lines", integer_property("How many lines (default 50)", 1, 1000)}},
                    {"name"}),
      {{"type", "object"},
       {"properties", {{"lines", {{"type", "array"}, {"items", {{"type", "string"}}}}}}},
       {"required", {"lines"}}},
      true, false, true, logs);
  add("usage", "Token usage", "Requests and tokens per API key, model and day.",
      object_schema({{"key", string_property("An API key id", 64)},
                     {"model", string_property("A deployment", 63)},
                     {"since", string_property("A duration back from now (7d) or a first day (2026-11-01)", 32)}}),
      {{"type", "object"}, {"properties", {{"items", {{"type", "array"}}}}}, {"required", {"items"}}}, true, false,
      true, usage);
  add("chat", "Chat completion", "One chat completion of a prompt through the gateway (not streamed).",
      object_schema({{"model", string_property("The deployment to ask", 63)},
                     {"prompt", string_property("The user message", 1 << 20)},
                     {"max_tokens", integer_property("Most tokens to generate", 1, 1'000'000)}},
                    {"model", "prompt"}),
      {{"type", "object"},
       {"properties", {{"content", {{"type", "string"}}}, {"model", {{"type", "string"}}}}},
       {"required", {"content"}}},
      false, false, false, chat);
  return table;
}

}  // namespace

const std::vector<Tool>& tools() {
  static const std::vector<Tool> table = make_tools();
  return table;
}

json describe(const Tool& tool) {
  return {{"name", tool.name},
          {"title", tool.title},
          {"description", tool.description},
          {"inputSchema", tool.input_schema},
          {"outputSchema", tool.output_schema},
          {"annotations",
           {{"title", tool.title},
            {"readOnlyHint", tool.read_only},
            {"destructiveHint", tool.destructive},
            {"idempotentHint", tool.idempotent},
            {"openWorldHint", false}}}};
}

namespace {
// 3.0 is an integer as JSON Schema sees it; 1e300 is not taken for one (it is no int64).
bool whole_float(const json& value) {
  if (!value.is_number_float()) return false;
  double number = value.get<double>();
  return std::isfinite(number) && std::trunc(number) == number && std::fabs(number) < 9.0e15;
}

std::string type_error(const json& value, const std::string& type) {
  bool matches = type == "string"    ? value.is_string()
                 : type == "integer" ? value.is_number_integer() || whole_float(value)
                 : type == "number"  ? value.is_number()
                 : type == "boolean" ? value.is_boolean()
                 : type == "object"  ? value.is_object()
                 : type == "array"   ? value.is_array()
                                     : true;
  if (matches) return {};
  std::string article = type == "integer" || type == "object" || type == "array" ? "an " : "a ";
  return "expected " + article + type + ", got " + std::string(value.type_name());
}
}  // namespace

std::string check_arguments(const json& schema, const json& arguments) {
  if (!arguments.is_object()) return "arguments: expected an object";
  const json& properties = schema.contains("properties") ? schema["properties"] : json::object();
  if (schema.contains("required")) {
    for (const auto& field : schema["required"]) {
      if (!arguments.contains(field.get<std::string>())) return field.get<std::string>() + ": required";
    }
  }
  for (const auto& [field, value] : arguments.items()) {
    if (!properties.contains(field)) {
      std::vector<std::string> known;
      for (const auto& [name, property] : properties.items()) known.push_back(name);
      return fmt::format("{}: unknown argument (known: {})", field.size() > 64 ? field.substr(0, 64) + "..." : field,
                         known.empty() ? "none" : fmt::format("{}", fmt::join(known, ", ")));
    }
    const json& property = properties[field];
    std::string type = property.value("type", "");
    if (auto wrong = type_error(value, type); !wrong.empty()) return field + ": " + wrong;
    if (value.is_number()) {
      double number = value.get<double>();
      if (property.contains("minimum") && number < property["minimum"].get<double>()) {
        return fmt::format("{}: {} is less than {}", field, value.dump(), property["minimum"].dump());
      }
      if (property.contains("maximum") && number > property["maximum"].get<double>()) {
        return fmt::format("{}: {} is more than {}", field, value.dump(), property["maximum"].dump());
      }
    }
    if (value.is_string()) {
      size_t length = value.get_ref<const std::string&>().size();
      if (property.contains("maxLength") && length > property["maxLength"].get<size_t>()) {
        return fmt::format("{}: longer than {} characters", field, property["maxLength"].get<size_t>());
      }
      if (property.contains("minLength") && length < property["minLength"].get<size_t>()) {
        return fmt::format("{}: shorter than {} characters", field, property["minLength"].get<size_t>());
      }
    }
  }
  return {};
}

awaitable<Result<json>> api_json(Api& api, std::string method, std::string path, std::string body) {
  auto answer = co_await api.call(std::move(method), std::move(path), std::move(body));
  if (!answer) co_return tool_error(answer.error());
  if (answer->status >= 300) co_return tool_error(Error{http::error_code_of(answer->status), answer_message(*answer)});
  if (answer->body.empty()) co_return json::object();
  auto document = parse_json(answer->body);
  if (!document) co_return Error{ErrorCode::Internal, "the server answered something that is not JSON"};
  co_return std::move(*document);
}

awaitable<Result<json>> deployment_with_replicas(Api& api, std::string name) {
  auto deployment = co_await api_json(api, "GET", deployment_path(name));
  if (!deployment) {
    if (deployment.error().code == ErrorCode::NotFound) {
      co_return Error{ErrorCode::NotFound,
                      deployment.error().message + " (list_deployments shows the deployments there are)"};
    }
    co_return deployment.error();
  }
  auto replicas = co_await api_json(api, "GET", collection_path("replicas"));
  if (!replicas) co_return replicas.error();
  json result = json::object();
  result["deployment"] = std::move(*deployment);
  result["replicas"] = json::array();
  if ((*replicas)["items"].is_array()) {
    for (auto& replica : (*replicas)["items"]) {
      if (replica.is_object() && replica["spec"].is_object() && replica["spec"].value("deployment", "") == name) {
        result["replicas"].push_back(std::move(replica));
      }
    }
  }
  co_return result;
}

namespace {
struct FixedResource {
  const char* uri;
  const char* name;
  const char* description;
  const char* plural;
};
constexpr FixedResource kResources[] = {
    {"nebula://gpus", "gpus", "Every GPU: memory total, used and allocated, utilization, replicas", "nodes"},
    {"nebula://nodes", "nodes", "The nodes, their GPUs, engines and Ready state", "nodes"},
    {"nebula://deployments", "deployments", "Every deployment, spec and status", "deployments"},
    {"nebula://modes", "modes", "The modes and which one is active", "modes"},
    {"nebula://events", "events", "Recent events (placements, phases, failures)", "events"},
};
constexpr std::string_view kDeploymentPrefix = "nebula://deployments/";
}  // namespace

json resource_list() {
  json resources = json::array();
  for (const auto& resource : kResources) {
    resources.push_back({{"uri", resource.uri},
                         {"name", resource.name},
                         {"description", resource.description},
                         {"mimeType", "application/json"}});
  }
  return resources;
}

json resource_template_list() {
  return json::array({{{"uriTemplate", "nebula://deployments/{name}"},
                       {"name", "deployment"},
                       {"description", "One deployment with its replicas"},
                       {"mimeType", "application/json"}}});
}

std::optional<ResourceWatch> resource_watch(const std::string& uri) {
  for (const auto& resource : kResources) {
    if (uri == resource.uri) return ResourceWatch{resource.plural, ""};
  }
  if (uri.rfind(kDeploymentPrefix, 0) == 0) {
    std::string name = uri.substr(kDeploymentPrefix.size());
    if (api::validate_name(name)) return ResourceWatch{"deployments", name};
  }
  return std::nullopt;
}

bool changes(const ResourceWatch& resource, const std::string& plural, const json& event) {
  if (resource.name.empty()) return resource.plural == plural;
  const json& object = event.contains("object") ? event["object"] : json::object();
  if (!object.is_object()) return false;
  if (plural == "deployments") {
    return object.contains("metadata") && object["metadata"].is_object() &&
           object["metadata"].value("name", "") == resource.name;
  }
  if (plural == "replicas") {
    return object.contains("spec") && object["spec"].is_object() &&
           object["spec"].value("deployment", "") == resource.name;
  }
  return false;
}

awaitable<Result<json>> read_resource(Api& api, std::string uri) {
  auto watch = resource_watch(uri);
  if (!watch) co_return Error{ErrorCode::NotFound, "unknown resource " + uri};
  if (!watch->name.empty()) co_return co_await deployment_with_replicas(api, watch->name);
  std::string plural = uri.substr(std::string_view("nebula://").size());
  co_return co_await api_json(api, "GET", collection_path(plural));
}

}  // namespace nebula::mcp
