// /api/v1/keys: creating, listing and revoking API keys. Guarded like the rest of /api/v1.
#include <fmt/format.h>

#include <algorithm>

#include "auth/auth.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/json.h"

namespace nebula::auth {

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

// The stored keys, each with its latest use: the ring's when it is newer than the store's (the
// store's is written once a minute).
json keys_json(store::Store& store, const KeyRing& ring) {
  json items = json::array();
  if (auto listing = store.list(std::string(api::kKeyRoot) + "apikeys/")) {
    for (const auto& kv : listing->kvs) {
      auto document = parse_json(kv.value);
      if (!document) continue;
      auto key = api::api_key_from_json(*document);
      if (!key) continue;
      key->last_used_ms = std::max(key->last_used_ms, ring.last_use(key->metadata.name));
      items.push_back(api::to_json(*key));
    }
  }
  return json{{"items", items}};
}
}  // namespace

void Guard::add_routes(http::Router& router) {
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
    answer["enforced"] = require_keys_;  // false under --auth none: keys are not checked
    co_await writer.send(Response::json_body(201, answer));
  });
  router.add("GET", "/api/v1/keys", [this](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(Response::json_body(200, keys_json(store_, keys_)));
  });
  router.add("DELETE", "/api/v1/keys/{id}", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    auto revoked = revoke_key(store_, request.params["id"]);
    if (!revoked) {
      int status = 400;
      if (revoked.error().code == ErrorCode::NotFound) status = 404;
      co_await writer.send(openai_error(status, revoked.error().message, "invalid_request_error", "not_found"));
      co_return;
    }
    keys_.revoked_here(revoked->metadata.name);
    co_await writer.send(Response::json_body(200, api::to_json(*revoked)));
  });
}

}  // namespace nebula::auth
