#include "gateway/gateway.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>

#include "api/api.h"
#include "common/ids.h"
#include "common/json.h"

namespace nebula::gateway {

http::Response openai_error(int status, const std::string& message, const std::string& type, const std::string& code) {
  return http::Response::json_body(
      status, json{{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code}}}});
}

void EndpointTable::apply(const std::string& key, const std::string* value) {
  static const std::string kDeployments = api::store_prefix("deployments");
  static const std::string kReplicas = api::store_prefix("replicas");
  std::lock_guard lock(mutex_);
  if (key.rfind(kDeployments, 0) == 0) {
    std::string name = key.substr(kDeployments.size());
    if (!value) {
      deployments_.erase(name);
      return;
    }
    auto document = parse_json(*value);
    if (!document) return;
    auto deployment = api::deployment_from_json(*document);
    if (deployment) deployments_[name] = deployment->metadata.created_ms;
    return;
  }
  if (key.rfind(kReplicas, 0) != 0) return;
  std::string name = key.substr(kReplicas.size());
  if (!value) {
    replicas_.erase(name);
    return;
  }
  auto document = parse_json(*value);
  if (!document) return;
  auto replica = api::replica_from_json(*document);
  if (!replica) return;
  auto& entry = replicas_[name];
  entry.deployment = replica->spec.deployment;
  bool serving = replica->status.phase == api::phase::kReady && !replica->spec.stop &&
                 !replica->status.endpoint.empty() && replica->status.plan_version == replica->spec.plan_version;
  if (!serving) {
    entry.endpoint.reset();
  } else if (!entry.endpoint || entry.endpoint->url != replica->status.endpoint) {
    entry.endpoint = std::make_shared<Endpoint>();
    entry.endpoint->replica = name;
    entry.endpoint->url = replica->status.endpoint;
  }
}

bool EndpointTable::has_deployment(const std::string& name) const {
  std::lock_guard lock(mutex_);
  return deployments_.count(name) > 0;
}

std::vector<std::string> EndpointTable::deployments() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, created] : deployments_) names.push_back(name);
  return names;
}

int64_t EndpointTable::created_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second;
}

std::shared_ptr<Endpoint> EndpointTable::pick(const std::string& deployment, const std::set<std::string>& exclude) {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Endpoint>> least;
  int fewest = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment != deployment || !entry.endpoint || exclude.count(name)) continue;
    int outstanding = entry.endpoint->outstanding.load();
    if (least.empty() || outstanding < fewest) {
      least.clear();
      fewest = outstanding;
    }
    if (outstanding == fewest) least.push_back(entry.endpoint);
  }
  if (least.empty()) return nullptr;
  return least[round_robin_++ % least.size()];
}

size_t EndpointTable::ready_count(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment == deployment && entry.endpoint) ++count;
  }
  return count;
}

Gateway::Gateway(store::Store& store, asio::io_context& io, Options options)
    : store_(store), io_(io), options_(options) {
  http::ClientOptions client_options;
  client_options.connect_timeout = options.connect_timeout;
  client_ = std::make_unique<http::Client>(io, client_options);
}

Gateway::~Gateway() {
  if (watch_) watch_->cancel();
}

Status Gateway::start() {
  int64_t first_listing = -1;
  for (const char* plural : {"deployments", "replicas"}) {
    auto listing = store_.list(api::store_prefix(plural));
    if (!listing) return listing.error();
    if (first_listing < 0) first_listing = listing->revision;
    for (const auto& kv : listing->kvs) table_.apply(kv.key, &kv.value);
  }
  // Replaying every change after the first listing closes the gap between the two listings and
  // the watch; applying whole documents in revision order makes the replay idempotent.
  auto watch = store_.watch(api::kKeyRoot, first_listing + 1, [this](const store::WatchEvent& event) {
    table_.apply(event.kv.key, event.type == store::WatchEvent::Type::Put ? &event.kv.value : nullptr);
  });
  if (!watch) return watch.error();
  watch_ = std::move(*watch);
  return {};
}

