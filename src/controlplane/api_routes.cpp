// The management REST API: /api/v1/<plural>[/<name>] with list, get, create, update, delete and
// watch (?watch=1&revision=N streams newline-delimited JSON events).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <type_traits>

#include "api/spec_check.h"
#include "controlplane/controlplane.h"
#include "controlplane/node_admission.h"
#include "scheduler/scheduler.h"

namespace nebula::controlplane {

int http_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return 400;
    case ErrorCode::NotFound: return 404;
    case ErrorCode::AlreadyExists: return 409;
    case ErrorCode::Conflict: return 409;
    case ErrorCode::Unauthenticated: return 401;
    case ErrorCode::PermissionDenied: return 403;
    case ErrorCode::Unavailable: return 503;
    case ErrorCode::ResourceExhausted: return 503;
    case ErrorCode::Timeout: return 504;
    case ErrorCode::Compacted: return 410;
    case ErrorCode::TooLarge: return 413;
    case ErrorCode::Internal: return 500;
  }
  return 500;
}

http::Response error_response(const Error& error) {
  return http::error_json(http_status(error.code), error.message, to_string(error.code));
}

namespace {

using http::Request;
using http::Response;
using http::ResponseWriter;

Response ok_json(const json& body, int status = 200) {
  return Response::json_body(status, body);
}

// g++ 12 evaluates both arms of a conditional inside a co_await operand: never write
// `co_await f(ok ? a : b)`; build the response in a plain function like this one.
template <typename T>
Response result_response(const Result<T>& result, int ok_status = 200) {
  if (!result) return error_response(result.error());
  return ok_json(api::to_json(*result), ok_status);
}

// A node as readers see it: its heartbeat time includes its lease (node_admission.h).
Result<api::Node> get_node(Resources& resources, const std::string& name) {
  auto node = resources.get<api::Node>(name);
  if (node) with_lease(*node, node_lease_ms(resources.store(), name));
  return node;
}

// `?node=NAME` on the replicas routes: only the replicas placed on that node (what an agent
// needs). "" when absent.
std::string node_filter(const Request& request) {
  return request.query_or("node");
}

bool on_node(const json& replica, const std::string& node) {
  if (!replica.is_object()) return false;
  auto spec = replica.find("spec");
  if (spec == replica.end() || !spec->is_object()) return false;
  auto placed = spec->find("node");
  return placed != spec->end() && placed->is_string() && placed->get_ref<const std::string&>() == node;
}

template <typename T>
json list_json(Resources& resources, const std::string& node) {
  int64_t revision = 0;
  json items = json::array();
  auto objects = resources.list<T>(&revision);
  if constexpr (std::is_same_v<T, api::Node>) {
    auto leases = node_leases(resources.store());
    for (auto& object : objects) {
      auto lease = leases.find(object.metadata.name);
      if (lease != leases.end()) with_lease(object, lease->second);
    }
  }
  for (const auto& item : objects) {
    if constexpr (std::is_same_v<T, api::Replica>) {
      if (!node.empty() && item.spec.node != node) continue;
    }
    items.push_back(api::to_json(item));
  }
  return json{{"items", items}, {"revision", revision}};
}

// One watch stream. Store events are queued here by the store's callback (on the committing
// thread, under the store's lock: it only copies) and turned into lines by the handler coroutine
// on the I/O thread. The queue is bounded, as etcd and the Kubernetes API server bound theirs: a
// watcher that falls kWatchQueueLimit bytes behind is cut off (its queue dropped, its stream
// ended) and must list again. The server's io_context runs on one thread, so the posted timer
// cancel cannot slip between the handler's emptiness check and its wait.
constexpr size_t kWatchQueueLimit = 8 * 1024 * 1024;
constexpr size_t kWatchBatchLimit = 256 * 1024;  // written at once; a stalled reader holds no more

struct WatchQueue {
  WatchQueue(asio::io_context& io, std::string node) : io(io), timer(io), node(std::move(node)) {}
  asio::io_context& io;
  asio::steady_timer timer;
  const std::string node;  // "" or the node whose replicas alone are sent
  std::mutex mutex;
  std::deque<store::WatchEvent> events;
  size_t bytes = 0;
  bool overflowed = false;
  // The store ended the watch (etcd compacted what it still had to send): the stream ends after
  // the events queued, and the client lists again, as after any broken watch.
  bool ended = false;
};

// Could the event concern the node? A cheap test on the raw documents (the name must appear in
// one of them) that spares the exact test, which decodes them, for almost every other node's event.
bool may_concern(const store::WatchEvent& event, const std::string& node) {
  return event.kv.value.find(node) != std::string::npos ||
         (event.prev && event.prev->value.find(node) != std::string::npos);
}

const std::string& replicas_prefix() {
  static const std::string prefix = api::store_prefix(Traits<api::Replica>::kPlural);
  return prefix;
}

// "" when a filtered watch skips the event: a replica is sent to its node's watcher while it is
// placed there, and once more (as it moves away or is deleted) when it was.
std::string watch_line(const store::WatchEvent& event, const std::string& node) {
  json line;
  line["type"] = event.type == store::WatchEvent::Type::Put ? "PUT" : "DELETE";
  line["revision"] = event.kv.mod_revision;
  const std::string& value = event.type == store::WatchEvent::Type::Put ? event.kv.value
                             : event.prev                               ? event.prev->value
                                                                        : std::string();
  auto document = parse_json(value);
  if (!node.empty()) {
    bool now_here = document && on_node(*document, node);
    bool was_here = false;
    if (event.prev && event.type == store::WatchEvent::Type::Put) {
      auto before = parse_json(event.prev->value);
      was_here = before && on_node(*before, node);
    }
    if (!now_here && !was_here) return {};
  }
  if (document) {
    // Replicas may be stored without their default fields (api::to_stored_json): clients get
    // every field, as from list and get.
    if (event.kv.key.rfind(replicas_prefix(), 0) == 0) {
      if (auto replica = api::replica_from_json(*document)) *document = api::to_json(*replica);
    }
    if (document->is_object() && document->contains("metadata")) {
      (*document)["metadata"]["revision"] = event.kv.mod_revision;
    }
    line["object"] = std::move(*document);
  }
  line["key"] = event.kv.key;
  return line.dump() + "\n";
}

http::Headers ndjson_headers() {
  return {{"Content-Type", "application/x-ndjson"}};
}
http::Headers text_headers() {
  return {{"Content-Type", "text/plain; charset=utf-8"}};
}

awaitable<void> serve_watch(Resources& resources, asio::io_context& io, const std::string& prefix, int64_t from,
                            const std::string& node, ResponseWriter& writer) {
  auto queue = std::make_shared<WatchQueue>(io, node);
  auto watch = resources.store().watch(
      prefix, from,
      [queue](const store::WatchEvent& event) {
        if (!queue->node.empty() && !may_concern(event, queue->node)) return;
        {
          std::lock_guard lock(queue->mutex);
          if (queue->overflowed) return;
          size_t size = event.kv.key.size() + event.kv.value.size() + (event.prev ? event.prev->value.size() : 0);
          if (queue->bytes + size > kWatchQueueLimit) {
            queue->overflowed = true;
            queue->events.clear();
            queue->bytes = 0;
          } else {
            queue->events.push_back(event);
            queue->bytes += size;
          }
        }
        asio::post(queue->io, [queue] { queue->timer.cancel(); });
      },
      [queue](const Error&) {
        {
          std::lock_guard lock(queue->mutex);
          queue->ended = true;
        }
        asio::post(queue->io, [queue] { queue->timer.cancel(); });
      });
  if (!watch) {
    co_await writer.send(error_response(watch.error()));
    co_return;
  }
  writer.mark_endless();
  // A client that leaves (or a draining server) ends the wait at once, not at the next keep-alive.
  writer.on_client_gone([queue] { queue->timer.cancel(); });
  if (!co_await writer.start_stream(200, ndjson_headers())) co_return;
  bool cut_off = false;
  while (!writer.client_gone()) {
    std::string batch;
    bool more = false;
    bool ended = false;
    {
      std::lock_guard lock(queue->mutex);
      if (queue->overflowed) {
        cut_off = true;
        break;
      }
      while (!queue->events.empty() && batch.size() < kWatchBatchLimit) {
        const auto& event = queue->events.front();
        queue->bytes -= event.kv.key.size() + event.kv.value.size() + (event.prev ? event.prev->value.size() : 0);
        batch += watch_line(event, queue->node);
        queue->events.pop_front();
      }
      more = !queue->events.empty();
      ended = queue->ended;
    }
    if (!batch.empty()) {
      if (!co_await writer.write(batch)) break;
      continue;
    }
    if (more) continue;
    if (ended) break;
    queue->timer.expires_after(std::chrono::seconds(15));
    boost::system::error_code ec;
    co_await queue->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (!ec) {
      // Quiet for a while: a bare newline tells a gone client from a live one.
      if (!co_await writer.write("\n")) break;
    }
  }
  (*watch)->cancel();
  if (cut_off) {
    // Ended without the final chunk: the client sees a broken stream, lists again and watches
    // from there, as it does after any disconnection.
    spdlog::warn("api: a watch of {} fell more than {} MiB behind and was cut off", prefix,
                 kWatchQueueLimit / (1024 * 1024));
    writer.abort();
  }
}

template <typename T>
void add_read_routes(http::Router& router, Resources& resources, asio::io_context& io) {
  std::string plural = Traits<T>::kPlural;
  router.add("GET", "/api/v1/" + plural,
             [&resources, &io, plural](Request& request, ResponseWriter& writer) -> awaitable<void> {
               std::string node = std::is_same_v<T, api::Replica> ? node_filter(request) : std::string();
               if (request.query_or("watch") == "1" || request.query_or("watch") == "true") {
                 int64_t from = std::atoll(request.query_or("revision", "0").c_str());
                 co_await serve_watch(resources, io, api::store_prefix(plural), from, node, writer);
                 co_return;
               }
               co_await writer.send(ok_json(list_json<T>(resources, node)));
             });
  router.add("GET", "/api/v1/" + plural + "/{name}",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               if constexpr (std::is_same_v<T, api::Node>) {
                 co_await writer.send(result_response(get_node(resources, request.params["name"])));
               } else {
                 auto object = resources.get<T>(request.params["name"]);
                 co_await writer.send(result_response(object));
               }
             });
}

