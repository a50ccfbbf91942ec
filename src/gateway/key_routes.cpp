// /api/v1/keys and /api/v1/usage: API keys and what they used. Guarded like the rest of /api/v1.
#include <fmt/format.h>

#include "common/clock.h"
#include "common/config.h"
#include "gateway/gateway.h"

namespace nebula::gateway {

namespace {
using http::Request;
using http::Response;
using http::ResponseWriter;

Response bad_request(const std::string& message) {
  return openai_error(400, message, "invalid_request_error", "invalid_request");
}

// A key from the create request's JSON: name, scope, models, limits, expires ("30d") or expires_ms.
Result<api::ApiKey> key_from_request(const std::string& body_text, int64_t now_ms) {
  auto body = parse_json(body_text);
  if (!body) return body.error();
  if (!body->is_object()) return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
  api::ApiKey key;
  try {
    key.display_name = body->value("name", "");
    key.scope = body->value("scope", std::string(api::scope::kInference));
    if (key.scope == api::scope::kNode) {
      return make_error(ErrorCode::InvalidArgument, "node keys are issued to agents when they join");
    }
    key.models = body->value("models", std::vector<std::string>{});
    key.rpm = body->value("rpm", int64_t{0});
    key.tpm = body->value("tpm", int64_t{0});
    key.max_concurrency = body->value("max_concurrency", int64_t{0});
    key.budget_tokens = body->value("budget_tokens", int64_t{0});
    key.priority = body->value("priority", 0);
    key.expires_ms = body->value("expires_ms", int64_t{0});
    std::string expires = body->value("expires", "");
    if (!expires.empty()) {
      auto duration = parse_duration(expires);
      if (!duration) return duration.error();
      key.expires_ms = now_ms + duration->count();
    }
  } catch (const json::exception& error) {
    return make_error(ErrorCode::InvalidArgument, std::string("invalid key request: ") + error.what());
  }
  if (key.display_name.empty()) return make_error(ErrorCode::InvalidArgument, "a key needs a name");
  return key;
}

json created_json(const NewKey& created) {
  return json{{"key", api::to_json(created.key)}, {"secret", created.secret}};
}

// since: "" (everything), "7d" (a duration back from now) or "2026-11-01".
Result<std::string> since_day(const std::string& since) {
  if (since.empty()) return std::string();
  if (since.size() == 10 && since[4] == '-' && since[7] == '-') return since;
  auto duration = parse_duration(since);
  if (!duration) return duration.error();
  return utc_day(std::chrono::system_clock::now() - *duration);
}

json usage_json(const std::vector<api::UsageRecord>& records) {
  json items = json::array();
  api::UsageRecord total;
  for (const auto& record : records) {
    items.push_back(api::to_json(record));
    total.requests += record.requests;
    total.errors += record.errors;
    total.prompt_tokens += record.prompt_tokens;
    total.completion_tokens += record.completion_tokens;
    total.cached_tokens += record.cached_tokens;
  }
  return json{{"items", items}, {"total", api::to_json(total)}};
}

json keys_json(store::Store& store) {
  json items = json::array();
  if (auto listing = store.list(std::string(api::kKeyRoot) + "apikeys/")) {
    for (const auto& kv : listing->kvs) {
      auto document = parse_json(kv.value);
      if (!document) continue;
      if (auto key = api::api_key_from_json(*document)) items.push_back(api::to_json(*key));
    }
  }
  return json{{"items", items}};
}
}  // namespace

void Gateway::add_key_routes(http::Router& router) {
  router.add("POST", "/api/v1/keys", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    int64_t now_ms = to_unix_ms(std::chrono::system_clock::now());
    auto key = key_from_request(request.body, now_ms);
    if (!key) {
      co_await writer.send(bad_request(key.error().message));
      co_return;
    }
    auto created = create_key(store_, *key, now_ms);
    if (!created) {
      co_await writer.send(bad_request(created.error().message));
      co_return;
    }
    json answer = created_json(*created);
    answer["enforced"] = options_.require_keys;  // false under --auth none: keys are not checked
    co_await writer.send(Response::json_body(201, answer));
  });
  router.add("GET", "/api/v1/keys", [this](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(Response::json_body(200, keys_json(store_)));
  });
  router.add("DELETE", "/api/v1/keys/{id}", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    auto revoked = revoke_key(store_, request.params["id"]);
    if (!revoked) {
      int status = 400;
      if (revoked.error().code == ErrorCode::NotFound) status = 404;
      co_await writer.send(openai_error(status, revoked.error().message, "invalid_request_error", "not_found"));
      co_return;
    }
    co_await writer.send(Response::json_body(200, api::to_json(*revoked)));
  });
  router.add("GET", "/api/v1/usage", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    auto since = since_day(request.query_or("since"));
    if (!since) {
      co_await writer.send(bad_request(since.error().message));
      co_return;
    }
    auto records = usage_.query(request.query_or("key"), request.query_or("model"), *since);
    co_await writer.send(Response::json_body(200, usage_json(records)));
  });
}

}  // namespace nebula::gateway
