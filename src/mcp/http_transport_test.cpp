// The /mcp routes over real sockets: a test server carries both them and a fake management API,
// which the sessions' tools call back over loopback as they do inside `nebula up`.
#include "mcp/mcp.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>

#include "http/test_server.h"

namespace nebula::mcp {
namespace {

using http::Request;
using http::Response;
using http::ResponseWriter;

const char* kInitialize = R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}})";

http::Headers ndjson() {
  return {{"Content-Type", "application/x-ndjson"}};
}

class McpHttp : public ::testing::Test {
 protected:
  void SetUp() override {
    http::Router router;
    router.add("GET", "/api/v1/gpus", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
      {
        std::lock_guard lock(mutex_);
        api_keys_.push_back(request.header("Authorization"));
      }
      co_await writer.send(Response::json_body(200, json::parse(R"({"items":[{"node":"n1","index":0}]})")));
    });
    // A watch that reports one change and ends (the session's watch opens it again).
    router.add("GET", "/api/v1/deployments", [](Request& request, ResponseWriter& writer) -> awaitable<void> {
      if (!co_await writer.start_stream(200, ndjson())) co_return;
      co_await writer.write(R"({"type":"PUT","revision":3,"object":{"metadata":{"name":"chat"}}})"
                            "\n");
      co_await writer.finish();
    });
    HttpOptions options;
    options.authorize = [](const Request& request) -> std::optional<Response> {
      std::string key = request.header("Authorization");
      if (key == "Bearer good" || key == "Bearer other") return std::nullopt;
      return http::error_json(401, "Incorrect API key provided.", "invalid_api_key");
    };
    options.base_url = [this] { return server_.url(); };
    options.server.rewatch_delay = std::chrono::milliseconds(50);
    options.max_sessions = 4;
    add_http_routes(router, server_.io(), options);
    ASSERT_TRUE(server_.start(std::move(router)));
  }

  Result<http::Response> post(const std::string& body, http::Headers headers) {
    headers.push_back({"Content-Type", "application/json"});
    if (http::find_header(headers, "Accept").empty()) {
      headers.push_back({"Accept", "application/json, text/event-stream"});
    }
    return client_.request("POST", server_.url() + "/mcp", body, headers);
  }

  // A new session of `key`: its id.
  std::string open_session(const std::string& key = "Bearer good") {
    auto response = post(kInitialize, {{"Authorization", key}});
    EXPECT_TRUE(response);
    if (!response) return {};
    EXPECT_EQ(response->status, 200) << response->body;
    return response->header("Mcp-Session-Id");
  }

  http::testing::ServerThread server_;
  http::BlockingClient client_;
  std::mutex mutex_;
  std::vector<std::string> api_keys_;
};

TEST_F(McpHttp, ASessionCallsTheApiWithItsKey) {
  std::string session = open_session();
  ASSERT_EQ(session.size(), 32u);
  auto accepted = post(R"({"jsonrpc":"2.0","method":"notifications/initialized"})",
                       {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", session}});
  ASSERT_TRUE(accepted);
  EXPECT_EQ(accepted->status, 202);
  EXPECT_EQ(accepted->body, "");
  auto called = post(R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"gpu_status"}})",
                     {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", session}});
  ASSERT_TRUE(called);
  ASSERT_EQ(called->status, 200);
  EXPECT_EQ(called->header("Content-Type"), "application/json");
  json answer = json::parse(called->body);
  EXPECT_EQ(answer["result"]["structuredContent"]["items"][0]["node"], "n1") << called->body;
  std::lock_guard lock(mutex_);
  ASSERT_EQ(api_keys_.size(), 1u);
  EXPECT_EQ(api_keys_[0], "Bearer good");
}

TEST_F(McpHttp, RefusesWithoutAKeyAndHidesSessionsFromOtherKeys) {
  auto refused = post(kInitialize, {});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  refused = post(kInitialize, {{"Authorization", "Bearer wrong"}});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401);
  std::string session = open_session();
  auto stolen = post(R"({"jsonrpc":"2.0","id":2,"method":"ping"})",
                     {{"Authorization", "Bearer other"}, {"Mcp-Session-Id", session}});
  ASSERT_TRUE(stolen);
  EXPECT_EQ(stolen->status, 404);
}