template <typename T>
void add_delete_route(http::Router& router, Resources& resources) {
  std::string plural = Traits<T>::kPlural;
  router.add("DELETE", "/api/v1/" + plural + "/{name}",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               const std::string& name = request.params["name"];
               auto object = resources.get<T>(name);
               if (!object) {
                 co_await writer.send(error_response(object.error()));
                 co_return;
               }
               auto removed = resources.remove<T>(name);
               if (!removed) {
                 co_await writer.send(error_response(removed.error()));
                 co_return;
               }
               resources.record_event(std::string(Traits<T>::kKind) + "/" + name, "Deleted", "deleted by the API");
               co_await writer.send(ok_json(api::to_json(*object)));
             });
}

// reserved_vram_mb from a join body: -1 when absent or not a number.
int64_t reserved_vram_of(const json& body) {
  auto value = body.find("reserved_vram_mb");
  return value != body.end() && value->is_number_integer() ? value->get<int64_t>() : -1;
}

json name_json(const std::string& name) {
  return json{{"name", name}};
}

Result<json> body_json(const Request& request) {
  auto body = parse_json(request.body);
  if (!body) return body.error();
  if (!body->is_object()) return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
  return body;
}

template <typename T>
Result<T> parse_body_as(const Request& request, Result<T> (*parse)(const json&)) {
  auto body = body_json(request);
  if (!body) return body.error();
  return parse(*body);
}

