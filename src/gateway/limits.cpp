#include "gateway/limits.h"

#include <fmt/format.h>

#include "common/json.h"

namespace nebula::gateway {

namespace {
constexpr auto kWindow = std::chrono::seconds(60);

std::chrono::milliseconds until(std::chrono::steady_clock::time_point when, std::chrono::steady_clock::time_point now) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(when - now);
  return std::max(left, std::chrono::milliseconds(1));
}

int whole_seconds(std::chrono::milliseconds wait) {
  return static_cast<int>((wait.count() + 999) / 1000);
}
}  // namespace

std::string format_reset(std::chrono::milliseconds wait) {
  int64_t ms = std::max<int64_t>(0, wait.count());
  if (ms < 1000) return fmt::format("{}ms", ms);
  int64_t minutes = ms / 60'000;
  double seconds = static_cast<double>(ms % 60'000) / 1000.0;
  if (minutes > 0) return fmt::format("{}m{}s", minutes, seconds);
  return fmt::format("{}s", seconds);
}

std::string requests_message(int64_t limit, int64_t used, std::chrono::milliseconds wait) {
  return fmt::format(
      "Rate limit reached for requests per min (RPM): Limit {}, Used {}, Requested 1. Please try "
      "again in {}.",
      limit, used, format_reset(wait));
}

std::string too_large_message(int64_t limit, int64_t requested) {
  return fmt::format(
      "Request too large for tokens per min (TPM): Limit {}, Requested {}. Send fewer tokens (a "
      "shorter prompt or a smaller max_tokens).",
      limit, requested);
}

std::string tokens_message(int64_t limit, int64_t used, int64_t requested, std::chrono::milliseconds wait) {
  return fmt::format(
      "Rate limit reached for tokens per min (TPM): Limit {}, Used {}, Requested {}. Please try "
      "again in {}.",
      limit, used, requested, format_reset(wait));
}

std::string concurrency_message(int64_t limit) {
  return fmt::format("Too many concurrent requests: limit {}. Please try again in 1s.", limit);
}

std::string budget_message(int64_t used, int64_t budget, int64_t requested) {
  return fmt::format("You exceeded your current quota: {} of this month's token budget of {} used, {} requested.", used,
                     budget, requested);
}

Admission refused(LimitKind limit, std::string message, std::chrono::milliseconds retry_after, WindowUse window) {
  Admission result;
  result.allowed = false;
  result.limit = limit;
  result.message = std::move(message);
  result.retry_after = retry_after;
  result.retry_after_s = whole_seconds(retry_after);
  result.window = window;
  return result;
}

void MemoryLimiter::expire(Window& window, TimePoint now) {
  while (!window.requests.empty() && window.requests.front().time + kWindow <= now) {
    window.tokens -= window.requests.front().tokens;
    window.requests.pop_front();
  }
}

WindowUse MemoryLimiter::use_of(const Window& window, TimePoint now) const {
  WindowUse use;
  use.requests = static_cast<int64_t>(window.requests.size());
  use.tokens = window.tokens;
  if (!window.requests.empty()) use.reset = until(window.requests.front().time + kWindow, now);
  return use;
}

WindowUse MemoryLimiter::window(const std::string& key_id, TimePoint now) {
  std::lock_guard lock(mutex_);
  Window& window = windows_[key_id];
  expire(window, now);
  return use_of(window, now);
}

Admission MemoryLimiter::admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens,
                               TimePoint now) {
  std::lock_guard lock(mutex_);
  Window& window = windows_[key.metadata.name];
  expire(window, now);
  WindowUse use = use_of(window, now);
  if (key.rpm > 0 && use.requests >= key.rpm) {
    auto wait = until(window.requests.front().time + kWindow, now);
    return refused(LimitKind::Requests, requests_message(key.rpm, use.requests, wait), wait, use);
  }
  if (key.tpm > 0 && estimated_tokens > key.tpm) {
    return refused(LimitKind::Tokens, too_large_message(key.tpm, estimated_tokens), std::chrono::milliseconds(0), use);
  }
  if (key.tpm > 0 && window.tokens + estimated_tokens > key.tpm) {
    // The request fits once enough of the oldest charges have left the window.
    int64_t excess = window.tokens + estimated_tokens - key.tpm;
    TimePoint fits = now + kWindow;
    for (const auto& charge : window.requests) {
      excess -= charge.tokens;
      if (excess <= 0) {
        fits = charge.time + kWindow;
        break;
      }
    }
    auto wait = until(fits, now);
    return refused(LimitKind::Tokens, tokens_message(key.tpm, window.tokens, estimated_tokens, wait), wait, use);
  }
  if (key.max_concurrency > 0 && window.in_flight >= key.max_concurrency) {
    return refused(LimitKind::Concurrency, concurrency_message(key.max_concurrency), std::chrono::seconds(1), use);
  }
  if (key.budget_tokens > 0 && month_used_tokens + window.in_flight_tokens + estimated_tokens > key.budget_tokens) {
    return refused(LimitKind::Budget,
                   budget_message(month_used_tokens + window.in_flight_tokens, key.budget_tokens, estimated_tokens),
                   std::chrono::milliseconds(0), use);
  }
  Admission result;
  result.ticket = next_ticket_++;
  window.requests.push_back({now, estimated_tokens, result.ticket});
  window.tokens += estimated_tokens;
  window.in_flight += 1;
  window.in_flight_tokens += estimated_tokens;
  result.window = use_of(window, now);
  return result;
}

