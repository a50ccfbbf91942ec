#include "xtrace_server.h"

#include <regex>

#include "common/asio.h"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "xtrace/xtrace.h"

namespace nebula::testing {

namespace {
// The seed's metrics and the labels each carries, exactly.
const std::map<std::string, std::set<std::string>>& metric_labels() {
  static const std::map<std::string, std::set<std::string>> labels = {
      {"gpu_utilization", {"node_id", "gpu_index"}},
      {"gpu_temperature", {"node_id", "gpu_index"}},
      {"gpu_memory_used_mb", {"node_id", "gpu_index"}},
      {"gpu_memory_total_mb", {"node_id", "gpu_index"}},
      {"kv_cache_usage", {"model_uid", "replica_id", "node_id"}},
      {"pending_requests", {"model_uid", "replica_id", "node_id"}},
      {"prefix_cache_hit_rate", {"model_uid", "replica_id", "node_id"}},
  };
  return labels;
}

bool is_uuid(const json& value) {
  static const std::regex uuid("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
  return value.is_string() && std::regex_match(value.get<std::string>(), uuid);
}

bool is_time(const json& value) {
  return value.is_string() && xtrace::parse_rfc3339(value.get<std::string>()).has_value();
}
}  // namespace

XtraceServer::XtraceServer(std::string token) : token_(std::move(token)) {
  http::Router router;
  auto ingest = [this](auto handler) {
    return [this, handler](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
      Fault fault;
      std::optional<http::Response> refusal;
      {
        std::lock_guard lock(mutex_);
        ++requests_;
        refusal = check_auth(request);
        if (!refusal) refusal = take_fault(fault);
      }
      // A slow xtrace takes its time before it looks at the request: what it never answered, it
      // never stored.
      co_await delay(fault);
      http::Response response = refusal ? std::move(*refusal) : (this->*handler)(request);
      co_await writer.send(std::move(response));
    };
  };
  router.add("POST", "/v1/metrics/batch", ingest(&XtraceServer::metrics_batch));
  router.add("POST", "/v1/l/batch", ingest(&XtraceServer::trace_batch));
  router.add("GET", "/api/public/metrics/query",
             [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
               Fault fault;
               http::Response response;
               {
                 std::lock_guard lock(mutex_);
                 ++requests_;
                 auto refusal = check_auth(request);
                 if (!refusal && !scripted_.empty()) {
                   fault = scripted_.front();
                   scripted_.pop_front();
                 } else if (!refusal) {
                   fault = default_fault_;
                 }
                 if (refusal) {
                   response = std::move(*refusal);
                 } else if (fault.status) {
                   response = refuse(fault.status, "scripted fault");
                   if (fault.retry_after_s >= 0) {
                     response.headers.push_back({"Retry-After", std::to_string(fault.retry_after_s)});
                   }
                 }
               }
               co_await delay(fault);
               if (response.body.empty()) response = query(request);
               co_await writer.send(std::move(response));
             });
  auto started = server_.start(std::move(router));
  if (!started) throw std::runtime_error("xtrace test server: " + started.error().message);
}

XtraceServer::~XtraceServer() {
  server_.stop();
}

http::Response XtraceServer::refuse(int status, const std::string& message) {
  refused_[status] += 1;
  if (status == 400 || status == 401) problems_.push_back(message);
  return http::Response::json_body(status, json{{"message", message}, {"code", status}, {"data", nullptr}});
}

std::optional<http::Response> XtraceServer::check_auth(const http::Request& request) {
  if (request.header("authorization") != "Bearer " + token_) return refuse(401, "missing or wrong bearer token");
  return std::nullopt;
}

// Under mutex_. The fault this request gets (a scripted one, the rate limit, or the default);
// a response when it is refused outright.
std::optional<http::Response> XtraceServer::take_fault(Fault& fault) {
  if (!scripted_.empty()) {
    fault = scripted_.front();
    scripted_.pop_front();
  } else {
    fault = default_fault_;
  }
  if (fault.status) {
    auto response = refuse(fault.status, "scripted fault");
    if (fault.retry_after_s >= 0) response.headers.push_back({"Retry-After", std::to_string(fault.retry_after_s)});
    return response;
  }
  if (rate_limit_ > 0) {
    auto now = std::chrono::steady_clock::now();
    if (now - window_start_ >= std::chrono::seconds(1)) {
      window_start_ = now;
      window_count_ = 0;
    }
    if (++window_count_ > rate_limit_) {
      auto response = refuse(429, "rate limited");
      response.headers.push_back({"Retry-After", std::to_string(rate_retry_after_s_)});
      return response;
    }
  }
  return std::nullopt;
}

awaitable<void> XtraceServer::delay(Fault fault) {
  if (fault.never) fault.delay = std::chrono::hours(1);
  if (fault.delay.count() <= 0) co_return;
  asio::steady_timer timer(server_.io());
  timer.expires_after(fault.delay);
  boost::system::error_code ec;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

http::Response XtraceServer::metrics_batch(const http::Request& request) {
  json body = json::parse(request.body, nullptr, false);
  std::lock_guard lock(mutex_);
  if (!body.is_object() || !body.contains("metrics") || !body["metrics"].is_array()) {
    return refuse(400, "a body without a metrics array");
  }
  std::vector<Point> accepted;
  for (const auto& metric : body["metrics"]) {
    if (!metric.is_object() || !metric.contains("name") || !metric["name"].is_string()) {
      return refuse(400, "a metric without a name");
    }
    std::string name = metric["name"];
    auto known = metric_labels().find(name);
    if (known == metric_labels().end()) return refuse(400, "unknown metric " + name);
    if (!metric.contains("value") || !metric["value"].is_number()) return refuse(400, name + ": value not a number");
    if (!metric.contains("timestamp") || !is_time(metric["timestamp"])) {
      return refuse(400, name + ": timestamp not RFC 3339");
    }
    if (!metric.contains("labels") || !metric["labels"].is_object()) return refuse(400, name + ": no labels");
    Point point{name, {}, metric["value"].get<double>(), metric["timestamp"].get<std::string>()};
    std::set<std::string> names;
    for (const auto& [label, value] : metric["labels"].items()) {
      if (!value.is_string() || value.get<std::string>().empty()) return refuse(400, name + ": label " + label);
      names.insert(label);
      point.labels[label] = value.get<std::string>();
    }
    if (names != known->second) return refuse(400, name + ": wrong label set");
    accepted.push_back(std::move(point));
  }
  for (auto& point : accepted) points_.push_back(std::move(point));
  return http::Response::json_body(200, json{{"message", "Request Successful."}});
}

http::Response XtraceServer::trace_batch(const http::Request& request) {
  json body = json::parse(request.body, nullptr, false);
  std::lock_guard lock(mutex_);
  if (!body.is_object() || !body.contains("trace") || !body["trace"].is_object()) return refuse(400, "no trace");
  const json& trace = body["trace"];
  if (!is_uuid(trace.value("id", json()))) return refuse(400, "trace id not a UUID");
  if (!is_time(trace.value("timestamp", json()))) return refuse(400, "trace timestamp not RFC 3339");
  if (!trace.value("name", json()).is_string()) return refuse(400, "trace without a name");
  if (trace.value("tags", json()) != json::array({"gateway"})) return refuse(400, "trace tags not [\"gateway\"]");
  if (!body.contains("observations") || !body["observations"].is_array()) return refuse(400, "no observations");
  for (const auto& observation : body["observations"]) {
    if (!observation.is_object() || !is_uuid(observation.value("id", json()))) {
      return refuse(400, "observation id not a UUID");
    }
    if (observation.value("traceId", json()) != trace["id"]) return refuse(400, "observation of another trace");
    if (observation.value("type", json()) != "GENERATION") return refuse(400, "observation not a GENERATION");
    for (const char* field : {"startTime", "endTime"}) {
      if (!is_time(observation.value(field, json()))) return refuse(400, std::string(field) + " not RFC 3339");
    }
    for (const char* field : {"promptTokens", "completionTokens", "totalTokens"}) {
      if (!observation.value(field, json()).is_number_integer()) return refuse(400, std::string(field) + " missing");
    }
  }
  trace_ids_[trace["id"].get<std::string>()] += 1;
  traces_.push_back(body);
  return http::Response::json_body(200, json{{"message", "Request Successful."}});
}

http::Response XtraceServer::query(const http::Request& request) {
  std::lock_guard lock(mutex_);
  std::string name = request.query_or("name");
  if (name.empty()) return refuse(400, "query without a name");
  std::string step = request.query_or("step", "1m");
  if (step != "1m" && step != "5m" && step != "1h" && step != "1d") return refuse(400, "invalid step");
  std::string agg = request.query_or("agg", "avg");
  if (agg != "last" && agg != "avg" && agg != "max" && agg != "min" && agg != "sum") return refuse(400, "invalid agg");
  json filter = json::object();
  if (std::string labels = request.query_or("labels"); !labels.empty()) {
    filter = json::parse(labels, nullptr, false);
    if (!filter.is_object()) return refuse(400, "invalid labels json");
  }
  std::string group_by = request.query_or("group_by");
  queries_.push_back(request.target);
  if (auto scripted = answers_.find(name); scripted != answers_.end() && !scripted->second.is_null()) {
    return http::Response::json_body(200, scripted->second);
  }
  // agg=last over everything: the series' last point (by timestamp), grouped as asked.
  std::map<std::string, std::pair<json, std::pair<std::string, double>>> series;  // key -> labels, (time, value)
  std::string latest;
  for (const auto& point : points_) {
    if (point.name != name) continue;
    bool matches = true;
    for (const auto& [label, value] : filter.items()) {
      auto found = point.labels.find(label);
      if (found == point.labels.end() || !value.is_string() || found->second != value.get<std::string>()) {
        matches = false;
      }
    }
    if (!matches) continue;
    json labels = json::object();
    if (group_by.empty()) {
      for (const auto& [label, value] : point.labels) labels[label] = value;
    } else {
      auto found = point.labels.find(group_by);
      labels[group_by] = found == point.labels.end() ? "" : found->second;
    }
    auto& entry = series[labels.dump()];
    entry.first = labels;
    auto at = xtrace::parse_rfc3339(point.timestamp);
    auto known = xtrace::parse_rfc3339(entry.second.first);
    if (!known || (at && *at >= *known)) entry.second = {point.timestamp, point.value};
    auto latest_at = xtrace::parse_rfc3339(latest);
    if (!latest_at || (at && *at > *latest_at)) latest = point.timestamp;
  }
  json data = json::array();
  for (auto& [key, entry] : series) {
    data.push_back({{"labels", entry.first},
                    {"values", json::array({{{"timestamp", entry.second.first}, {"value", entry.second.second}}})}});
  }
  json meta = {{"series_count", data.size()}, {"truncated", false}};
  if (!latest.empty()) meta["latest_ts"] = latest;
  return http::Response::json_body(200, json{{"data", std::move(data)}, {"meta", std::move(meta)}});
}

void XtraceServer::fail_next(int count, Fault fault) {
  std::lock_guard lock(mutex_);
  for (int i = 0; i < count; ++i) scripted_.push_back(fault);
}

void XtraceServer::set_default_fault(Fault fault) {
  std::lock_guard lock(mutex_);
  default_fault_ = fault;
}

void XtraceServer::set_rate_limit(int per_second, int retry_after_s) {
  std::lock_guard lock(mutex_);
  rate_limit_ = per_second;
  rate_retry_after_s_ = retry_after_s;
}

void XtraceServer::set_answer(const std::string& name, json answer) {
  std::lock_guard lock(mutex_);
  answers_[name] = std::move(answer);
}

void XtraceServer::add_point(Point point) {
  std::lock_guard lock(mutex_);
  points_.push_back(std::move(point));
}

std::vector<XtraceServer::Point> XtraceServer::points() const {
  std::lock_guard lock(mutex_);
  return points_;
}

std::vector<json> XtraceServer::traces() const {
  std::lock_guard lock(mutex_);
  return traces_;
}

std::map<std::string, int> XtraceServer::trace_ids() const {
  std::lock_guard lock(mutex_);
  return trace_ids_;
}

std::vector<std::string> XtraceServer::queries() const {
  std::lock_guard lock(mutex_);
  return queries_;
}

int XtraceServer::refused(int status) const {
  std::lock_guard lock(mutex_);
  auto found = refused_.find(status);
  return found == refused_.end() ? 0 : found->second;
}

int XtraceServer::requests() const {
  std::lock_guard lock(mutex_);
  return requests_;
}

std::vector<std::string> XtraceServer::problems() const {
  std::lock_guard lock(mutex_);
  return problems_;
}

}  // namespace nebula::testing