// A deployment from a request body: {"metadata":{"name"},"spec":{...}} or {"name", "spec"}.
Result<api::Deployment> deployment_from_request(const Request& request, const std::string& name_from_path,
                                                const Options& options) {
  auto body = body_json(request);
  if (!body) return body.error();
  auto deployment = api::deployment_from_user_json(*body);
  if (!deployment) return deployment.error();
  if (deployment->metadata.name.empty() && body->contains("name") && (*body)["name"].is_string()) {
    deployment->metadata.name = (*body)["name"].get<std::string>();
  }
  if (!name_from_path.empty()) {
    if (!deployment->metadata.name.empty() && deployment->metadata.name != name_from_path) {
      return make_error(ErrorCode::InvalidArgument, "metadata.name does not match the URL");
    }
    deployment->metadata.name = name_from_path;
  }
  if (auto valid = api::validate_name(deployment->metadata.name); !valid) return valid.error();
  if (auto valid = api::validate(deployment->spec); !valid) return valid.error();
  if (auto valid = canonical_routing(deployment->spec); !valid) return valid.error();
  if (auto allowed = check_engine_env(deployment->spec.env, options.keys_required); !allowed) return allowed.error();
  deployment->status = {};
  return deployment;
}

void record_created(Resources& resources, const api::Deployment& created) {
  resources.record_event("deployment/" + created.metadata.name, "Created",
                         fmt::format("{} on {} × {}", created.spec.model, created.spec.engine, created.spec.replicas));
}

