#include "gateway/redis_limiter.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>

#include <charconv>
#include <ctime>

namespace nebula::gateway {

namespace {

constexpr int64_t kWindowUs = 60'000'000;

// KEYS: window, flight, state, month. ARGV: now_us ("" = Redis TIME), rpm, tpm, max_concurrency,
// budget, estimate, month_used (as the gateway knows it), month ("2026-12"), lease_us, window_us,
// ttl_ms. Returns {verdict, ticket, window requests, window tokens, reset_us, retry_us, detail}:
// verdict 0 admitted, 1 requests, 2 tokens (retry 0: larger than the limit), 3 concurrency,
// 4 budget (detail: tokens used and in flight).
constexpr const char* kAdmitScript = R"lua(
local rpm, tpm, conc, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est, lease, window, ttl = tonumber(ARGV[6]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local function tokens_of(member) return tonumber(string.match(member, ':(%-?%d+)$')) end
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  local freed = 0
  for _, m in ipairs(old) do freed = freed + tokens_of(m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('HINCRBY', KEYS[3], 'tokens', -freed)
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #lapsed > 0 then
  local freed = 0
  for _, m in ipairs(lapsed) do freed = freed + tokens_of(m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('HINCRBY', KEYS[3], 'flight', -freed)
end
local count = redis.call('ZCARD', KEYS[1])
local tokens = tonumber(redis.call('HGET', KEYS[3], 'tokens') or '0')
local reset = 0
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #oldest > 0 then reset = tonumber(oldest[2]) + window - now end
if rpm > 0 and count >= rpm then return {1, 0, count, tokens, reset, reset, 0} end
if tpm > 0 and est > tpm then return {2, 0, count, tokens, reset, 0, 0} end
if tpm > 0 and tokens + est > tpm then
  local excess = tokens + est - tpm
  local wait = window
  local charges = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #charges, 2 do
    excess = excess - tokens_of(charges[i])
    if excess <= 0 then
      wait = tonumber(charges[i + 1]) + window - now
      break
    end
  end
  return {2, 0, count, tokens, reset, wait, 0}
end
local running = redis.call('ZCARD', KEYS[2])
if conc > 0 and running >= conc then return {3, 0, count, tokens, reset, 1000000, running} end
local flight = tonumber(redis.call('HGET', KEYS[3], 'flight') or '0')
local spent = math.max(tonumber(redis.call('HGET', KEYS[4], ARGV[8]) or '0'), tonumber(ARGV[7]))
if budget > 0 and spent + flight + est > budget then return {4, 0, count, tokens, reset, 0, spent + flight} end
local ticket = redis.call('HINCRBY', KEYS[3], 'seq', 1)
local member = ticket .. ':' .. ARGV[6]
redis.call('ZADD', KEYS[1], now, member)
redis.call('ZADD', KEYS[2], now + lease, member)
redis.call('HINCRBY', KEYS[3], 'tokens', est)
redis.call('HINCRBY', KEYS[3], 'flight', est)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
if reset == 0 then reset = window end
return {0, ticket, count + 1, tokens + est, reset, 0, 0}
)lua";

// KEYS: window, flight, state, month. ARGV: ticket, estimate, actual, month, month_ttl_s.
// The request's slot and in-flight tokens are freed (unless its lease already lapsed), its
// charge in the window becomes what the engine reported, and the month counts it.
constexpr const char* kFinishScript = R"lua(
local est, actual = tonumber(ARGV[2]), tonumber(ARGV[3])
local member = ARGV[1] .. ':' .. ARGV[2]
if redis.call('ZREM', KEYS[2], member) == 1 then redis.call('HINCRBY', KEYS[3], 'flight', -est) end
local score = redis.call('ZSCORE', KEYS[1], member)
if score and actual ~= est then
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. actual)
  redis.call('HINCRBY', KEYS[3], 'tokens', actual - est)
end
redis.call('HINCRBY', KEYS[4], ARGV[4], actual)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
return 1
)lua";

// KEYS: flight, window, state. ARGV: now_us ("" = TIME), lease_us, ttl_ms, members...
// Extends the leases of members still held (a lapsed one stays lapsed: its slot went back).
constexpr const char* kRenewScript = R"lua(
local expiry = now + tonumber(ARGV[2])
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[3])) end
return 1
)lua";

