#include "gateway/redis_connection.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <charconv>

namespace nebula::gateway {

namespace {

timeval to_timeval(std::chrono::milliseconds duration) {
  timeval value{};
  value.tv_sec = static_cast<time_t>(duration.count() / 1000);
  value.tv_usec = static_cast<suseconds_t>((duration.count() % 1000) * 1000);
  return value;
}

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

}  // namespace

Result<RedisAddress> parse_redis_address(std::string_view url) {
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
  constexpr std::string_view kNotInHost("/@?# \t\r\n\0", 9);
  if (host.empty() || host.find_first_of(kNotInHost) != std::string_view::npos) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid host", url));
  }
  return RedisAddress{std::string(host), port};
}

void RedisReplyDeleter::operator()(redisReply* reply) const {
  if (reply) freeReplyObject(reply);
}

bool is_noscript(const redisReply& reply) {
  return reply.type == REDIS_REPLY_ERROR && std::string_view(reply.str, reply.len).substr(0, 8) == "NOSCRIPT";
}

RedisConnection::RedisConnection(RedisAddress address, std::chrono::milliseconds timeout,
                                 std::chrono::milliseconds retry_interval, std::vector<std::string> scripts)
    : address_(std::move(address)),
      timeout_(timeout),
      retry_interval_(retry_interval),
      scripts_(std::move(scripts)),
      shas_(scripts_.size()) {}

RedisConnection::~RedisConnection() {
  drop();
}

void RedisConnection::drop() {
  if (context_) redisFree(context_);
  context_ = nullptr;
}

void RedisConnection::fail(std::string why) {
  last_error_ = std::move(why);
  drop();
  next_attempt_ = std::chrono::steady_clock::now() + retry_interval_;
}

redisContext* RedisConnection::get() {
  if (context_) return context_;
  auto now = std::chrono::steady_clock::now();
  if (now < next_attempt_) return nullptr;
  next_attempt_ = now + retry_interval_;
  timeval timeout = to_timeval(timeout_);
  context_ = redisConnectWithTimeout(address_.host.c_str(), address_.port, timeout);
  if (!context_ || context_->err) {
    last_error_ = context_ ? context_->errstr : "out of memory";
    drop();
    return nullptr;
  }
  redisSetTimeout(context_, timeout);
  for (size_t script = 0; script < scripts_.size(); ++script) {
    if (!load(script)) {
      drop();
      return nullptr;
    }
  }
  return context_;
}

bool RedisConnection::load(size_t script) {
  std::vector<std::string_view> argv = {"SCRIPT", "LOAD", scripts_[script]};
  auto reply = command(argv);
  if (!reply) return false;
  if (reply->type != REDIS_REPLY_STRING) {
    last_error_ = reply->type == REDIS_REPLY_ERROR ? std::string(reply->str, reply->len) : "SCRIPT LOAD failed";
    return false;
  }
  shas_[script].assign(reply->str, reply->len);
  return true;
}

bool RedisConnection::reload_scripts() {
  if (!context_) return false;
  for (size_t script = 0; script < scripts_.size(); ++script) {
    if (!load(script)) {
      fail(last_error_);
      return false;
    }
  }
  return true;
}

RedisReplyPtr RedisConnection::command(const std::vector<std::string_view>& argv) {
  if (!context_) return nullptr;
  std::vector<const char*> pointers;
  std::vector<size_t> lengths;
  pointers.reserve(argv.size());
  lengths.reserve(argv.size());
  for (auto part : argv) {
    pointers.push_back(part.data());
    lengths.push_back(part.size());
  }
  RedisReplyPtr reply(static_cast<redisReply*>(
      redisCommandArgv(context_, static_cast<int>(argv.size()), pointers.data(), lengths.data())));
  if (!reply) fail(context_->errstr[0] ? context_->errstr : "no reply");
  return reply;
}

RedisReplyPtr RedisConnection::eval(size_t script, const std::vector<std::string>& keys,
                                    const std::vector<std::string>& args) {
  if (!get()) return nullptr;
  for (int attempt = 0; attempt < 2; ++attempt) {
    EvalArgv eval(shas_[script], keys, args);
    RedisReplyPtr reply(
        static_cast<redisReply*>(redisCommandArgv(context_, eval.size(), eval.argv.data(), eval.lengths.data())));
    if (!reply) {
      fail(context_->errstr[0] ? context_->errstr : "no reply");
      return nullptr;
    }
    if (is_noscript(*reply)) {
      if (!reload_scripts()) return nullptr;
      continue;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
      last_error_.assign(reply->str, reply->len);
      return nullptr;
    }
    return reply;
  }
  fail("NOSCRIPT after loading the scripts again");
  return nullptr;
}

void RedisConnection::append_eval(size_t script, const std::vector<std::string>& keys,
                                  const std::vector<std::string>& args) {
  EvalArgv eval(shas_[script], keys, args);
  redisAppendCommandArgv(context_, eval.size(), eval.argv.data(), eval.lengths.data());
}

RedisReplyPtr RedisConnection::next_reply() {
  if (!context_) return nullptr;
  void* raw = nullptr;
  if (redisGetReply(context_, &raw) != REDIS_OK || !raw) {
    if (raw) freeReplyObject(raw);
    fail(context_->errstr[0] ? context_->errstr : "no reply");
    return nullptr;
  }
  return RedisReplyPtr(static_cast<redisReply*>(raw));
}

}  // namespace nebula::gateway