// PUT of a whole spec: replaces the spec of the deployment if it exists, else creates it. The
// store decides which (create-if-absent, then compare-and-swap updates), so of concurrent PUTs of
// one new name exactly one creates (201) and the others update (200).
Result<std::pair<api::Deployment, bool>> put_deployment(Resources& resources, const api::Deployment& deployment) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    auto updated = resources.modify<api::Deployment>(deployment.metadata.name, [&](api::Deployment& current) {
      current.spec = deployment.spec;
      current.metadata.labels = deployment.metadata.labels;
      return true;
    });
    if (updated) return std::make_pair(std::move(*updated), false);
    if (updated.error().code != ErrorCode::NotFound) return updated.error();
    auto created = resources.create(deployment);
    if (created) return std::make_pair(std::move(*created), true);
    // Another request created it between the two: update what it created.
    if (created.error().code != ErrorCode::AlreadyExists) return created.error();
  }
  return make_error(ErrorCode::Conflict, "too many concurrent changes to deployment " + deployment.metadata.name);
}

void add_deployment_routes(http::Router& router, Resources& resources, const Options& options) {
  router.add("POST", "/api/v1/deployments",
             [&resources, &options](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto deployment = deployment_from_request(request, "", options);
               if (!deployment) {
                 co_await writer.send(error_response(deployment.error()));
                 co_return;
               }
               auto created = resources.create(*deployment);
               if (created) record_created(resources, *created);
               co_await writer.send(result_response(created, 201));
             });
  // Create or replace the spec (status is the controller's).
  router.add("PUT", "/api/v1/deployments/{name}",
             [&resources, &options](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto deployment = deployment_from_request(request, request.params["name"], options);
               if (!deployment) {
                 co_await writer.send(error_response(deployment.error()));
                 co_return;
               }
               auto written = put_deployment(resources, *deployment);
               if (!written) {
                 co_await writer.send(error_response(written.error()));
                 co_return;
               }
               auto& [stored, created] = *written;
               if (!created) resources.record_event("deployment/" + stored.metadata.name, "Updated", "spec replaced");
               int status = created ? 201 : 200;
               co_await writer.send(ok_json(api::to_json(stored), status));
             });
  router.add(
      "PUT", "/api/v1/deployments/{name}/scale",
      [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
        auto body = body_json(request);
        if (!body) {
          co_await writer.send(error_response(body.error()));
          co_return;
        }
        if (!body->contains("replicas") || !(*body)["replicas"].is_number_integer()) {
          co_await writer.send(
              error_response(make_error(ErrorCode::InvalidArgument, "body must be {\"replicas\": N}")));
          co_return;
        }
        int replicas = (*body)["replicas"].get<int>();
        if (replicas < 0 || replicas > 1000) {
          co_await writer.send(error_response(make_error(ErrorCode::InvalidArgument, "replicas must be 0..1000")));
          co_return;
        }
        auto updated = resources.modify<api::Deployment>(request.params["name"], [&](api::Deployment& current) {
          current.spec.replicas = replicas;
          return true;
        });
        if (updated) {
          resources.record_event("deployment/" + updated->metadata.name, "Scaled",
                                 fmt::format("replicas set to {}", replicas));
        }
        co_await writer.send(result_response(updated));
      });
}

// "Authorization: Bearer X": X, else "".
std::string bearer_of(const Request& request) {
  std::string authorization = request.header("authorization");
  if (authorization.size() > 7 && (authorization.rfind("Bearer ", 0) == 0 || authorization.rfind("bearer ", 0) == 0)) {
    return authorization.substr(7);
  }
  return {};
}

