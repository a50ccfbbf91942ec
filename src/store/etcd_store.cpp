#include "store/etcd_store.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <future>
#include <mutex>
#include <thread>

#include "common/asio.h"
#include "common/json.h"
#include "http/http.h"
#include "store/etcd_txn_client.h"
#include "store/watchers.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace nebula::store {

namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// gRPC status codes, as etcd's JSON gateway reports them in {"code": N}.
enum GrpcCode {
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kPermissionDenied = 7,
  kFailedPrecondition = 9,
  kOutOfRange = 11,
  kUnavailable = 14,
  kUnauthenticated = 16,
};

// A watch stream that stays silent this long is taken for dead and reopened (etcd sends a
// progress notification every 10 minutes to a watch asked for them).
constexpr milliseconds kWatchIdleTimeout{11 * 60 * 1000};

std::string base64_encode(std::string_view data) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < data.size(); i += 3) {
    uint32_t n = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8) | uint8_t(data[i + 2]);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += kAlphabet[n & 63];
  }
  if (i + 1 == data.size()) {
    uint32_t n = uint8_t(data[i]) << 16;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == data.size()) {
    uint32_t n = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8);
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += kAlphabet[(n >> 6) & 63];
    out += '=';
  }
  return out;
}

Result<std::string> base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    if (c == '=') break;
    int v = value(c);
    if (v < 0) return make_error(ErrorCode::Internal, "etcd: bad base64 in an answer");
    bits = (bits << 6) | uint32_t(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out += char((bits >> count) & 0xff);
    }
  }
  return out;
}

// etcd's 64-bit numbers are JSON strings; absent means 0.
int64_t number(const json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end()) return 0;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (!it->is_string()) return 0;
  try {
    return std::stoll(it->get<std::string>());
  } catch (const std::exception&) {
    return 0;
  }
}

// etcd revision -> store revision (see the header).
int64_t from_etcd(int64_t revision) {
  return revision > 0 ? revision - 1 : 0;
}
std::string to_etcd(int64_t revision) {
  return std::to_string(etcd_revision(revision));
}

Result<KeyValue> key_value_from(const json& kv) {
  if (!kv.is_object()) return make_error(ErrorCode::Internal, "etcd: a key-value is not an object");
  KeyValue out;
  auto key = base64_decode(kv.value("key", ""));
  if (!key) return key.error();
  auto value = base64_decode(kv.value("value", ""));
  if (!value) return value.error();
  out.key = std::move(*key);
  out.value = std::move(*value);
  out.create_revision = from_etcd(number(kv, "create_revision"));
  out.mod_revision = from_etcd(number(kv, "mod_revision"));
  out.version = number(kv, "version");
  out.lease = number(kv, "lease");
  return out;
}

int64_t header_revision(const json& answer) {
  auto header = answer.find("header");
  return header != answer.end() && header->is_object() ? number(*header, "revision") : 0;
}

// The range of keys starting with prefix, as etcd wants it: "" is every key ("\0" to "\0").
json prefix_range(const std::string& prefix) {
  if (prefix.empty()) return {{"key", base64_encode(std::string(1, '\0'))}, {"range_end", base64_encode({"\0", 1})}};
  auto end = prefix_end(prefix);
  return {{"key", base64_encode(prefix)}, {"range_end", base64_encode(end ? *end : std::string(1, '\0'))}};
}

// What etcd's answer says went wrong.
struct EtcdError {
  int code = 0;
  std::string message;
};

EtcdError etcd_error(const json& answer, int status) {
  EtcdError error;
  if (answer.is_object()) {
    error.code = answer.value("code", 0);
    error.message = answer.value("message", answer.value("error", std::string()));
  }
  if (error.message.empty()) error.message = "HTTP status " + std::to_string(status);
  return error;
}

ErrorCode error_code_for(int grpc_code) {
  switch (grpc_code) {
    case kInvalidArgument: return ErrorCode::InvalidArgument;
    case kNotFound: return ErrorCode::NotFound;
    case kPermissionDenied: return ErrorCode::PermissionDenied;
    case kUnauthenticated: return ErrorCode::Unauthenticated;
    case kFailedPrecondition: return ErrorCode::Conflict;
    case kDeadlineExceeded: return ErrorCode::Timeout;
    case kUnavailable: return ErrorCode::Unavailable;
    default: return ErrorCode::Internal;
  }
}

// Unavailable answers that say the member did not apply the request (so another may).
bool not_applied(const EtcdError& error) {
  return error.code == kUnavailable &&
         (error.message.find("no leader") != std::string::npos ||
          error.message.find("leader changed") != std::string::npos ||
          error.message.find("not capable") != std::string::npos || error.message.find("stopped") != std::string::npos);
}

// Transport failures that happened before the request left (so it was not applied anywhere).
bool not_sent(const Error& error) {
  const std::string& message = error.message;
  return message.rfind("cannot connect", 0) == 0 || message.rfind("cannot resolve", 0) == 0 ||
         message.rfind("TLS handshake", 0) == 0;
}

awaitable<void> sleep_for(asio::io_context& io, milliseconds duration) {
  asio::steady_timer timer(io, duration);
  boost::system::error_code ignored;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

}  // namespace