// Opens the scripts that take ARGV[1] = now_us: `now`, in microseconds, from ARGV[1] or, when it
// is "", from Redis's own clock.
constexpr const char* kNowPrologue = R"lua(
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end)lua";
const std::string kScripts[] = {std::string(kNowPrologue) + kAdmitScript, kFinishScript,
                                std::string(kNowPrologue) + kRenewScript};
enum Script { kAdmit = 0, kFinish = 1, kRenew = 2 };

constexpr int64_t kMonthTtlS = 40 * 86400;

timeval to_timeval(std::chrono::milliseconds duration) {
  timeval value{};
  value.tv_sec = static_cast<time_t>(duration.count() / 1000);
  value.tv_usec = static_cast<suseconds_t>((duration.count() % 1000) * 1000);
  return value;
}

void free_reply(redisReply* reply) {
  if (reply) freeReplyObject(reply);
}

using ReplyPtr = std::unique_ptr<redisReply, void (*)(redisReply*)>;

int64_t integer_at(const redisReply* reply, size_t index) {
  if (!reply || reply->type != REDIS_REPLY_ARRAY || index >= reply->elements) return 0;
  const redisReply* element = reply->element[index];
  return element->type == REDIS_REPLY_INTEGER ? element->integer : 0;
}

std::chrono::milliseconds ms_of_us(int64_t us) {
  // Rounded up: a wait of 0.4 ms is a wait, not none.
  return std::chrono::milliseconds(us <= 0 ? 0 : (us + 999) / 1000);
}

}  // namespace

Result<FailPolicy> parse_fail_policy(std::string_view text) {
  if (text == "open") return FailPolicy::Open;
  if (text == "closed") return FailPolicy::Closed;
  return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' is not a fail policy (open or closed)", text));
}

Status parse_redis_url(std::string_view url, RedisLimiterOptions& options) {
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' is not a redis://HOST[:PORT] URL", url));
  }
  std::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string_view host = rest;
  int port = 6379;
  if (auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    host = rest.substr(0, colon);
    std::string_view digits = rest.substr(colon + 1);
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (error != std::errc() || end != digits.data() + digits.size() || port < 1 || port > 65535) {
      return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid port", url));
    }
  }
  if (host.empty() || host.find_first_of("/@?# ") != std::string_view::npos) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid host", url));
  }
  options.host = std::string(host);
  options.port = port;
  return {};
}

// One Redis connection and the hashes of the scripts loaded on its server. Reconnects on demand,
// at most once per retry_interval.
struct RedisLimiter::Connection {
  const RedisLimiterOptions& options;
  redisContext* context = nullptr;
  std::string shas[3];
  std::chrono::steady_clock::time_point next_attempt{};

  explicit Connection(const RedisLimiterOptions& options) : options(options) {}
  ~Connection() { drop(); }

  void drop() {
    if (context) redisFree(context);
    context = nullptr;
  }

  // A live connection, or false while Redis is considered down.
  bool ready() {
    if (context) return true;
    auto now = std::chrono::steady_clock::now();
    if (now < next_attempt) return false;
    next_attempt = now + options.retry_interval;
    timeval timeout = to_timeval(options.timeout);
    context = redisConnectWithTimeout(options.host.c_str(), options.port, timeout);
    if (!context || context->err) {
      if (context) spdlog::debug("limits: redis {}:{}: {}", options.host, options.port, context->errstr);
      drop();
      return false;
    }
    redisSetTimeout(context, timeout);
    for (int script = 0; script < 3; ++script) {
      if (!load(script)) {
        drop();
        return false;
      }
    }
    return true;
  }

  bool load(int script) {
    ReplyPtr reply(static_cast<redisReply*>(redisCommand(context, "SCRIPT LOAD %s", kScripts[script].c_str())),
                   free_reply);
    if (!reply || reply->type != REDIS_REPLY_STRING) return false;
    shas[script].assign(reply->str, reply->len);
    return true;
  }
};

RedisLimiter::RedisLimiter(RedisLimiterOptions options)
    : options_(std::move(options)),
      main_(std::make_unique<Connection>(options_)),
      renewal_(std::make_unique<Connection>(options_)) {}

RedisLimiter::~RedisLimiter() {
  stop();
}

