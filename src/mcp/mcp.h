#pragma once
// `nebula mcp`: a Model Context Protocol server. Server handles one JSON-RPC message at a time and
// knows no transport; run_stdio() (one message per line) and add_http_routes() (Streamable HTTP at
// /mcp) carry the messages. Tools and resources call Nebula's HTTP API through the Api seam, so the
// API's own authentication decides what a caller may do (docs/mcp.md).
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/json.h"
#include "common/result.h"
#include "http/http.h"

namespace nebula::mcp {

// The protocol revisions spoken, newest first; initialize answers the client's when it is one of
// them, else the newest.
const std::vector<std::string>& protocol_versions();

// Larger messages are refused with a JSON-RPC error (the transport keeps serving).
constexpr size_t kMaxMessageBytes = 4 * 1024 * 1024;

// JSON-RPC 2.0 error codes, and MCP's for an unknown resource.
enum class RpcError : int {
  ParseError = -32700,
  InvalidRequest = -32600,
  MethodNotFound = -32601,
  InvalidParams = -32602,
  InternalError = -32603,
  ResourceNotFound = -32002,
};
json error_response(const json& id, RpcError code, const std::string& message);

struct ApiAnswer {
  int status = 0;
  std::string body;
};

// The seam: Nebula's HTTP API as the tools see it. All calls happen on one executor (the one the
// Server was given).
class Api {
 public:
  virtual ~Api() = default;
  // One request (path "/api/v1/..." or "/v1/..."; a non-empty body is JSON). A transport failure is
  // an error; any HTTP status is an answer.
  virtual awaitable<Result<ApiAnswer>> call(std::string method, std::string path, std::string body) = 0;
  // GET path as a watch (NDJSON): on_event for each event until the stream ends or fails. Returns
  // the HTTP status, or an error when the server could not be reached.
  virtual awaitable<Result<int>> watch(std::string path, std::function<void(const json&)> on_event) = 0;
  // Ends every watch in progress and refuses new ones.
  virtual void stop() = 0;
};

// The Api over HTTP to a Nebula server: `nebula mcp --server URL`, and /mcp calling its own server
// over loopback with the caller's Authorization.
class HttpApi : public Api {
 public:
  HttpApi(http::Client& client, std::string base_url, http::Headers headers);
  ~HttpApi() override;
  awaitable<Result<ApiAnswer>> call(std::string method, std::string path, std::string body) override;
  awaitable<Result<int>> watch(std::string path, std::function<void(const json&)> on_event) override;
  void stop() override;

 private:
  struct Watches;
  http::Client& client_;
  std::string base_url_;
  http::Headers headers_;
  std::shared_ptr<Watches> watches_;
};

struct ServerOptions {
  bool read_only = false;  // list and call only the tools that change nothing
  // Delay before a failed or ended watch is opened again.
  std::chrono::milliseconds rewatch_delay{1000};
};

// A notification to send to the client (a JSON-RPC message without id).
using Notify = std::function<void(json notification)>;

// One MCP session: the lifecycle (initialize, then requests), tools and resources, and resource
// subscriptions fed by the API's watch streams. Runs on one executor; not thread-safe.
class Server {
 public:
  Server(std::shared_ptr<Api> api, asio::any_io_executor executor, ServerOptions options, Notify notify);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Handles one message: the answer to send back, or nullopt for a notification or a response.
  // Never throws for bad input: a malformed message gets a JSON-RPC error.
  awaitable<std::optional<json>> handle(std::string message);
  // Ends the subscriptions' watches; later notifications are dropped.
  void close();
  bool initialized() const;
  // The revision agreed at initialize ("" before).
  const std::string& protocol_version() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// The Streamable HTTP transport, added to the server's router: POST, GET (server-sent
// notifications) and DELETE on /mcp. `authorize` answers the refusal (401/403) for a request that
// may not use MCP, or nullopt; `base_url` is where the tools reach this server's API (known once it
// listens).
struct HttpOptions {
  std::function<std::optional<http::Response>(const http::Request&)> authorize;
  std::function<std::string()> base_url;
  ServerOptions server;
  size_t max_sessions = 256;  // past this the least recently used session is ended
};
void add_http_routes(http::Router& router, asio::io_context& io, HttpOptions options);

// The stdio transport: one JSON-RPC message per line on stdin, answers and notifications one per
// line on stdout (nothing else is written there). Returns 0 when stdin ends.
struct StdioOptions {
  std::string server_url;
  http::Headers headers;  // Authorization for the server
  ServerOptions server;
  int input_fd = 0;
  int output_fd = 1;
};
int run_stdio(const StdioOptions& options);

}  // namespace nebula::mcp