// One watch: its callbacks and what the I/O thread needs to resume or stop it.
struct EtcdWatch {
  std::mutex mutex;  // held while a callback runs; cancel() takes it
  bool cancelled = false;
  WatchCallback callback;
  WatchEndCallback on_end;
  json range;        // key and range_end
  bool prev = true;  // ask etcd for each event's previous key-value
  // I/O thread only. etcd revisions.
  int64_t next_revision = 0;   // where the next stream starts; 0 until the first stream says
  int64_t last_delivered = 0;  // the revision of the last event delivered
  // Events delivered at last_delivered (a lease revocation deletes several keys in one
  // revision), and how many of those a resumed stream (which starts at last_delivered) repeats.
  int delivered_at_last = 0;
  int to_skip = 0;
  http::StreamingResponse* stream = nullptr;
  http::Cancellation* opening = nullptr;
  asio::steady_timer* waiting = nullptr;
  std::string at;                                     // the member the open stream reads from
  std::chrono::steady_clock::time_point last_data{};  // when that stream last said something

  bool is_cancelled() {
    std::lock_guard lock(mutex);
    return cancelled;
  }
};

struct EtcdStore::Impl {
  explicit Impl(EtcdOptions options_in) : options(std::move(options_in)), work(asio::make_work_guard(io)) {
    http::ClientOptions client_options;
    client_options.connect_timeout = std::min(options.request_timeout, milliseconds(2000));
    client_options.ca_file = options.ca_file;
    client_options.cert_file = options.cert_file;
    client_options.key_file = options.key_file;
    client = std::make_unique<http::Client>(io, client_options);
    thread = std::thread([this] { io.run(); });
  }
  ~Impl() {
    work.reset();
    io.stop();
    if (thread.joinable()) thread.join();
  }

  EtcdOptions options;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::unique_ptr<http::Client> client;
  std::thread thread;
  std::atomic<size_t> current{0};
  std::atomic<int64_t> last_revision{0};  // etcd's, as last seen
  std::string token;                      // I/O thread only
  std::unique_ptr<EtcdTxnClient> txns;    // put_batches over gRPC; null: the JSON gateway only
  std::atomic<uint64_t> txns_over_grpc{0};

  // The auth token as the I/O thread holds it: "" without auth, or before the first login.
  // Not from the I/O thread.
  std::string current_token() {
    if (options.user.empty()) return {};
    std::promise<std::string> got;
    auto future = got.get_future();
    asio::post(io, [&] { got.set_value(token); });
    return future.get();
  }

  std::string endpoint(size_t index) const { return options.endpoints[index % options.endpoints.size()]; }
  // Moves on from a failed endpoint, unless another request already did.
  void rotate(size_t failed) { current.compare_exchange_strong(failed, failed + 1); }

  // (Built outside the coroutines: g++ 12 rejects brace-initialised string arrays in them.)
  std::string login_body() const { return json{{"name", options.user}, {"password", options.password}}.dump(); }
  static http::Headers json_headers() { return {{"Content-Type", "application/json"}}; }
  static std::string watch_body(const EtcdWatch& watch) {
    json request = watch.range;
    if (watch.prev) request["prev_kv"] = true;
    request["progress_notify"] = true;
    if (watch.next_revision > 0) request["start_revision"] = std::to_string(watch.next_revision);
    return json{{"create_request", request}}.dump();
  }

  http::Headers headers() const {
    http::Headers headers{{"Content-Type", "application/json"}};
    if (!token.empty()) headers.push_back({"Authorization", token});
    return headers;
  }

  // Runs a request on the I/O thread and waits for it.
  template <typename T>
  Result<T> run(awaitable<Result<T>> task) {
    if (std::this_thread::get_id() == thread.get_id()) {
      return make_error(ErrorCode::Internal, "etcd store: called from a watch callback (not allowed)");
    }
    std::promise<Result<T>> promise;
    auto future = promise.get_future();
    asio::co_spawn(io, std::move(task), [&promise](std::exception_ptr failure, Result<T> result) {
      if (failure) {
        promise.set_value(make_error(ErrorCode::Internal, "etcd store: request failed"));
      } else {
        promise.set_value(std::move(result));
      }
    });
    return future.get();
  }

  awaitable<Status> authenticate(const std::string& at) {
    auto response = co_await client->request("POST", at + "/v3/auth/authenticate", login_body(), json_headers(),
                                             options.request_timeout);
    if (!response) co_return response.error();
    auto answer = parse_json(response->body);
    if (response->status != 200 || !answer || !answer->is_object() || !answer->contains("token")) {
      auto error = etcd_error(answer ? *answer : json(), response->status);
      co_return make_error(ErrorCode::Unauthenticated, "etcd: cannot log in as " + options.user + ": " + error.message);
    }
    token = (*answer)["token"].get<std::string>();
    co_return Status();
  }

