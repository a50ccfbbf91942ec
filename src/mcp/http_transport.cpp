// MCP's Streamable HTTP transport at /mcp: POST carries one JSON-RPC message and gets its answer as
// JSON; GET opens a server-sent event stream of notifications (resource updates); DELETE ends the
// session. Sessions live on the server's single I/O thread, so they need no locks.
#include "mcp/mcp.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <list>
#include <map>

#include "common/ids.h"

namespace nebula::mcp {

namespace {

using http::Request;
using http::Response;
using http::ResponseWriter;

// Notifications kept for a session with no GET stream open; older ones are dropped.
constexpr size_t kMaxPending = 1000;

struct Session {
  explicit Session(asio::io_context& io) : wake(io) {}
  std::string id;
  std::string authorization;  // the session belongs to the key that opened it
  std::unique_ptr<Server> server;
  std::deque<std::string> pending;  // notifications as JSON text
  asio::steady_timer wake;          // cancelled when a notification arrives or the session ends
  uint64_t stream_generation = 0;   // a newer GET stream ends the older one
  bool ended = false;
};

struct Sessions {
  Sessions(asio::io_context& io, HttpOptions options) : io(io), client(io), options(std::move(options)) {}
  asio::io_context& io;
  http::Client client;
  HttpOptions options;
  std::map<std::string, std::shared_ptr<Session>> by_id;
  std::list<std::string> recency;  // least recently used first

  void touch(const std::string& id) {
    recency.remove(id);
    recency.push_back(id);
  }

  void end(const std::string& id) {
    auto found = by_id.find(id);
    if (found == by_id.end()) return;
    found->second->ended = true;
    found->second->server->close();
    found->second->wake.cancel();
    by_id.erase(found);
    recency.remove(id);
  }

  std::shared_ptr<Session> open(const Request& request) {
    while (by_id.size() >= options.max_sessions && !recency.empty()) end(recency.front());
    auto session = std::make_shared<Session>(io);
    session->id = random_id(32);
    session->authorization = request.header("Authorization");
    http::Headers headers;
    if (!session->authorization.empty()) headers.push_back({"Authorization", session->authorization});
    auto api = std::make_shared<HttpApi>(client, options.base_url(), std::move(headers));
    std::weak_ptr<Session> weak = session;
    session->server = std::make_unique<Server>(api, io.get_executor(), options.server, [weak](json notification) {
      auto alive = weak.lock();
      if (!alive || alive->ended) return;
      alive->pending.push_back(notification.dump());
      if (alive->pending.size() > kMaxPending) alive->pending.pop_front();
      alive->wake.cancel();
    });
    by_id[session->id] = session;
    touch(session->id);
    return session;
  }