// A join may not take over the name of a live node unless it presents that node's key (its own
// agent, restarted). Conflict with what to do otherwise.
Status check_join(Resources& resources, const Options& options, const std::string& name, const Request& request) {
  auto existing = get_node(resources, name);
  if (!existing) return {};
  int64_t now_ms = to_unix_ms(resources.clock().wall_now());
  if (!node_live(*existing, now_ms, options.node_timeout)) return {};
  if (is_node_key(resources.store(), name, bearer_of(request), now_ms)) return {};
  return make_error(
      ErrorCode::Conflict,
      fmt::format("node {} is live (last heartbeat {} s ago) and a join cannot take its name over; its own agent "
                  "rejoins with the node's key, or once the node is NotReady (after --node-timeout). To replace it, "
                  "remove it first: nebula nodes rm {} --force",
                  name, std::max<int64_t>(0, now_ms - existing->status.heartbeat_ms) / 1000, name));
}

void add_agent_routes(http::Router& router, Resources& resources, const Options& options) {
  // An agent exchanges the join token for membership: its Node resource is created, or taken over
  // on rejoin (keeping spec such as drain) when the node is not live or the agent holds its key.
  router.add("POST", "/api/v1/nodes/join",
             [&resources, &options](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto body = body_json(request);
               if (!body) {
                 co_await writer.send(error_response(body.error()));
                 co_return;
               }
               std::string token = body->value("token", "");
               std::string name = body->value("name", "");
               if (!join_token_valid(resources, options, token)) {
                 co_await writer.send(error_response(make_error(ErrorCode::Unauthenticated, "invalid join token")));
                 co_return;
               }
               if (auto valid = api::validate_name(name); !valid) {
                 co_await writer.send(error_response(valid.error()));
                 co_return;
               }
               if (auto allowed = check_join(resources, options, name, request); !allowed) {
                 co_await writer.send(error_response(allowed.error()));
                 co_return;
               }
               // The agent's --reserved-vram (VRAM the scheduler leaves free on each GPU), if given.
               int64_t reserved = reserved_vram_of(*body);
               api::Node node;
               node.metadata.name = name;
               node.spec.reserved_vram_mb = std::max<int64_t>(0, reserved);
               auto created = resources.create(node);
               if (created) {
                 resources.record_event("node/" + name, "Joined", "node joined the cluster");
               } else if (created.error().code != ErrorCode::AlreadyExists) {
                 co_await writer.send(error_response(created.error()));
                 co_return;
               } else if (reserved >= 0) {
                 (void)resources.modify<api::Node>(name, [reserved](api::Node& current) {
                   if (current.spec.reserved_vram_mb == reserved) return false;
                   current.spec.reserved_vram_mb = reserved;
                   return true;
                 });
               }
               json answer = name_json(name);
               if (options.issue_node_credential) {
                 auto credential = options.issue_node_credential(name);
                 if (!credential) {
                   co_await writer.send(error_response(credential.error()));
                   co_return;
                 }
                 answer["credential"] = *credential;
               }
               co_await writer.send(ok_json(answer));
             });
  // Drain: the controller moves the node's replicas elsewhere (start new, then stop old) and the
  // scheduler places nothing more there; undrain ends it.
  for (bool drain : {true, false}) {
    router.add("POST", drain ? "/api/v1/nodes/{name}/drain" : "/api/v1/nodes/{name}/undrain",
               [&resources, drain](Request& request, ResponseWriter& writer) -> awaitable<void> {
                 bool changed = false;
                 auto updated =
                     resources.modify<api::Node>(request.params["name"], [drain, &changed](api::Node& current) {
                       if (current.spec.drain == drain) return false;
                       current.spec.drain = drain;
                       changed = true;
                       return true;
                     });
                 // A second drain of a draining node changes nothing and records nothing.
                 if (updated && changed) {
                   resources.record_event("node/" + updated->metadata.name, drain ? "Draining" : "Undrained",
                                          drain ? "moving replicas off the node" : "the node takes replicas again");
                 }
                 co_await writer.send(result_response(updated));
               });
  }
  // A node's labels (placement selectors match them), set by `nebula nodes add --labels`: the
  // body's labels replace the node's.
  router.add(
      "PUT", "/api/v1/nodes/{name}/labels", [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
        auto body = body_json(request);
        if (!body) {
          co_await writer.send(error_response(body.error()));
          co_return;
        }
        std::map<std::string, std::string> labels;
        const json& given = body->is_object() && body->contains("labels") ? (*body)["labels"] : json();
        if (!given.is_object()) {
          co_await writer.send(
              error_response(make_error(ErrorCode::InvalidArgument, "labels: expected an object of string values")));
          co_return;
        }
        for (const auto& [key, value] : given.items()) {
          if (!value.is_string() || key.empty() || key.size() > 63 || value.get<std::string>().size() > 253) {
            co_await writer.send(error_response(
                make_error(ErrorCode::InvalidArgument,
                           fmt::format("labels: '{}' needs a key of 1 to 63 characters and a string value", key))));
            co_return;
          }
          labels[key] = value.get<std::string>();
        }
        auto updated = resources.modify<api::Node>(request.params["name"], [&labels](api::Node& current) {
          if (current.metadata.labels == labels) return false;
          current.metadata.labels = labels;
          return true;
        });
        co_await writer.send(result_response(updated));
      });
  // A heartbeat: renews the node's lease (a small write nothing wakes on) and writes the Node
  // document only when what the node reports changed, when it comes back from NotReady, or every
  // kNodeStatusRefresh (GPU utilization and temperature, which change all the time).
  router.add("PUT", "/api/v1/nodes/{name}/status",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto status = parse_body_as<api::NodeStatus>(request, api::node_status_from_json);
               if (!status) {
                 co_await writer.send(error_response(status.error()));
                 co_return;
               }
               if (auto plausible = check_gpus(status->gpus); !plausible) {
                 co_await writer.send(error_response(plausible.error()));
                 co_return;
               }
               const std::string name = request.params["name"];
               int64_t now_ms = to_unix_ms(resources.clock().wall_now());
               auto current = resources.get<api::Node>(name);
               if (!current) {
                 co_await writer.send(error_response(current.error()));
                 co_return;
               }
               bool became_ready = false;
               std::string gpus_changed;
               Result<api::Node> updated = *current;
               if (needs_status_write(current->status, *status, now_ms)) {
                 updated = resources.modify<api::Node>(name, [&](api::Node& latest) {
                   became_ready = !latest.status.ready;
                   // A node's first report brings its GPUs; a later one that changes them is news.
                   gpus_changed = latest.status.gpus.empty() ? "" : gpu_change(latest.status.gpus, status->gpus);
                   latest.status = *status;
                   latest.status.ready = true;
                   latest.status.heartbeat_ms = now_ms;
                   latest.status.message = "";
                   return true;
                 });
               }
               if (updated) {
                 if (auto renewed = renew_node_lease(resources.store(), name, now_ms); !renewed) {
                   updated = renewed.error();
                 } else {
                   with_lease(*updated, now_ms);
                 }
               }
               if (updated && became_ready)
                 resources.record_event("node/" + updated->metadata.name, "NodeReady", "heartbeat received");
               if (updated && !gpus_changed.empty())
                 resources.record_event("node/" + updated->metadata.name, "GPUsChanged", gpus_changed, "Warning");
               co_await writer.send(result_response(updated));
             });
  router.add("PUT", "/api/v1/replicas/{name}/status",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto status = parse_body_as<api::ReplicaStatus>(request, api::replica_status_from_json);
               if (!status) {
                 co_await writer.send(error_response(status.error()));
                 co_return;
               }
               // The gateway sends prompts to this endpoint: it must be on the node reporting it.
               if (auto plausible = check_endpoint(status->endpoint, request.remote_address); !plausible) {
                 co_await writer.send(error_response(plausible.error()));
                 co_return;
               }
               std::string previous_phase;
               auto updated = resources.modify<api::Replica>(request.params["name"], [&](api::Replica& current) {
                 previous_phase = current.status.phase;
                 current.status = *status;
                 current.status.updated_ms = to_unix_ms(resources.clock().wall_now());
                 return true;
               });
               if (updated && previous_phase != updated->status.phase) {
                 std::string message =
                     updated->status.message.empty() ? "replica is " + updated->status.phase : updated->status.message;
                 bool warning =
                     updated->status.phase == api::phase::kFailed || updated->status.phase == api::phase::kUnhealthy;
                 // A failed start carries the engine's last log lines: the event shows them too.
                 const std::string& error = updated->status.last_error;
                 size_t lines = error.find("last log lines:");
                 if (warning && lines != std::string::npos) message += "; " + error.substr(lines);
                 resources.record_event("replica/" + updated->metadata.name, updated->status.phase, message,
                                        warning ? "Warning" : "Normal");
               }
               co_await writer.send(result_response(updated));
             });
}

