#include "gateway/redis_connection.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <cctype>
#include <charconv>
#include <cstdlib>
#include <optional>

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

std::string redacted_redis_url(std::string_view url) {
  // Whatever the scheme: a mistyped one (rediss://) may carry a password too.
  auto scheme = url.find("://");
  auto at = url.rfind('@');
  if (scheme == std::string_view::npos || at == std::string_view::npos || at < scheme) {
    return std::string(url.substr(0, 300));
  }
  return std::string(url.substr(0, std::min<size_t>(scheme, 20))) + "://***@" + std::string(url.substr(at + 1, 300));
}

namespace {

// %XX escapes decoded (a password may hold ':', '@' or '/'); nullopt for a malformed escape. Not
// http::url_decode: that one reads query strings, where '+' is a space and a malformed escape is
// kept as it is; in a URL's login '+' is itself, and a mistyped escape must not log in as
// something else.
std::optional<std::string> percent_decoded(std::string_view text) {
  std::string decoded;
  for (size_t index = 0; index < text.size(); ++index) {
    if (text[index] != '%') {
      decoded += text[index];
      continue;
    }
    // Two hex digits (from_chars alone would take "%-1" as -1).
    if (index + 2 >= text.size() || !std::isxdigit(static_cast<unsigned char>(text[index + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(text[index + 2]))) {
      return std::nullopt;
    }
    int value = 0;
    std::from_chars(text.data() + index + 1, text.data() + index + 3, value, 16);
    decoded += static_cast<char>(value);
    index += 2;
  }
  return decoded;
}

}  // namespace

Result<RedisAddress> parse_redis_address(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  const std::string shown = redacted_redis_url(url);
  if (url.substr(0, kScheme.size()) != kScheme) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not a redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] URL", shown));
  }
  std::string_view rest = url.substr(kScheme.size());
  RedisAddress address;
  // The login, up to the last '@' (a password's own '@' is written %40, but be lenient).
  if (auto at = rest.rfind('@'); at != std::string_view::npos) {
    std::string_view login = rest.substr(0, at);
    rest = rest.substr(at + 1);
    auto colon = login.find(':');
    if (colon == std::string_view::npos) {
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("'{}': write the login as USER:PASSWORD@ or :PASSWORD@", shown));
    }
    auto user = percent_decoded(login.substr(0, colon));
    auto password = percent_decoded(login.substr(colon + 1));
    if (!user || !password || password->empty()) {
      return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid password", shown));
    }
    address.user = std::move(*user);
    address.password = std::move(*password);
  }
  if (auto slash = rest.find('/'); slash != std::string_view::npos) {
    std::string_view digits = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!digits.empty()) {
      auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), address.db);
      if (error != std::errc() || end != digits.data() + digits.size() || address.db < 0 || address.db > 15) {
        return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid database (0 to 15)", shown));
      }
    }
  }
  if (address.password.empty()) {
    if (const char* from_env = std::getenv("NEBULA_REDIS_PASSWORD"); from_env && *from_env) {
      address.password = from_env;
    }
  }
  std::string_view host = rest;
  int port = 6379;
  if (auto colon = rest.rfind(':'); colon != std::string_view::npos) {
    host = rest.substr(0, colon);
    std::string_view digits = rest.substr(colon + 1);
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (error != std::errc() || end != digits.data() + digits.size() || port < 1 || port > 65535) {
      return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid port", shown));
    }
  }
  constexpr std::string_view kNotInHost("/@?# \t\r\n\0", 9);
  if (host.empty() || host.find_first_of(kNotInHost) != std::string_view::npos) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' has no valid host", shown));
  }
  address.host = std::string(host);
  address.port = port;
  return address;
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

void RedisConnection::lost() {
  fail(context_->errstr[0] ? context_->errstr : "no reply");
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
  if (!log_in()) {
    drop();
    return nullptr;
  }
  for (size_t script = 0; script < scripts_.size(); ++script) {
    if (!load(script)) {
      drop();
      return nullptr;
    }
  }
  return context_;
}

bool RedisConnection::log_in() {
  auto refused = [this](const std::string& what, const RedisReplyPtr& reply) {
    if (!reply) return true;  // command() said why
    if (reply->type != REDIS_REPLY_ERROR) return false;
    last_error_ = fmt::format("{}: {}", what, std::string_view(reply->str, reply->len));
    return true;
  };
  if (!address_.password.empty()) {
    std::vector<std::string_view> argv = {"AUTH"};
    if (!address_.user.empty()) argv.push_back(address_.user);
    argv.push_back(address_.password);
    if (refused("Redis refused the login", command(argv))) return false;
  }
  if (address_.db != 0) {
    std::string db = std::to_string(address_.db);
    if (refused("SELECT " + db, command({"SELECT", db}))) return false;
  }
  return true;
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
  if (!reply) lost();
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
      lost();
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
    lost();
    return nullptr;
  }
  return RedisReplyPtr(static_cast<redisReply*>(raw));
}

}  // namespace nebula::gateway
