#include "gateway/redis_limiter.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <sys/time.h>

#include <charconv>
#include <ctime>
#include <future>

namespace nebula::gateway {

namespace {

constexpr int64_t kWindowUs = 60'000'000;

// KEYS: window, flight, state, month. ARGV: now_us ("" = Redis TIME), rpm, tpm, max_concurrency,
// budget, estimate, month_used (as the gateway knows it), month ("2026-12"), lease_us, window_us,
// ttl_ms, month_ttl_s, then the finishes of the key's earlier requests sent along (five each:
// ticket, estimate, actual, leased "1", budget "1"), applied first as kFinishScript would: one
// script run instead of two, and their counts folded into the one HSET. Returns {verdict, ticket, window requests,
// window tokens, reset_us, retry_us, detail}: verdict 0 admitted, 1 requests, 2 tokens (retry 0: larger than the
// limit), 3 concurrency, 4 budget (detail: tokens used and in flight).
//
// The state hash holds seq (the last ticket), tokens (the window's sum), flight (estimates of the
// leased requests) and refresh (when the keys' TTLs were last set): read with one HMGET, written
// with one HSET. Only a key with a concurrency limit or a budget leases its requests. TTLs are set
// again once half of `ttl` has passed (and on a key just created), not on every request: each key
// then outlives its last write by at least ttl/2 = max(window, lease).
constexpr const char* kAdmitScript = R"lua(
local rpm, tpm, conc, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est, lease, window, ttl = tonumber(ARGV[6]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local leased = conc > 0 or budget > 0
local function tokens_of(member) return tonumber(string.match(member, ':(%-?%d+)$')) end
local state = redis.call('HMGET', KEYS[3], 'seq', 'tokens', 'flight', 'refresh')
local seq, tokens = tonumber(state[1] or '0'), tonumber(state[2] or '0')
local flight, refresh = tonumber(state[3] or '0'), tonumber(state[4] or '0')
local dirty = false
for i = 13, #ARGV, 5 do
  local fest, factual = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local member = ARGV[i] .. ':' .. ARGV[i + 1]
  if ARGV[i + 3] == '1' and redis.call('ZREM', KEYS[2], member) == 1 then flight = flight - fest end
  if factual ~= fest then
    local score = redis.call('ZSCORE', KEYS[1], member)
    if score then
      redis.call('ZADD', KEYS[1], score, ARGV[i] .. ':' .. factual)
      redis.call('ZREM', KEYS[1], member)
      tokens = tokens + factual - fest
    end
  end
  if ARGV[i + 4] == '1' and redis.call('HINCRBY', KEYS[4], ARGV[8], factual) == factual then
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[12]))
  end
  dirty = true
end
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #old > 0 then
  for _, m in ipairs(old) do tokens = tokens - tokens_of(m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  dirty = true
end
if leased then
  local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  if #lapsed > 0 then
    for _, m in ipairs(lapsed) do flight = flight - tokens_of(m) end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    dirty = true
  end
end
local function refused(...)
  if dirty then redis.call('HSET', KEYS[3], 'tokens', tokens, 'flight', flight) end
  return {...}
end
local count = redis.call('ZCARD', KEYS[1])
local reset = 0
if count > 0 then reset = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) + window - now end
if rpm > 0 and count >= rpm then return refused(1, 0, count, tokens, reset, reset, 0) end
if tpm > 0 and est > tpm then return refused(2, 0, count, tokens, reset, 0, 0) end
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
  return refused(2, 0, count, tokens, reset, wait, 0)
end
local running = 0
if leased then running = redis.call('ZCARD', KEYS[2]) end
if conc > 0 and running >= conc then return refused(3, 0, count, tokens, reset, 1000000, running) end
if budget > 0 then
  local spent = math.max(tonumber(redis.call('HGET', KEYS[4], ARGV[8]) or '0'), tonumber(ARGV[7]))
  if spent + flight + est > budget then return refused(4, 0, count, tokens, reset, 0, spent + flight) end
end
seq = seq + 1
local member = seq .. ':' .. ARGV[6]
redis.call('ZADD', KEYS[1], now, member)
if leased then
  redis.call('ZADD', KEYS[2], now + lease, member)
  flight = flight + est
end
local expire = refresh == 0 or now - refresh >= ttl * 500
if expire then refresh = now end
redis.call('HSET', KEYS[3], 'seq', seq, 'tokens', tokens + est, 'flight', flight, 'refresh', refresh)
if expire or count == 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
if leased and (expire or running == 0) then redis.call('PEXPIRE', KEYS[2], ttl) end
if expire then redis.call('PEXPIRE', KEYS[3], ttl) end
if reset == 0 then reset = window end
return {0, seq, count + 1, tokens + est, reset, 0, 0}
)lua";