  // POSTs body to path on the current endpoint, moving on to the next one while they cannot be
  // reached. idempotent: safe to send again after an answer was lost.
  awaitable<Result<json>> call(std::string path, std::string body, bool idempotent) {
    auto deadline = Clock::now() + options.request_timeout;
    std::string last_failure;
    size_t failures = 0;
    bool logged_in_again = false;
    while (true) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        co_return make_error(ErrorCode::Unavailable, "etcd: no member answered in time: " + last_failure);
      }
      size_t index = current.load();
      std::string at = endpoint(index);
      if (!options.user.empty() && token.empty()) {
        if (auto logged_in = co_await authenticate(at); !logged_in) {
          if (logged_in.error().code == ErrorCode::Unauthenticated) co_return logged_in.error();
          last_failure = logged_in.error().message;
          rotate(index);
          if (++failures % options.endpoints.size() == 0) co_await sleep_for(io, milliseconds(100));
          continue;
        }
      }
      auto response = co_await client->request("POST", at + path, body, headers(), left);
      if (!response) {
        last_failure = response.error().message;
        // A CA or client certificate that cannot be loaded fails every endpoint alike.
        if (response.error().code == ErrorCode::InvalidArgument)
          co_return make_error(ErrorCode::InvalidArgument, "etcd: " + last_failure);
        if (!idempotent && !not_sent(response.error())) {
          co_return make_error(ErrorCode::Unavailable,
                               "etcd: " + last_failure + " (the write may or may not have been applied)");
        }
        rotate(index);
        token.clear();  // simple tokens are per member
        if (++failures % options.endpoints.size() == 0) co_await sleep_for(io, milliseconds(100));
        continue;
      }
      auto answer = parse_json(response->body);
      if (response->status == 200 && answer && answer->is_object()) {
        int64_t revision = header_revision(*answer);
        int64_t seen = last_revision.load();
        while (revision > seen && !last_revision.compare_exchange_weak(seen, revision)) {
        }
        co_return std::move(*answer);
      }
      auto error = etcd_error(answer ? *answer : json(), response->status);
      if (error.code == kUnauthenticated && !options.user.empty() && !logged_in_again) {
        logged_in_again = true;  // the token expired, or this member never issued it
        token.clear();
        continue;
      }
      if (error.code == kUnavailable && (idempotent || not_applied(error))) {
        last_failure = error.message;
        rotate(index);
        if (++failures % options.endpoints.size() == 0) co_await sleep_for(io, milliseconds(100));
        continue;
      }
      if (error.code == kOutOfRange && error.message.find("compacted") != std::string::npos) {
        co_return make_error(ErrorCode::Compacted, "etcd: " + error.message);
      }
      co_return make_error(error_code_for(error.code), "etcd: " + error.message);
    }
  }

  Result<json> call_blocking(const std::string& path, const json& body, bool idempotent) {
    return run(call(path, body.dump(), idempotent));
  }

  // Non-idempotent calls, up to `width` in flight (each on its own pooled connection), and
  // waits for all of them; each answer at its body's index.
  struct Calls {
    std::string path;
    std::vector<std::string> bodies;
    std::vector<Result<json>> answers;
    size_t next = 0;     // I/O thread only
    size_t running = 0;  // I/O thread only
    std::promise<void> done;
  };
  std::vector<Result<json>> call_all(std::string path, std::vector<std::string> bodies, size_t width) {
    if (bodies.empty()) return {};
    if (std::this_thread::get_id() == thread.get_id()) {
      return std::vector<Result<json>>(
          bodies.size(), make_error(ErrorCode::Internal, "etcd store: called from a watch callback (not allowed)"));
    }
    auto calls = std::make_shared<Calls>();
    calls->path = std::move(path);
    calls->answers.assign(bodies.size(), make_error(ErrorCode::Internal, "etcd store: request failed"));
    calls->bodies = std::move(bodies);
    auto finished = calls->done.get_future();
    calls->running = std::min(std::max<size_t>(width, 1), calls->bodies.size());
    for (size_t worker = 0, workers = calls->running; worker < workers; ++worker) {
      asio::co_spawn(io, call_next(calls), [calls](std::exception_ptr) {
        // A worker that threw leaves its call's answer as Internal (the outcome unknown, as for a
        // lost answer); the others go on.
        if (--calls->running == 0) calls->done.set_value();
      });
    }
    finished.wait();
    return std::move(calls->answers);
  }
  awaitable<void> call_next(std::shared_ptr<Calls> calls) {
    while (calls->next < calls->bodies.size()) {
      size_t index = calls->next++;
      calls->answers[index] = co_await call(calls->path, std::move(calls->bodies[index]), false);
    }
  }

  // --- watches (everything below runs on the I/O thread) ---

  // Delivers one decoded answer line; returns false when the watch ends here.
  bool deliver(EtcdWatch& watch, const json& result, std::promise<Status>* created) {
    bool is_created = result.value("created", false);
    if (is_created && watch.next_revision == 0) watch.next_revision = header_revision(result) + 1;
    if (result.value("canceled", false)) {  // before created: one answer may say both
      int64_t compacted = number(result, "compact_revision");
      Error error{ErrorCode::Unavailable, "etcd: watch cancelled: " + result.value("cancel_reason", std::string())};
      if (compacted > 0) {
        error = Error{ErrorCode::Compacted, fmt::format("etcd: the watch's next revision {} was compacted (history "
                                                        "now starts at {})",
                                                        from_etcd(watch.next_revision), from_etcd(compacted))};
      }
      end(watch, error, created);
      return false;
    }
    if (is_created && created) created->set_value(Status());
    auto events = result.find("events");
    if (events == result.end() || !events->is_array()) return true;
    for (const auto& item : *events) {
      WatchEvent event;
      event.type = item.value("type", std::string()) == "DELETE" ? WatchEvent::Type::Delete : WatchEvent::Type::Put;
      auto kv = key_value_from(item.value("kv", json::object()));
      if (!kv) {
        end(watch, kv.error(), created);
        return false;
      }
      event.kv = std::move(*kv);
      if (event.type == WatchEvent::Type::Delete) {
        event.kv.value.clear();
        event.kv.create_revision = 0;
        event.kv.version = 0;
        event.kv.lease = 0;
      }
      if (auto prev = item.find("prev_kv"); prev != item.end()) {
        auto previous = key_value_from(*prev);
        if (previous) event.prev = std::move(*previous);
      }
      int64_t etcd_revision = event.kv.mod_revision + 1;
      if (etcd_revision < watch.last_delivered) continue;
      if (etcd_revision == watch.last_delivered && watch.to_skip > 0) {
        --watch.to_skip;  // delivered before the stream was resumed
        continue;
      }
      {
        std::lock_guard lock(watch.mutex);
        if (watch.cancelled) return false;
        watch.callback(event);
      }
      if (etcd_revision == watch.last_delivered) {
        ++watch.delivered_at_last;
      } else {
        watch.last_delivered = etcd_revision;
        watch.delivered_at_last = 1;
        watch.to_skip = 0;
      }
      watch.next_revision = etcd_revision + 1;
    }
    return true;
  }

  void end(EtcdWatch& watch, const Error& error, std::promise<Status>* created) {
    if (created) {
      created->set_value(error);
      return;
    }
    std::lock_guard lock(watch.mutex);
    if (watch.cancelled) return;
    watch.cancelled = true;
    if (error.code != ErrorCode::Compacted) {
      spdlog::warn("etcd store: a watch ended: {}", error.message);
    }
    if (watch.on_end) watch.on_end(error);
  }

  // While the watch lives: when its stream has been silent for watch_probe, asks the stream's
  // member for its status; two failures in a row close the stream, which run_watch() then opens
  // on the next member. (A member that hangs without closing the connection otherwise keeps a
  // watch deaf until kWatchIdleTimeout.)
  awaitable<void> probe_watch(std::shared_ptr<EtcdWatch> watch) {
    int failures = 0;
    asio::steady_timer timer(io);
    while (!watch->is_cancelled()) {
      timer.expires_after(options.watch_probe);
      boost::system::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      if (watch->is_cancelled()) break;
      auto silent = std::chrono::steady_clock::now() - watch->last_data;
      if (!watch->stream || silent < options.watch_probe) {
        failures = 0;
        continue;
      }
      std::string at = watch->at;
      auto answer = co_await client->request("POST", at + "/v3/maintenance/status", "{}", headers(),
                                             std::min(options.watch_probe, options.request_timeout));
      if (watch->is_cancelled()) break;
      if (answer && answer->status == 200) {
        failures = 0;
        continue;
      }
      if (++failures >= 2 && watch->stream && watch->at == at) {
        spdlog::warn("etcd store: {} does not answer; the watch moves on", at);
        watch->stream->cancel();
        failures = 0;
      }
    }
  }

  // Keeps one watch open: on the current endpoint, then, whenever its stream breaks, on the next
  // one from the revision after the last delivered. `created` is set once the first stream is
  // open (or failed for good).
  awaitable<void> run_watch(std::shared_ptr<EtcdWatch> watch, std::shared_ptr<std::promise<Status>> created_promise) {
    std::promise<Status>* created = created_promise.get();
    size_t failures = 0;
    while (!watch->is_cancelled()) {
      if (failures > 0) {
        asio::steady_timer timer(io, milliseconds(std::min<size_t>(1000, 50 * failures)));
        watch->waiting = &timer;
        boost::system::error_code ignored;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        watch->waiting = nullptr;
        if (watch->is_cancelled()) break;
      }
      size_t index = current.load();
      std::string at = endpoint(index);
      if (!options.user.empty() && token.empty()) {
        if (auto logged_in = co_await authenticate(at); !logged_in) {
          ++failures;
          rotate(index);
          continue;
        }
      }
      if (watch->last_delivered > 0) {
        watch->next_revision = watch->last_delivered;
        watch->to_skip = watch->delivered_at_last;
      }
      http::Cancellation cancellation;
      watch->opening = &cancellation;
      auto opened = co_await client->open("POST", at + "/v3/watch", watch_body(*watch), headers(),
                                          options.request_timeout, &cancellation);
      watch->opening = nullptr;
      if (!opened || (*opened)->status != 200) {
        if (opened && (*opened)->status == 401) token.clear();
        ++failures;
        rotate(index);
        continue;
      }
      auto stream = std::move(*opened);
      watch->stream = stream.get();
      watch->at = at;
      watch->last_data = std::chrono::steady_clock::now();
      std::string pending;
      bool open = true;
      while (open && !watch->is_cancelled()) {
        auto piece = co_await stream->read(kWatchIdleTimeout);
        if (!piece || piece->empty()) break;
        watch->last_data = std::chrono::steady_clock::now();
        pending += *piece;
        size_t newline;
        while (open && (newline = pending.find('\n')) != std::string::npos) {
          std::string line = pending.substr(0, newline);
          pending.erase(0, newline + 1);
          auto answer = parse_json(line);
          if (!answer || !answer->is_object()) continue;
          if (answer->contains("error")) {
            auto error = etcd_error((*answer)["error"].is_object() ? (*answer)["error"] : *answer, 200);
            if (error.code == kUnauthenticated) token.clear();
            open = false;
            break;
          }
          auto result = answer->find("result");
          if (result == answer->end() || !result->is_object()) continue;
          bool was_created = result->value("created", false);
          if (!deliver(*watch, *result, created)) {
            watch->stream = nullptr;
            stream->cancel();
            co_return;
          }
          if (was_created) {
            created = nullptr;
            failures = 0;
          }
        }
      }
      watch->stream = nullptr;
      stream->cancel();
      if (watch->is_cancelled()) break;
      ++failures;
      rotate(index);
      spdlog::info("etcd store: a watch stream to {} broke; resuming at revision {} on {}", at,
                   from_etcd(watch->next_revision), endpoint(index + 1));
    }
    if (created) created->set_value(make_error(ErrorCode::Unavailable, "etcd: the watch was cancelled"));
  }
};

