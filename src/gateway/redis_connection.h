#pragma once
// One blocking hiredis connection, shared by the limits (redis_limiter.cpp) and the stored
// responses (redis_responses.cpp): the redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] URL,
// connecting with a timeout and logging in (AUTH, SELECT),
// waiting `retry_interval` after a failure before trying again (a stalled Redis still accepts
// connections, and each try would cost a timeout), and Lua scripts run by their hash (EVALSHA),
// loaded again when Redis answers NOSCRIPT (it restarted, or its script cache was flushed).
//
// Threading: not thread-safe; one owner at a time (a thread of its own, or callers that hold a
// lock). Every call waits at most `timeout` on Redis.
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

struct redisContext;
struct redisReply;

namespace nebula::gateway {

struct RedisAddress {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string user;      // "" = Redis's default user (AUTH with the password alone)
  std::string password;  // "" = no AUTH
  int db = 0;            // SELECTed when not 0
};

// redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]: port 6379 and database 0 when absent; USER and
// PASSWORD percent-decoded. Without a password in the URL, NEBULA_REDIS_PASSWORD gives it (so that
// it stays out of the process list). A query, a fragment or a user without a password: refused.
Result<RedisAddress> parse_redis_address(std::string_view url);
// The URL with its user and password hidden, for messages: redis://***@HOST:PORT (any scheme).
std::string redacted_redis_url(std::string_view url);

struct RedisReplyDeleter {
  void operator()(redisReply* reply) const;
};
using RedisReplyPtr = std::unique_ptr<redisReply, RedisReplyDeleter>;

// Redis answered "NOSCRIPT ...": the script is not loaded on that server.
bool is_noscript(const redisReply& reply);

class RedisConnection {
 public:
  RedisConnection(RedisAddress address, std::chrono::milliseconds timeout, std::chrono::milliseconds retry_interval,
                  std::vector<std::string> scripts = {});
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  // The live connection with every script loaded; null while Redis is considered down (it is
  // tried again once retry_interval has passed since the last attempt or failure).
  redisContext* get();
  // The connection broke or timed out mid-command: its state is unknown, so it is dropped, and
  // Redis is not tried again for retry_interval.
  void fail(std::string why);
  // Loads every script again (after NOSCRIPT); false, and the connection failed, when it could not.
  bool reload_scripts();

  // One command (argv form), waited for: null when Redis did not answer (the connection failed;
  // last_error() says why). An error reply is returned as it is.
  RedisReplyPtr command(const std::vector<std::string_view>& argv);
  // EVALSHA of scripts[script] waited for, loading the scripts again and retrying once on
  // NOSCRIPT. Null when Redis did not answer or answered an error (last_error() says which).
  RedisReplyPtr eval(size_t script, const std::vector<std::string>& keys, const std::vector<std::string>& args);
  // EVALSHA of scripts[script] added to the output buffer, for pipelining: sent by the next read
  // (redisGetReply). get() must have returned a connection.
  void append_eval(size_t script, const std::vector<std::string>& keys, const std::vector<std::string>& args);
  // The next pipelined reply: null when it did not come within the timeout (the connection failed).
  RedisReplyPtr next_reply();

  const RedisAddress& address() const { return address_; }
  const std::string& last_error() const { return last_error_; }

 private:
  void drop();
  // A command got no reply: the connection failed, with hiredis's reason.
  void lost();
  // AUTH and SELECT as the address asks; false (last_error() says why) when Redis refused.
  bool log_in();
  bool load(size_t script);

  RedisAddress address_;
  std::chrono::milliseconds timeout_;
  std::chrono::milliseconds retry_interval_;
  std::vector<std::string> scripts_;
  std::vector<std::string> shas_;
  redisContext* context_ = nullptr;
  std::chrono::steady_clock::time_point next_attempt_{};
  std::string last_error_;
};

}  // namespace nebula::gateway
