// The xtrace client's thread: two send loops (metric batches, traces) and one query loop per
// consumer of signals, on an io_context of its own, so that a slow or dead xtrace only ever
// delays this thread. Callers touch the queues and the signal cache under mutex_ for the time of
// a push or a lookup.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "common/asio.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "http/http.h"
#include "xtrace/xtrace.h"

namespace nebula::xtrace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const SignalLimits kRouterLimits{10, milliseconds(15'000), milliseconds(30'000), milliseconds(2'000),
                                 milliseconds(10'000)};
const SignalLimits kSchedulerLimits{5, milliseconds(30'000), milliseconds(30'000), milliseconds(5'000),
                                    milliseconds(10'000)};

namespace {
constexpr auto kForgetUnread = std::chrono::seconds(60);  // a watched query nobody reads any more
constexpr auto kRetryAfterCap = std::chrono::seconds(300);

// Retry-After as delta-seconds; nullopt when absent or an HTTP date (the backoff applies then).
std::optional<milliseconds> retry_after(const http::Response& response) {
  std::string value = response.header("retry-after");
  if (value.empty() || value.size() > 9 || value.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  return std::min<milliseconds>(std::chrono::seconds(std::stoll(value)), kRetryAfterCap);
}

bool retryable(int status) {
  return status == 408 || status == 429 || status >= 500;
}
}  // namespace

struct Client::Impl {
  Options options;
  // Declared before io, so that they outlive the coroutine frames io destroys last.
  mutable std::mutex mutex;
  // Batches being delivered (under mutex), and a signal each time one ends: what ~Client()
  // waits on to send what is left.
  int delivering = 0;
  std::condition_variable delivered;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<http::Client> http;
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::mt19937_64 random;  // the client's thread only

  // Shared with callers, under mutex.
  std::deque<Metric> metrics;
  // Serialised on this client's thread, not the caller's; a retry sends the same bytes.
  std::deque<Generation> traces;
  Stats stats;
  struct Point {
    double value = 0;
    WallTime at;
  };
  struct Answer {
    SteadyClock::time_point read{};  // last asked for by value()
    SteadyClock::time_point asked{};
    SteadyClock::time_point answered{};  // the last good answer, epoch = none
    std::optional<WallTime> latest;      // its meta.latest_ts
    std::map<std::string, Point> groups;
  };
  struct Consumer {
    SignalLimits limits;
    std::map<Query, Answer> queries;
    // The client's thread only:
    SteadyClock::time_point next_query{};
    SteadyClock::time_point blocked_until{};  // after a 429 or 5xx
  };
  std::map<std::string, Consumer> consumers;

  SteadyClock::time_point next_send{};  // the client's thread only: the send token bucket

  // Sleeps in short steps so stop() is never kept waiting.
  awaitable<void> sleep_until(SteadyClock::time_point until) {
    asio::steady_timer timer(io);
    while (!stopping && SteadyClock::now() < until) {
      timer.expires_at(std::min(until, SteadyClock::now() + milliseconds(100)));
      boost::system::error_code ec;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  // Waits for a token of a bucket refilled at `rate` per second, holding at most one.
  awaitable<void> pace(SteadyClock::time_point& next, double rate) {
    auto now = SteadyClock::now();
    if (next > now) co_await sleep_until(next);
    auto interval = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(1.0 / rate));
    next = std::max(next, now) + interval;
  }

  milliseconds jittered(milliseconds base) {
    // Up to a quarter more, and at least 50 ms apart, so retries from many nodes spread out.
    auto spread = std::max<int64_t>(50, base.count() / 4);
    return base + milliseconds(std::uniform_int_distribution<int64_t>(0, spread)(random));
  }

  milliseconds backoff(int attempt) {
    double factor = std::pow(2.0, std::min(attempt - 1, 20));
    auto base = milliseconds(static_cast<int64_t>(
        std::min<double>(static_cast<double>(options.backoff_max.count()), options.backoff_initial.count() * factor)));
    return jittered(base);
  }

  http::Headers headers(bool with_body) const {
    http::Headers out;
    if (with_body) out.push_back({"Content-Type", "application/json"});
    if (!options.token.empty()) out.push_back({"Authorization", "Bearer " + options.token});
    return out;
  }

  Stats::Kind& kind_stats(bool is_metrics) { return is_metrics ? stats.metrics : stats.traces; }

  // Sends one batch until xtrace takes it, refuses it, or max_attempts tries failed.
  awaitable<void> deliver(bool is_metrics, std::string body, size_t items) {
    struct Delivering {  // counted from the batch's removal from its queue to its end
      Impl& impl;
      ~Delivering() {
        {
          std::lock_guard lock(impl.mutex);
          impl.delivering -= 1;
        }
        impl.delivered.notify_all();
      }
    } delivering_now{*this};
    const std::string url = options.url + (is_metrics ? "/v1/metrics/batch" : "/v1/l/batch");
    for (int attempt = 1; !stopping; ++attempt) {
      co_await pace(next_send, options.max_sends_per_second);
      if (stopping) co_return;
      auto answer = co_await http->request("POST", url, body, headers(true), options.timeout);
      if (answer && answer->status >= 200 && answer->status < 300) {
        std::lock_guard lock(mutex);
        kind_stats(is_metrics).sent += items;
        kind_stats(is_metrics).batches += 1;
        co_return;
      }
      bool again = !answer || retryable(answer->status);
      std::string why = answer ? fmt::format("HTTP {}", answer->status) : answer.error().message;
      if (!again || attempt >= options.max_attempts) {
        spdlog::warn("xtrace: {} {} dropped after {} tries: {}", items, is_metrics ? "metric points" : "trace(s)",
                     attempt, why);
        std::lock_guard lock(mutex);
        kind_stats(is_metrics).dropped_failed += items;
        co_return;
      }
      std::optional<milliseconds> wait;
      if (answer) wait = retry_after(*answer);
      auto delay = wait ? jittered(*wait) : backoff(attempt);
      spdlog::debug("xtrace: {} failed ({}), again in {} ms", url, why, delay.count());
      {
        std::lock_guard lock(mutex);
        kind_stats(is_metrics).retries += 1;
      }
      co_await sleep_until(SteadyClock::now() + delay);
    }
  }

  awaitable<void> send_loop(bool is_metrics) {
    while (!stopping) {
      std::string body;
      size_t items = 0;
      std::optional<Generation> generation;
      {
        std::lock_guard lock(mutex);
        if (is_metrics && !metrics.empty()) {
          size_t count = std::min(metrics.size(), std::max<size_t>(1, options.max_batch));
          std::vector<Metric> batch(std::make_move_iterator(metrics.begin()),
                                    std::make_move_iterator(metrics.begin() + static_cast<std::ptrdiff_t>(count)));
          metrics.erase(metrics.begin(), metrics.begin() + static_cast<std::ptrdiff_t>(count));
          body = metrics_body(batch).dump(-1, ' ', false, json::error_handler_t::replace);
          items = count;
          delivering += 1;
        } else if (!is_metrics && !traces.empty()) {
          generation = std::move(traces.front());
          traces.pop_front();
          items = 1;
          delivering += 1;
        }
      }
      if (generation) {
        if (generation->observation_id.empty()) generation->observation_id = random_hex(32);
        body = generation_body(*generation).dump(-1, ' ', false, json::error_handler_t::replace);
      }
      if (items == 0) {
        co_await sleep_until(SteadyClock::now() + options.flush_interval);
        continue;
      }
      co_await deliver(is_metrics, std::move(body), items);
    }
  }

  // One GET /api/public/metrics/query; its answer replaces the cached one.
  awaitable<void> ask(const std::string& consumer_name, Query query) {
    std::string labels = "{}";
    if (!query.labels.empty()) {
      json object = json::object();
      for (const auto& [name, value] : query.labels) object[name] = value;
      labels = object.dump();
    }
    auto from = std::chrono::system_clock::now() - std::chrono::minutes(5);
    std::string target = fmt::format("{}/api/public/metrics/query?name={}&step=1m&agg=last&from={}&labels={}",
                                     options.url, http::url_encode(query.name),
                                     http::url_encode(format_rfc3339_seconds(from)), http::url_encode(labels));
    if (!query.group_by.empty()) target += "&group_by=" + http::url_encode(query.group_by);
    milliseconds timeout;
    {
      std::lock_guard lock(mutex);
      timeout = consumers.at(consumer_name).limits.timeout;
    }
    auto answer = co_await http->request("GET", target, {}, headers(false), timeout);
    std::lock_guard lock(mutex);
    Consumer& consumer = consumers.at(consumer_name);
    if (!answer || answer->status != 200) {
      if (answer && (answer->status == 429 || answer->status >= 500)) {
        auto wait = retry_after(*answer);
        consumer.blocked_until = SteadyClock::now() + jittered(wait ? *wait : milliseconds(1'000));
        stats.queries_throttled += 1;
      } else {
        stats.queries_failed += 1;
      }
      spdlog::debug("xtrace: query {} failed: {}", query.name,
                    answer ? fmt::format("HTTP {}", answer->status) : answer.error().message);
      co_return;  // the last answer stays until its cache_ttl ends
    }
    auto parsed = parse_answer(answer->body, query.group_by);
    if (!parsed) {
      stats.queries_failed += 1;
      spdlog::debug("xtrace: query {}: {}", query.name, parsed.error().message);
      co_return;
    }
    stats.queries_ok += 1;
    auto found = consumer.queries.find(query);
    if (found == consumer.queries.end()) co_return;
    found->second.answered = SteadyClock::now();
    found->second.latest = parsed->latest;
    found->second.groups = std::move(parsed->groups);
  }

  struct Parsed {
    std::optional<WallTime> latest;
    std::map<std::string, Point> groups;
  };
  // {"data":[{"labels":{...},"values":[{"timestamp","value"}]}],"meta":{"latest_ts",...}}: each
  // series' last point, under the value of its group_by label. Hostile input gives an error.
  static Result<Parsed> parse_answer(const std::string& body, const std::string& group_by) {
    json answer = json::parse(body, nullptr, false);
    if (!answer.is_object() || !answer.contains("data") || !answer["data"].is_array()) {
      return make_error(ErrorCode::InvalidArgument, "an answer without data");
    }
    Parsed parsed;
    if (auto meta = answer.find("meta"); meta != answer.end() && meta->is_object()) {
      if (auto latest = meta->find("latest_ts"); latest != meta->end() && latest->is_string()) {
        parsed.latest = parse_rfc3339(latest->get<std::string>());
      }
    }
    size_t series = 0;
    for (const auto& entry : answer["data"]) {
      if (++series > 50) break;  // the contract's limit: more is not trusted
      if (!entry.is_object()) continue;
      std::string group;
      if (auto labels = entry.find("labels"); labels != entry.end() && labels->is_object()) {
        if (auto value = labels->find(group_by); value != labels->end() && value->is_string()) group = *value;
      }
      auto values = entry.find("values");
      if (values == entry.end() || !values->is_array()) continue;
      std::optional<Point> last;
      size_t points = 0;
      for (const auto& point : *values) {
        if (++points > 1000) break;
        if (!point.is_object() || !point.contains("value") || !point["value"].is_number() ||
            !point.contains("timestamp") || !point["timestamp"].is_string()) {
          continue;
        }
        auto at = parse_rfc3339(point["timestamp"].get<std::string>());
        double value = point["value"].get<double>();
        if (!at || !std::isfinite(value)) continue;
        if (!last || *at >= last->at) last = Point{value, *at};
      }
      if (last) parsed.groups[group] = *last;
    }
    return parsed;
  }

  static std::string format_rfc3339_seconds(WallTime time) {
    std::time_t seconds = std::chrono::system_clock::to_time_t(time);
    std::tm parts{};
    gmtime_r(&seconds, &parts);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                       parts.tm_hour, parts.tm_min, parts.tm_sec);
  }

  awaitable<void> query_loop(std::string consumer_name) {
    while (!stopping) {
      std::optional<Query> due;
      SteadyClock::time_point wake = SteadyClock::now() + milliseconds(100);
      {
        std::lock_guard lock(mutex);
        Consumer& consumer = consumers.at(consumer_name);
        auto now = SteadyClock::now();
        for (auto it = consumer.queries.begin(); it != consumer.queries.end();) {
          if (now - it->second.read > kForgetUnread) {
            it = consumer.queries.erase(it);
            continue;
          }
          if (!due && now >= consumer.blocked_until && now - it->second.asked >= consumer.limits.refresh) {
            due = it->first;
            it->second.asked = now;
          }
          ++it;
        }
      }
      if (!due) {
        co_await sleep_until(wake);
        continue;
      }
      double qps = 10;
      {
        std::lock_guard lock(mutex);
        qps = consumers.at(consumer_name).limits.max_qps;
      }
      co_await pace(consumers.at(consumer_name).next_query, qps);
      if (stopping) co_return;
      co_await ask(consumer_name, *due);
    }
  }
};

Client::Client(Options options, std::map<std::string, SignalLimits> consumers)
    : options_(std::move(options)), impl_(std::make_shared<Impl>()) {
  while (!options_.url.empty() && options_.url.back() == '/') options_.url.pop_back();
  impl_->options = options_;
  impl_->random.seed(options_.seed ? options_.seed : std::random_device{}());
  for (auto& [name, limits] : consumers) {
    if (limits.max_qps <= 0) limits.max_qps = 1;
    impl_->consumers[name].limits = limits;
  }
  if (impl_->options.max_sends_per_second <= 0) impl_->options.max_sends_per_second = 1;
  http::ClientOptions client_options;
  client_options.connect_timeout = options_.connect_timeout;
  client_options.max_idle_per_host = 4;
  impl_->http = std::make_unique<http::Client>(impl_->io, client_options);
  impl_->work.emplace(impl_->io.get_executor());
  Impl* impl = impl_.get();
  asio::co_spawn(impl->io, impl->send_loop(true), asio::detached);
  for (int i = 0; i < std::max(1, options_.trace_senders); ++i) {
    asio::co_spawn(impl->io, impl->send_loop(false), asio::detached);
  }
  for (const auto& [name, consumer] : impl->consumers) {
    asio::co_spawn(impl->io, impl->query_loop(name), asio::detached);
  }
  impl_->thread = std::thread([impl] {
    try {
      impl->io.run();
    } catch (const std::exception& error) {
      spdlog::error("xtrace: the client's thread stopped: {}", error.what());
    }
  });
}

Client::~Client() {
  if (options_.shutdown_flush.count() > 0) {
    // What is queued goes out first, for at most shutdown_flush: the send loops keep running.
    std::unique_lock lock(impl_->mutex);
    bool flushed = impl_->delivered.wait_for(lock, options_.shutdown_flush, [this] {
      return impl_->metrics.empty() && impl_->traces.empty() && impl_->delivering == 0;
    });
    if (!flushed) {
      spdlog::warn("xtrace: stopping with {} metric points and {} traces not sent", impl_->metrics.size(),
                   impl_->traces.size() + static_cast<size_t>(impl_->delivering));
    }
  }
  impl_->stopping = true;
  impl_->work.reset();
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->http.reset();
}

void Client::report_metrics(std::vector<Metric> metrics) {
  std::lock_guard lock(impl_->mutex);
  for (auto& metric : metrics) {
    if (impl_->metrics.size() >= options_.max_queue) {
      impl_->metrics.pop_front();
      impl_->stats.metrics.dropped_full += 1;
    }
    impl_->metrics.push_back(std::move(metric));
  }
}

void Client::report(Generation generation) {
  std::lock_guard lock(impl_->mutex);
  if (impl_->traces.size() >= options_.max_queue) {
    impl_->traces.pop_front();
    impl_->stats.traces.dropped_full += 1;
  }
  impl_->traces.push_back(std::move(generation));
}

void Client::watch(const std::string& consumer, const Query& query) {
  std::lock_guard lock(impl_->mutex);
  auto found = impl_->consumers.find(consumer);
  if (found == impl_->consumers.end()) return;
  found->second.queries[query].read = SteadyClock::now();
}

std::optional<double> Client::value(const std::string& consumer_name, const Query& query, const std::string& group,
                                    WallTime now) const {
  std::lock_guard lock(impl_->mutex);
  auto consumer = impl_->consumers.find(consumer_name);
  if (consumer == impl_->consumers.end()) return std::nullopt;
  auto answer = consumer->second.queries.find(query);
  if (answer == consumer->second.queries.end()) return std::nullopt;
  answer->second.read = SteadyClock::now();
  const SignalLimits& limits = consumer->second.limits;
  if (answer->second.answered == SteadyClock::time_point{} ||
      SteadyClock::now() - answer->second.answered > limits.cache_ttl) {
    return std::nullopt;  // never answered, or the last answer is older than the cache keeps
  }
  if (!answer->second.latest || now - *answer->second.latest > limits.freshness) return std::nullopt;
  auto point = answer->second.groups.find(group);
  if (point == answer->second.groups.end() || now - point->second.at > limits.freshness) return std::nullopt;
  return point->second.value;
}

Stats Client::stats() const {
  std::lock_guard lock(impl_->mutex);
  Stats stats = impl_->stats;
  stats.metrics.queued = impl_->metrics.size();
  stats.traces.queued = impl_->traces.size();
  return stats;
}

std::string Client::render_metrics() const {
  Stats now = stats();
  std::string text;
  auto family = [&](const char* name, const char* type, const char* help) {
    text += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto both = [&](const char* name, auto field) {
    text += fmt::format("{}{{kind=\"metrics\"}} {}\n{}{{kind=\"traces\"}} {}\n", name, now.metrics.*field, name,
                        now.traces.*field);
  };
  family("nebula_xtrace_sent_total", "counter", "Metric points and traces xtrace accepted.");
  both("nebula_xtrace_sent_total", &Stats::Kind::sent);
  family("nebula_xtrace_batches_total", "counter", "POSTs to xtrace it accepted.");
  both("nebula_xtrace_batches_total", &Stats::Kind::batches);
  family("nebula_xtrace_retries_total", "counter", "POSTs to xtrace tried again after a failure, a 429 or a 5xx.");
  both("nebula_xtrace_retries_total", &Stats::Kind::retries);
  family("nebula_xtrace_dropped_total", "counter",
         "Metric points and traces never delivered: the oldest of a full queue, or given up after failures.");
  text += fmt::format(
      "nebula_xtrace_dropped_total{{kind=\"metrics\",reason=\"queue_full\"}} {}\n"
      "nebula_xtrace_dropped_total{{kind=\"traces\",reason=\"queue_full\"}} {}\n"
      "nebula_xtrace_dropped_total{{kind=\"metrics\",reason=\"failed\"}} {}\n"
      "nebula_xtrace_dropped_total{{kind=\"traces\",reason=\"failed\"}} {}\n",
      now.metrics.dropped_full, now.traces.dropped_full, now.metrics.dropped_failed, now.traces.dropped_failed);
  family("nebula_xtrace_queue_length", "gauge", "Metric points and traces waiting to be sent to xtrace.");
  both("nebula_xtrace_queue_length", &Stats::Kind::queued);
  family("nebula_xtrace_queries_total", "counter", "Signal queries to xtrace, by result.");
  text += fmt::format(
      "nebula_xtrace_queries_total{{result=\"ok\"}} {}\nnebula_xtrace_queries_total{{result=\"failed\"}} {}\n"
      "nebula_xtrace_queries_total{{result=\"throttled\"}} {}\n",
      now.queries_ok, now.queries_failed, now.queries_throttled);
  return text;
}

}  // namespace nebula::xtrace
