#include "gateway/redis_responses.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

namespace nebula::gateway {
namespace {

// What the scripts share: KEYS[1] is the key's prefix "…{K}:"; drop(id) forgets one turn.
constexpr const char* kPrologue = R"lua(
local base = KEYS[1]
local order, sizes, total = base .. 'order', base .. 'sizes', base .. 'bytes'
local function drop(old)
  local size = tonumber(redis.call('HGET', sizes, old) or '0')
  redis.call('DEL', base .. 'r:' .. old)
  redis.call('ZREM', order, old)
  redis.call('HDEL', sizes, old)
  redis.call('DECRBY', total, size)
end
)lua";

// ARGV: id, response, input, previous, root, now_ms, retention_ms, per_key, per_key_bytes.
// Returns the key's bytes afterwards.
constexpr const char* kPut = R"lua(
local id = ARGV[1]
local now, ttl, maxn, maxb = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
for _, old in ipairs(redis.call('ZRANGEBYSCORE', order, '-inf', now - ttl)) do drop(old) end
if redis.call('HEXISTS', sizes, id) == 1 then drop(id) end
local size = #ARGV[2] + #ARGV[3] + #ARGV[4] + #ARGV[5]
redis.call('HSET', base .. 'r:' .. id, 'response', ARGV[2], 'input', ARGV[3], 'previous', ARGV[4], 'root', ARGV[5])
redis.call('PEXPIRE', base .. 'r:' .. id, ttl)
redis.call('ZADD', order, now, id)
redis.call('HSET', sizes, id, size)
local bytes = redis.call('INCRBY', total, size)
while redis.call('ZCARD', order) > 1 and (redis.call('ZCARD', order) > maxn or bytes > maxb) do
  local oldest = redis.call('ZRANGE', order, 0, 1)
  if oldest[1] == id then drop(oldest[2]) else drop(oldest[1]) end
  bytes = tonumber(redis.call('GET', total))
end
for _, k in ipairs({order, sizes, total}) do redis.call('PEXPIRE', k, ttl) end
return bytes
)lua";

// ARGV: id, now_ms, retention_ms, most turns. Follows the chain from id: {"ok", "", then each
// turn's response, input, previous, root, newest first}, or {"missing", the id not found, ...}.
constexpr const char* kWalk = R"lua(
local now, ttl, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {'ok', ''}
local id, n = ARGV[1], 0
while id ~= '' and n < limit do
  local key = base .. 'r:' .. id
  local turn = redis.call('HMGET', key, 'response', 'input', 'previous', 'root')
  if not turn[1] then
    out[1], out[2] = 'missing', id
    return out
  end
  redis.call('PEXPIRE', key, ttl)
  redis.call('ZADD', order, 'XX', now, id)
  for i = 1, 4 do out[#out + 1] = turn[i] end
  id, n = turn[3], n + 1
end
return out
)lua";

// ARGV: id. Returns 1 when the turn was there.
constexpr const char* kErase = R"lua(
local found = redis.call('EXISTS', base .. 'r:' .. ARGV[1])
drop(ARGV[1])
return found
)lua";

// The scripts by their index in the connection's list.
enum Script : size_t { kPutScript = 0, kWalkScript = 1, kEraseScript = 2 };
std::vector<std::string> scripts() {
  return {std::string(kPrologue) + kPut, std::string(kPrologue) + kWalk, std::string(kPrologue) + kErase};
}

}  // namespace

Result<std::unique_ptr<RedisResponseStore>> RedisResponseStore::open(const std::string& url,
                                                                     ResponseStoreOptions options,
                                                                     std::chrono::milliseconds timeout,
                                                                     std::string prefix) {
  auto address = parse_redis_address(url);
  if (!address) return address.error();
  std::unique_ptr<RedisResponseStore> store(
      new RedisResponseStore(std::move(*address), std::move(options), timeout, std::move(prefix)));
  std::lock_guard lock(store->mutex_);
  if (!store->connection_.get()) {
    const auto& where = store->connection_.address();
    return make_error(ErrorCode::Unavailable, fmt::format("cannot reach redis at {}:{} for the stored responses: {}",
                                                          where.host, where.port, store->connection_.last_error()));
  }
  return store;
}

