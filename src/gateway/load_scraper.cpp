// Engine load for routing: every --load-scrape-interval each Ready replica's /metrics is read and
// parsed (router::parse_engine_load) into its Endpoint, where the candidates the policies see
// carry it. I/O thread only: the figures are written and read there.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/asio.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/prometheus.h"
#include "gateway/call.h"
#include "router/engine_load.h"
#include "xtrace/xtrace.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

awaitable<void> Gateway::scrape_loads() {
  while (!stopping_) {
    // A replica whose last read has not ended (a slow or stuck engine) is skipped this round:
    // never more than one read per replica in flight.
    for (auto& endpoint : table_.endpoints(true)) {
      if (endpoint->scraping) continue;
      endpoint->scraping = true;
      asio::co_spawn(io_, scrape_load(endpoint), asio::detached);
    }
    if (options_.xtrace && options_.xtrace_signals) apply_xtrace_signals();
    scrape_timer_->expires_after(options_.load_scrape_interval);
    boost::system::error_code ec;
    co_await scrape_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
}

awaitable<void> Gateway::scrape_load(std::shared_ptr<router::Endpoint> endpoint) {
  // Short: a figure that takes longer than a round to read is stale when it arrives.
  auto timeout = std::clamp(options_.load_scrape_interval, milliseconds(100), milliseconds(2'000));
  auto answer = co_await client_->request("GET", endpoint->url + "/metrics", {}, {}, timeout);
  endpoint->scraping = false;
  if (stopping_) co_return;
  if (!answer || answer->status != 200) {
    // The last figures stay, with their time: policies stop trusting them once they are stale.
    spdlog::debug("gateway: no load from {} ({}): {}", endpoint->replica, endpoint->url,
                  answer ? fmt::format("HTTP {}", answer->status) : answer.error().message);
    co_return;
  }
  router::EngineLoad load = router::parse_engine_load(answer->body);
  load.at = SteadyClock::now();
  endpoint->engine = load;
  if (load.running >= 0 || load.waiting >= 0) {
    endpoint->engine_busy = std::max(0.0, load.running) + std::max(0.0, load.waiting);
    endpoint->engine_busy_at_ns = load.at.time_since_epoch().count();
  } else {
    endpoint->engine_busy_at_ns = -1;  // drained() cannot wait for figures it will never get
  }
}

void Gateway::apply_xtrace_signals() {
  auto now = SteadyClock::now();
  auto wall_now = std::chrono::system_clock::now();
  for (auto& endpoint : table_.endpoints()) {
    // The agent reports a replica under model_uid = its deployment, replica_id = its name.
    xtrace::Query pending{"pending_requests", {{"model_uid", endpoint->deployment}}, "replica_id"};
    xtrace::Query kv{"kv_cache_usage", {{"model_uid", endpoint->deployment}}, "replica_id"};
    options_.xtrace->watch("router", pending);
    options_.xtrace->watch("router", kv);
    auto waiting = options_.xtrace->value("router", pending, endpoint->replica, wall_now);
    auto kv_usage = options_.xtrace->value("router", kv, endpoint->replica, wall_now);
    // Out-of-range figures are not trusted: the engine's own stay.
    endpoint->signal_waiting = waiting && *waiting >= 0 ? *waiting : -1;
    endpoint->signal_kv_usage = kv_usage && *kv_usage >= 0 && *kv_usage <= 1 ? *kv_usage : -1;
    bool any = endpoint->signal_waiting >= 0 || endpoint->signal_kv_usage >= 0;
    endpoint->signal_at = any ? now : SteadyClock::time_point{};
  }
}

std::string Gateway::router_metrics() const {
  struct Family {
    const char* name;
    const char* help;
    std::string samples;
  };
  Family families[] = {
      {"nebula_router_engine_load_age_seconds", "Seconds since the replica's engine load was read from its /metrics.",
       ""},
      {"nebula_router_engine_requests_waiting", "Requests waiting inside the replica's engine, as it last said.", ""},
      {"nebula_router_engine_requests_running", "Requests the replica's engine is generating for, as it last said.",
       ""},
      {"nebula_router_engine_kv_cache_usage_ratio", "Share of the replica's KV cache in use (0-1), as it last said.",
       ""},
  };
  auto now = SteadyClock::now();
  for (const auto& endpoint : table_.endpoints()) {
    const router::EngineLoad load = endpoint->load();
    if (load.at == SteadyClock::time_point{}) continue;
    std::string labels = fmt::format("{{deployment=\"{}\",replica=\"{}\"}}", prometheus_label(endpoint->deployment),
                                     prometheus_label(endpoint->replica));
    double values[] = {std::chrono::duration<double>(now - load.at).count(), load.waiting, load.running, load.kv_usage};
    for (size_t i = 0; i < std::size(families); ++i) {
      if (values[i] < 0) continue;  // not exported by the engine
      families[i].samples += fmt::format("{}{} {}\n", families[i].name, labels, values[i]);
    }
  }
  std::string text;
  for (const auto& family : families) {
    if (family.samples.empty()) continue;
    text += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{}", family.name, family.help, family.name, family.samples);
  }
  return text;
}

}  // namespace nebula::gateway
