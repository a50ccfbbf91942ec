#pragma once
// Per-key rate limits: requests per minute, tokens per minute, concurrent requests and a monthly
// token budget. Sliding one-minute windows of exact events (not approximations), so a limit trips
// at exactly its threshold. Thread-safe.
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "api/keys.h"
#include "http/http.h"

namespace nebula::gateway {
// OpenAI's way of writing x-ratelimit-reset-*: "20ms", "1.5s", "6m0s".
std::string format_reset(std::chrono::milliseconds wait);
}  // namespace nebula::gateway

namespace nebula::gateway {

// The limit that refused a request.
enum class LimitKind { None, Requests, Tokens, Concurrency, Budget };

struct Admission {
  bool allowed = true;
  LimitKind limit = LimitKind::None;
  std::string message;  // why not
  // How long until the same request would be admitted: retry_after exactly, retry_after_s
  // rounded up. Both 0 when waiting cannot help (a budget spent for the month, a request larger
  // than the whole tokens-per-minute limit).
  std::chrono::milliseconds retry_after{0};
  int retry_after_s = 0;
  uint64_t ticket = 0;  // identifies the admitted request to finish()
};

class Limiter {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  // Admits one request costing estimated_tokens (prompt estimate + max_tokens) and counts it in
  // flight; month_used_tokens is what the key already spent this month.
  Admission admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint now);
  // The request finished: replaces its estimate with the real token count and frees its slot.
  void finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
              TimePoint now);
  // OpenAI's x-ratelimit-* headers for the key's current state.
  http::Headers headers(const api::ApiKey& key, TimePoint now);
  // The 429 for a refused admission, as OpenAI sends it: error type `requests` or `tokens` (code
  // rate_limit_exceeded), or `insufficient_quota` for a spent budget; retry-after (seconds) and
  // retry-after-ms when waiting helps, else x-should-retry: false so that clients do not retry;
  // and the key's x-ratelimit-* headers, whose reset-tokens (or reset-requests) is the retry-after
  // of a refusal by that limit.
  http::Response refusal(const api::ApiKey& key, const Admission& admission, TimePoint now);

 private:
  struct Charge {
    TimePoint time;
    int64_t tokens = 0;
    uint64_t ticket = 0;
  };
  struct Window {
    std::deque<Charge> requests;  // admitted in the last minute, oldest first
    int64_t tokens = 0;           // sum over `requests`
    int64_t in_flight = 0;
    int64_t in_flight_tokens = 0;  // estimates of requests not finished, for the budget
  };
  void expire(Window& window, TimePoint now);
  std::mutex mutex_;
  std::map<std::string, Window> windows_;
  uint64_t next_ticket_ = 1;
};

}  // namespace nebula::gateway