namespace {
json models_json(const EndpointTable& table) {
  json data = json::array();
  for (const auto& name : table.deployments()) {
    data.push_back(
        {{"id", name}, {"object", "model"}, {"created", table.created_ms(name) / 1000}, {"owned_by", "nebula"}});
  }
  return json{{"object", "list"}, {"data", data}};
}

struct ParsedBody {
  std::string model;
  bool stream = false;
};

Result<ParsedBody> parse_body(const std::string& body) {
  auto document = parse_json(body);
  if (!document) return document.error();
  if (!document->is_object()) return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
  ParsedBody parsed;
  auto model = document->find("model");
  if (model == document->end() || !model->is_string() || model->get<std::string>().empty()) {
    return make_error(ErrorCode::InvalidArgument, "you must provide a model parameter");
  }
  parsed.model = model->get<std::string>();
  auto stream = document->find("stream");
  parsed.stream = stream != document->end() && stream->is_boolean() && stream->get<bool>();
  return parsed;
}

http::Headers upstream_headers(const std::string& request_id) {
  return {{"Content-Type", "application/json"}, {"X-Request-Id", request_id}};
}

http::Headers relayed_headers(const http::StreamingResponse& upstream, const std::string& request_id) {
  http::Headers headers;
  std::string content_type = upstream.header("content-type");
  headers.push_back({"Content-Type", content_type.empty() ? "application/json" : content_type});
  if (content_type.rfind("text/event-stream", 0) == 0) headers.push_back({"Cache-Control", "no-cache"});
  headers.push_back({"X-Request-Id", request_id});
  return headers;
}

http::Response with_request_id(http::Response response, const std::string& request_id) {
  response.headers.push_back({"X-Request-Id", request_id});
  return response;
}
}  // namespace

void Gateway::add_routes(http::Router& router) {
  router.add("GET", "/v1/models", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::json_body(200, models_json(table_)));
  });
  for (const char* path : {"/v1/chat/completions", "/v1/completions"}) {
    std::string upstream_path = path;
    router.add("POST", path, [this, upstream_path](http::Request& request, http::ResponseWriter& writer) {
      return proxy(request, writer, upstream_path);
    });
  }
}

awaitable<void> Gateway::proxy(http::Request& request, http::ResponseWriter& writer, const std::string& path) {
  std::string request_id = request.header("x-request-id");
  if (request_id.empty()) request_id = "req-" + random_id(20);
  auto parsed = parse_body(request.body);
  if (!parsed) {
    co_await writer.send(with_request_id(
        openai_error(400, parsed.error().message, "invalid_request_error", "invalid_request"), request_id));
    co_return;
  }
  const std::string& model = parsed->model;
  if (!table_.has_deployment(model)) {
    co_await writer.send(with_request_id(openai_error(404, fmt::format("The model `{}` does not exist.", model),
                                                      "invalid_request_error", "model_not_found"),
                                         request_id));
    co_return;
  }

  std::set<std::string> tried;
  std::string last_failure;
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    auto endpoint = table_.pick(model, tried);
    if (!endpoint) break;
    tried.insert(endpoint->replica);
    endpoint->outstanding += 1;
    struct Release {
      std::shared_ptr<Endpoint> endpoint;
      ~Release() { endpoint->outstanding -= 1; }
    } release{endpoint};

    auto upstream = co_await client_->open("POST", endpoint->url + path, request.body, upstream_headers(request_id),
                                           options_.first_byte_timeout);
    if (!upstream) {
      // Nothing reached the client yet: another replica may serve it.
      last_failure = upstream.error().message;
      spdlog::warn("gateway: {} replica {} failed before the first byte: {}", request_id, endpoint->replica,
                   last_failure);
      continue;
    }
    auto& response = *upstream.value();
    bool event_stream = response.header("content-type").rfind("text/event-stream", 0) == 0;
    if (!event_stream) {
      auto body = co_await response.read_all(options_.idle_timeout);
      if (!body) {
        last_failure = body.error().message;
        continue;
      }
      http::Response relayed;
      relayed.status = response.status;
      relayed.headers = relayed_headers(response, request_id);
      relayed.body = std::move(*body);
      co_await writer.send(std::move(relayed));
      co_return;
    }
    // Stream: relay each piece as soon as it arrives. From here on a failure cannot be retried.
    if (!co_await writer.start_stream(response.status, relayed_headers(response, request_id))) {
      response.cancel();
      co_return;
    }
    while (true) {
      auto piece = co_await response.read(options_.idle_timeout);
      if (!piece) {
        spdlog::warn("gateway: {} stream from {} broke: {}", request_id, endpoint->replica, piece.error().message);
        response.cancel();
        writer.abort();  // close without the final chunk: the client sees a cut stream, not a clean end
        co_return;
      }
      if (piece->empty()) break;
      if (!co_await writer.write(*piece)) {
        response.cancel();  // the client left: cancel the engine's work at once
        co_return;
      }
    }
    co_await writer.finish();
    co_return;
  }
  std::string message = last_failure.empty()
                            ? fmt::format("no replica of `{}` is ready", model)
                            : fmt::format("no replica of `{}` could serve the request: {}", model, last_failure);
  co_await writer.send(with_request_id(openai_error(503, message, "server_error", "service_unavailable"), request_id));
}

}  // namespace nebula::gateway