// KEYS: window, flight, state, month. ARGV: ticket, estimate, actual, month, month_ttl_s,
// leased ("1"), budget ("1"). The request's slot and in-flight tokens are freed (unless its lease
// already lapsed), its charge in the window becomes what the engine reported, and the month
// counts it when the key has a budget. The corrected charge is added before the estimate is
// removed, so the window's key never empties (and never loses its TTL) on the way.
constexpr const char* kFinishScript = R"lua(
local est, actual = tonumber(ARGV[2]), tonumber(ARGV[3])
local member = ARGV[1] .. ':' .. ARGV[2]
if ARGV[6] == '1' and redis.call('ZREM', KEYS[2], member) == 1 then
  redis.call('HINCRBY', KEYS[3], 'flight', -est)
end
if actual ~= est then
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score then
    redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. actual)
    redis.call('ZREM', KEYS[1], member)
    redis.call('HINCRBY', KEYS[3], 'tokens', actual - est)
  end
end
if ARGV[7] == '1' and redis.call('HINCRBY', KEYS[4], ARGV[4], actual) == actual then
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
end
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
enum Script { kAdmit = 0, kFinish = 1, kRenew = 2, kNothing = -1 };

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
  // The connection failed mid-command: its state is unknown, and Redis is not tried again for
  // retry_interval (a stalled Redis still accepts connections, and each try would cost a timeout).
  void fail() {
    drop();
    next_attempt = std::chrono::steady_clock::now() + options.retry_interval;
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
  if (!main_->ready()) {
    return make_error(ErrorCode::Unavailable,
                      fmt::format("cannot reach redis at {}:{} for the limits", options_.host, options_.port));
  }
  runner_ = std::thread([this] { run_loop(); });
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
  {
    std::lock_guard lock(queue_mutex_);
    queue_closed_ = true;
  }
  queue_wake_.notify_all();
  if (runner_.joinable()) runner_.join();
  // Never started, or queued after the thread's last look: answered as failures.
  std::vector<Command> left;
  {
    std::lock_guard lock(queue_mutex_);
    left.swap(queue_);
  }
  for (auto& command : left) command.on_reply(nullptr);
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

namespace {
// EVALSHA's argv for hiredis, pointing into sha, keys and args (which must outlive it).
struct EvalArgv {
  std::string key_count;
  std::vector<const char*> argv;
  std::vector<size_t> lengths;

  EvalArgv(const std::string& sha, const std::vector<std::string>& keys, const std::vector<std::string>& args)
      : key_count(std::to_string(keys.size())) {
    static const std::string kEvalsha = "EVALSHA";
    argv.reserve(3 + keys.size() + args.size());
    lengths.reserve(argv.capacity());
    push(kEvalsha);
    push(sha);
    push(key_count);
    for (const auto& key : keys) push(key);
    for (const auto& arg : args) push(arg);
  }
  void push(const std::string& text) {
    argv.push_back(text.data());
    lengths.push_back(text.size());
  }
  int size() const { return static_cast<int>(argv.size()); }
};

bool is_noscript(const redisReply* reply) {
  return reply->type == REDIS_REPLY_ERROR && std::string_view(reply->str, reply->len).substr(0, 8) == "NOSCRIPT";
}
}  // namespace

ReplyPtr RedisLimiter::run_script(Connection& connection, int script, const std::vector<std::string>& keys,
                                  const std::vector<std::string>& args) {
  ReplyPtr none(nullptr, free_reply);
  if (!connection.ready()) return none;
  for (int attempt = 0; attempt < 2; ++attempt) {
    EvalArgv eval(connection.shas[script], keys, args);
    ReplyPtr reply(static_cast<redisReply*>(
                       redisCommandArgv(connection.context, eval.size(), eval.argv.data(), eval.lengths.data())),
                   free_reply);
    if (!reply) {
      spdlog::warn("limits: redis {}:{}: {}", options_.host, options_.port,
                   connection.context->errstr[0] ? connection.context->errstr : "no reply");
      connection.fail();
      failures_ += 1;
      return none;
    }
    if (is_noscript(reply.get())) {
      // Redis restarted or SCRIPT FLUSH: load it again and retry once.
      if (!connection.load(script)) break;
      continue;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
      spdlog::warn("limits: redis script failed: {}", std::string_view(reply->str, reply->len));
      failures_ += 1;
      return none;
    }
    return reply;
  }
  connection.fail();
  failures_ += 1;
  return none;
}

void RedisLimiter::enqueue(Command command) {
  command.queued = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(queue_mutex_);
    if (!queue_closed_) {
      queue_.push_back(std::move(command));
      if (queue_.size() == 1) queue_wake_.notify_one();
      return;
    }
  }
  command.on_reply(nullptr);  // stopped
}