  // The session a request names, when it exists and belongs to the request's key.
  std::shared_ptr<Session> find(const Request& request) {
    auto found = by_id.find(request.header("Mcp-Session-Id"));
    if (found == by_id.end() || found->second->authorization != request.header("Authorization")) return nullptr;
    touch(found->first);
    return found->second;
  }
};

Response rpc_error(int status, RpcError code, const std::string& message) {
  return Response::json_body(status, error_response(nullptr, code, message));
}

bool accepts(const Request& request, std::string_view media) {
  std::string accept = request.header("Accept");
  return accept.empty() || accept.find(media) != std::string::npos || accept.find("*/*") != std::string::npos;
}

// Checks every /mcp request shares: the key, the protocol revision header. The refusal, or nullopt.
std::optional<Response> refusal(Sessions& sessions, const Request& request) {
  if (auto refused = sessions.options.authorize(request)) return refused;
  std::string version = request.header("MCP-Protocol-Version");
  const auto& known = protocol_versions();
  if (!version.empty() && std::find(known.begin(), known.end(), version) == known.end()) {
    return rpc_error(400, RpcError::InvalidRequest,
                     "unsupported MCP-Protocol-Version " + version.substr(0, 32) +
                         " (supported: 2025-06-18, "
                         "2025-03-26, 2024-11-05)");
  }
  return std::nullopt;
}

// What a request without a usable session gets: 400 without the header, 404 for an unknown (or
// ended, or another key's) session, which tells the client to initialize again.
Response no_session(const Request& request) {
  if (request.header("Mcp-Session-Id").empty()) {
    return rpc_error(400, RpcError::InvalidRequest, "Mcp-Session-Id header is required (initialize first)");
  }
  return rpc_error(404, RpcError::InvalidRequest, "session not found: initialize a new one");
}

bool is_initialize(const std::string& body) {
  auto parsed = parse_json(body);
  return parsed && parsed->is_object() && parsed->contains("id") && (*parsed)["method"] == "initialize";
}

Response json_answer(const json& answer, const std::string& session_id) {
  Response response = Response::json_body(200, answer);
  if (!session_id.empty()) response.headers.push_back({"Mcp-Session-Id", session_id});
  return response;
}

awaitable<void> post(std::shared_ptr<Sessions> sessions, Request& request, ResponseWriter& writer) {
  if (auto refused = refusal(*sessions, request)) {
    co_await writer.send(std::move(*refused));
    co_return;
  }
  if (!accepts(request, "application/json")) {
    co_await writer.send(rpc_error(406, RpcError::InvalidRequest, "Accept must include application/json"));
    co_return;
  }
  if (request.body.size() > kMaxMessageBytes) {
    co_await writer.send(rpc_error(413, RpcError::InvalidRequest, "message larger than 4 MiB"));
    co_return;
  }
  std::shared_ptr<Session> session;
  bool opened = false;
  if (is_initialize(request.body)) {
    if (!request.header("Mcp-Session-Id").empty()) {
      co_await writer.send(rpc_error(400, RpcError::InvalidRequest,
                                     "initialize starts a session: send it without "
                                     "Mcp-Session-Id"));
      co_return;
    }
    session = sessions->open(request);
    opened = true;
  } else {
    session = sessions->find(request);
    if (!session) {
      // A parse error is told as such even without a session.
      auto parsed = parse_json(request.body);
      if (!parsed) {
        co_await writer.send(rpc_error(400, RpcError::ParseError, "parse error: " + parsed.error().message));
        co_return;
      }
      co_await writer.send(no_session(request));
      co_return;
    }
  }
  auto answer = co_await session->server->handle(request.body);
  if (opened && !session->server->initialized()) sessions->end(session->id);
  if (!answer) {
    co_await writer.send(Response::text(202, ""));
    co_return;
  }
  // g++ 12 destroys a conditional's temporary twice inside a coroutine: no ?: with strings here.
  std::string new_session_id;
  if (opened && session->server->initialized()) new_session_id = session->id;
  co_await writer.send(json_answer(*answer, new_session_id));
}

awaitable<void> get(std::shared_ptr<Sessions> sessions, Request& request, ResponseWriter& writer) {
  if (auto refused = refusal(*sessions, request)) {
    co_await writer.send(std::move(*refused));
    co_return;
  }
  std::string accept = request.header("Accept");
  if (accept.find("text/event-stream") == std::string::npos) {
    co_await writer.send(rpc_error(406, RpcError::InvalidRequest, "Accept must include text/event-stream"));
    co_return;
  }
  auto session = sessions->find(request);
  if (!session) {
    co_await writer.send(no_session(request));
    co_return;
  }
  uint64_t generation = ++session->stream_generation;
  session->wake.cancel();  // ends an older stream of this session
  writer.mark_endless();
  writer.on_client_gone([session] { session->wake.cancel(); });
  if (!co_await writer.start_stream(200, http::event_stream_headers())) co_return;
  while (!writer.client_gone() && !session->ended && session->stream_generation == generation) {
    if (!session->pending.empty()) {
      std::string batch;
      for (auto& notification : session->pending) batch += "event: message\ndata: " + notification + "\n\n";
      session->pending.clear();
      if (!co_await writer.write(batch)) break;
      continue;
    }
    session->wake.expires_after(std::chrono::seconds(15));
    boost::system::error_code timed_out;
    co_await session->wake.async_wait(asio::redirect_error(asio::use_awaitable, timed_out));
    if (!timed_out && !co_await writer.write(": keep-alive\n\n")) break;
  }
  co_await writer.finish();
}

awaitable<void> remove(std::shared_ptr<Sessions> sessions, Request& request, ResponseWriter& writer) {
  if (auto refused = refusal(*sessions, request)) {
    co_await writer.send(std::move(*refused));
    co_return;
  }
  auto session = sessions->find(request);
  if (!session) {
    co_await writer.send(no_session(request));
    co_return;
  }
  sessions->end(session->id);
  co_await writer.send(Response::text(200, ""));
}

}  // namespace

void add_http_routes(http::Router& router, asio::io_context& io, HttpOptions options) {
  auto sessions = std::make_shared<Sessions>(io, std::move(options));
  router.add("POST", "/mcp", [sessions](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await post(sessions, request, writer);
  });
  router.add("GET", "/mcp", [sessions](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await get(sessions, request, writer);
  });
  router.add("DELETE", "/mcp", [sessions](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await remove(sessions, request, writer);
  });
}

}  // namespace nebula::mcp