namespace {

class EtcdWatchHandle final : public WatchHandle {
 public:
  EtcdWatchHandle(std::shared_ptr<EtcdWatch> watch, std::weak_ptr<EtcdStore::Impl> store)
      : watch_(std::move(watch)), store_(std::move(store)) {}
  ~EtcdWatchHandle() override { cancel(); }
  void cancel() override {
    {
      std::lock_guard lock(watch_->mutex);
      if (watch_->cancelled && done_) return;
      watch_->cancelled = true;
    }
    done_ = true;
    // Wake the I/O thread's loop so it lets go of the stream now, not at the next event.
    if (auto store = store_.lock()) {
      asio::post(store->io, [watch = watch_] {
        if (watch->stream) watch->stream->cancel();
        if (watch->opening) watch->opening->cancel();
        if (watch->waiting) watch->waiting->cancel();
      });
    }
  }

 private:
  std::shared_ptr<EtcdWatch> watch_;
  std::weak_ptr<EtcdStore::Impl> store_;
  bool done_ = false;
};

}  // namespace

Result<EtcdOptions> parse_etcd_url(const std::string& url) {
  auto fail = [&url](const std::string& why) {
    return make_error(ErrorCode::InvalidArgument,
                      "bad etcd URL '" + url + "': " + why +
                          " (expected etcd://HOST:PORT[,HOST:PORT...][?tls=1&ca=PATH&cert=PATH&key=PATH&user=NAME&"
                          "password=SECRET&timeout_ms=N&grpc=0])");
  };
  const std::string scheme = "etcd://";
  if (url.rfind(scheme, 0) != 0) return fail("it does not start with etcd://");
  std::string rest = url.substr(scheme.size());
  std::string query;
  if (auto mark = rest.find('?'); mark != std::string::npos) {
    query = rest.substr(mark + 1);
    rest.resize(mark);
  }
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  EtcdOptions options;
  bool tls = false;
  size_t start = 0;
  while (start <= query.size() && !query.empty()) {
    size_t end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    std::string pair = query.substr(start, end - start);
    start = end + 1;
    if (pair.empty()) continue;
    auto equals = pair.find('=');
    if (equals == std::string::npos) return fail("option '" + pair + "' has no value");
    std::string name = pair.substr(0, equals);
    std::string value = pair.substr(equals + 1);
    if (name == "tls") {
      if (value != "1" && value != "0" && value != "true" && value != "false") return fail("tls is 1 or 0");
      tls = value == "1" || value == "true";
    } else if (name == "ca") {
      options.ca_file = value;
      tls = true;
    } else if (name == "cert") {
      options.cert_file = value;
      tls = true;
    } else if (name == "key") {
      options.key_file = value;
      tls = true;
    } else if (name == "user") {
      options.user = value;
    } else if (name == "password") {
      options.password = value;
    } else if (name == "grpc") {
      if (value != "1" && value != "0" && value != "true" && value != "false") return fail("grpc is 1 or 0");
      options.grpc_batches = value == "1" || value == "true";
    } else if (name == "timeout_ms") {
      if (value.empty() || value.size() > 7 || value.find_first_not_of("0123456789") != std::string::npos ||
          std::stoll(value) < 100) {
        return fail("timeout_ms is a number of milliseconds, at least 100");
      }
      options.request_timeout = milliseconds(std::stoll(value));
    } else {
      return fail("unknown option '" + name + "'");
    }
  }
  if (options.cert_file.empty() != options.key_file.empty()) return fail("cert and key go together");
  if (options.user.empty() != options.password.empty()) return fail("user and password go together");
  start = 0;
  while (start <= rest.size()) {
    size_t end = rest.find(',', start);
    if (end == std::string::npos) end = rest.size();
    std::string member = rest.substr(start, end - start);
    start = end + 1;
    if (member.empty()) return fail("an endpoint is empty");
    size_t colon = member.rfind(':');
    if (colon == std::string::npos || colon == 0) return fail("endpoint '" + member + "' needs HOST:PORT");
    std::string host = member.substr(0, colon);
    std::string port = member.substr(colon + 1);
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(port) == 0 || std::stoi(port) > 65535) {
      return fail("endpoint '" + member + "' has a bad port");
    }
    bool bracketed = host.size() > 2 && host.front() == '[' && host.back() == ']';
    if (!bracketed && host.find_first_of(":/@[] ") != std::string::npos) {
      return fail("endpoint '" + member + "' has a bad host");
    }
    options.endpoints.push_back((tls ? "https://" : "http://") + member);
  }
  return options;
}

