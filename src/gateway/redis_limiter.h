#pragma once
// Per-key limits shared by every gateway through one Redis (`--limits redis://HOST:PORT`).
//
// Admissions and finishes are Lua scripts run atomically by Redis (EVALSHA; loaded once, loaded
// again when Redis answers NOSCRIPT): an admission drops the charges older than a minute, checks
// requests per minute, tokens per minute, concurrency and the monthly budget in that order, and
// records the request. The windows are exact: a sorted set of charges per key scored by their
// time (the admissions of one script run, which share its time, as one entry). The requests of a
// key with a concurrency limit or a budget are held under this gateway's lease on the key (a
// second sorted set scored by expiry) that it renews while they run, so the slots of a gateway
// that died come back when its lease runs out. Times are Redis's own clock (TIME), one clock for
// every gateway, unless a test injects one. The script in redis_limiter.cpp says how.
//
// Redis keys per API key K: nebula:limits:{K}:v2:window, :v2:flight, :v2:state (a hash: seq,
// count, tokens, running, flight, refresh and each lease's share), :month (a hash: "YYYY-MM" -> tokens spent, kept for
// keys with a budget). The braces keep one key's data in one Redis Cluster slot.
//
// Threading: admit_async() and finish() never wait on Redis: they queue a command for the
// limiter's thread, which sends everything queued as one pipelined batch on its connection, reads
// the answers and calls back (so the calls of many requests share one round trip, and Redis reads
// them with one read). Within a batch, every admission and finish of one API key goes as one
// script run, in queue order, with the answers of running them one after another: the more
// requests a key has at once, the less Redis spends on each. A command still queued `timeout`
// after it was made fails without being sent; a batch fails when an answer takes longer than
// `timeout`. admit() is admit_async() waited on, for callers that may block. finish() talks to
// Redis only when there is something to free or correct: nothing for a key with only a
// requests-per-minute limit, a token correction only when the real count differs from the
// estimate; it is held (up to `finish_hold`) until the key's next admission, which takes it to
// Redis first, in its own script run. Lease renewal has a thread and a connection of its own. While Redis is
// unreachable (a failed command marks it down for `retry_interval`, so later requests do not wait on it again), the
// fail policies decide: open admits without the limit, closed refuses with 503.
//
// A thread rather than hiredis's asynchronous API on the gateway's I/O loop: the gateway hands
// the limiter no io_context (Limiter::admit_async() takes a callback), and the blocking API with
// pipelining batches the calls of concurrent requests by itself and keeps reply parsing off the
// I/O thread.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "gateway/limits.h"
#include "gateway/redis_connection.h"

namespace nebula::gateway {

enum class FailPolicy { Open, Closed };
Result<FailPolicy> parse_fail_policy(std::string_view text);

struct RedisLimiterOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string user;      // AUTH (redis_connection.h)
  std::string password;  // "" = no AUTH
  int db = 0;
  // Bounds connecting and every command: a request waits at most this long on Redis.
  std::chrono::milliseconds timeout{100};
  // How long a request's concurrency slot outlives a gateway that stopped renewing it.
  std::chrono::milliseconds lease{15'000};
  // How often the leases of requests in flight are renewed; 0 = a third of the lease.
  std::chrono::milliseconds renew_interval{0};
  // After a failure, Redis is not tried again for this long.
  std::chrono::milliseconds retry_interval{1'000};
  // While Redis is unreachable: requests per minute, tokens per minute and concurrency (open by
  // default: better to serve unlimited for a while than to refuse everyone) ...
  FailPolicy rate_policy = FailPolicy::Open;
  // ... and the monthly budget (closed by default: tokens spent past a budget cannot be taken back).
  FailPolicy budget_policy = FailPolicy::Closed;
  // How long a finish may wait for the key's next admission, to go to Redis in its script run
  // (no run of its own, no wake-up of the limiter's thread); 0 = sent with the next batch. Other
  // gateways see a freed slot or a corrected charge up to this much later; this one's own next
  // admission of the key always sees it.
  std::chrono::milliseconds finish_hold{5};
  // The time in microseconds the scripts use; null = Redis's TIME. A test's seam.
  std::function<int64_t()> clock_us;
  // The month ("2026-12") a budget is counted in; null = the current UTC month. A test's seam.
  std::function<std::string()> month;
  std::string prefix = "nebula:limits:";
};

// redis://HOST[:PORT] (port 6379 when absent) into options.host and options.port.
Status parse_redis_url(std::string_view url, RedisLimiterOptions& options);

class RedisLimiter final : public Limiter {
 public:
  explicit RedisLimiter(RedisLimiterOptions options);
  ~RedisLimiter() override;
  RedisLimiter(const RedisLimiter&) = delete;
  RedisLimiter& operator=(const RedisLimiter&) = delete;

  // Connects and loads the scripts; an error when Redis cannot be reached. Starts lease renewal.
  Status start();
  void stop();

  Admission admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint now) override;
  void admit_async(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint now,
                   std::function<void(Admission)> done) override;
  void finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
              TimePoint now) override;
  // Extends the lease of every request in flight here (the renewal thread does it every lease/3).
  Status renew_leases();
  // Returns once Redis has answered every call made here before (finish() returns before Redis
  // has applied it: later calls on this limiter are sent after it, another gateway may see it up
  // to a round trip later).
  void flush();

