#pragma once
// Nebula's HTTP layer: an async HTTP/1.1 server with a routing table, chunked and SSE
// responses, and a pooled client with a streaming response reader. Built on Boost.Beast, which
// stays inside the .cpp files. Knows nothing of LLMs.
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/asio.h"
#include "common/config.h"
#include "common/json.h"
#include "common/result.h"

namespace boost::asio {
class io_context;
}

namespace nebula::http {

struct Header {
  std::string name;
  std::string value;
};
using Headers = std::vector<Header>;

// Case-insensitive header lookup; "" when absent.
std::string find_header(const Headers& headers, std::string_view name);
// Percent-decoding for query strings ('+' is a space).
std::string url_decode(std::string_view text);
// Percent-encodes everything but RFC 3986's unreserved characters: for a query value.
std::string url_encode(std::string_view text);
// The one way a path of the management API is built (the CLI, nebula mcp, nebula top): every
// segment and query value percent-encoded. api_path({"deployments", name, "logs"},
// {{"tail", "10"}}) -> "/api/v1/deployments/NAME/logs?tail=10".
std::string api_path(std::initializer_list<std::string_view> segments,
                     const std::vector<std::pair<std::string, std::string>>& query = {});

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: "/api/v1/x?watch=1"
  std::string path;    // decoded path without the query: "/api/v1/x"
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> params;  // from {name} segments of the matched route
  Headers headers;
  std::string body;
  std::string remote_address;

  std::string header(std::string_view name) const { return find_header(headers, name); }
  // The query parameter or fallback when absent.
  std::string query_or(const std::string& name, const std::string& fallback = "") const;
};

struct Response {
  int status = 200;
  Headers headers;
  std::string body;

  std::string header(std::string_view name) const { return find_header(headers, name); }
  static Response json_body(int status, const json& body);
  static Response text(int status, std::string body, std::string content_type = "text/plain; charset=utf-8");
};

// {"error": {"message", "type": "invalid_request_error", "code"}}: OpenAI's error shape.
// type "" = server_error for 5xx, invalid_request_error otherwise.
Response error_json(int status, const std::string& message, const std::string& code, const std::string& type = "");

// Content-Type text/event-stream, Cache-Control no-cache: the headers of an SSE response.
Headers event_stream_headers();

// g++ 12 miscompiles braced initialisers holding string literals inside coroutines ("array used
// as initializer"): build such values in plain functions like the two above.

// How a handler answers. Either send() once, or start_stream() then write()... then finish().
// A handler that returns without answering gets a 500.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  virtual awaitable<void> send(Response response) = 0;
  // Sends the status line and headers of a chunked response. False when the client is gone.
  virtual awaitable<bool> start_stream(int status, Headers headers) = 0;
  // Sends one chunk, flushed at once. False when the client is gone (stop producing).
  virtual awaitable<bool> write(std::string_view data) = 0;
  virtual awaitable<void> finish() = 0;
  // Ends a started stream without its final chunk and closes the connection, so the client can
  // tell a failure from a complete response.
  virtual void abort() = 0;
  virtual bool answered() const = 0;
  // Asks to be told when the client closes its connection before the answer is complete (a
  // non-streamed request whose client gave up, a request waiting in a queue). The callback runs
  // on the I/O thread, at most once. Watching costs a pending read, so it starts only when asked.
  // The server's io_context must run on one thread for this.
  virtual void on_client_gone(std::function<void()> callback) = 0;
  virtual bool client_gone() const = 0;
  // Says the answer is a stream that never ends by itself (a watch, a followed log): a draining
  // server closes it at once instead of waiting for it to finish.
  virtual void mark_endless() {}
};

using Handler = std::function<awaitable<void>(Request&, ResponseWriter&)>;

// A routing table. Patterns are paths whose segments may be `{name}` (one segment, captured into
// Request::params) and whose last segment may be `*` (the rest, captured as params["*"]).
class Router {
 public:
  void add(std::string method, std::string pattern, Handler handler);
  // Dispatches: 404 when no pattern matches, 405 when only the method is wrong.
  awaitable<void> dispatch(Request& request, ResponseWriter& writer) const;
  // Used when nothing matches; default answers a JSON 404.
  void set_not_found(Handler handler) { not_found_ = std::move(handler); }
  // Runs before every route; a returned response is sent instead of dispatching (authentication).
  using Guard = std::function<std::optional<Response>(const Request&)>;
  void set_guard(Guard guard) { guard_ = std::move(guard); }

 private:
  struct Route {
    std::string method;
    std::vector<std::string> segments;
    Handler handler;
  };
  std::vector<Route> routes_;
  Handler not_found_;
  Guard guard_;
};

