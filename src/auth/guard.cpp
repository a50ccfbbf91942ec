#include "auth/auth.h"

#include "api/api.h"
#include "common/clock.h"
#include "common/json.h"

namespace nebula::auth {

namespace {
int64_t now_ms() {
  return to_unix_ms(std::chrono::system_clock::now());
}
}  // namespace

http::Response openai_error(int status, const std::string& message, const std::string& type, const std::string& code) {
  return http::error_json(status, message, code, type);
}

std::optional<http::Response> Guard::inference_refusal(const http::Request& request,
                                                       std::shared_ptr<const api::ApiKey>& key) const {
  if (!require_keys_) return std::nullopt;
  auto found = keys_.authenticate(bearer_token(request), now_ms());
  if (!found) return openai_error(401, found.error().message, "invalid_request_error", "invalid_api_key");
  if ((*found)->scope == api::scope::kNode) {
    return openai_error(403, "node keys cannot call the inference API", "invalid_request_error", "permission_denied");
  }
  key = *found;
  return std::nullopt;
}

std::optional<http::Response> Guard::listing_refusal(const http::Request& request,
                                                     std::shared_ptr<const api::ApiKey>& key) const {
  if (!require_keys_) return std::nullopt;
  auto found = keys_.authenticate(bearer_token(request), now_ms());
  if (!found) return openai_error(401, found.error().message, "invalid_request_error", "invalid_api_key");
  key = *found;
  return std::nullopt;
}

Result<std::string> Guard::bootstrap_admin_key() {
  auto listing = store_.list(std::string(api::kKeyRoot) + "apikeys/");
  if (!listing) return listing.error();
  for (const auto& kv : listing->kvs) {
    auto document = parse_json(kv.value);
    if (!document) continue;
    auto key = api::api_key_from_json(*document);
    if (key && key->scope == api::scope::kAdmin && !key->revoked) return std::string();
  }
  api::ApiKey admin;
  admin.display_name = "bootstrap-admin";
  admin.scope = api::scope::kAdmin;
  auto created = create_key(store_, admin, now_ms());
  if (!created) return created.error();
  return created->secret;
}

Result<std::string> Guard::issue_node_key(const std::string& node) {
  // One live key per node: a rejoin revokes the keys the node was given before.
  if (auto listing = store_.list(std::string(api::kKeyRoot) + "apikeys/")) {
    for (const auto& kv : listing->kvs) {
      auto document = parse_json(kv.value);
      if (!document) continue;
      auto old = api::api_key_from_json(*document);
      if (old && old->scope == api::scope::kNode && old->display_name == "node/" + node && !old->revoked) {
        if (revoke_key(store_, old->metadata.name)) keys_.revoked_here(old->metadata.name);
      }
    }
  }
  api::ApiKey key;
  key.display_name = "node/" + node;
  key.scope = api::scope::kNode;
  auto created = create_key(store_, key, now_ms());
  if (!created) return created.error();
  return created->secret;
}

std::optional<http::Response> Guard::management_refusal(const http::Request& request) const {
  if (!require_keys_) return std::nullopt;
  const std::string& path = request.path;
  bool management = path.rfind("/api/", 0) == 0 || path == "/metrics";
  if (!management || path == "/api/v1/nodes/join") return std::nullopt;
  auto key = keys_.authenticate(bearer_token(request), now_ms());
  if (!key) return openai_error(401, key.error().message, "invalid_request_error", "invalid_api_key");
  const std::string& scope = (*key)->scope;
  if (scope == api::scope::kAdmin) return std::nullopt;
  auto refusal = [&scope] {
    return openai_error(403, "this API key may not use the management API (scope " + scope + ")",
                        "invalid_request_error", "permission_denied");
  };
  if (scope != api::scope::kNode) return refusal();
  // A node's key does what its agent does and no more: read replicas; report its own node's
  // status; report the status of, and remove, the replicas placed on its node. No drain, no
  // deletion, nothing of another node's.
  const std::string& method = request.method;
  const std::string own_node = (*key)->display_name.rfind("node/", 0) == 0 ? (*key)->display_name.substr(5) : "";
  if (own_node.empty()) return refusal();
  auto named = [&path](std::string_view prefix, std::string_view suffix) -> std::optional<std::string> {
    if (path.size() <= prefix.size() + suffix.size() || path.rfind(prefix, 0) != 0 ||
        path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0) {
      return std::nullopt;
    }
    std::string name = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
    if (name.find('/') != std::string::npos) return std::nullopt;
    return name;
  };
  if (method == "GET" && (path == "/api/v1/replicas" || named("/api/v1/replicas/", ""))) return std::nullopt;
  if (method == "PUT") {
    if (auto node = named("/api/v1/nodes/", "/status")) {
      if (*node == own_node) return std::nullopt;
      return openai_error(403, "a node's key may report only its own node's status", "invalid_request_error",
                          "permission_denied");
    }
  }
  std::optional<std::string> replica;
  if (method == "PUT") replica = named("/api/v1/replicas/", "/status");
  if (method == "DELETE") replica = named("/api/v1/replicas/", "");
  if (!replica) return refusal();
  // The replica's node, from the store: one the store does not have is left to the handler (404).
  auto stored = store_.get(api::store_key("replicas", *replica));
  if (!stored || !*stored) return std::nullopt;
  auto document = parse_json((*stored)->value);
  std::string placed_on;
  if (document) {
    if (auto parsed = api::replica_from_json(*document)) placed_on = parsed->spec.node;
  }
  if (placed_on == own_node) return std::nullopt;
  return openai_error(403, "a node's key may change only the replicas on its own node", "invalid_request_error",
                      "permission_denied");
}

}  // namespace nebula::auth