void RedisLimiter::run_loop() {
  std::vector<Command> batch;
  for (;;) {
    {
      std::unique_lock lock(queue_mutex_);
      queue_wake_.wait(lock, [this] { return !queue_.empty() || queue_closed_; });
      if (queue_.empty()) return;  // closed
      batch.swap(queue_);
    }
    run_batch(batch);
    batch.clear();
  }
}

void RedisLimiter::run_batch(std::vector<Command>& batch) {
  Connection& connection = *main_;
  // A command that already waited its whole timeout (behind a stalled batch) fails at once.
  auto now = std::chrono::steady_clock::now();
  std::vector<Command*> pending;
  std::vector<Command*> markers;  // flush(): answered last
  pending.reserve(batch.size());
  for (auto& command : batch) {
    if (command.script == kNothing) {
      markers.push_back(&command);
    } else if (now - command.queued >= options_.timeout) {
      failures_ += 1;
      command.on_reply(nullptr);
    } else {
      pending.push_back(&command);
    }
  }
  // A finish queued before an admission of the same key rides along with it (arguments 13 on of
  // the admit script): same order, one script run fewer.
  std::map<std::string_view, std::vector<Command*>> finishes;  // window key -> finishes not sent
  std::vector<Command*> sent;
  sent.reserve(pending.size());
  for (Command* command : pending) {
    if (command->script == kFinish) {
      finishes[command->keys[0]].push_back(command);
      continue;
    }
    if (command->script == kAdmit) {
      if (auto found = finishes.find(command->keys[0]); found != finishes.end()) {
        for (Command* finish : found->second) {
          const auto& args = finish->args;  // ticket, estimate, actual, month, month_ttl, leased, budget
          command->args.insert(command->args.end(), {args[0], args[1], args[2], args[5], args[6]});
          command->riders.push_back(finish);
        }
        finishes.erase(found);
        command->on_reply = [answer = std::move(command->on_reply), riders = command->riders](const redisReply* reply) {
          answer(reply);
          for (Command* rider : riders) rider->on_reply(reply);
        };
      }
    }
    sent.push_back(command);
  }
  for (auto& [key, left] : finishes) sent.insert(sent.end(), left.begin(), left.end());
  pending = std::move(sent);
  // Twice at most: the second time for the commands Redis answered NOSCRIPT (it restarted or its
  // script cache was flushed), once the scripts are loaded again.
  for (int attempt = 0; attempt < 2 && !pending.empty(); ++attempt) {
    if (!connection.ready()) break;
    for (Command* command : pending) {  // formatted into the connection's output buffer
      EvalArgv eval(connection.shas[command->script], command->keys, command->args);
      redisAppendCommandArgv(connection.context, eval.size(), eval.argv.data(), eval.lengths.data());
    }
    batches_ += 1;
    commands_ += pending.size();
    std::vector<Command*> noscript;
    size_t answered = 0;
    for (; answered < pending.size(); ++answered) {
      void* raw = nullptr;
      if (redisGetReply(connection.context, &raw) != REDIS_OK || !raw) break;
      ReplyPtr reply(static_cast<redisReply*>(raw), free_reply);
      Command& command = *pending[answered];
      if (is_noscript(reply.get())) {
        noscript.push_back(&command);
      } else if (reply->type == REDIS_REPLY_ERROR) {
        spdlog::warn("limits: redis script failed: {}", std::string_view(reply->str, reply->len));
        failures_ += 1;
        command.on_reply(nullptr);
      } else {
        command.on_reply(reply.get());
      }
    }
    if (answered < pending.size()) {
      // Timed out or the connection broke: the rest have no answer, and the connection's state
      // is unknown.
      spdlog::warn("limits: redis {}:{}: {}", options_.host, options_.port,
                   connection.context->errstr[0] ? connection.context->errstr : "no reply");
      connection.fail();
      for (size_t rest = answered; rest < pending.size(); ++rest) {
        failures_ += 1;
        pending[rest]->on_reply(nullptr);
      }
      noscript.clear();
      pending.clear();
      break;
    }
    if (!noscript.empty()) {
      bool loaded = true;
      for (int script = 0; script < 3 && loaded; ++script) loaded = connection.load(script);
      if (!loaded) {
        connection.fail();
        break;
      }
    }
    pending = std::move(noscript);
  }
  for (Command* command : pending) {  // Redis unreachable, or NOSCRIPT twice
    failures_ += 1;
    command->on_reply(nullptr);
  }
  for (Command* marker : markers) marker->on_reply(nullptr);
}