  // Figures for /metrics and tests.
  uint64_t failures() const { return failures_; }
  // Admitted requests not finished yet.
  size_t in_flight() const;
  // Round trips to Redis and the script runs they carried (one per API key per batch, holding
  // that key's admissions and finishes).
  uint64_t batches() const { return batches_; }
  uint64_t commands() const { return commands_; }

 private:
  // What finish() must undo for an admitted request, decided by the key's limits at admission.
  struct InFlight {
    std::string key_id;
    std::string lease;        // "<holder>:<gen>": the lease it holds a slot of, when leased
    std::string gen;          // its generation, for the finish
    std::string admitted_us;  // the admission's time: where a token correction goes
    bool leased = false;      // holds a concurrency slot (and its estimate in flight, for the budget)
    bool tokens = false;      // charged to a tokens-per-minute window
    bool budget = false;      // counted in the month
  };
  // An admission or finish for the limiter's thread. on_answer gets an admission's seven numbers
  // from the batch script, null on failure (Redis down, timed out, or the command waited longer
  // than `timeout`); a finish's and a marker's get null.
  struct Command {
    enum class Kind { Admit, Finish, Marker } kind = Kind::Marker;  // Marker: answered once everything before it is
    std::string key_id;
    std::vector<std::string> args;  // the operation's arguments in the batch script
    std::function<void(const int64_t*)> on_answer;
    std::chrono::steady_clock::time_point queued;
  };
  void enqueue(Command command);
  // Moves the held finishes queued before `queued_before` (all of them: nullopt) to the queue.
  // Under queue_mutex_.
  void release_held(std::optional<std::chrono::steady_clock::time_point> queued_before);
  void run_loop();
  // Sends `batch` pipelined, one script run per key, and hands each command its answer.
  void run_batch(std::vector<Command>& batch);
  std::vector<std::string> keys_of(const std::string& key_id) const;
  std::string now_arg() const;
  std::string month_now() const;
  Admission unavailable(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens);
  void renew_loop();

  RedisLimiterOptions options_;
  std::unique_ptr<RedisConnection> main_;     // admissions and finishes: the limiter thread's only
  std::unique_ptr<RedisConnection> renewal_;  // the renewal thread's
  const std::string holder_;                  // this limiter's id in Redis: its leases are "<holder>:<gen>"
  // The batch script's first arguments: lease_us, window_us, ttl_ms, month_ttl_s, holder (each
  // run then adds its key's lease gen).
  const std::vector<std::string> run_header_;
  // Per key, the generation of this limiter's lease as the last admission answered; the limiter
  // thread's only.
  std::unordered_map<std::string, int64_t> lease_gen_;
  mutable std::mutex flight_mutex_;
  std::map<std::pair<std::string, uint64_t>, InFlight> in_flight_;  // (key, ticket)
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> commands_{0};
  std::mutex queue_mutex_;
  std::condition_variable queue_wake_;
  std::vector<Command> queue_;  // guarded by queue_mutex_
  // Finishes waiting for their key's next admission, in queue order per key; guarded by queue_mutex_.
  std::unordered_map<std::string, std::vector<Command>> held_;
  size_t held_count_ = 0;      // guarded by queue_mutex_
  bool queue_closed_ = false;  // guarded by queue_mutex_: stop() answered what was left
  std::thread runner_;
  std::mutex stop_mutex_;
  std::condition_variable stop_wake_;
  bool stopping_ = false;
  std::thread renewer_;
};

}  // namespace nebula::gateway
