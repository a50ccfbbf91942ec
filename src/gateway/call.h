#pragma once
// Internal to the gateway: one inference request on its way through Gateway::serve(), and the
// small helpers its steps share. Included by the gateway's .cpp files only.
#include <chrono>
#include <memory>
#include <set>
#include <string>

#include "common/asio.h"

#include <boost/asio/steady_timer.hpp>
#include "common/json.h"
#include "gateway/gateway.h"
#include "http/http.h"
#include "router/policy.h"

namespace nebula::gateway {

enum Kind { kChat = 0, kCompletions = 1, kEmbeddings = 2, kResponses = 3 };
// What the engine is asked, per kind: a Responses request becomes a chat completion.
inline constexpr const char* kUpstreamPaths[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                                 "/v1/chat/completions"};

// A request waiting in its deployment's admission queue for a replica slot.
struct Gateway::Waiter {
  explicit Waiter(asio::io_context& io) : timer(io) {}
  std::string key;
  int priority = 0;
  uint64_t sequence = 0;
  std::set<std::string> exclude;
  router::RouteContext* route = nullptr;  // the call's
  asio::steady_timer timer;
  std::shared_ptr<router::Endpoint> granted;
  std::string failure;         // set when waiting became pointless (the deployment cannot start)
  bool breakers_open = false;  // ... because every replica's breaker opened
};

// One request through the gateway, from authentication to accounting.
struct Gateway::Call {
  int kind = kChat;
  std::string request_id;
  std::string path;  // the request's, the trace's name
  std::chrono::system_clock::time_point start_wall = std::chrono::system_clock::now();
  // W3C trace context: the client's traceparent when valid, else a new trace; the engine gets a
  // child span of it (traceparent), and tracestate only when the client's traceparent was valid.
  std::string trace_id;
  std::string traceparent;
  std::string tracestate;
  json input;               // the prompt (messages, prompt or input), kept only for --xtrace-content
  std::string output_text;  // the answer's text, kept only for --xtrace-content
  bool capture_content = false;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point deadline;
  std::shared_ptr<const api::ApiKey> key;  // null without auth
  std::string key_id = "anonymous";
  std::string model;
  json body;
  bool stream = false;
  bool client_wants_usage = false;
  std::string upstream_body;  // what the engine is sent
  int64_t estimated_tokens = 0;
  router::RouteContext route;  // what the deployment's Policy sees of the request
  uint64_t ticket = 0;
  bool admitted = false;  // counted by the limiter
  std::string replica;
  double ttft_s = -1;
  json usage;  // the engine's usage object
  int64_t relayed_chunks = 0;
  http::Headers headers;  // sent on every response: x-request-id, x-ratelimit-*
  // While the client waits without being written to (queue, non-streamed answer): what to
  // cancel if it leaves.
  bool client_gone = false;
  bool watching = false;
  Waiter* waiting = nullptr;
  http::Cancellation upstream_cancel;
  http::StreamingResponse* upstream = nullptr;
  // /v1/responses: the input items this request adds to its conversation, stored with the answer
  // as one turn unless the client sent "store": false, and the response it continues.
  json turn_input;
  std::string previous_id;
  std::string conversation_root;  // the id of the first response of the chain it continues
  int64_t created_s = 0;          // a background response's created_at
  // /v1/responses with "background": true: answered at once with a queued response of this id,
  // then relayed with no client waiting (background.cpp).
  bool background = false;
  std::string response_id;  // set for a background call: the id its response is stored under
  bool store_response = false;
  // No replica could take the request because every breaker is open: the answer is the engine's
  // last error (breaker_refusal()), at once.
  bool breakers_open = false;

  // From here until the answer is written, a client that leaves cancels what it waits for.
  void watch_client(http::ResponseWriter& writer) {
    if (watching) return;
    watching = true;
    writer.on_client_gone([this] {
      client_gone = true;
      if (waiting) waiting->timer.cancel();
      upstream_cancel.cancel();
      if (upstream) upstream->cancel();
    });
  }
};

inline http::Response with_headers(http::Response response, const http::Headers& headers) {
  for (const auto& header : headers) response.headers.push_back(header);
  return response;
}

// What the client gets for an error, with the call's headers.
inline http::Response call_error(const http::Headers& headers, int status, const std::string& message,
                                 const std::string& type, const std::string& code) {
  return with_headers(openai_error(status, message, type, code), headers);
}

// A response store's error for the client: 404 for a response it does not have, else 503 (it
// could not be reached) or 500.
inline http::Response response_store_error(const Error& error) {
  if (error.code == ErrorCode::NotFound) return openai_error(404, error.message, "invalid_request_error", "not_found");
  if (error.code == ErrorCode::Unavailable) {
    return openai_error(503, error.message, "server_error", "response_store_unavailable");
  }
  return openai_error(500, error.message, "server_error", "response_store_error");
}

// JSON text as sent on: invalid UTF-8 replaced, never thrown on.
inline std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace nebula::gateway