void RedisLimiter::flush() {
  std::promise<void> done;
  auto flushed = done.get_future();
  Command marker;
  marker.script = kNothing;
  marker.on_reply = [&done](const redisReply*) { done.set_value(); };
  enqueue(std::move(marker));
  flushed.wait();
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

Admission RedisLimiter::admit(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens,
                              TimePoint now) {
  std::promise<Admission> answer;
  auto answered = answer.get_future();
  admit_async(key, estimated_tokens, month_used_tokens, now,
              [&answer](Admission admission) { answer.set_value(std::move(admission)); });
  return answered.get();
}

void RedisLimiter::admit_async(const api::ApiKey& key, int64_t estimated_tokens, int64_t month_used_tokens, TimePoint,
                               std::function<void(Admission)> done) {
  if (key.rpm <= 0 && key.tpm <= 0 && key.max_concurrency <= 0 && key.budget_tokens <= 0) {
    done(Admission{});
    return;
  }
  Command command;
  command.script = kAdmit;
  command.keys = keys_of(key.metadata.name);
  command.args = {now_arg(),
                  std::to_string(std::max<int64_t>(0, key.rpm)),
                  std::to_string(std::max<int64_t>(0, key.tpm)),
                  std::to_string(std::max<int64_t>(0, key.max_concurrency)),
                  std::to_string(std::max<int64_t>(0, key.budget_tokens)),
                  std::to_string(estimated_tokens),
                  std::to_string(month_used_tokens),
                  month_now(),
                  std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count()),
                  std::to_string(kWindowUs),
                  std::to_string(std::max<int64_t>(kWindowUs / 1000, options_.lease.count()) * 2),
                  std::to_string(kMonthTtlS)};
  // The limits as they were asked about: the key may change before the answer comes.
  struct Asked {
    std::string key_id;
    int64_t rpm, tpm, max_concurrency, budget_tokens, estimated_tokens, month_used_tokens;
  };
  command.on_reply = [this,
                      asked = Asked{key.metadata.name, key.rpm, key.tpm, key.max_concurrency, key.budget_tokens,
                                    estimated_tokens, month_used_tokens},
                      done = std::move(done)](const redisReply* reply) {
    api::ApiKey key;
    key.metadata.name = asked.key_id;
    key.rpm = asked.rpm;
    key.tpm = asked.tpm;
    key.max_concurrency = asked.max_concurrency;
    key.budget_tokens = asked.budget_tokens;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 7) {
      done(unavailable(key, asked.estimated_tokens, asked.month_used_tokens));
      return;
    }
    int64_t verdict = integer_at(reply, 0);
    WindowUse use{integer_at(reply, 2), integer_at(reply, 3), ms_of_us(integer_at(reply, 4))};
    auto retry = ms_of_us(integer_at(reply, 5));
    int64_t detail = integer_at(reply, 6);
    switch (verdict) {
      case 0: {
        Admission admitted;
        admitted.window = use;
        InFlight flight{key.metadata.name,
                        {},
                        key.max_concurrency > 0 || key.budget_tokens > 0,
                        key.tpm > 0,
                        key.budget_tokens > 0};
        if (flight.leased || flight.tokens) {  // else there is nothing to finish
          admitted.ticket = static_cast<uint64_t>(integer_at(reply, 1));
          flight.member = fmt::format("{}:{}", admitted.ticket, asked.estimated_tokens);
          std::lock_guard lock(flight_mutex_);
          in_flight_[{key.metadata.name, admitted.ticket}] = std::move(flight);
        }
        done(std::move(admitted));
        return;
      }
      case 1: done(refused(LimitKind::Requests, requests_message(key.rpm, use.requests, retry), retry, use)); return;
      case 2:
        if (retry.count() == 0) {
          done(refused(LimitKind::Tokens, too_large_message(key.tpm, asked.estimated_tokens), retry, use));
        } else {
          done(refused(LimitKind::Tokens, tokens_message(key.tpm, use.tokens, asked.estimated_tokens, retry), retry,
                       use));
        }
        return;
      case 3: done(refused(LimitKind::Concurrency, concurrency_message(key.max_concurrency), retry, use)); return;
      default:
        done(refused(LimitKind::Budget, budget_message(detail, key.budget_tokens, asked.estimated_tokens),
                     std::chrono::milliseconds(0), use));
    }
  };
  enqueue(std::move(command));
}

