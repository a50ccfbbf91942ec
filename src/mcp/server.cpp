// Server: MCP's lifecycle and methods over JSON-RPC 2.0, one message at a time.
#include "mcp/mcp.h"

#include <fmt/format.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <set>

#include "common/log.h"
#include "mcp/tools.h"

namespace nebula::mcp {

const std::vector<std::string>& protocol_versions() {
  static const std::vector<std::string> versions = {"2025-06-18", "2025-03-26", "2024-11-05"};
  return versions;
}

json error_response(const json& id, RpcError code, const std::string& message) {
  json response = json::object();
  response["jsonrpc"] = "2.0";
  response["id"] = id;
  response["error"] = json::object();
  response["error"]["code"] = static_cast<int>(code);
  response["error"]["message"] = message;
  return response;
}

namespace {

json result_response(const json& id, json result) {
  json response = json::object();
  response["jsonrpc"] = "2.0";
  response["id"] = id;
  response["result"] = std::move(result);
  return response;
}

// A request's failure, carried out of a method to become its error response.
struct RpcFailure {
  RpcError code;
  std::string message;
};
using MethodResult = std::variant<json, RpcFailure>;

std::string shortened(const std::string& text, size_t limit);

RpcFailure read_failure(const std::string& uri, const Error& error) {
  if (error.code == ErrorCode::NotFound) {
    return RpcFailure{RpcError::ResourceNotFound, "resource not found: " + shortened(uri, 200)};
  }
  return RpcFailure{RpcError::InternalError, "cannot read " + shortened(uri, 200) + ": " + error.message};
}

json tool_result(const ToolOutcome& outcome) {
  json result = json::object();
  json text = json::object();
  text["type"] = "text";
  if (!outcome.error.empty()) {
    text["text"] = outcome.error;
    result["content"] = json::array({text});
    result["isError"] = true;
    return result;
  }
  text["text"] = outcome.structured.dump(2);
  result["content"] = json::array({text});
  result["structuredContent"] = outcome.structured;
  result["isError"] = false;
  return result;
}

json initialize_result(const std::string& version) {
  return {{"protocolVersion", version},
          {"capabilities",
           {{"tools", {{"listChanged", false}}}, {"resources", {{"subscribe", true}, {"listChanged", false}}}}},
          {"serverInfo", {{"name", "nebula"}, {"title", "Nebula"}, {"version", NEBULA_VERSION}}},
          {"instructions",
           "Nebula serves LLMs on this cluster's GPUs. gpu_status and simulate_placement answer what fits where; "
           "deploy, scale and switch_mode change what runs (use dry_run first); chat asks a deployed model."}};
}

json resource_contents(const std::string& uri, const json& document) {
  json content = {{"uri", uri}, {"mimeType", "application/json"}, {"text", document.dump(2)}};
  return {{"contents", json::array({content})}};
}

json updated_notification(const std::string& uri) {
  return {{"jsonrpc", "2.0"}, {"method", "notifications/resources/updated"}, {"params", {{"uri", uri}}}};
}

// GET /api/v1/<plural>?watch=1[&revision=N] (N = 0: live changes only).
std::string watch_path(const std::string& plural, int64_t revision) {
  std::vector<std::pair<std::string, std::string>> query = {{"watch", "1"}};
  if (revision > 0) query.emplace_back("revision", std::to_string(revision));
  return api_path({plural}, query);
}

// Client-given text quoted in an error, cut to `limit` characters.
std::string shortened(const std::string& text, size_t limit) {
  return text.size() > limit ? text.substr(0, limit) + "..." : text;
}

// The helpers below keep ?: with strings and JSON out of the coroutines: g++ 12 destroys a
// conditional's temporary twice inside one.
json member_or(const json& object, const char* name, json fallback) {
  return object.contains(name) ? object[name] : fallback;
}

std::string unknown_tool_message(const std::string& name) {
  const auto& all = tools();
  bool known = std::any_of(all.begin(), all.end(), [&](const Tool& each) { return each.name == name; });
  if (known) return "tool " + name + " changes the cluster and this server is read-only";
  return "unknown tool: " + shortened(name, 64) + " (tools/list names the tools)";
}

bool valid_id(const json& id) {
  return id.is_string() || id.is_number_integer();
}

}  // namespace

enum class Phase { New, Initialized, Closed };

struct Server::State : std::enable_shared_from_this<Server::State> {
  std::shared_ptr<Api> api;
  asio::any_io_executor executor;
  ServerOptions options;
  Notify notify;
  Phase phase = Phase::New;
  std::string version;
  std::set<std::string> subscriptions;
  std::set<std::string> watched;  // plurals with a watch loop running
  std::set<std::string> updated;  // URIs changed since the last notifications
  bool flush_posted = false;

  std::vector<std::string> plurals_of(const std::string& uri) const {
    auto watch = resource_watch(uri);
    if (!watch) return {};
    if (!watch->name.empty()) return {"deployments", "replicas"};
    return {watch->plural};
  }

