#include "gateway/limits.h"

#include <fmt/format.h>

namespace nebula::gateway {

namespace {
constexpr auto kWindow = std::chrono::seconds(60);

int seconds_until(Limiter::TimePoint when, Limiter::TimePoint now) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(when - now).count();
  return static_cast<int>(std::max<int64_t>(1, (left + 999) / 1000));
}
}  // namespace

void Limiter::expire(Window& window, TimePoint now) {
  while (!window.requests.empty() && window.requests.front().time + kWindow <= now) {
    window.tokens -= window.requests.front().tokens;
    window.requests.pop_front();
  }
}

Admission Limiter::admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint now) {
  std::lock_guard lock(mutex_);
  Window& window = windows_[key.metadata.name];
  expire(window, now);
  Admission result;
  auto refuse = [&](std::string message, int retry_after) {
    result.allowed = false;
    result.message = std::move(message);
    result.retry_after_s = retry_after;
    return result;
  };
  if (key.rpm > 0 && static_cast<int64_t>(window.requests.size()) >= key.rpm) {
    return refuse(fmt::format("Rate limit reached for requests: limit {} per minute.", key.rpm),
                  seconds_until(window.requests.front().time + kWindow, now));
  }
  if (key.tpm > 0 && window.tokens + estimated_tokens > key.tpm) {
    int retry = window.requests.empty() ? 60 : seconds_until(window.requests.front().time + kWindow, now);
    return refuse(fmt::format("Rate limit reached for tokens: limit {} per minute, used {}, requested {}.", key.tpm,
                              window.tokens, estimated_tokens),
                  retry);
  }
  if (key.max_concurrency > 0 && window.in_flight >= key.max_concurrency) {
    return refuse(fmt::format("Too many concurrent requests: limit {}.", key.max_concurrency), 1);
  }
  if (key.budget_tokens > 0 && month_used_tokens + window.in_flight_tokens + estimated_tokens > key.budget_tokens) {
    return refuse(fmt::format("Monthly token budget exhausted: {} of {} used.", month_used_tokens, key.budget_tokens),
                  3600);
  }
  result.ticket = next_ticket_++;
  window.requests.push_back({now, estimated_tokens, result.ticket});
  window.tokens += estimated_tokens;
  window.in_flight += 1;
  window.in_flight_tokens += estimated_tokens;
  return result;
}

void Limiter::finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
                     TimePoint now) {
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

http::Headers Limiter::headers(const api::ApiKey& key, TimePoint now) {
  std::lock_guard lock(mutex_);
  Window& window = windows_[key.metadata.name];
  expire(window, now);
  http::Headers headers;
  headers.reserve(6);
  int reset_s = window.requests.empty() ? 0 : seconds_until(window.requests.front().time + kWindow, now);
  std::string reset = std::to_string(reset_s) + "s";
  if (key.rpm > 0) {
    headers.push_back({"x-ratelimit-limit-requests", std::to_string(key.rpm)});
    headers.push_back({"x-ratelimit-remaining-requests",
                       std::to_string(std::max<int64_t>(0, key.rpm - static_cast<int64_t>(window.requests.size())))});
    headers.push_back({"x-ratelimit-reset-requests", reset});
  }
  if (key.tpm > 0) {
    headers.push_back({"x-ratelimit-limit-tokens", std::to_string(key.tpm)});
    headers.push_back({"x-ratelimit-remaining-tokens", std::to_string(std::max<int64_t>(0, key.tpm - window.tokens))});
    headers.push_back({"x-ratelimit-reset-tokens", reset});
  }
  return headers;
}

}  // namespace nebula::gateway
