// /api/v1/gateway/state: what stateless gateways (`nebula gateway`) list, watch and write
// (gateway/mirror_store.h has the protocol). Guarded like the rest of /api/v1.
#include <fmt/format.h>

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

#include "api/api.h"
#include "gateway/gateway.h"
#include "gateway/mirror_store.h"

namespace nebula::gateway {

namespace {
using http::Request;
using http::Response;
using http::ResponseWriter;

// A watcher this far behind is cut off (its gateway lists again) rather than queued for without
// bound.
constexpr size_t kMaxQueuedEvents = 10'000;

bool mirrored(const std::string& key) {
  for (const auto& prefix : mirrored_prefixes()) {
    if (key.compare(0, prefix.size(), prefix) == 0) return true;
  }
  return false;
}

json kv_json(const store::KeyValue& kv) {
  return json{{"key", kv.key},
              {"value", kv.value},
              {"mod_revision", kv.mod_revision},
              {"create_revision", kv.create_revision},
              {"version", kv.version}};
}

Response state_error(int status, const std::string& message, const std::string& code) {
  return http::error_json(status, message, code);
}

Response listing(store::Store& store) {
  json kvs = json::array();
  int64_t revision = -1;
  // Each prefix is its own listing: the gateway watches from the oldest of their revisions, and
  // events it already has (by mod_revision) are skipped.
  for (const auto& prefix : mirrored_prefixes()) {
    auto listed = store.list(prefix);
    if (!listed) return state_error(503, listed.error().message, "unavailable");
    revision = revision < 0 ? listed->revision : std::min(revision, listed->revision);
    for (const auto& kv : listed->kvs) kvs.push_back(kv_json(kv));
  }
  return Response::json_body(200, json{{"revision", std::max<int64_t>(revision, 0)}, {"kvs", std::move(kvs)}});
}

// The answers to the latest writes that carried an id, so that a gateway that did not hear an
// answer and sends the same write again gets the same answer instead of a second write (a usage
// delta added twice). Process-wide: ids are unique per gateway process. Bounded, oldest out.
class RecentWrites {
 public:
  std::optional<Response> find(const std::string& id) {
    std::lock_guard lock(mutex_);
    auto found = answers_.find(id);
    if (found == answers_.end()) return std::nullopt;
    return found->second;
  }
  void remember(const std::string& id, const Response& answer) {
    std::lock_guard lock(mutex_);
    if (!answers_.emplace(id, answer).second) return;
    order_.push_back(id);
    if (order_.size() > kKept) {
      answers_.erase(order_.front());
      order_.pop_front();
    }
  }