  // Changes that arrive together (one read of a watch stream, a burst of replica updates) make
  // one notification per resource: the URIs are collected and sent once the executor is free.
  void on_event(const std::string& plural, const json& event) {
    if (phase == Phase::Closed) return;
    for (const auto& uri : subscriptions) {
      auto watch = resource_watch(uri);
      if (watch && changes(*watch, plural, event)) updated.insert(uri);
    }
    if (updated.empty() || flush_posted) return;
    flush_posted = true;
    asio::post(executor, [self = shared_from_this()] {
      self->flush_posted = false;
      auto uris = std::move(self->updated);
      self->updated.clear();
      if (self->phase == Phase::Closed) return;
      for (const auto& uri : uris) {
        if (self->subscriptions.count(uri)) self->notify(updated_notification(uri));
      }
    });
  }

  // Follows one plural's watch while anything subscribed to it: reopened from the next revision
  // when it ends, from now when that history is gone.
  static awaitable<void> watch_loop(std::shared_ptr<State> state, std::string plural) {
    int64_t next_revision = 0;
    asio::steady_timer timer(state->executor);
    while (state->phase != Phase::Closed && state->wanted(plural)) {
      auto status = co_await state->api->watch(watch_path(plural, next_revision), [&](const json& event) {
        if (event.contains("revision") && event["revision"].is_number_integer()) {
          next_revision = event["revision"].get<int64_t>() + 1;
        }
        state->on_event(plural, event);
      });
      if (status && *status == 410) next_revision = 0;
      if (!status) spdlog::debug("mcp: watch of {} failed: {}", plural, status.error().message);
      if (state->phase == Phase::Closed || !state->wanted(plural)) break;
      timer.expires_after(state->options.rewatch_delay);
      boost::system::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    state->watched.erase(plural);
  }

  bool wanted(const std::string& plural) const {
    for (const auto& uri : subscriptions) {
      for (const auto& each : plurals_of(uri)) {
        if (each == plural) return true;
      }
    }
    return false;
  }

  void subscribe(const std::string& uri) {
    subscriptions.insert(uri);
    for (const auto& plural : plurals_of(uri)) {
      if (!watched.insert(plural).second) continue;
      asio::co_spawn(executor, watch_loop(shared_from_this(), plural), asio::detached);
    }
  }

  const Tool* find_tool(const std::string& name) const {
    for (const auto& tool : tools()) {
      if (tool.name == name && (tool.read_only || !options.read_only)) return &tool;
    }
    return nullptr;
  }

  MethodResult initialize(const json& params) {
    if (phase != Phase::New) return RpcFailure{RpcError::InvalidRequest, "already initialized"};
    if (!params.contains("protocolVersion") || !params["protocolVersion"].is_string()) {
      return RpcFailure{RpcError::InvalidParams, "initialize needs params.protocolVersion (a string)"};
    }
    std::string asked = params["protocolVersion"].get<std::string>();
    const auto& known = protocol_versions();
    version = std::find(known.begin(), known.end(), asked) != known.end() ? asked : known.front();
    phase = Phase::Initialized;
    return initialize_result(version);
  }

  json list_tools() const {
    json listed = json::array();
    for (const auto& tool : tools()) {
      if (tool.read_only || !options.read_only) listed.push_back(describe(tool));
    }
    return {{"tools", std::move(listed)}};
  }

  awaitable<MethodResult> call_tool(json params) {
    if (!params.contains("name") || !params["name"].is_string()) {
      co_return RpcFailure{RpcError::InvalidParams, "tools/call needs params.name (a string)"};
    }
    std::string name = params["name"].get<std::string>();
    const Tool* tool = find_tool(name);
    if (!tool) {
      co_return RpcFailure{RpcError::InvalidParams, unknown_tool_message(name)};
    }
    json arguments = member_or(params, "arguments", json::object());
    if (arguments.is_null()) arguments = json::object();
    if (auto wrong = check_arguments(tool->input_schema, arguments); !wrong.empty()) {
      co_return RpcFailure{RpcError::InvalidParams, "invalid arguments for " + name + ": " + wrong};
    }
    auto api = this->api;
    ToolOutcome outcome = co_await tool->run(*api, std::move(arguments));
    co_return tool_result(outcome);
  }

  awaitable<MethodResult> read(json params) {
    if (!params.contains("uri") || !params["uri"].is_string()) {
      co_return RpcFailure{RpcError::InvalidParams, "resources/read needs params.uri (a string)"};
    }
    std::string uri = params["uri"].get<std::string>();
    auto api = this->api;
    auto document = co_await read_resource(*api, uri);
    if (!document) co_return read_failure(uri, document.error());
    co_return resource_contents(uri, *document);
  }

  MethodResult subscription(const json& params, bool on) {
    if (!params.contains("uri") || !params["uri"].is_string()) {
      return RpcFailure{RpcError::InvalidParams, "needs params.uri (a string)"};
    }
    std::string uri = params["uri"].get<std::string>();
    if (!resource_watch(uri)) {
      return RpcFailure{RpcError::ResourceNotFound, "resource not found: " + shortened(uri, 200)};
    }
    if (on) {
      if (subscriptions.size() >= 64 && !subscriptions.count(uri)) {
        return RpcFailure{RpcError::InvalidRequest, "at most 64 subscriptions per session"};
      }
      subscribe(uri);
    } else {
      subscriptions.erase(uri);
    }
    return json::object();
  }

  awaitable<MethodResult> dispatch(std::string method, json params) {
    if (method == "initialize") co_return initialize(params);
    if (method == "ping") co_return json::object();
    if (phase != Phase::Initialized) {
      co_return RpcFailure{RpcError::InvalidRequest, "the session is not initialized: send initialize first"};
    }
    if (method == "tools/list") co_return list_tools();
    if (method == "tools/call") co_return co_await call_tool(std::move(params));
    if (method == "resources/list") co_return json{{"resources", resource_list()}};
    if (method == "resources/templates/list") co_return json{{"resourceTemplates", resource_template_list()}};
    if (method == "resources/read") co_return co_await read(std::move(params));
    if (method == "resources/subscribe") co_return subscription(params, true);
    if (method == "resources/unsubscribe") co_return subscription(params, false);
    co_return RpcFailure{RpcError::MethodNotFound, "method not found: " + shortened(method, 64)};
  }
};

Server::Server(std::shared_ptr<Api> api, asio::any_io_executor executor, ServerOptions options, Notify notify)
    : state_(std::make_shared<State>()) {
  state_->api = std::move(api);
  state_->executor = std::move(executor);
  state_->options = options;
  state_->notify = std::move(notify);
}

Server::~Server() {
  close();
}

void Server::close() {
  if (state_->phase == Phase::Closed) return;
  state_->phase = Phase::Closed;
  state_->subscriptions.clear();
  state_->api->stop();
}

bool Server::initialized() const {
  return state_->phase == Phase::Initialized;
}

const std::string& Server::protocol_version() const {
  return state_->version;
}

awaitable<std::optional<json>> Server::handle(std::string message) {
  auto state = state_;
  if (message.size() > kMaxMessageBytes) {
    co_return error_response(
        nullptr, RpcError::InvalidRequest,
        fmt::format("message of {} bytes is larger than the limit of {} bytes", message.size(), kMaxMessageBytes));
  }
  auto parsed = parse_json(message);
  if (!parsed) co_return error_response(nullptr, RpcError::ParseError, "parse error: " + parsed.error().message);
  json request = std::move(*parsed);
  if (request.is_array()) {
    co_return error_response(nullptr, RpcError::InvalidRequest,
                             "batches are not supported: send one message at a time");
  }
  if (!request.is_object()) co_return error_response(nullptr, RpcError::InvalidRequest, "a message is a JSON object");
  bool has_id = request.contains("id");
  json id = member_or(request, "id", nullptr);
  if (has_id && !valid_id(id)) {
    co_return error_response(nullptr, RpcError::InvalidRequest, "id must be a string or an integer");
  }
  if (!request.contains("jsonrpc") || request["jsonrpc"] != "2.0") {
    co_return error_response(id, RpcError::InvalidRequest, "jsonrpc must be \"2.0\"");
  }
  if (!request.contains("method")) {
    // A response to a request of ours (there are none) or something malformed: never answered.
    if (has_id && (request.contains("result") || request.contains("error"))) co_return std::nullopt;
    co_return error_response(id, RpcError::InvalidRequest, "a request needs a method");
  }
  if (!request["method"].is_string()) co_return error_response(id, RpcError::InvalidRequest, "method must be a string");
  std::string method = request["method"].get<std::string>();
  json params = member_or(request, "params", json::object());
  if (!params.is_object()) {
    if (!has_id) co_return std::nullopt;
    co_return error_response(id, RpcError::InvalidParams, "params must be an object");
  }
  if (!has_id) {
    // Notifications: initialized, cancelled, progress... none needs an answer.
    co_return std::nullopt;
  }
  if (state->phase == Phase::Closed) co_return error_response(id, RpcError::InvalidRequest, "the session has ended");
  MethodResult result;
  try {
    result = co_await state->dispatch(std::move(method), std::move(params));
  } catch (const std::exception& failure) {
    // A broken invariant in a method (nlohmann's type_error on an unexpected server answer): the
    // request fails, the session goes on.
    spdlog::error("mcp: request failed: {}", failure.what());
    result = RpcFailure{RpcError::InternalError, std::string("internal error: ") + failure.what()};
  }
  if (auto* failure = std::get_if<RpcFailure>(&result)) co_return error_response(id, failure->code, failure->message);
  co_return result_response(id, std::move(std::get<json>(result)));
}

}  // namespace nebula::mcp