// `nebula nodes rm`: a live node is removed only with ?force=1. Its key is revoked (so the name is
// free for a new join and its agent can no longer report; this server refuses it at once, through
// options.on_node_key_revoked), and the controller replaces its replicas elsewhere since their
// node is gone.
void add_node_delete_route(http::Router& router, Resources& resources, const Options& options) {
  router.add("DELETE", "/api/v1/nodes/{name}",
             [&resources, &options](Request& request, ResponseWriter& writer) -> awaitable<void> {
               const std::string name = request.params["name"];
               auto node = get_node(resources, name);
               if (!node) {
                 co_await writer.send(error_response(node.error()));
                 co_return;
               }
               int64_t now_ms = to_unix_ms(resources.clock().wall_now());
               std::string force = request.query_or("force");
               if (node_live(*node, now_ms, options.node_timeout) && force != "1" && force != "true") {
                 co_await writer.send(error_response(
                     make_error(ErrorCode::Conflict,
                                fmt::format("node {} is Ready (last heartbeat {} s ago): drain it and stop "
                                            "its agent first, or remove it anyway with --force",
                                            name, std::max<int64_t>(0, now_ms - node->status.heartbeat_ms) / 1000))));
                 co_return;
               }
               auto removed = resources.remove<api::Node>(name);
               if (!removed) {
                 co_await writer.send(error_response(removed.error()));
                 co_return;
               }
               (void)resources.store().remove(node_lease_key(name));  // NotFound for a node never heard from
               auto revoked = revoke_node_keys(resources.store(), name, options.on_node_key_revoked);
               if (!revoked)
                 spdlog::error("nodes: cannot revoke the key of removed node {}: {}", name, revoked.error().message);
               size_t moved = 0;
               for (const auto& replica : resources.list<api::Replica>()) {
                 if (replica.spec.node == name && !replica.spec.stop) ++moved;
               }
               resources.record_event("node/" + name, "Removed",
                                      fmt::format("removed by the API; its key is revoked and {} replica(s) are "
                                                  "rescheduled",
                                                  moved),
                                      "Warning");
               co_await writer.send(ok_json(api::to_json(*node)));
             });
}

