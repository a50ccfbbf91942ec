#pragma once
// Per-key rate limits: requests per minute, tokens per minute, concurrent requests and a monthly
// token budget. Sliding one-minute windows of exact events (not approximations), so a limit trips
// at exactly its threshold. Thread-safe.
#include <chrono>
#include <deque>
#include <functional>
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

// The limit that refused a request. Unavailable: the shared limits could not be checked (Redis
// unreachable) and the fail-closed policy refused.
enum class LimitKind { None, Requests, Tokens, Concurrency, Budget, Unavailable };

// A key's one-minute window as the limiter saw it when deciding, for the x-ratelimit-* headers.
struct WindowUse {
  int64_t requests = 0;  // admitted in the last minute, this request included when admitted
  int64_t tokens = 0;    // charged in the last minute
  // Until the oldest charge leaves the window (and a request, and its tokens, are freed); 0 when
  // the window is empty.
  std::chrono::milliseconds reset{0};
};

struct Admission {
  bool allowed = true;
  LimitKind limit = LimitKind::None;
  std::string message;  // why not
  // How long until the same request would be admitted: retry_after exactly, retry_after_s
  // rounded up. Both 0 when waiting cannot help (a budget spent for the month, a request larger
  // than the whole tokens-per-minute limit).
  std::chrono::milliseconds retry_after{0};
  int retry_after_s = 0;
  uint64_t ticket = 0;  // identifies the admitted request to finish(); 0 = nothing to finish
  WindowUse window;
};

// Per-key limits, checked before a request is relayed and corrected when it ends. The seam
// between one gateway's own counts (MemoryLimiter) and counts shared by every gateway
// (RedisLimiter, gateway/redis_limiter.h). Thread-safe.
class Limiter {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  virtual ~Limiter() = default;

  // Admits one request costing estimated_tokens (prompt estimate + max_tokens) and counts it in
  // flight; month_used_tokens is what the key already spent this month as this gateway knows it.
  virtual Admission admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens,
                          TimePoint now) = 0;
  // admit() without waiting: `done` gets the answer, at once from a limiter that counts in memory,
  // later and on the limiter's own thread from one that asks a store (so `done` must not block,
  // and must finish() an admission it can no longer use). Every call is answered exactly once.
  virtual void admit_async(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint now,
                           std::function<void(Admission)> done) {
    done(admit(key, estimated_tokens, month_used_tokens, now));
  }
  // The request finished: replaces its estimate with the real token count and frees its slot.
  virtual void finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
                      TimePoint now) = 0;

  // OpenAI's x-ratelimit-* headers for the key's window as an admission saw it.
  static http::Headers headers(const api::ApiKey& key, const WindowUse& window);
  // The answer to a refused admission. A rate limit or budget gives the 429 OpenAI sends: error
  // type `requests` or `tokens` (code rate_limit_exceeded), or `insufficient_quota` for a spent
  // budget; retry-after (seconds) and retry-after-ms when waiting helps, else x-should-retry:
  // false so that clients do not retry; and the key's x-ratelimit-* headers, whose reset-tokens
  // (or reset-requests) is the retry-after of a refusal by that limit. Unavailable gives a 503.
  static http::Response refusal(const api::ApiKey& key, const Admission& admission);
};

// Limits counted in this process: exact for one gateway; with several, each enforces the whole
// limit on its own share of the traffic.
class MemoryLimiter final : public Limiter {
 public:
  Admission admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint now) override;
  void finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
              TimePoint now) override;
  // The key's window now.
  WindowUse window(const std::string& key_id, TimePoint now);

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
  WindowUse use_of(const Window& window, TimePoint now) const;
  std::mutex mutex_;
  std::map<std::string, Window> windows_;
  uint64_t next_ticket_ = 1;
};

// The messages of refusals, shared by both limiters so that they read the same.
std::string requests_message(int64_t limit, int64_t used, std::chrono::milliseconds wait);
std::string too_large_message(int64_t limit, int64_t requested);
std::string tokens_message(int64_t limit, int64_t used, int64_t requested, std::chrono::milliseconds wait);
std::string concurrency_message(int64_t limit);
std::string budget_message(int64_t used, int64_t budget, int64_t requested);
// Fills in a refusal: rounds retry_after up to whole seconds for retry-after.
Admission refused(LimitKind limit, std::string message, std::chrono::milliseconds retry_after, WindowUse window);

}  // namespace nebula::gateway
