#include "mcp/mcp.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <map>

#include "mcp/tools.h"

namespace nebula::mcp {
namespace {

// The API at the HTTP seam: canned answers by "METHOD PATH", every call recorded. A watch
// delivers the events queued for its path, then ends.
class FakeApi : public Api {
 public:
  std::map<std::string, ApiAnswer> answers;
  std::vector<std::pair<std::string, std::string>> calls;  // "METHOD PATH", body
  std::map<std::string, std::vector<json>> watch_events;   // by plural
  std::vector<std::string> watches;
  bool stopped = false;

  awaitable<Result<ApiAnswer>> call(std::string method, std::string path, std::string body) override {
    std::string key = method + " " + path;
    calls.emplace_back(key, body);
    auto found = answers.find(key);
    if (found == answers.end()) co_return not_found(key);
    co_return found->second;
  }
  awaitable<Result<int>> watch(std::string path, std::function<void(const json&)> on_event) override {
    watches.push_back(path);
    for (auto& [plural, events] : watch_events) {
      if (path.rfind("/api/v1/" + plural + "?", 0) != 0) continue;
      for (const auto& event : events) on_event(event);
      events.clear();
    }
    co_return 200;
  }
  void stop() override { stopped = true; }

  static ApiAnswer not_found(const std::string& key) {
    return ApiAnswer{404, json{{"error", {{"message", "no fake answer for " + key}}}}.dump()};
  }
};

// A server on a private io_context, driven one message at a time.
struct Harness {
  asio::io_context io;
  std::shared_ptr<FakeApi> api = std::make_shared<FakeApi>();
  std::vector<json> notifications;
  std::unique_ptr<Server> server;

  explicit Harness(ServerOptions options = {}) {
    options.rewatch_delay = std::chrono::hours(1);
    server = std::make_unique<Server>(api, io.get_executor(), options,
                                      [this](json notification) { notifications.push_back(std::move(notification)); });
  }

  std::optional<json> send(const std::string& message) {
    std::optional<json> answer;
    bool done = false;
    asio::co_spawn(io, server->handle(message), [&](std::exception_ptr failure, std::optional<json> result) {
      if (failure) std::rethrow_exception(failure);
      answer = std::move(result);
      done = true;
    });
    while (!done) {
      // run_one() returns 0 once the context ran out of work (it is then stopped).
      if (io.run_one() == 0) io.restart();
    }
    return answer;
  }
  std::optional<json> send(const json& message) { return send(message.dump()); }

  // Runs what is ready (watch deliveries) without waiting.
  void settle() {
    io.restart();
    io.poll();
  }

  void initialize() {
    auto answer = send(json::parse(R"({"jsonrpc":"2.0","id":0,"method":"initialize",
                                      "params":{"protocolVersion":"2025-06-18"}})"));
    ASSERT_TRUE(answer && answer->contains("result"));
  }
};

json call_tool(Harness& harness, const std::string& name, json arguments) {
  json request = {{"jsonrpc", "2.0"},
                  {"id", 1},
                  {"method", "tools/call"},
                  {"params", {{"name", name}, {"arguments", std::move(arguments)}}}};
  auto answer = harness.send(request);
  EXPECT_TRUE(answer.has_value());
  return answer.value_or(json());
}

// `actual` has everything `expected` says: objects may have more members, arrays match element by
// element, scalars are equal. Returns where they differ, or "".
std::string mismatch(const json& expected, const json& actual, const std::string& where = "$") {
  if (expected.is_object()) {
    if (!actual.is_object()) return where + ": expected an object, got " + actual.dump();
    for (const auto& [name, value] : expected.items()) {
      if (!actual.contains(name)) return where + "." + name + ": missing";
      if (auto differs = mismatch(value, actual[name], where + "." + name); !differs.empty()) return differs;
    }
    return {};
  }
  if (expected.is_array()) {
    if (!actual.is_array() || actual.size() != expected.size()) {
      return where + ": expected " + expected.dump() + ", got " + actual.dump();
    }
    for (size_t index = 0; index < expected.size(); ++index) {
      auto differs = mismatch(expected[index], actual[index], where + "[" + std::to_string(index) + "]");
      if (!differs.empty()) return differs;
    }
    return {};
  }
  if (expected != actual) return where + ": expected " + expected.dump() + ", got " + actual.dump();
  return {};
}

// Replays a transcript (src/mcp/testdata/*.jsonl): each line sends a message ("send", or
// "send_raw" for text that is not JSON) and says the answer expected (null: none), adds canned
// API answers ("api"), or starts a new session ("new_session").
void replay(const std::string& file) {
  std::ifstream in(std::string(NEBULA_MCP_TESTDATA) + "/" + file);
  ASSERT_TRUE(in) << file;
  auto harness = std::make_unique<Harness>();
  std::map<std::string, ApiAnswer> answers;
  std::string line;
  int line_number = 0;
  int exchanges = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) continue;
    json step = json::parse(line);
    SCOPED_TRACE(file + ":" + std::to_string(line_number));
    if (step.contains("api")) {
      for (const auto& [key, answer] : step["api"].items()) {
        std::string body = answer.contains("text") ? answer["text"].get<std::string>() : answer["body"].dump();
        answers[key] = ApiAnswer{answer["status"].get<int>(), body};
      }
      harness->api->answers = answers;
      continue;
    }
    if (step.contains("new_session")) {
      harness = std::make_unique<Harness>();
      harness->api->answers = answers;
      continue;
    }
    if (!step.contains("send") && !step.contains("send_raw")) continue;
    auto answer =
        step.contains("send_raw") ? harness->send(step["send_raw"].get<std::string>()) : harness->send(step["send"]);
    ++exchanges;
    if (step["expect"].is_null()) {
      EXPECT_FALSE(answer.has_value()) << answer->dump();
      continue;
    }
    ASSERT_TRUE(answer.has_value());
    EXPECT_EQ(mismatch(step["expect"], *answer), "") << answer->dump();
  }
  EXPECT_GT(exchanges, 0);
}

