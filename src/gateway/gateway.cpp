// The gateway's life cycle and its routes. One inference request's way through it: serve.cpp
// (the pipeline and admission), admission_queue.cpp (replica slots), relay.cpp (to the engine
// and back), access_log.cpp (accounting), scale_to_zero.cpp.
#include "gateway/gateway.h"

#include <fmt/format.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdio>

#include "common/asio.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "api/api.h"
#include "common/json.h"
#include "common/subprocess.h"
#include "gateway/call.h"
#include "gateway/offload.h"
#include "xtrace/xtrace.h"

namespace nebula::gateway {

Gateway::Gateway(store::Store& store, asio::io_context& io, Options options)
    : store_(store),
      io_(io),
      options_(options),
      auth_(store, options.require_keys),
      limiter_(options.limiter ? options.limiter : std::make_shared<MemoryLimiter>()),
      usage_(store, options.usage_flush_interval),
      responses_(options.responses ? options.responses : std::make_shared<MemoryResponseStore>()) {
  if (responses_->blocking()) responses_pool_ = std::make_unique<asio::thread_pool>(1);
  http::ClientOptions client_options;
  client_options.connect_timeout = options.connect_timeout;
  // Keep a connection per concurrent request to a replica, up to 512 (nginx's `keepalive 512` in
  // the benchmark): with the default 64, a burst of 256 streams reconnected 192 of them each time.
  client_options.max_idle_per_host = 512;
  client_ = std::make_unique<http::Client>(io, client_options);
  if (!options.access_log_path.empty()) {
    // Its lines name keys and clients: readable by the owner only, and never inherited by a child.
    spdlog::file_event_handlers private_file;
    private_file.after_open = [](const spdlog::filename_t&, std::FILE* file) {
      ::fchmod(::fileno(file), 0600);
      set_close_on_exec(::fileno(file));
    };
    access_log_ =
        std::make_shared<spdlog::logger>("access", std::make_shared<spdlog::sinks::rotating_file_sink_mt>(
                                                       options.access_log_path, 64 << 20, 3, false, private_file));
    access_log_->set_pattern("%v");
    // Flushed once a second by report_activity(), not per line: a crash loses at most the last
    // second of access log lines, as it does of usage.
    access_log_->flush_on(spdlog::level::err);
  }
}

Gateway::~Gateway() {
  stop();
}

void Gateway::stop() {
  stopping_ = true;
  for (auto* timer : {activity_timer_.get(), watch_timer_.get(), scrape_timer_.get()}) {
    if (timer) asio::post(io_, [timer] { timer->cancel(); });
  }
  for (auto& watch : watches_) watch->stop();
  watches_.clear();
  usage_.stop();
  if (responses_pool_) responses_pool_->join();  // what the response store was asked finishes
  flush_access_log();
}

Status Gateway::start() {
  // Each prefix listed, then watched from its listing's revision (relisted when the store ends
  // the watch); the table applies whole documents, so each key ends where the store has it.
  for (const char* plural : {"deployments", "replicas"}) {
    auto watch =
        std::make_unique<store::ListWatch>(store_, api::store_prefix(plural), [this](const store::WatchEvent& event) {
          table_.apply(event.kv.key, event.type == store::WatchEvent::Type::Put ? &event.kv.value : nullptr);
        });
    if (auto started = watch->start(); !started) return started.error();
    watches_.push_back(std::move(watch));
  }
  // A replica that became Ready may serve queued requests: wake the queue on the I/O thread.
  // A deleted deployment's policy goes with it.
  table_.set_on_change([this](const std::string& deployment) {
    asio::post(io_, [this, deployment] {
      forget_deployment(deployment);
      dispatch_queue(deployment);
    });
  });
  // Policies run on the I/O thread: what they learnt about a replica that left routing is
  // dropped there.
  table_.set_on_replica_gone([this](const std::string& deployment, const std::string& replica) {
    asio::post(io_, [this, deployment, replica] { forget_replica(deployment, replica); });
  });
  // Everything a replica holds goes with it: idle connections to its engine are closed (on the
  // I/O thread, which owns the pool's sockets), not left in CLOSE-WAIT until the pool is next used.
  table_.set_on_endpoint_gone([this](const std::string& url) {
    asio::post(io_, [this, url] {
      if (auto parsed = http::Url::parse(url)) client_->close_idle(parsed->origin());
    });
  });
  if (auto started = auth_.start(); !started) return started;
  activity_timer_ = std::make_unique<asio::steady_timer>(io_);
  asio::co_spawn(io_, report_activity(), asio::detached);
  watch_timer_ = std::make_unique<asio::steady_timer>(io_);
  if (options_.load_scrape_interval.count() > 0) {
    scrape_timer_ = std::make_unique<asio::steady_timer>(io_);
    table_.expect_engine_counts(true);
    asio::co_spawn(io_, scrape_loads(), asio::detached);
  }
  return usage_.start();
}

namespace {
json models_json(const router::EndpointTable& table, const api::ApiKey* key) {
  json data = json::array();
  for (const auto& name : table.deployments()) {
    if (key && !key->models.empty() && std::find(key->models.begin(), key->models.end(), name) == key->models.end()) {
      continue;
    }
    data.push_back(
        {{"id", name}, {"object", "model"}, {"created", table.created_ms(name) / 1000}, {"owned_by", "nebula"}});
  }
  return json{{"object", "list"}, {"data", data}};
}

json deleted_response_json(const std::string& id) {
  return json{{"id", id}, {"object", "response"}, {"deleted", true}};
}
}  // namespace

// GET and DELETE /v1/responses/{id}: a response this key stored.
awaitable<http::Response> Gateway::stored_response_answer(const http::Request& request, bool erase) {
  std::shared_ptr<const api::ApiKey> key;
  if (auto refusal = auth_.inference_refusal(request, key)) co_return std::move(*refusal);
  const std::string key_id = key ? key->metadata.name : "anonymous";
  const std::string& id = request.params.at("id");
  if (erase) {
    auto erased = co_await on_responses([&] { return responses_->erase(key_id, id); });
    if (!erased) co_return response_store_error(erased.error());
    if (*erased) co_return http::Response::json_body(200, deleted_response_json(id));
  } else {
    auto stored = co_await on_responses([&] { return responses_->response(key_id, id); });
    if (stored) co_return http::Response::json_body(200, *stored);
    if (stored.error().code != ErrorCode::NotFound) co_return response_store_error(stored.error());
  }
  co_return openai_error(404, fmt::format("Response with id '{}' not found.", id), "invalid_request_error",
                         "not_found");
}

awaitable<void> Gateway::stored_response(http::Request& request, http::ResponseWriter& writer, bool erase) {
  co_await writer.send(co_await stored_response_answer(request, erase));
}

// Built outside the route's coroutine: g++ 12 miscompiles the conditional inside a co_await
// expression (it called through a null client).
std::string Gateway::metrics_text() const {
  std::string text = metrics_.render() + router_metrics() + http::render_server_metrics();
  if (options_.xtrace) text += options_.xtrace->render_metrics();
  return text;
}

void Gateway::add_routes(http::Router& router) {
  router.add("GET", "/v1/models", [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    std::shared_ptr<const api::ApiKey> key;
    if (auto refusal = auth_.listing_refusal(request, key)) {
      co_await writer.send(std::move(*refusal));
      co_return;
    }
    co_await writer.send(http::Response::json_body(200, models_json(table_, key.get())));
  });
  const std::pair<const char*, int> routes[] = {{"/v1/chat/completions", kChat},
                                                {"/v1/completions", kCompletions},
                                                {"/v1/embeddings", kEmbeddings},
                                                {"/v1/responses", kResponses}};
  for (const auto& [path, kind] : routes) {
    int route_kind = kind;
    router.add("POST", path, [this, route_kind](http::Request& request, http::ResponseWriter& writer) {
      return serve(request, writer, route_kind);
    });
  }
  router.add("GET", "/v1/responses/{id}", [this](http::Request& request, http::ResponseWriter& writer) {
    return stored_response(request, writer, false);
  });
  router.add("DELETE", "/v1/responses/{id}", [this](http::Request& request, http::ResponseWriter& writer) {
    return stored_response(request, writer, true);
  });
  router.add("GET", "/metrics", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(http::Response::text(200, metrics_text(), "text/plain; version=0.0.4"));
  });
  auth_.add_routes(router);
  add_usage_routes(router);
  add_replica_routes(router);
  add_openai_routes(router);
}

}  // namespace nebula::gateway