struct ServerOptions {
  size_t body_limit = 8 * 1024 * 1024;  // larger bodies get 413
  size_t header_limit = 16 * 1024;      // larger headers get 431
  // A request's header and body must arrive within this once its first byte has.
  std::chrono::milliseconds read_timeout{30'000};
  // An idle keep-alive connection is closed after this.
  std::chrono::milliseconds idle_timeout{75'000};
  // A single write to a slow reader may take this long before the connection is dropped.
  std::chrono::milliseconds write_timeout{60'000};
  // Open connections past which a new client gets a fast 503 instead of waiting in the backlog.
  // 0: the open-file limit less 64 (a proxy, holding two descriptors per client, passes half).
  size_t max_connections = 0;
};

// Counters of every Server in this process, for /metrics.
struct ServerStats {
  uint64_t accepted = 0;
  uint64_t refused = 0;        // over max_connections, or while out of descriptors
  uint64_t accept_errors = 0;  // accept() failures (EMFILE, ENFILE, ...)
  uint64_t open = 0;
};
ServerStats server_stats();
// server_stats() in Prometheus text format (nebula_http_*).
std::string render_server_metrics();

// Accepts connections on the io_context it is given; each connection is one coroutine, so idle
// keep-alive connections cost memory, not threads. Handlers run on the io_context's threads.
class Server {
 public:
  Server(asio::io_context& io, Router router, ServerOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and starts accepting. Returns the bound port (useful with port 0).
  Result<uint16_t> listen(const HostPort& address);
  // Stops accepting and closes every open connection. Asynchronous: the closing is posted to the
  // io_context, so keep running it (or post io.stop() after this) for the close to happen.
  void stop();
  // A graceful stop, from a thread other than the io_context's (which must keep running): stops
  // accepting, closes idle connections and endless streams, lets requests in flight finish (their
  // connections then close) for up to `timeout`, then stop()s. Returns the connections it cut.
  size_t drain(std::chrono::milliseconds timeout);
  size_t open_connections() const;
  // The connection limit in force (ServerOptions::max_connections, or what it was derived to).
  size_t max_connections() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

struct Url {
  std::string scheme;  // "http" or "https"
  std::string host;
  uint16_t port = 80;  // 80 or 443 when the URL names none
  std::string target;  // path and query, at least "/"
  static Result<Url> parse(std::string_view text);
  std::string origin() const;  // "http://host:port"
};

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{5'000};  // also bounds the TLS handshake
  size_t max_idle_per_host = 64;
  // An idle pooled connection is closed after this, and as soon as its peer closes it (checked
  // every second while any connection is idle): a pool never keeps sockets to engines long gone.
  std::chrono::milliseconds idle_timeout{30'000};
  size_t body_limit = 64 * 1024 * 1024;
  // https:// servers are verified (TLS 1.2+, certificate chain and host name) against the
  // system CA store and, when set, the CA certificates in this PEM file too (a private CA, or a
  // test's).
  std::string ca_file;
  // A client certificate (PEM chain) and its private key, presented to servers that ask for one
  // (etcd with --client-cert-auth). Both or neither.
  std::string cert_file;
  std::string key_file;
};

class StreamingResponse {
 public:
  virtual ~StreamingResponse() = default;
  int status = 0;
  Headers headers;
  std::string header(std::string_view name) const { return find_header(headers, name); }
  // The next piece of the body as it arrives (chunk framing removed). "" when the body ended.
  // Fails with Timeout when nothing arrives within idle_timeout.
  virtual awaitable<Result<std::string>> read(std::chrono::milliseconds idle_timeout) = 0;
  // Reads the rest of the body into one string.
  awaitable<Result<std::string>> read_all(std::chrono::milliseconds idle_timeout);
  // Abandons the response: the connection is closed, which cancels the request upstream.
  virtual void cancel() = 0;
};

// Lets another coroutine on the same thread abandon a Client::open() in progress: cancel() closes
// its connection, so the request is cancelled upstream and open() fails.
class Cancellation {
 public:
  void cancel() {
    cancelled_ = true;
    if (close_) close_();
  }
  bool cancelled() const { return cancelled_; }

 private:
  friend class Client;
  std::function<void()> close_;
  bool cancelled_ = false;
};

// An async client with a keep-alive connection pool per host. Thread-safe; its connections live
// on the executor of the io_context it was built with.
class Client {
 public:
  explicit Client(asio::io_context& io, ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends a request and reads the whole response within timeout.
  awaitable<Result<Response>> request(std::string method, std::string url, std::string body = {}, Headers headers = {},
                                      std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Closes the idle connections to an origin ("http://host:port"), e.g. once its replica is gone.
  void close_idle(const std::string& origin);
  // Idle connections in the pool, over every origin.
  size_t idle_connections() const;
  // Sends a request and returns once the response headers arrived (within first_byte_timeout).
  // A cancellation, when given, can abandon the request until open() returns.
  awaitable<Result<std::unique_ptr<StreamingResponse>>> open(std::string method, std::string url, std::string body,
                                                             Headers headers,
                                                             std::chrono::milliseconds first_byte_timeout,
                                                             Cancellation* cancellation = nullptr);

 private:
  friend class PooledStreamingResponse;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// A blocking client for the CLI, tests and simple loops: runs the async client on a private
// io_context. Not thread-safe; use one per thread.
class BlockingClient {
 public:
  explicit BlockingClient(ClientOptions options = {});
  ~BlockingClient();
  Result<Response> request(const std::string& method, const std::string& url, const std::string& body = {},
                           Headers headers = {}, std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Streams the response body to on_data as it arrives, until the body ends or on_data returns
  // false. Returns the HTTP status.
  Result<int> stream(const std::string& method, const std::string& url, const std::string& body, Headers headers,
                     const std::function<bool(std::string_view)>& on_data,
                     std::chrono::milliseconds idle_timeout = std::chrono::seconds(60));

 private:
  std::unique_ptr<asio::io_context> io_;
  std::unique_ptr<Client> client_;
};

}  // namespace nebula::http