// Every GPU of every node with what the scheduler placed on it.
json gpus_json(Resources& resources) {
  auto replicas = resources.list<api::Replica>();
  json items = json::array();
  for (const auto& node : resources.list<api::Node>()) {
    auto free = scheduler::free_vram(node, replicas);
    for (const auto& gpu : node.status.gpus) {
      json replicas_here = json::array();
      for (const auto& replica : replicas) {
        if (replica.spec.node == node.metadata.name &&
            std::find(replica.spec.gpus.begin(), replica.spec.gpus.end(), gpu.index) != replica.spec.gpus.end()) {
          replicas_here.push_back(replica.metadata.name);
        }
      }
      int64_t allocated = 0;
      for (const auto& entry : free) {
        if (entry.index == gpu.index) allocated = entry.allocated_mb;
      }
      items.push_back({{"node", node.metadata.name},
                       {"index", gpu.index},
                       {"name", gpu.name},
                       {"uuid", gpu.uuid},
                       {"memory_total_mb", gpu.memory_total_mb},
                       {"memory_used_mb", gpu.memory_used_mb},
                       {"memory_allocated_mb", allocated},
                       {"utilization", gpu.utilization},
                       {"replicas", replicas_here}});
    }
  }
  return json{{"items", items}};
}

http::Headers agent_headers(Resources& resources, const std::string& node) {
  std::string credential = agent_credential(resources.store(), node, to_unix_ms(resources.clock().wall_now()));
  if (credential.empty()) return {};
  return {{"Authorization", "Bearer " + credential}};
}