TEST(McpTranscript, Lifecycle) {
  replay("lifecycle.jsonl");
}
TEST(McpTranscript, Negotiation) {
  replay("negotiation.jsonl");
}
TEST(McpTranscript, Malformed) {
  replay("malformed.jsonl");
}
TEST(McpTranscript, Tools) {
  replay("tools.jsonl");
}
TEST(McpTranscript, Resources) {
  replay("resources.jsonl");
}

TEST(McpServer, ListsEveryToolWithSchemasAndAnnotations) {
  Harness harness;
  harness.initialize();
  auto answer = harness.send(json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", "tools/list"}});
  ASSERT_TRUE(answer);
  const json& listed = (*answer)["result"]["tools"];
  std::vector<std::string> names;
  for (const auto& tool : listed) {
    names.push_back(tool["name"]);
    EXPECT_EQ(tool["inputSchema"]["type"], "object") << tool["name"];
    EXPECT_EQ(tool["outputSchema"]["type"], "object") << tool["name"];
    for (const char* hint : {"readOnlyHint", "destructiveHint", "idempotentHint"}) {
      EXPECT_TRUE(tool["annotations"][hint].is_boolean()) << tool["name"] << " " << hint;
    }
    // Read-only tools never destroy.
    if (tool["annotations"]["readOnlyHint"] == true) {
      EXPECT_EQ(tool["annotations"]["destructiveHint"], false) << tool["name"];
    }
  }
  std::vector<std::string> expected = {
      "gpu_status", "list_nodes", "list_deployments", "get_deployment", "simulate_placement",
      "deploy",     "scale",      "restart",          "sleep",          "wake",
      "remove",     "list_modes", "switch_mode",      "logs",           "usage",
      "chat"};
  EXPECT_EQ(names, expected);
}

TEST(McpServer, ReadOnlyListsAndCallsOnlyReadOnlyTools) {
  ServerOptions options;
  options.read_only = true;
  Harness harness(options);
  harness.initialize();
  auto answer = harness.send(json{{"jsonrpc", "2.0"}, {"id", 1}, {"method", "tools/list"}});
  ASSERT_TRUE(answer);
  std::vector<std::string> names;
  for (const auto& tool : (*answer)["result"]["tools"]) {
    names.push_back(tool["name"]);
    EXPECT_EQ(tool["annotations"]["readOnlyHint"], true) << tool["name"];
  }
  EXPECT_EQ(names.size(), 8u);
  json refused = call_tool(harness, "remove", {{"name", "chat"}});
  EXPECT_EQ(refused["error"]["code"], -32602);
  EXPECT_EQ(refused["error"]["message"], "tool remove changes the cluster and this server is read-only");
  for (const auto& [call, body] : harness.api->calls) EXPECT_EQ(call.rfind("DELETE", 0), std::string::npos);
}

TEST(McpServer, DeployChangesOnlyTheGivenFieldsOfAnExistingDeployment) {
  Harness harness;
  harness.initialize();
  json existing = {{"metadata", {{"name", "chat"}}},
                   {"spec", {{"model", "m"}, {"engine", "vllm"}, {"replicas", 1}, {"max_context", 4096}}}};
  harness.api->answers["GET /api/v1/deployments/chat"] = ApiAnswer{200, existing.dump()};
  harness.api->answers["PUT /api/v1/deployments/chat"] = ApiAnswer{200, existing.dump()};
  json answer = call_tool(harness, "deploy", {{"name", "chat"}, {"replicas", 3}});
  EXPECT_EQ(answer["result"]["isError"], false) << answer.dump();
  EXPECT_EQ(answer["result"]["structuredContent"]["created"], false);
  ASSERT_EQ(harness.api->calls.back().first, "PUT /api/v1/deployments/chat");
  json sent = json::parse(harness.api->calls.back().second);
  EXPECT_EQ(sent["spec"]["replicas"], 3);
  EXPECT_EQ(sent["spec"]["engine"], "vllm");
  EXPECT_EQ(sent["spec"]["max_context"], 4096);
}

TEST(McpServer, DryRunsWriteNothing) {
  Harness harness;
  harness.initialize();
  harness.api->answers["POST /api/v1/simulate"] = ApiAnswer{200, R"({"fits":true})"};
  harness.api->answers["POST /api/v1/modes/day/switch?dry_run=1"] = ApiAnswer{200, R"({"dry_run":true})"};
  json deployed = call_tool(harness, "deploy", {{"name", "chat"}, {"model", "m"}, {"dry_run", true}});
  EXPECT_EQ(deployed["result"]["structuredContent"]["plan"]["fits"], true) << deployed.dump();
  json switched = call_tool(harness, "switch_mode", {{"name", "day"}, {"dry_run", true}});
  EXPECT_EQ(switched["result"]["isError"], false) << switched.dump();
  for (const auto& [call, body] : harness.api->calls) {
    bool writes = call.rfind("PUT", 0) == 0 || call.rfind("DELETE", 0) == 0 ||
                  (call.rfind("POST", 0) == 0 && call.find("simulate") == std::string::npos &&
                   call.find("dry_run=1") == std::string::npos);
    EXPECT_FALSE(writes) << call;
  }
}

TEST(McpServer, NamesArePercentEncodedIntoPaths) {
  Harness harness;
  harness.initialize();
  json answer = call_tool(harness, "logs", {{"name", "chat"}, {"replica", "0&follow=1"}});
  EXPECT_EQ(answer["result"]["isError"], true);
  ASSERT_FALSE(harness.api->calls.empty());
  EXPECT_EQ(harness.api->calls.back().first,
            "GET /api/v1/deployments/chat/logs?replica=0%26follow%3D1&tail=51200&follow=0");
}

TEST(McpServer, AnUnreachableServerIsAToolErrorNotACrash) {
  Harness harness;
  harness.initialize();
  harness.api->answers["GET /api/v1/gpus"] = ApiAnswer{200, "not json"};
  json answer = call_tool(harness, "gpu_status", json::object());
  EXPECT_EQ(answer["result"]["isError"], true);
  harness.api->answers["GET /api/v1/gpus"] = ApiAnswer{200, R"({"no_items":1})"};
  answer = call_tool(harness, "gpu_status", json::object());
  EXPECT_EQ(answer["result"]["isError"], true);
  harness.api->answers["POST /v1/chat/completions"] = ApiAnswer{200, R"({"choices":"odd"})"};
  answer = call_tool(harness, "chat", {{"model", "chat"}, {"prompt", "hi"}});
  EXPECT_EQ(answer["result"]["isError"], true);
  EXPECT_TRUE(harness.send(json{{"jsonrpc", "2.0"}, {"id", 9}, {"method", "ping"}}).has_value());
}

TEST(McpServer, ReadingADeploymentKeepsOnlyItsReplicas) {
  Harness harness;
  harness.initialize();
  harness.api->answers["GET /api/v1/deployments/chat"] = ApiAnswer{200, R"({"metadata":{"name":"chat"}})"};
  harness.api->answers["GET /api/v1/replicas"] =
      ApiAnswer{200, R"({"items":[{"spec":{"deployment":"chat"}},{"spec":{"deployment":"other"}},7]})"};
  auto answer = harness.send(json{
      {"jsonrpc", "2.0"}, {"id", 1}, {"method", "resources/read"}, {"params", {{"uri", "nebula://deployments/chat"}}}});
  ASSERT_TRUE(answer);
  json document = json::parse((*answer)["result"]["contents"][0]["text"].get<std::string>());
  ASSERT_EQ(document["replicas"].size(), 1u);
  EXPECT_EQ(document["replicas"][0]["spec"]["deployment"], "chat");
}

TEST(McpServer, SubscriptionsNotifyFromTheWatchOfTheirResource) {
  Harness harness;
  harness.initialize();
  json chat_changed = {{"type", "PUT"}, {"revision", 5}, {"object", {{"metadata", {{"name", "chat"}}}}}};
  json chat_changed_again = {{"type", "PUT"}, {"revision", 7}, {"object", {{"metadata", {{"name", "chat"}}}}}};
  json other_changed = {{"type", "PUT"}, {"revision", 6}, {"object", {{"metadata", {{"name", "other"}}}}}};
  // Two changes of chat in one read make one notification; other's change makes none.
  harness.api->watch_events["deployments"] = {chat_changed, other_changed, chat_changed_again};
  auto subscribed = harness.send(json{{"jsonrpc", "2.0"},
                                      {"id", 1},
                                      {"method", "resources/subscribe"},
                                      {"params", {{"uri", "nebula://deployments/chat"}}}});
  ASSERT_TRUE(subscribed);
  EXPECT_EQ((*subscribed)["result"], json::object());
  harness.settle();
  ASSERT_EQ(harness.notifications.size(), 1u);
  EXPECT_EQ(harness.notifications[0]["method"], "notifications/resources/updated");
  EXPECT_EQ(harness.notifications[0]["params"]["uri"], "nebula://deployments/chat");
  EXPECT_FALSE(harness.notifications[0].contains("id"));
  // The named resource follows its replicas too.
  bool replicas_watched = false;
  for (const auto& path : harness.api->watches) replicas_watched |= path.rfind("/api/v1/replicas?watch=1", 0) == 0;
  EXPECT_TRUE(replicas_watched);
  harness.server->close();
  EXPECT_TRUE(harness.api->stopped);
}

TEST(McpServer, AMessageOverTheLimitIsRefusedAndTheSessionGoesOn) {
  Harness harness;
  harness.initialize();
  std::string huge =
      R"({"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":")" + std::string(kMaxMessageBytes, 'x') + "\"}}";
  auto answer = harness.send(huge);
  ASSERT_TRUE(answer);
  EXPECT_EQ((*answer)["error"]["code"], -32600);
  EXPECT_TRUE((*answer)["id"].is_null());
  auto ping = harness.send(json{{"jsonrpc", "2.0"}, {"id", 2}, {"method", "ping"}});
  ASSERT_TRUE(ping);
  EXPECT_EQ((*ping)["result"], json::object());
}

TEST(McpServer, DeeplyNestedJsonIsAParseError) {
  Harness harness;
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  auto answer = harness.send(deep);
  ASSERT_TRUE(answer);
  EXPECT_EQ((*answer)["error"]["code"], -32700);
}

TEST(McpArguments, CheckedAgainstTheSchema) {
  json schema = json::parse(R"({"type":"object","properties":{"n":{"type":"integer","minimum":0,"maximum":5},
                                "s":{"type":"string","maxLength":3},"b":{"type":"boolean"}},
                                "required":["n"],"additionalProperties":false})");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":3,"s":"abc","b":true})")), "");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":3.0})")), "");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":-1})")), "n: -1 is less than 0");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":1,"s":"abcd"})")), "s: longer than 3 characters");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":1,"b":"yes"})")), "b: expected a boolean, got string");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"s":"a"})")), "n: required");
  EXPECT_EQ(check_arguments(schema, json::parse(R"([1])")), "arguments: expected an object");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":1e300})")), "n: expected an integer, got number");
  EXPECT_EQ(check_arguments(schema, json::parse(R"({"n":6.0})")), "n: 6.0 is more than 5");
}

}  // namespace
}  // namespace nebula::mcp