void MemoryLimiter::finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
                           TimePoint now) {
  actual_tokens = std::max<int64_t>(0, actual_tokens);  // an engine's count: never a refund
  std::lock_guard lock(mutex_);
  Window& window = windows_[key_id];
  window.in_flight -= 1;
  window.in_flight_tokens -= estimated_tokens;
  // Replace the up-front estimate with what the engine reported, if still in the window.
  for (auto it = window.requests.rbegin(); it != window.requests.rend(); ++it) {
    if (it->ticket == ticket) {
      window.tokens += actual_tokens - it->tokens;
      it->tokens = actual_tokens;
      break;
    }
  }
  expire(window, now);
}

http::Headers Limiter::headers(const api::ApiKey& key, const WindowUse& window) {
  http::Headers headers;
  headers.reserve(6);
  std::string reset = format_reset(window.reset);
  if (key.rpm > 0) {
    headers.push_back({"x-ratelimit-limit-requests", std::to_string(key.rpm)});
    headers.push_back(
        {"x-ratelimit-remaining-requests", std::to_string(std::max<int64_t>(0, key.rpm - window.requests))});
    headers.push_back({"x-ratelimit-reset-requests", reset});
  }
  if (key.tpm > 0) {
    headers.push_back({"x-ratelimit-limit-tokens", std::to_string(key.tpm)});
    headers.push_back({"x-ratelimit-remaining-tokens", std::to_string(std::max<int64_t>(0, key.tpm - window.tokens))});
    headers.push_back({"x-ratelimit-reset-tokens", reset});
  }
  return headers;
}

http::Response Limiter::refusal(const api::ApiKey& key, const Admission& admission) {
  if (admission.limit == LimitKind::Unavailable) {
    http::Response response = http::Response::json_body(503, json{{"error",
                                                                   {{"message", admission.message},
                                                                    {"type", "service_unavailable"},
                                                                    {"param", nullptr},
                                                                    {"code", "limits_unavailable"}}}});
    response.headers.push_back({"retry-after", "1"});
    response.headers.push_back({"retry-after-ms", "1000"});
    return response;
  }
  const char* type = "requests";
  const char* code = "rate_limit_exceeded";
  if (admission.limit == LimitKind::Tokens) type = "tokens";
  if (admission.limit == LimitKind::Budget) type = code = "insufficient_quota";
  http::Response response = http::Response::json_body(
      429, json{{"error", {{"message", admission.message}, {"type", type}, {"param", nullptr}, {"code", code}}}});
  for (auto& header : headers(key, admission.window)) {
    // The reset of the limit that refused agrees with retry-after.
    bool refusing_limit = (admission.limit == LimitKind::Tokens && header.name == "x-ratelimit-reset-tokens") ||
                          (admission.limit == LimitKind::Requests && header.name == "x-ratelimit-reset-requests");
    if (refusing_limit && admission.retry_after.count() > 0) header.value = format_reset(admission.retry_after);
    response.headers.push_back(std::move(header));
  }
  if (admission.retry_after.count() > 0) {
    response.headers.push_back({"retry-after", std::to_string(admission.retry_after_s)});
    response.headers.push_back({"retry-after-ms", std::to_string(admission.retry_after.count())});
  } else {
    response.headers.push_back({"x-should-retry", "false"});
  }
  return response;
}

}  // namespace nebula::gateway