Status RedisLimiter::start() {
  {
    std::lock_guard lock(main_mutex_);
    if (!main_->ready()) {
      return make_error(ErrorCode::Unavailable,
                        fmt::format("cannot reach redis at {}:{} for the limits", options_.host, options_.port));
    }
  }
  renewer_ = std::thread([this] { renew_loop(); });
  return {};
}

void RedisLimiter::stop() {
  {
    std::lock_guard lock(stop_mutex_);
    stopping_ = true;
  }
  stop_wake_.notify_all();
  if (renewer_.joinable()) renewer_.join();
}

size_t RedisLimiter::in_flight() const {
  std::lock_guard lock(flight_mutex_);
  return in_flight_.size();
}

std::vector<std::string> RedisLimiter::keys_of(const std::string& key_id) const {
  std::string base = options_.prefix + "{" + key_id + "}:";
  return {base + "window", base + "flight", base + "state", base + "month"};
}

std::string RedisLimiter::now_arg() const {
  return options_.clock_us ? std::to_string(options_.clock_us()) : std::string();
}

std::string RedisLimiter::month_now() const {
  if (options_.month) return options_.month();
  std::time_t seconds = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  return fmt::format("{:04d}-{:02d}", utc.tm_year + 1900, utc.tm_mon + 1);
}

ReplyPtr RedisLimiter::run_script(Connection& connection, int script, const std::vector<std::string>& keys,
                                  const std::vector<std::string>& args) {
  ReplyPtr none(nullptr, free_reply);
  if (!connection.ready()) return none;
  std::string key_count = std::to_string(keys.size());
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  argv.reserve(3 + keys.size() + args.size());
  lengths.reserve(argv.capacity());
  auto push = [&](const std::string& text) {
    argv.push_back(text.data());
    lengths.push_back(text.size());
  };
  static const std::string kEvalsha = "EVALSHA";
  push(kEvalsha);
  push(connection.shas[script]);
  push(key_count);
  for (const auto& key : keys) push(key);
  for (const auto& arg : args) push(arg);
  for (int attempt = 0; attempt < 2; ++attempt) {
    ReplyPtr reply(static_cast<redisReply*>(redisCommandArgv(connection.context, static_cast<int>(argv.size()),
                                                             argv.data(), lengths.data())),
                   free_reply);
    if (!reply) {
      // Timed out or the connection broke: its state is unknown, start afresh.
      spdlog::warn("limits: redis {}:{}: {}", options_.host, options_.port,
                   connection.context->errstr[0] ? connection.context->errstr : "no reply");
      connection.drop();
      failures_ += 1;
      return none;
    }
    if (reply->type == REDIS_REPLY_ERROR && std::string_view(reply->str, reply->len).substr(0, 8) == "NOSCRIPT") {
      // Redis restarted or SCRIPT FLUSH: load it again and retry once.
      if (!connection.load(script)) break;
      argv[1] = connection.shas[script].data();
      lengths[1] = connection.shas[script].size();
      continue;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
      spdlog::warn("limits: redis script failed: {}", std::string_view(reply->str, reply->len));
      failures_ += 1;
      return none;
    }
    return reply;
  }
  connection.drop();
  failures_ += 1;
  return none;
}

Admission RedisLimiter::unavailable(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens) {
  bool rate_limited = key.rpm > 0 || key.tpm > 0 || key.max_concurrency > 0;
  if (rate_limited && options_.rate_policy == FailPolicy::Closed) {
    return refused(LimitKind::Unavailable,
                   "The rate limits of this key cannot be checked right now (the limits store is unreachable). "
                   "Please try again in 1s.",
                   std::chrono::seconds(1), {});
  }
  if (key.budget_tokens > 0) {
    if (options_.budget_policy == FailPolicy::Closed) {
      return refused(LimitKind::Unavailable,
                     "The token budget of this key cannot be checked right now (the limits store is unreachable). "
                     "Please try again in 1s.",
                     std::chrono::seconds(1), {});
    }
    // Open: what this gateway knows of the month still holds.
    if (month_used_tokens + estimated_tokens > key.budget_tokens) {
      return refused(LimitKind::Budget, budget_message(month_used_tokens, key.budget_tokens, estimated_tokens),
                     std::chrono::milliseconds(0), {});
    }
  }
  return Admission{};  // ticket 0: nothing to finish
}