 private:
  static constexpr size_t kKept = 100'000;
  std::mutex mutex_;
  std::map<std::string, Response> answers_;
  std::deque<std::string> order_;
};

RecentWrites& recent_writes() {
  static RecentWrites writes;
  return writes;
}

Response apply_write(store::Store& store, json body);

Response write(store::Store& store, const std::string& body_text) {
  auto body = parse_json(body_text);
  if (!body || !body->is_object()) return state_error(400, "the body must be a JSON object", "invalid_request");
  const json& id = (*body)["id"];
  if (!id.is_null() && (!id.is_string() || id.get<std::string>().empty() || id.get<std::string>().size() > 128)) {
    return state_error(400, "id must be a string of 1 to 128 characters", "invalid_request");
  }
  if (id.is_null()) return apply_write(store, *body);
  if (auto answered = recent_writes().find(id.get<std::string>())) return *answered;
  Response answer = apply_write(store, *body);
  if (answer.status == 200 || answer.status == 404 || answer.status == 409) {
    recent_writes().remember(id.get<std::string>(), answer);
  }
  return answer;
}

Response apply_write(store::Store& store, json request) {
  json* body = &request;
  const json& key_json = (*body)["key"];
  const json& op = (*body)["op"];
  const json& precondition = (*body)["mod_revision"];
  if (!key_json.is_string() || !op.is_string() || !(precondition.is_null() || precondition.is_number_integer())) {
    return state_error(400, "expected {\"op\", \"key\", \"value\", \"mod_revision\"}", "invalid_request");
  }
  std::string key = key_json.get<std::string>();
  if (!gateway_may_write(key)) {
    return state_error(403, "a gateway may write only deployments, replicas, keys and usage", "forbidden");
  }
  store::Precondition condition{precondition.is_null() ? -1 : precondition.get<int64_t>()};
  if (condition.mod_revision < -1)
    return state_error(400, "mod_revision must be -1, 0 or a revision", "invalid_request");
  Result<int64_t> written = make_error(ErrorCode::InvalidArgument, "unknown op");
  if (op == "put") {
    const json& value = (*body)["value"];
    if (!value.is_string()) return state_error(400, "value must be a string", "invalid_request");
    written = store.put(key, value.get<std::string>(), condition);
  } else if (op == "delete") {
    written = store.remove(key, condition);
  } else {
    return state_error(400, "op must be put or delete", "invalid_request");
  }
  if (!written) {
    if (written.error().code == ErrorCode::Conflict) {
      auto current = store.get(key);
      json answer{{"error", {{"message", written.error().message}, {"code", "conflict"}}}};
      answer["current"] = current && *current ? kv_json(**current) : json();
      return Response::json_body(409, answer);
    }
    if (written.error().code == ErrorCode::NotFound) return state_error(404, written.error().message, "not_found");
    return state_error(503, written.error().message, "unavailable");
  }
  json answer{{"revision", *written}};
  if (op == "put") {
    if (auto current = store.get(key); current && *current && (*current)->mod_revision == *written) {
      answer["create_revision"] = (*current)->create_revision;
      answer["version"] = (*current)->version;
    }
  }
  return Response::json_body(200, answer);
}

// One gateway's watch: store events queue up here (pushed on the committing thread) and the
// handler coroutine drains them (the server's io_context runs on one thread).
struct StateWatch {
  explicit StateWatch(asio::io_context& io) : io(io), timer(io) {}
  asio::io_context& io;
  asio::steady_timer timer;
  std::mutex mutex;
  std::deque<std::string> lines;
  bool overflowed = false;
};

std::string event_line(const store::WatchEvent& event) {
  json line{{"type", event.type == store::WatchEvent::Type::Put ? "PUT" : "DELETE"},
            {"key", event.kv.key},
            {"revision", event.kv.mod_revision}};
  if (event.type == store::WatchEvent::Type::Put) {
    line["value"] = event.kv.value;
    line["create_revision"] = event.kv.create_revision;
    line["version"] = event.kv.version;
  }
  return line.dump() + "\n";
}

http::Headers ndjson_headers() {
  return {{"Content-Type", "application/x-ndjson"}};
}

awaitable<void> serve_state_watch(store::Store& store, asio::io_context& io, int64_t from, ResponseWriter& writer) {
  auto queue = std::make_shared<StateWatch>(io);
  auto watch = store.watch_values(api::kKeyRoot, from, [queue](const store::WatchEvent& event) {
    if (!mirrored(event.kv.key)) return;
    {
      std::lock_guard lock(queue->mutex);
      if (queue->overflowed) return;
      if (queue->lines.size() >= kMaxQueuedEvents) {
        queue->overflowed = true;
      } else {
        queue->lines.push_back(event_line(event));
      }
    }
    asio::post(queue->io, [queue] { queue->timer.cancel(); });
  });
  if (!watch) {
    int status = watch.error().code == ErrorCode::Compacted ? 410 : 503;
    co_await writer.send(state_error(status, watch.error().message, to_string(watch.error().code)));
    co_return;
  }
  writer.mark_endless();
  writer.on_client_gone([queue] { queue->timer.cancel(); });
  if (!co_await writer.start_stream(200, ndjson_headers())) co_return;
  while (!writer.client_gone()) {
    std::deque<std::string> lines;
    bool overflowed = false;
    {
      std::lock_guard lock(queue->mutex);
      lines.swap(queue->lines);
      overflowed = queue->overflowed;
    }
    if (overflowed) break;  // the gateway lists again
    std::string batch;
    for (auto& line : lines) batch += line;
    if (!batch.empty()) {
      if (!co_await writer.write(batch)) break;
      continue;
    }
    queue->timer.expires_after(std::chrono::seconds(15));
    boost::system::error_code ec;
    co_await queue->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!ec && !co_await writer.write("\n")) break;  // a bare newline tells a gone client from a live one
  }
  (*watch)->cancel();
  if (!writer.client_gone()) co_await writer.finish();  // cut off: the gateway lists again
}

Response bad_revision() {
  return state_error(400, "revision must be a whole number", "invalid_request");
}
}  // namespace

void Gateway::add_replica_routes(http::Router& router) {
  router.add("GET", "/api/v1/gateway/state", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    std::string watch = request.query_or("watch");
    if (watch != "1" && watch != "true") {
      co_await writer.send(listing(store_));
      co_return;
    }
    std::string revision = request.query_or("revision", "0");
    int64_t from = 0;
    auto [end, error] = std::from_chars(revision.data(), revision.data() + revision.size(), from);
    if (error != std::errc() || end != revision.data() + revision.size() || from < 0) {
      co_await writer.send(bad_revision());
      co_return;
    }
    co_await serve_state_watch(store_, io_, from, writer);
  });
  router.add("POST", "/api/v1/gateway/state", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(write(store_, request.body));
  });
}

}  // namespace nebula::gateway