RedisResponseStore::RedisResponseStore(RedisAddress address, ResponseStoreOptions options,
                                       std::chrono::milliseconds timeout, std::string prefix)
    : options_(std::move(options)),
      prefix_(std::move(prefix)),
      connection_(std::move(address), timeout, std::chrono::seconds(1), scripts()) {}

RedisResponseStore::~RedisResponseStore() = default;

int64_t RedisResponseStore::now() const {
  return response_store_now_ms(options_);
}

Error RedisResponseStore::unavailable() const {
  const auto& where = connection_.address();
  return make_error(ErrorCode::Unavailable, fmt::format("the response store (redis at {}:{}) is unreachable: {}",
                                                        where.host, where.port, connection_.last_error()));
}

RedisReplyPtr RedisResponseStore::eval(size_t script, const std::string& key, const std::vector<std::string>& args) {
  auto reply = connection_.eval(script, {key}, args);
  if (!reply && connection_.get()) spdlog::warn("response store: redis: {}", connection_.last_error());
  return reply;
}

Status RedisResponseStore::put(const std::string& key_id, const std::string& id, const StoredTurn& turn) {
  TurnRecord record = record_of(id, turn);
  if (size_t bytes = turn_bytes(record); bytes > options_.per_key_bytes) {
    return turn_too_large(bytes, options_.per_key_bytes);
  }
  std::lock_guard lock(mutex_);
  auto reply = eval(kPutScript, base(key_id),
                    {id, record.response, record.input, record.previous, record.root, std::to_string(now()),
                     std::to_string(options_.retention.count()), std::to_string(options_.per_key),
                     std::to_string(options_.per_key_bytes)});
  if (!reply) return unavailable();
  return {};
}

Result<json> RedisResponseStore::response(const std::string& key_id, const std::string& id) {
  std::string key = base(key_id) + "r:" + id;
  std::lock_guard lock(mutex_);
  if (!connection_.get()) return unavailable();
  auto reply = connection_.command({"HGET", key, "response"});
  if (!reply) return unavailable();
  const redisReply* raw = reply.get();
  if (raw->type == REDIS_REPLY_NIL) {
    return response_not_found(id);
  }
  if (raw->type != REDIS_REPLY_STRING) return unavailable();
  auto parsed = parse_json(std::string_view(raw->str, raw->len));
  if (!parsed) return make_error(ErrorCode::Internal, "a stored response is not valid JSON");
  return std::move(*parsed);
}

Result<Conversation> RedisResponseStore::conversation(const std::string& key_id, const std::string& id) {
  std::vector<TurnRecord> turns;
  {
    std::lock_guard lock(mutex_);
    auto reply =
        eval(kWalkScript, base(key_id),
             {id, std::to_string(now()), std::to_string(options_.retention.count()), std::to_string(kMaxTurns)});
    if (!reply) return unavailable();
    const redisReply* raw = reply.get();
    auto text = [raw](size_t index) {
      const redisReply* element = raw->element[index];
      return element->type == REDIS_REPLY_STRING ? std::string(element->str, element->len) : std::string();
    };
    if (raw->type != REDIS_REPLY_ARRAY || raw->elements < 2 || (raw->elements - 2) % 4 != 0) return unavailable();
    if (text(0) == "missing") {
      std::string gone = text(1);
      if (gone == id) return response_not_found(id);
      return broken_chain(gone);
    }
    for (size_t index = 2; index + 3 < raw->elements; index += 4) {
      turns.push_back(TurnRecord{text(index), text(index + 1), text(index + 2), text(index + 3)});
    }
  }
  return join_turns(turns);
}

Result<bool> RedisResponseStore::erase(const std::string& key_id, const std::string& id) {
  std::lock_guard lock(mutex_);
  auto reply = eval(kEraseScript, base(key_id), {id});
  if (!reply) return unavailable();
  return reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
}

}  // namespace nebula::gateway
