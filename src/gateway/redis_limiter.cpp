#include "gateway/redis_limiter.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <algorithm>
#include <ctime>
#include <future>
#include <optional>
#include <unordered_map>

#include "common/ids.h"

namespace nebula::gateway {

namespace {

constexpr int64_t kWindowUs = 60'000'000;

// One run per API key per batch: every admission and finish of the key queued in the batch, in
// queue order, with exactly the answers of running them one after another.
//
// KEYS: window, flight, state, month. ARGV: lease_us, window_us, ttl_ms, month_ttl_s, holder (this
// gateway's id), gen (its lease on the key as it last heard: "0" = none), then the operations from
// ARGV[7] on:
//   admission (9): "a", now_us ("" = Redis's TIME, read once per run), rpm, tpm, max_concurrency,
//                  budget, estimate, month_used (as the gateway knows it), month ("2026-12");
//   finish (8):    "f", ticket, estimate, actual, lease gen ("" = not leased), budget ("1"),
//                  month, admitted_us (the admission's time).
// Returns nine numbers per admission, in order: {verdict, ticket, window requests, window tokens,
// reset_us, retry_us, detail, admitted_us, lease gen}: verdict 0 admitted, 1 requests, 2 tokens
// (retry 0: larger than the limit), 3 concurrency, 4 budget (detail: tokens used and in flight).
//
// The window is a sorted set of entries "<seq>:<requests>:<tokens>" scored by their time: the
// admissions of one run share Redis's TIME, so they make one entry, however many they are, and
// leave the window together, exactly a minute later. A finish whose engine counted differently
// adds a correction "<ticket>:0:<difference>" at its admission's time (which the admission
// returned), so the charge and its correction leave together; none when the charge already left.
// The state hash keeps the window's sums (count, tokens), so nothing is counted on the way.
//
// Concurrency and budget hold a lease per gateway and key, not per request: a sorted set of
// "<holder>:<gen>" scored by expiry, and in the state hash "l:<holder>:<gen>" = "<requests>:
// <tokens>" it holds, summed in running and flight. An admission extends its gateway's lease,
// the renewal thread too while requests run; a finish takes its request off the lease it was
// admitted under. A lease that ran out (its gateway died, or stalled past it) is collected by
// the next admission: its requests and tokens come back, its later finishes find nothing, and
// its gateway's next admission opens a new generation.
//
// An admission drops the entries older than a minute and the lapsed leases, checks requests per
// minute, tokens per minute, concurrency and the monthly budget in that order, and records the
// request. What the operations share is read once per run (one HMGET of the state, the window's
// oldest entry, the month) and written once at its end (one ZADD of the window, one of the
// lease, one HSET of the state, one HINCRBY of the month): a request costs Redis the Lua of its
// own operations and no sorted-set work of its own. Only a key with a concurrency limit or a
// budget leases its requests. TTLs are set again once half of `ttl` has passed (and on a key
// just created), not on every request: each key then outlives its last write by at least
// ttl/2 = max(window, lease).
constexpr const char* kBatchScript = R"lua(
local lease, window, ttl, month_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local holder = ARGV[5]
-- "<seq>:<requests>:<tokens>": a window entry. "<requests>:<tokens>": a lease's share.
-- What is not in these forms (written by something else) counts as nothing: it leaves with time
-- instead of failing every run of the key.
local function entry(member)
  local n, t = string.match(member, ':(%d+):(%-?%d+)$')
  if not n then return 0, 0 end
  return tonumber(n), tonumber(t)
end
local function share(value)
  local n, t = string.match(value, '^(%-?%d+):(%-?%d+)$')
  if not n then return 0, 0 end
  return tonumber(n), tonumber(t)
end
local mine, mine_gen = holder .. ':' .. ARGV[6], tonumber(ARGV[6])
local state = redis.call('HMGET', KEYS[3], 'seq', 'count', 'tokens', 'running', 'flight', 'refresh', 'l:' .. mine)
local seq, count, tokens = tonumber(state[1] or '0'), tonumber(state[2] or '0'), tonumber(state[3] or '0')
local running, flight, refresh = tonumber(state[4] or '0'), tonumber(state[5] or '0'), tonumber(state[6] or '0')
-- This gateway's lease on the key: the requests and estimates it holds; nil = none (or collected).
local mine_n, mine_t
if state[7] then mine_n, mine_t = share(state[7]) else mine = nil end
local clock, window_at, flight_at, oldest
local spent, month_add = {}, {}
-- Writes not sent yet: the admissions at `group_at` (one entry), corrections (ZADD arguments),
-- the lease's new expiry.
local group_at, group_n, group_t = nil, 0, 0
local window_add, mine_expiry = {}, nil
local function write_window()
  if group_n > 0 then
    window_add[#window_add + 1] = group_at
    window_add[#window_add + 1] = seq .. ':' .. group_n .. ':' .. group_t
    group_n, group_t = 0, 0
  end
  if #window_add > 0 then
    redis.call('ZADD', KEYS[1], unpack(window_add))
    window_add = {}
  end
end
local touch_window, touch_flight, touch_all = false, false, false
local function write_flight()
  if mine_expiry then
    if redis.call('ZADD', KEYS[2], mine_expiry, mine) == 1 then touch_flight = true end
    mine_expiry = nil
  end
end
local dirty, mine_dirty = false, false
local out = {}
-- An admission's nine numbers (see above), appended without a table of their own.
local function answer(verdict, ticket, requests, sum, reset, retry, detail, admitted, gen)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = verdict, ticket, requests, sum, reset
  out[n + 6], out[n + 7], out[n + 8], out[n + 9] = retry, detail, admitted, gen
end
local i = 7
while i <= #ARGV do
  if ARGV[i] == 'f' then
    local ticket, fest, factual = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    if ARGV[i + 4] ~= '' then
      local member = holder .. ':' .. ARGV[i + 4]
      if member == mine then
        mine_n, mine_t = mine_n - 1, mine_t - fest
        running, flight = running - 1, flight - fest
        mine_dirty, dirty = true, true
      else
        -- An older lease of this gateway's: freed unless it lapsed and was collected.
        local held = redis.call('HGET', KEYS[3], 'l:' .. member)
        if held then
          local n, t = share(held)
          redis.call('HSET', KEYS[3], 'l:' .. member, (n - 1) .. ':' .. (t - fest))
          running, flight = running - 1, flight - fest
          dirty = true
        end
      end
    end
    -- The engine's count replaces the estimate: a correction entry at the charge's own time,
    -- unless the charge already left the window (or Redis lost it: the ticket is newer than seq).
    if factual ~= fest and ticket <= seq then
      local at = ARGV[i + 7]
      if not window_at or tonumber(at) > window_at - window then
        window_add[#window_add + 1] = at
        window_add[#window_add + 1] = ticket .. ':0:' .. (factual - fest)
        tokens = tokens + factual - fest
        dirty = true
      end
    end
    if ARGV[i + 5] == '1' then
      local month = ARGV[i + 6]
      month_add[month] = (month_add[month] or 0) + factual
      if spent[month] then spent[month] = spent[month] + factual end
    end
    i = i + 8
  else
    local now, now_text
    if ARGV[i + 1] ~= '' then
      now_text = ARGV[i + 1]
      now = tonumber(now_text)
    else
      if not clock then
        local t = redis.call('TIME')
        clock = t[1] .. string.format('%06d', tonumber(t[2]))
      end
      now_text = clock
      now = tonumber(clock)
    end
    local rpm, tpm = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local conc, budget = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    local est, month_used, month = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), ARGV[i + 8]
    local leased = conc > 0 or budget > 0
    if now ~= window_at then
      write_window()
      local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
      if #old > 0 then
        for _, m in ipairs(old) do
          local n, t = entry(m)
          count, tokens = count - n, tokens - t
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
        dirty = true
      end
      oldest = nil
      if count > 0 then oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) end
      window_at = now
    end
    if leased and now ~= flight_at then
      -- Leases that ran out (their gateway stopped renewing them) give back what they held.
      write_flight()
      local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
      if #lapsed > 0 then
        local fields = {}
        for k, m in ipairs(lapsed) do fields[k] = 'l:' .. m end
        local held = redis.call('HMGET', KEYS[3], unpack(fields))
        for k, m in ipairs(lapsed) do
          if m == mine then
            running, flight = running - mine_n, flight - mine_t
            mine, mine_n, mine_t, mine_dirty = nil, nil, nil, false
          elseif held[k] then
            local n, t = share(held[k])
            running, flight = running - n, flight - t
          end
        end
        redis.call('HDEL', KEYS[3], unpack(fields))
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
        dirty = true
      end
      flight_at = now
    end
    local reset = 0
    if count > 0 then reset = oldest + window - now end
    local taken = 0
    if leased then taken = running end
    local verdict, wait, detail = 0, 0, 0
    if rpm > 0 and count >= rpm then
      verdict, wait = 1, reset
    elseif tpm > 0 and est > tpm then
      verdict = 2
    elseif tpm > 0 and tokens + est > tpm then
      verdict, wait = 2, window
      write_window()
      local excess = tokens + est - tpm
      local charges = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
      for j = 1, #charges, 2 do
        local _, t = entry(charges[j])
        excess = excess - t
        if excess <= 0 then
          wait = tonumber(charges[j + 1]) + window - now
          break
        end
      end
    elseif conc > 0 and taken >= conc then
      verdict, wait, detail = 3, 1000000, taken
    elseif budget > 0 then
      local used = spent[month]
      if used == nil then
        used = tonumber(redis.call('HGET', KEYS[4], month) or '0') + (month_add[month] or 0)
        spent[month] = used
      end
      used = math.max(used, month_used)
      if used + flight + est > budget then verdict, detail = 4, used + flight end
    end
    if verdict ~= 0 then
      answer(verdict, 0, count, tokens, reset, wait, detail, 0, 0)
    else
      seq = seq + 1
      if group_n > 0 and group_at ~= now_text then write_window() end
      group_at, group_n, group_t = now_text, group_n + 1, group_t + est
      if count == 0 then
        oldest = now
        touch_window = true
      end
      if refresh == 0 or now - refresh >= ttl * 500 then
        refresh = now
        touch_all = true
      end
      local gen = 0
      if leased then
        if not mine then
          mine, mine_gen, mine_n, mine_t = holder .. ':' .. seq, seq, 0, 0
        end
        mine_n, mine_t = mine_n + 1, mine_t + est
        mine_expiry = now + lease
        mine_dirty = true
        running, flight = running + 1, flight + est
        gen = mine_gen
      end
      count = count + 1
      tokens = tokens + est
      if reset == 0 then reset = window end
      dirty = true
      answer(0, seq, count, tokens, reset, 0, 0, now, gen)
    end
    i = i + 9
  end
end
write_window()
write_flight()
for month, added in pairs(month_add) do
  if redis.call('HINCRBY', KEYS[4], month, added) == added then redis.call('EXPIRE', KEYS[4], month_ttl) end
end
if dirty then  -- (dirty is set wherever mine_dirty is)
  local fields = {'seq', seq, 'count', count, 'tokens', tokens, 'running', running, 'flight', flight, 'refresh', refresh}
  if mine_dirty then
    fields[#fields + 1] = 'l:' .. mine
    fields[#fields + 1] = mine_n .. ':' .. mine_t
  end
  redis.call('HSET', KEYS[3], unpack(fields))
end
if touch_window or touch_all then redis.call('PEXPIRE', KEYS[1], ttl) end
if touch_flight or touch_all then redis.call('PEXPIRE', KEYS[2], ttl) end
if touch_all then redis.call('PEXPIRE', KEYS[3], ttl) end
return out
)lua";

// KEYS: flight, window, state. ARGV: now_us ("" = TIME), lease_us, ttl_ms, leases ("<holder>:<gen>")...
// Extends the leases still held (a lapsed one stays lapsed: its slots went back).
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
// Loaded on every connection, in this order.
enum Script : size_t { kBatch = 0, kRenew = 1 };
std::vector<std::string> scripts() {
  return {kBatchScript, std::string(kNowPrologue) + kRenewScript};
}

constexpr int64_t kMonthTtlS = 40 * 86400;
// Operations in one script run at most: Redis runs nothing else meanwhile.
constexpr size_t kMaxOperationsPerRun = 128;
constexpr size_t kVerdictSize = 9;  // numbers per admission in the batch script's answer

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
  auto address = parse_redis_address(url);
  if (!address) return address.error();
  options.host = address->host;
  options.port = address->port;
  options.user = std::move(address->user);
  options.password = std::move(address->password);
  options.db = address->db;
  return {};
}

RedisLimiter::RedisLimiter(RedisLimiterOptions options)
    : options_(std::move(options)),
      main_(std::make_unique<RedisConnection>(
          RedisAddress{options_.host, options_.port, options_.user, options_.password, options_.db}, options_.timeout,
          options_.retry_interval, scripts())),
      renewal_(std::make_unique<RedisConnection>(
          RedisAddress{options_.host, options_.port, options_.user, options_.password, options_.db}, options_.timeout,
          options_.retry_interval, scripts())),
      holder_(random_id(16)),
      run_header_{std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count()),
                  std::to_string(kWindowUs),
                  std::to_string(std::max<int64_t>(kWindowUs / 1000, options_.lease.count()) * 2),
                  std::to_string(kMonthTtlS), holder_} {}

RedisLimiter::~RedisLimiter() {
  stop();
}

Status RedisLimiter::start() {
  if (!main_->get()) {
    return make_error(ErrorCode::Unavailable, fmt::format("cannot reach redis at {}:{} for the limits: {}",
                                                          options_.host, options_.port, main_->last_error()));
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
    release_held(std::nullopt);
    left.swap(queue_);
  }
  for (auto& command : left) command.on_answer(nullptr);
}

size_t RedisLimiter::in_flight() const {
  std::lock_guard lock(flight_mutex_);
  return in_flight_.size();
}

std::vector<std::string> RedisLimiter::keys_of(const std::string& key_id) const {
  std::string base = options_.prefix + "{" + key_id + "}:";
  // "v2:": the layout of one entry per run and one lease per gateway. Gateways of the earlier
  // layout (one member per request, under ":window", ":flight", ":state") count apart from these
  // while a rolling upgrade runs, instead of failing on each other's members; the month's
  // spending keeps its key and carries over.
  return {base + "v2:window", base + "v2:flight", base + "v2:state", base + "month"};
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

void RedisLimiter::enqueue(Command command) {
  command.queued = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(queue_mutex_);
    if (!queue_closed_) {
      bool was_empty = queue_.empty();
      bool hold = command.kind == Command::Kind::Finish && options_.finish_hold.count() > 0;
      if (hold) {
        // Waits for the key's next admission (or finish_hold): no wake-up, no script run of its own.
        bool none_held = held_count_ == 0;
        held_[command.key_id].push_back(std::move(command));
        held_count_ += 1;
        // A limiter thread asleep with nothing held must learn the deadline.
        if (none_held && was_empty) queue_wake_.notify_one();
        return;
      }
      if (command.kind == Command::Kind::Marker) {
        release_held(std::nullopt);
      } else if (auto found = held_.find(command.key_id); found != held_.end()) {
        // The key's finishes go first, in the same script run: queue order is kept.
        for (auto& finish : found->second) queue_.push_back(std::move(finish));
        held_count_ -= found->second.size();
        held_.erase(found);
      }
      queue_.push_back(std::move(command));
      if (was_empty) queue_wake_.notify_one();
      return;
    }
  }
  command.on_answer(nullptr);  // stopped
}

void RedisLimiter::release_held(std::optional<std::chrono::steady_clock::time_point> queued_before) {
  for (auto it = held_.begin(); it != held_.end();) {
    auto& finishes = it->second;
    // Held in queue order: a key's oldest is first.
    if (queued_before && finishes.front().queued > *queued_before) {
      ++it;
      continue;
    }
    auto now = std::chrono::steady_clock::now();
    for (auto& finish : finishes) {
      finish.queued = now;  // its timeout counts from now: it was held on purpose
      queue_.push_back(std::move(finish));
    }
    held_count_ -= finishes.size();
    it = held_.erase(it);
  }
}

void RedisLimiter::run_loop() {
  std::vector<Command> batch;
  for (;;) {
    {
      std::unique_lock lock(queue_mutex_);
      for (;;) {
        if (queue_closed_) release_held(std::nullopt);
        if (!queue_.empty() || queue_closed_) break;
        if (held_count_ == 0) {
          queue_wake_.wait(lock);
          continue;
        }
        // The oldest held finish decides when to wake.
        auto oldest = std::chrono::steady_clock::time_point::max();
        for (const auto& [key, finishes] : held_) oldest = std::min(oldest, finishes.front().queued);
        auto now = std::chrono::steady_clock::now();
        if (now - oldest >= options_.finish_hold) {
          release_held(now - options_.finish_hold);
          continue;
        }
        queue_wake_.wait_until(lock, oldest + options_.finish_hold);
      }
      if (queue_.empty()) return;  // closed
      batch.swap(queue_);
    }
    run_batch(batch);
    batch.clear();
  }
}

namespace {
// The operations of one API key that go to Redis as one script run, in queue order.
template <class Command>
struct Run {
  std::string_view key_id;
  std::vector<Command*> operations;
  size_t admissions = 0;
};
}  // namespace

void RedisLimiter::run_batch(std::vector<Command>& batch) {
  RedisConnection& connection = *main_;
  // A command that already waited its whole timeout (behind a stalled batch) fails at once.
  auto now = std::chrono::steady_clock::now();
  std::vector<Command*> markers;  // flush(): answered last
  std::vector<Run<Command>> runs;
  std::unordered_map<std::string_view, size_t> open_runs;  // key -> its run that still takes operations
  for (auto& command : batch) {
    if (command.kind == Command::Kind::Marker) {
      markers.push_back(&command);
      continue;
    }
    if (now - command.queued >= options_.timeout) {
      failures_ += 1;
      command.on_answer(nullptr);
      continue;
    }
    auto [found, added] = open_runs.try_emplace(command.key_id, runs.size());
    if (added) runs.push_back({command.key_id, {}, 0});
    auto& run = runs[found->second];
    run.operations.push_back(&command);
    if (command.kind == Command::Kind::Admit) run.admissions += 1;
    if (run.operations.size() == kMaxOperationsPerRun) open_runs.erase(found);
  }
  auto fail_run = [this](const Run<Command>& run) {
    for (Command* command : run.operations) {
      failures_ += 1;
      command->on_answer(nullptr);
    }
  };
  // Twice at most: the second time for the runs Redis answered NOSCRIPT (it restarted or its
  // script cache was flushed), once the scripts are loaded again.
  std::vector<Run<Command>*> pending;
  pending.reserve(runs.size());
  for (auto& run : runs) pending.push_back(&run);
  std::vector<std::string> args;
  for (int attempt = 0; attempt < 2 && !pending.empty(); ++attempt) {
    if (!connection.get()) break;
    for (auto* run : pending) {  // formatted into the connection's output buffer
      std::string key_id(run->key_id);
      args = run_header_;
      auto gen = lease_gen_.find(key_id);
      args.push_back(gen == lease_gen_.end() ? "0" : std::to_string(gen->second));
      for (Command* command : run->operations) args.insert(args.end(), command->args.begin(), command->args.end());
      connection.append_eval(kBatch, keys_of(key_id), args);
    }
    batches_ += 1;
    commands_ += pending.size();
    std::vector<Run<Command>*> noscript;
    size_t answered = 0;
    for (; answered < pending.size(); ++answered) {
      auto reply = connection.next_reply();
      if (!reply) break;
      auto& run = *pending[answered];
      if (is_noscript(*reply)) {
        noscript.push_back(&run);
        continue;
      }
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != run.admissions * kVerdictSize) {
        spdlog::warn("limits: redis script failed: {}", reply->type == REDIS_REPLY_ERROR
                                                            ? std::string_view(reply->str, reply->len)
                                                            : std::string_view("an answer of the wrong shape"));
        fail_run(run);
        continue;
      }
      size_t next = 0;
      int64_t verdict[kVerdictSize];
      for (Command* command : run.operations) {
        if (command->kind != Command::Kind::Admit) {
          command->on_answer(nullptr);
          continue;
        }
        for (size_t index = 0; index < kVerdictSize; ++index) {
          const redisReply* element = reply->element[next++];
          verdict[index] = element->type == REDIS_REPLY_INTEGER ? element->integer : 0;
        }
        if (verdict[0] == 0 && verdict[8] != 0) lease_gen_[command->key_id] = verdict[8];
        command->on_answer(verdict);
      }
    }
    if (answered < pending.size()) {
      // Timed out or the connection broke: the rest have no answer, and the connection's state
      // is unknown (it was dropped).
      spdlog::warn("limits: redis {}:{}: {}", options_.host, options_.port, connection.last_error());
      for (size_t rest = answered; rest < pending.size(); ++rest) fail_run(*pending[rest]);
      noscript.clear();
      pending.clear();
      break;
    }
    if (!noscript.empty() && !connection.reload_scripts()) break;
    pending = std::move(noscript);
  }
  for (auto* run : pending) fail_run(*run);  // Redis unreachable, or NOSCRIPT twice
  for (Command* marker : markers) marker->on_answer(nullptr);
}

void RedisLimiter::flush() {
  std::promise<void> done;
  auto flushed = done.get_future();
  Command marker;
  marker.kind = Command::Kind::Marker;
  marker.on_answer = [&done](const int64_t*) { done.set_value(); };
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
  command.kind = Command::Kind::Admit;
  command.key_id = key.metadata.name;
  command.args = {"a",
                  now_arg(),
                  std::to_string(std::max<int64_t>(0, key.rpm)),
                  std::to_string(std::max<int64_t>(0, key.tpm)),
                  std::to_string(std::max<int64_t>(0, key.max_concurrency)),
                  std::to_string(std::max<int64_t>(0, key.budget_tokens)),
                  std::to_string(estimated_tokens),
                  std::to_string(month_used_tokens),
                  month_now()};
  // The limits as they were asked about: the key may change before the answer comes.
  struct Asked {
    std::string key_id;
    int64_t rpm, tpm, max_concurrency, budget_tokens, estimated_tokens, month_used_tokens;
  };
  command.on_answer = [this,
                       asked = Asked{key.metadata.name, key.rpm, key.tpm, key.max_concurrency, key.budget_tokens,
                                     estimated_tokens, month_used_tokens},
                       done = std::move(done)](const int64_t* verdict) {
    api::ApiKey key;
    key.metadata.name = asked.key_id;
    key.rpm = asked.rpm;
    key.tpm = asked.tpm;
    key.max_concurrency = asked.max_concurrency;
    key.budget_tokens = asked.budget_tokens;
    if (!verdict) {
      done(unavailable(key, asked.estimated_tokens, asked.month_used_tokens));
      return;
    }
    WindowUse use{verdict[2], verdict[3], ms_of_us(verdict[4])};
    auto retry = ms_of_us(verdict[5]);
    int64_t detail = verdict[6];
    switch (verdict[0]) {
      case 0: {
        Admission admitted;
        admitted.window = use;
        InFlight flight;
        flight.key_id = key.metadata.name;
        flight.leased = key.max_concurrency > 0 || key.budget_tokens > 0;
        flight.tokens = key.tpm > 0;
        flight.budget = key.budget_tokens > 0;
        if (flight.leased || flight.tokens) {  // else there is nothing to finish
          admitted.ticket = static_cast<uint64_t>(verdict[1]);
          flight.admitted_us = std::to_string(verdict[7]);
          if (flight.leased) {
            flight.gen = std::to_string(verdict[8]);
            flight.lease = holder_ + ":" + flight.gen;
          }
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
  command.kind = Command::Kind::Finish;
  command.key_id = key_id;
  command.args = {"f",
                  std::to_string(ticket),
                  std::to_string(estimated_tokens),
                  std::to_string(actual_tokens),
                  flight.gen,
                  flight.budget ? "1" : "0",
                  month_now(),
                  flight.admitted_us};
  // A failure leaves the slot to its lease and the window to its estimate.
  command.on_answer = [](const int64_t*) {};
  enqueue(std::move(command));
}

Status RedisLimiter::renew_leases() {
  std::map<std::string, std::vector<std::string>> members;  // key -> the leases held here
  {
    std::lock_guard lock(flight_mutex_);
    for (const auto& [id, flight] : in_flight_) {
      if (flight.leased) {
        auto& held = members[flight.key_id];
        if (std::find(held.begin(), held.end(), flight.lease) == held.end()) held.push_back(flight.lease);
      }
    }
  }
  const std::string& lease_us = run_header_[0];
  const std::string& ttl_ms = run_header_[2];
  Status result;
  for (auto& [key_id, held] : members) {
    auto keys = keys_of(key_id);
    std::vector<std::string> args = {now_arg(), lease_us, ttl_ms};
    args.insert(args.end(), held.begin(), held.end());
    if (!renewal_->eval(kRenew, {keys[1], keys[0], keys[2]}, args)) {
      failures_ += 1;
      result = make_error(ErrorCode::Unavailable,
                          fmt::format("could not renew the leases of {}: {}", key_id, renewal_->last_error()));
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