// Engine logs live on the replica's node: find the agent and relay its stream.
void add_logs_route(http::Router& router, Resources& resources, asio::io_context& io) {
  auto client = std::make_shared<http::Client>(io);
  router.add("GET", "/api/v1/deployments/{name}/logs",
             [&resources, client](Request& request, ResponseWriter& writer) -> awaitable<void> {
               const std::string deployment = request.params["name"];
               std::vector<api::Replica> replicas;
               for (auto& replica : resources.list<api::Replica>()) {
                 if (replica.spec.deployment == deployment) replicas.push_back(std::move(replica));
               }
               std::string wanted = request.query_or("replica", "0");
               const api::Replica* chosen = nullptr;
               for (const auto& replica : replicas) {
                 if (replica.metadata.name == wanted) chosen = &replica;
               }
               size_t index = static_cast<size_t>(std::atoll(wanted.c_str()));
               if (!chosen && index < replicas.size()) chosen = &replicas[index];
               if (!chosen) {
                 co_await writer.send(error_response(make_error(
                     ErrorCode::NotFound, fmt::format("deployment {} has no replica {}", deployment, wanted))));
                 co_return;
               }
               auto node = resources.get<api::Node>(chosen->spec.node);
               if (!node || node->status.agent_url.empty()) {
                 co_await writer.send(error_response(make_error(
                     ErrorCode::Unavailable, "the node of replica " + chosen->metadata.name + " is not reachable")));
                 co_return;
               }
               std::string url =
                   fmt::format("{}/logs/{}?follow={}&tail={}", node->status.agent_url, chosen->metadata.name,
                               request.query_or("follow", "0"), request.query_or("tail", "65536"));
               // The agent serves logs only to the server: it checks this proof of the node's key.
               http::Headers headers = agent_headers(resources, chosen->spec.node);
               auto upstream = co_await client->open("GET", url, "", std::move(headers), std::chrono::seconds(10));
               if (!upstream) {
                 co_await writer.send(error_response(upstream.error()));
                 co_return;
               }
               auto& stream = **upstream;
               if (stream.status != 200) {
                 auto body = co_await stream.read_all(std::chrono::seconds(10));
                 std::string text;
                 if (body) text = *body;
                 co_await writer.send(Response::text(stream.status, std::move(text), stream.header("content-type")));
                 co_return;
               }
               std::string follow = request.query_or("follow");
               if (follow == "1" || follow == "true") writer.mark_endless();
               writer.on_client_gone([&stream] { stream.cancel(); });
               if (!co_await writer.start_stream(200, text_headers())) co_return;
               while (true) {
                 auto piece = co_await stream.read(std::chrono::hours(24));
                 if (!piece || piece->empty()) break;
                 if (!co_await writer.write(*piece)) {
                   stream.cancel();
                   co_return;
                 }
               }
               co_await writer.finish();
             });
}

}  // namespace

void add_api_routes(http::Router& router, Resources& resources, asio::io_context& io, const Options& options) {
  add_read_routes<api::Node>(router, resources, io);
  add_read_routes<api::Deployment>(router, resources, io);
  add_read_routes<api::Replica>(router, resources, io);
  add_read_routes<api::Event>(router, resources, io);
  add_node_delete_route(router, resources, options);
  add_delete_route<api::Deployment>(router, resources);
  add_delete_route<api::Replica>(router, resources);
  add_deployment_routes(router, resources, options);
  add_agent_routes(router, resources, options);
  add_token_routes(router, resources);
  add_logs_route(router, resources, io);
  add_simulate_routes(router, resources);
  add_mode_routes(router, resources, io);
  add_rollout_routes(router, resources);
  add_sleep_routes(router, resources);
  router.add("GET", "/api/v1/gpus", [&resources](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(ok_json(gpus_json(resources)));
  });
  // Which server leads (holds /nebula/leader on etcd and runs the controller), and whether this
  // one does.
  router.add("GET", "/api/v1/leader", [&resources, &options](Request&, ResponseWriter& writer) -> awaitable<void> {
    json answer{{"leading", options.is_leader ? options.is_leader() : true}, {"leader", ""}};
    if (auto holder = resources.store().get(std::string(api::kKeyRoot) + "leader"); holder && holder->has_value()) {
      answer["leader"] = (*holder)->value;
    }
    co_await writer.send(ok_json(answer));
  });
  router.add("GET", "/healthz", [](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(Response::text(200, "ok\n"));
  });
  router.add("GET", "/readyz", [&resources](Request&, ResponseWriter& writer) -> awaitable<void> {
    auto probe = resources.store().list(api::store_prefix("nodes"));
    Response response = Response::text(200, "ok\n");
    if (!probe) response = Response::text(503, probe.error().message + "\n");
    co_await writer.send(std::move(response));
  });
}

}  // namespace nebula::controlplane