Admission RedisLimiter::admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint) {
  if (key.rpm <= 0 && key.tpm <= 0 && key.max_concurrency <= 0 && key.budget_tokens <= 0) return Admission{};
  const std::string& key_id = key.metadata.name;
  ReplyPtr reply(nullptr, free_reply);
  {
    std::lock_guard lock(main_mutex_);
    reply = run_script(
        *main_, kAdmit, keys_of(key_id),
        {now_arg(), std::to_string(std::max<int64_t>(0, key.rpm)), std::to_string(std::max<int64_t>(0, key.tpm)),
         std::to_string(std::max<int64_t>(0, key.max_concurrency)),
         std::to_string(std::max<int64_t>(0, key.budget_tokens)), std::to_string(estimated_tokens),
         std::to_string(month_used_tokens), month_now(),
         std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count()),
         std::to_string(kWindowUs), std::to_string(std::max<int64_t>(kWindowUs / 1000, options_.lease.count()) * 2)});
  }
  if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 7) {
    return unavailable(key, estimated_tokens, month_used_tokens);
  }
  int64_t verdict = integer_at(reply.get(), 0);
  WindowUse use{integer_at(reply.get(), 2), integer_at(reply.get(), 3), ms_of_us(integer_at(reply.get(), 4))};
  auto retry = ms_of_us(integer_at(reply.get(), 5));
  int64_t detail = integer_at(reply.get(), 6);
  switch (verdict) {
    case 0: {
      Admission admitted;
      admitted.ticket = static_cast<uint64_t>(integer_at(reply.get(), 1));
      admitted.window = use;
      std::lock_guard lock(flight_mutex_);
      in_flight_[{key_id, admitted.ticket}] = {key_id, fmt::format("{}:{}", admitted.ticket, estimated_tokens)};
      return admitted;
    }
    case 1: return refused(LimitKind::Requests, requests_message(key.rpm, use.requests, retry), retry, use);
    case 2:
      if (retry.count() == 0)
        return refused(LimitKind::Tokens, too_large_message(key.tpm, estimated_tokens), retry, use);
      return refused(LimitKind::Tokens, tokens_message(key.tpm, use.tokens, estimated_tokens, retry), retry, use);
    case 3: return refused(LimitKind::Concurrency, concurrency_message(key.max_concurrency), retry, use);
    default:
      return refused(LimitKind::Budget, budget_message(detail, key.budget_tokens, estimated_tokens),
                     std::chrono::milliseconds(0), use);
  }
}

void RedisLimiter::finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
                          TimePoint) {
  if (ticket == 0) return;  // admitted without Redis
  {
    std::lock_guard lock(flight_mutex_);
    in_flight_.erase({key_id, ticket});
  }
  std::lock_guard lock(main_mutex_);
  // A failure here leaves the slot to its lease and the window to its estimate.
  run_script(*main_, kFinish, keys_of(key_id),
             {std::to_string(ticket), std::to_string(estimated_tokens), std::to_string(actual_tokens), month_now(),
              std::to_string(kMonthTtlS)});
}

Status RedisLimiter::renew_leases() {
  std::map<std::string, std::vector<std::string>> members;  // key -> members held here
  {
    std::lock_guard lock(flight_mutex_);
    for (const auto& [id, flight] : in_flight_) members[flight.key_id].push_back(flight.member);
  }
  std::string lease_us = std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count());
  std::string ttl_ms = std::to_string(std::max<int64_t>(kWindowUs / 1000, options_.lease.count()) * 2);
  Status result;
  for (auto& [key_id, held] : members) {
    auto keys = keys_of(key_id);
    std::vector<std::string> args = {now_arg(), lease_us, ttl_ms};
    args.insert(args.end(), held.begin(), held.end());
    if (!run_script(*renewal_, kRenew, {keys[1], keys[0], keys[2]}, args)) {
      result = make_error(ErrorCode::Unavailable, "could not renew the leases of " + key_id);
    }
  }
  return result;
}

void RedisLimiter::renew_loop() {
  std::unique_lock lock(stop_mutex_);
  auto period = options_.renew_interval.count() > 0 ? options_.renew_interval
                                                    : std::max(options_.lease / 3, std::chrono::milliseconds(10));
  while (!stop_wake_.wait_for(lock, period, [this] { return stopping_; })) {
    lock.unlock();
    if (auto renewed = renew_leases(); !renewed) spdlog::warn("limits: {}", renewed.error().message);
    lock.lock();
  }
}

}  // namespace nebula::gateway