EtcdStore::EtcdStore(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

EtcdStore::~EtcdStore() = default;

Result<std::unique_ptr<EtcdStore>> EtcdStore::open(EtcdOptions options) {
  if (options.endpoints.empty()) return make_error(ErrorCode::InvalidArgument, "etcd: no endpoint given");
  std::string names;
  for (const auto& endpoint : options.endpoints) names += (names.empty() ? "" : ", ") + endpoint;
  auto impl = std::make_shared<Impl>(std::move(options));
  auto probe = impl->call_blocking("/v3/kv/range", json{{"key", base64_encode({"\0", 1})}, {"count_only", true}}, true);
  if (!probe) {
    return make_error(probe.error().code == ErrorCode::Unavailable ? ErrorCode::Unavailable : probe.error().code,
                      "cannot use the etcd cluster at " + names + ": " + probe.error().message);
  }
  if (impl->options.grpc_batches) {
    EtcdTxnOptions txn_options;
    txn_options.ca_file = impl->options.ca_file;
    txn_options.cert_file = impl->options.cert_file;
    txn_options.key_file = impl->options.key_file;
    txn_options.timeout = impl->options.request_timeout;
    txn_options.connect_timeout = std::min(impl->options.request_timeout, milliseconds(2000));
    auto txns = EtcdTxnClient::make(std::move(txn_options));
    if (!txns) return txns.error();
    impl->txns = std::move(*txns);
  }
  return std::unique_ptr<EtcdStore>(new EtcdStore(std::move(impl)));
}

uint64_t EtcdStore::txns_over_grpc() const {
  return impl_->txns_over_grpc.load();
}

std::string EtcdStore::current_endpoint() const {
  return impl_->endpoint(impl_->current.load());
}

Result<std::optional<KeyValue>> EtcdStore::get(const std::string& key) {
  if (auto valid = check_key(key); !valid) return valid.error();
  auto answer = impl_->call_blocking("/v3/kv/range", json{{"key", base64_encode(key)}}, true);
  if (!answer) return answer.error();
  auto kvs = answer->find("kvs");
  if (kvs == answer->end() || !kvs->is_array() || kvs->empty()) return std::optional<KeyValue>();
  auto kv = key_value_from((*kvs)[0]);
  if (!kv) return kv.error();
  return std::optional<KeyValue>(std::move(*kv));
}

Result<ListResult> EtcdStore::list(const std::string& prefix) {
  auto answer = impl_->call_blocking("/v3/kv/range", prefix_range(prefix), true);
  if (!answer) return answer.error();
  ListResult out;
  out.revision = from_etcd(header_revision(*answer));
  if (auto kvs = answer->find("kvs"); kvs != answer->end() && kvs->is_array()) {
    for (const auto& item : *kvs) {
      auto kv = key_value_from(item);
      if (!kv) return kv.error();
      out.kvs.push_back(std::move(*kv));
    }
  }
  return out;
}

namespace {
// The compare of a precondition (none for Precondition::none()).
json compare_for(const std::string& key, Precondition precondition) {
  if (precondition.mod_revision == 0) {
    return json::array(
        {{{"key", base64_encode(key)}, {"target", "CREATE"}, {"result", "EQUAL"}, {"create_revision", "0"}}});
  }
  return json::array({{{"key", base64_encode(key)},
                       {"target", "MOD"},
                       {"result", "EQUAL"},
                       {"mod_revision", to_etcd(precondition.mod_revision)}}});
}

// The key as a failed transaction's range found it.
Result<std::optional<KeyValue>> current_from_failure(const json& answer) {
  auto responses = answer.find("responses");
  if (responses == answer.end() || !responses->is_array() || responses->empty()) return std::optional<KeyValue>();
  const json& range = (*responses)[0].value("response_range", json::object());
  auto kvs = range.find("kvs");
  if (kvs == range.end() || !kvs->is_array() || kvs->empty()) return std::optional<KeyValue>();
  auto kv = key_value_from((*kvs)[0]);
  if (!kv) return kv.error();
  return std::optional<KeyValue>(std::move(*kv));
}
}  // namespace

Result<int64_t> EtcdStore::put(const std::string& key, const std::string& value, Precondition precondition,
                               int64_t lease) {
  if (auto valid = check_key(key); !valid) return valid.error();
  if (precondition.mod_revision < -1) {
    return make_error(ErrorCode::InvalidArgument,
                      "store: bad precondition " + std::to_string(precondition.mod_revision));
  }
  json request{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0) request["lease"] = std::to_string(lease);
  if (precondition.mod_revision < 0) {
    // Sent again when the answer is lost (a member died, a leader election timed it out): the same
    // value written twice changes nothing but the revision.
    auto answer = impl_->call_blocking("/v3/kv/put", request, true);
    if (!answer) {
      if (answer.error().code == ErrorCode::NotFound) {
        return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
      }
      return answer.error();
    }
    return from_etcd(header_revision(*answer));
  }
  json txn{{"compare", compare_for(key, precondition)},
           {"success", json::array({{{"request_put", request}}})},
           {"failure", json::array({{{"request_range", {{"key", base64_encode(key)}}}}})}};
  auto answer = impl_->call_blocking("/v3/kv/txn", txn, false);
  if (!answer) {
    if (answer.error().code == ErrorCode::NotFound) {
      return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
    }
    return answer.error();
  }
  if (answer->value("succeeded", false)) return from_etcd(header_revision(*answer));
  auto current = current_from_failure(*answer);
  if (!current) return current.error();
  if (auto refused = check_put(key, *current, precondition); !refused) return refused.error();
  return make_error(ErrorCode::Conflict, "store: key " + key + " changed concurrently");
}

namespace {
// What etcd would refuse in a put_all batch, refused before anything is sent.
Status check_txn(const std::vector<Put>& puts) {
  if (auto valid = check_batch(puts); !valid) return valid.error();
  for (const auto& put : puts) {
    if (auto valid = check_key(put.key); !valid) return valid.error();
  }
  return {};
}

// The etcd txn of a put_all batch (checked first): a compare per precondition, a put per key.
Result<std::string> batch_txn(const std::vector<Put>& puts) {
  if (auto valid = check_txn(puts); !valid) return valid.error();
  json compares = json::array();
  json success = json::array();
  for (const auto& put : puts) {
    if (put.precondition.mod_revision >= 0) compares.push_back(compare_for(put.key, put.precondition)[0]);
    success.push_back({{"request_put", {{"key", base64_encode(put.key)}, {"value", base64_encode(put.value)}}}});
  }
  return json{{"compare", std::move(compares)}, {"success", std::move(success)}}.dump();
}

// What a batch's txn did, from whether its compares held and etcd's revision after it.
Result<std::vector<int64_t>> batch_outcome(bool succeeded, int64_t revision, size_t size) {
  if (!succeeded) {
    return make_error(ErrorCode::Conflict,
                      "store: a key of a batch of " + std::to_string(size) + " changed concurrently (nothing written)");
  }
  return std::vector<int64_t>(size, from_etcd(revision));
}
Result<std::vector<int64_t>> batch_outcome(const Result<json>& answer, size_t size) {
  if (!answer) return answer.error();
  return batch_outcome(answer->value("succeeded", false), header_revision(*answer), size);
}
}  // namespace

Result<std::vector<int64_t>> EtcdStore::put_all(const std::vector<Put>& puts) {
  auto txn = batch_txn(puts);
  if (!txn) return txn.error();
  if (puts.empty()) return std::vector<int64_t>();
  return batch_outcome(impl_->run(impl_->call("/v3/kv/txn", std::move(*txn), false)), puts.size());
}

std::vector<Result<std::vector<int64_t>>> EtcdStore::put_batches(const std::vector<std::vector<Put>>& batches) {
  std::vector<Result<std::vector<int64_t>>> outcomes(batches.size(), std::vector<int64_t>());
  auto shared = keys_in_several(batches);
  std::vector<size_t> sent;  // the batches to send
  for (size_t index = 0; index < batches.size(); ++index) {
    if (shared[index]) {
      outcomes[index] = shared_key_error();
    } else if (auto valid = check_txn(batches[index]); !valid) {
      outcomes[index] = valid.error();
    } else if (!batches[index].empty()) {
      sent.push_back(index);
    }
  }
  if (impl_->txns && !sent.empty() && std::this_thread::get_id() != impl_->thread.get_id()) {
    std::string token = impl_->current_token();
    std::vector<const std::vector<Put>*> txns;
    for (size_t index : sent) txns.push_back(&batches[index]);
    // Without a token yet (auth, before the first login), everything goes through the gateway.
    auto answers = impl_->options.user.empty() || !token.empty()
                       ? impl_->txns->run(current_endpoint(), token, txns, impl_->options.batches_in_flight)
                       : make_error(ErrorCode::Unauthenticated, "no token yet");
    if (answers) {
      // Refused the token (expired, or a member that never issued it): nothing was applied, so
      // through the gateway, which logs in again.
      std::vector<size_t> again;
      for (size_t i = 0; i < sent.size(); ++i) {
        const auto& answer = (*answers)[i];
        if (!answer && answer.error().code == ErrorCode::Unauthenticated) {
          again.push_back(sent[i]);
        } else if (!answer) {
          outcomes[sent[i]] = answer.error();
        } else {
          impl_->txns_over_grpc += 1;
          outcomes[sent[i]] = batch_outcome(answer->succeeded, answer->revision, batches[sent[i]].size());
        }
      }
      sent = std::move(again);
    } else {
      spdlog::debug("etcd: {}; the batch goes through the JSON gateway", answers.error().message);
    }
  }
  std::vector<std::string> bodies;  // through the gateway: each batch's JSON, built only now
  for (size_t index : sent) bodies.push_back(std::move(batch_txn(batches[index])).value());
  auto answers = impl_->call_all("/v3/kv/txn", std::move(bodies), impl_->options.batches_in_flight);
  for (size_t i = 0; i < sent.size(); ++i) outcomes[sent[i]] = batch_outcome(answers[i], batches[sent[i]].size());
  return outcomes;
}

Result<int64_t> EtcdStore::remove(const std::string& key, Precondition precondition) {
  if (auto valid = check_key(key); !valid) return valid.error();
  json request{{"key", base64_encode(key)}};
  if (precondition.mod_revision < 0) {
    auto answer = impl_->call_blocking("/v3/kv/deleterange", request, false);
    if (!answer) return answer.error();
    if (number(*answer, "deleted") == 0) return make_error(ErrorCode::NotFound, "store: key " + key + " not found");
    return from_etcd(header_revision(*answer));
  }
  if (precondition.mod_revision == 0) return check_remove(key, std::nullopt, precondition).error();
  json txn{{"compare", compare_for(key, precondition)},
           {"success", json::array({{{"request_delete_range", request}}})},
           {"failure", json::array({{{"request_range", request}}})}};
  auto answer = impl_->call_blocking("/v3/kv/txn", txn, false);
  if (!answer) return answer.error();
  if (answer->value("succeeded", false)) return from_etcd(header_revision(*answer));
  auto current = current_from_failure(*answer);
  if (!current) return current.error();
  if (auto refused = check_remove(key, *current, precondition); !refused) return refused.error();
  return make_error(ErrorCode::Conflict, "store: key " + key + " changed concurrently");
}

int64_t EtcdStore::revision() {
  // On failure, the last revision seen is the best answer there is.
  auto answer =
      impl_->call_blocking("/v3/kv/range", json{{"key", base64_encode({"\0", 1})}, {"count_only", true}}, true);
  (void)answer;
  return from_etcd(impl_->last_revision.load());
}

Result<std::unique_ptr<WatchHandle>> EtcdStore::watch(const std::string& prefix, int64_t from_revision,
                                                      WatchCallback callback, WatchEndCallback on_end) {
  return open_watch(prefix, from_revision, std::move(callback), std::move(on_end), true);
}

Result<std::unique_ptr<WatchHandle>> EtcdStore::watch_values(const std::string& prefix, int64_t from_revision,
                                                             WatchCallback callback, WatchEndCallback on_end) {
  return open_watch(prefix, from_revision, std::move(callback), std::move(on_end), false);
}

Result<std::unique_ptr<WatchHandle>> EtcdStore::open_watch(const std::string& prefix, int64_t from_revision,
                                                           WatchCallback callback, WatchEndCallback on_end,
                                                           bool with_prev) {
  if (from_revision < 0) {
    return make_error(ErrorCode::InvalidArgument, "store: bad watch revision " + std::to_string(from_revision));
  }
  auto watch = std::make_shared<EtcdWatch>();
  watch->prev = with_prev;
  watch->callback = std::move(callback);
  watch->on_end = std::move(on_end);
  watch->range = prefix_range(prefix);
  if (from_revision > 0) {
    // etcd reports a compacted start only after the watch was created, and only when it has
    // history to send: ask first with a read at that revision (a compaction after this check
    // ends the watch with Compacted instead).
    json probe = watch->range;
    probe["revision"] = to_etcd(from_revision);
    probe["count_only"] = true;
    auto answer = impl_->call_blocking("/v3/kv/range", probe, true);
    if (!answer && answer.error().code == ErrorCode::Compacted) {
      return make_error(ErrorCode::Compacted, "store: revision " + std::to_string(from_revision) + " is compacted (" +
                                                  answer.error().message + ")");
    }
    if (!answer && answer.error().message.find("future revision") == std::string::npos) return answer.error();
    watch->next_revision = from_revision + 1;
  }
  auto created = std::make_shared<std::promise<Status>>();
  auto ready = created->get_future();
  if (std::this_thread::get_id() == impl_->thread.get_id()) {
    return make_error(ErrorCode::Internal, "etcd store: called from a watch callback (not allowed)");
  }
  asio::co_spawn(impl_->io, impl_->run_watch(watch, created), asio::detached);
  asio::co_spawn(impl_->io, impl_->probe_watch(watch), asio::detached);
  auto handle = std::make_unique<EtcdWatchHandle>(watch, impl_);
  if (ready.wait_for(impl_->options.request_timeout + milliseconds(1000)) != std::future_status::ready) {
    return make_error(ErrorCode::Unavailable, "etcd: no member accepted the watch in time");
  }
  if (auto status = ready.get(); !status) return status.error();
  return std::unique_ptr<WatchHandle>(std::move(handle));
}

Result<int64_t> EtcdStore::grant_lease(int64_t ttl_ms) {
  if (ttl_ms <= 0) return make_error(ErrorCode::InvalidArgument, "store: lease ttl must be positive");
  int64_t seconds = (ttl_ms + 999) / 1000;
  auto answer = impl_->call_blocking("/v3/lease/grant", json{{"TTL", std::to_string(seconds)}}, false);
  if (!answer) return answer.error();
  int64_t id = number(*answer, "ID");
  if (id == 0) return make_error(ErrorCode::Internal, "etcd: lease grant answered no id");
  return id;
}

Status EtcdStore::keep_alive(int64_t lease) {
  auto answer = impl_->call_blocking("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}, true);
  if (!answer) return answer.error();
  // A stream of one answer: {"result": {"ID", "TTL"}}; no TTL (0) means the lease is gone.
  const json& result = answer->contains("result") ? (*answer)["result"] : *answer;
  if (!result.is_object() || number(result, "TTL") <= 0) {
    return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
  }
  return {};
}

Status EtcdStore::revoke_lease(int64_t lease) {
  auto answer = impl_->call_blocking("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}, false);
  if (!answer) {
    if (answer.error().code == ErrorCode::NotFound) {
      return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
    }
    return answer.error();
  }
  return {};
}

Status EtcdStore::compact(int64_t revision) {
  if (revision <= 0) return make_error(ErrorCode::InvalidArgument, "store: bad compaction revision");
  auto answer =
      impl_->call_blocking("/v3/kv/compaction", json{{"revision", to_etcd(revision)}, {"physical", true}}, true);
  if (!answer) return answer.error();
  return {};
}

}  // namespace nebula::store
