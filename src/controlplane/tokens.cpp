// Join tokens: `nebula token create` issues one (shown once, stored as a SHA-256 hash with an
// expiry); an agent presents it to POST /api/v1/nodes/join. The server's own token (printed at
// start, kept in <data-dir>/join.token) is always accepted as well.
#include <fmt/format.h>

#include "common/config.h"
#include "common/ids.h"
#include "controlplane/controlplane.h"

namespace nebula::controlplane {

namespace {
using http::Request;
using http::Response;
using http::ResponseWriter;

const std::string kPrefix = api::store_prefix("jointokens");
constexpr const char* kTokenPrefix = "nbt-";

json public_view(json stored) {
  stored.erase("hash");
  return stored;
}

Result<json> create_token(Resources& resources, const json& body) {
  if (!body.is_object()) return make_error(ErrorCode::InvalidArgument, "expected a JSON object");
  std::chrono::milliseconds ttl = std::chrono::hours(24);
  if (body.contains("ttl")) {
    if (!body["ttl"].is_string())
      return make_error(ErrorCode::InvalidArgument, "ttl: expected a duration like \"24h\"");
    auto parsed = parse_duration(body["ttl"].get<std::string>());
    if (!parsed) return make_error(ErrorCode::InvalidArgument, "ttl: " + parsed.error().message);
    ttl = *parsed;
  }
  if (ttl.count() < 0) return make_error(ErrorCode::InvalidArgument, "ttl must not be negative");
  std::string description;
  if (body.contains("description")) {
    if (!body["description"].is_string())
      return make_error(ErrorCode::InvalidArgument, "description: expected a string");
    description = body["description"].get<std::string>();
  }
  int64_t now = to_unix_ms(resources.clock().wall_now());
  std::string id = random_id(8);
  std::string secret = kTokenPrefix + id + "-" + random_secret_hex(16);
  json stored = {{"id", id},
                 {"hash", sha256_hex(secret)},
                 {"description", description},
                 {"created_ms", now},
                 {"expires_ms", ttl.count() == 0 ? 0 : now + ttl.count()}};
  auto put = resources.store().put(kPrefix + id, stored.dump(), store::Precondition::absent());
  if (!put) return put.error();
  json answer = public_view(stored);
  answer["token"] = secret;
  return answer;
}

json list_tokens(Resources& resources) {
  json items = json::array();
  auto listing = resources.store().list(kPrefix);
  if (listing) {
    for (const auto& kv : listing->kvs) {
      auto value = parse_json(kv.value);
      if (value && value->is_object()) items.push_back(public_view(*value));
    }
  }
  return json{{"items", items}};
}

Response revoke_token(Resources& resources, const std::string& id) {
  auto removed = resources.store().remove(kPrefix + id);
  // The store's messages name its keys: say it in the user's terms.
  if (!removed && removed.error().code == ErrorCode::NotFound) {
    return error_response(make_error(ErrorCode::NotFound, fmt::format("join token '{}' not found", id)));
  }
  if (!removed)
    return error_response(make_error(removed.error().code, fmt::format("cannot revoke join token '{}'", id)));
  return Response::json_body(200, json{{"id", id}, {"revoked", true}});
}

}  // namespace

bool join_token_valid(Resources& resources, const Options& options, const std::string& token) {
  if (!options.join_token.empty() && token == options.join_token) return true;
  if (token.rfind(kTokenPrefix, 0) != 0) return false;
  std::string rest = token.substr(std::char_traits<char>::length(kTokenPrefix));
  std::string id = rest.substr(0, rest.find('-'));
  if (id.empty() || id.size() == rest.size()) return false;
  auto stored = resources.store().get(kPrefix + id);
  if (!stored || !*stored) return false;
  auto value = parse_json((*stored)->value);
  if (!value || !value->is_object()) return false;
  int64_t expires = value->value("expires_ms", int64_t{0});
  if (expires != 0 && expires < to_unix_ms(resources.clock().wall_now())) return false;
  return value->value("hash", "") == sha256_hex(token);
}

void add_token_routes(http::Router& router, Resources& resources) {
  router.add("POST", "/api/v1/tokens", [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
    auto body = request.body.empty() ? Result<json>(json::object()) : parse_json(request.body);
    Result<json> created = body ? create_token(resources, *body) : Result<json>(body.error());
    Response response = created ? Response::json_body(201, *created) : error_response(created.error());
    co_await writer.send(std::move(response));
  });
  router.add("GET", "/api/v1/tokens", [&resources](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(Response::json_body(200, list_tokens(resources)));
  });
  router.add("DELETE", "/api/v1/tokens/{id}",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               co_await writer.send(revoke_token(resources, request.params["id"]));
             });
}

}  // namespace nebula::controlplane
