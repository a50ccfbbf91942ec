// /api/v1/usage: what each key used. Guarded like the rest of /api/v1.
#include "common/clock.h"
#include "common/config.h"
#include "gateway/gateway.h"

namespace nebula::gateway {

namespace {
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

}  // namespace

void Gateway::add_usage_routes(http::Router& router) {
  using http::Request;
  using http::ResponseWriter;
  router.add("GET", "/api/v1/usage", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    auto since = since_day(request.query_or("since"));
    if (!since) {
      co_await writer.send(openai_error(400, since.error().message, "invalid_request_error", "invalid_request"));
      co_return;
    }
    auto records = usage_.query(request.query_or("key"), request.query_or("model"), *since);
    co_await writer.send(http::Response::json_body(200, usage_json(records)));
  });
}

}  // namespace nebula::gateway