TEST_F(McpHttp, BadRequestsGetJsonRpcErrorsAndTheSessionGoesOn) {
  std::string session = open_session();
  http::Headers in_session = {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", session}};
  auto no_session = post(R"({"jsonrpc":"2.0","id":2,"method":"ping"})", {{"Authorization", "Bearer good"}});
  ASSERT_TRUE(no_session);
  EXPECT_EQ(no_session->status, 400);
  EXPECT_EQ(json::parse(no_session->body)["error"]["code"], -32600);
  auto unknown = post(R"({"jsonrpc":"2.0","id":2,"method":"ping"})",
                      {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", "no-such-session"}});
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  auto garbage = post("{not json", in_session);
  ASSERT_TRUE(garbage);
  EXPECT_EQ(json::parse(garbage->body)["error"]["code"], -32700);
  auto garbage_outside = post("{not json", {{"Authorization", "Bearer good"}});
  ASSERT_TRUE(garbage_outside);
  EXPECT_EQ(garbage_outside->status, 400);
  EXPECT_EQ(json::parse(garbage_outside->body)["error"]["code"], -32700);
  http::Headers old_version = in_session;
  old_version.push_back({"MCP-Protocol-Version", "1999-01-01"});
  auto versioned = post(R"({"jsonrpc":"2.0","id":3,"method":"ping"})", old_version);
  ASSERT_TRUE(versioned);
  EXPECT_EQ(versioned->status, 400);
  http::Headers html = in_session;
  html.push_back({"Accept", "text/html"});
  auto not_acceptable = post(R"({"jsonrpc":"2.0","id":4,"method":"ping"})", html);
  ASSERT_TRUE(not_acceptable);
  EXPECT_EQ(not_acceptable->status, 406);
  auto huge = post(std::string(kMaxMessageBytes + 1, ' '), in_session);
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 413);
  auto again = post(kInitialize, in_session);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 400);
  auto ping = post(R"({"jsonrpc":"2.0","id":5,"method":"ping"})", in_session);
  ASSERT_TRUE(ping);
  EXPECT_EQ(ping->status, 200);
  EXPECT_EQ(json::parse(ping->body)["result"], json::object());
}

TEST_F(McpHttp, AFailedInitializeOpensNoSession) {
  auto failed =
      post(R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}})", {{"Authorization", "Bearer good"}});
  ASSERT_TRUE(failed);
  EXPECT_EQ(failed->status, 200);
  EXPECT_EQ(json::parse(failed->body)["error"]["code"], -32602);
  EXPECT_EQ(failed->header("Mcp-Session-Id"), "");
}

TEST_F(McpHttp, DeleteEndsTheSession) {
  std::string session = open_session();
  http::Headers in_session = {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", session}};
  auto deleted = client_.request("DELETE", server_.url() + "/mcp", "", in_session);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->status, 200);
  auto gone = post(R"({"jsonrpc":"2.0","id":2,"method":"ping"})", in_session);
  ASSERT_TRUE(gone);
  EXPECT_EQ(gone->status, 404);
  deleted = client_.request("DELETE", server_.url() + "/mcp", "", in_session);
  ASSERT_TRUE(deleted);
  EXPECT_EQ(deleted->status, 404);
}

TEST_F(McpHttp, TheLeastRecentlyUsedSessionEndsPastTheLimit) {
  std::string first = open_session();
  for (int index = 0; index < 4; ++index) open_session();
  auto evicted = post(R"({"jsonrpc":"2.0","id":2,"method":"ping"})",
                      {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", first}});
  ASSERT_TRUE(evicted);
  EXPECT_EQ(evicted->status, 404);
}

TEST_F(McpHttp, SubscriptionUpdatesArriveOnTheGetStream) {
  std::string session = open_session();
  http::Headers in_session = {{"Authorization", "Bearer good"}, {"Mcp-Session-Id", session}};
  auto wrong_accept = client_.request("GET", server_.url() + "/mcp", "", in_session);
  ASSERT_TRUE(wrong_accept);
  EXPECT_EQ(wrong_accept->status, 406);
  auto subscribed = post(R"({"jsonrpc":"2.0","id":2,"method":"resources/subscribe",
                             "params":{"uri":"nebula://deployments/chat"}})",
                         in_session);
  ASSERT_TRUE(subscribed);
  EXPECT_EQ(json::parse(subscribed->body)["result"], json::object()) << subscribed->body;
  http::Headers stream_headers = in_session;
  stream_headers.push_back({"Accept", "text/event-stream"});
  std::string received;
  auto status = client_.stream(
      "GET", server_.url() + "/mcp", "", stream_headers,
      [&](std::string_view data) {
        received += data;
        return received.find("\n\n") == std::string::npos;
      },
      std::chrono::seconds(10));
  ASSERT_TRUE(status);
  EXPECT_EQ(*status, 200);
  EXPECT_EQ(received.rfind("event: message\ndata: ", 0), 0u) << received;
  json notification = json::parse(received.substr(21, received.find("\n\n") - 21));
  EXPECT_EQ(notification["method"], "notifications/resources/updated");
  EXPECT_EQ(notification["params"]["uri"], "nebula://deployments/chat");
}

}  // namespace
}  // namespace nebula::mcp