void RedisLimiter::finish(const std::string& key_id, uint64_t ticket, int64_t estimated_tokens, int64_t actual_tokens,
                          TimePoint) {
  if (ticket == 0) return;  // nothing to finish: admitted without Redis, or by requests alone
  actual_tokens = std::max<int64_t>(0, actual_tokens);  // an engine's count: never a refund
  InFlight flight;
  {
    std::lock_guard lock(flight_mutex_);
    auto found = in_flight_.find({key_id, ticket});
    // Not issued here, or finished already: nothing of it is this gateway's to undo.
    if (found == in_flight_.end()) return;
    flight = std::move(found->second);
    in_flight_.erase(found);
  }
  bool correct = flight.tokens && actual_tokens != estimated_tokens;
  if (!flight.leased && !correct && !flight.budget) return;
  Command command;
  command.script = kFinish;
  command.keys = keys_of(key_id);
  command.args = {
      std::to_string(ticket),     std::to_string(estimated_tokens), std::to_string(actual_tokens), month_now(),
      std::to_string(kMonthTtlS), flight.leased ? "1" : "0",        flight.budget ? "1" : "0"};
  // A failure leaves the slot to its lease and the window to its estimate.
  command.on_reply = [](const redisReply*) {};
  enqueue(std::move(command));
}

Status RedisLimiter::renew_leases() {
  std::map<std::string, std::vector<std::string>> members;  // key -> members held here
  {
    std::lock_guard lock(flight_mutex_);
    for (const auto& [id, flight] : in_flight_) {
      if (flight.leased) members[flight.key_id].push_back(flight.member);
    }
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
