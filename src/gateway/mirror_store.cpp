#include "gateway/mirror_store.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "api/api.h"
#include "common/ids.h"
#include "common/json.h"

namespace nebula::gateway {

namespace {
constexpr size_t kHistory = 4096;
constexpr auto kWriteTimeout = std::chrono::seconds(10);
// The server writes a bare newline after 15 s of quiet: a longer silence is a dead watch.
constexpr auto kWatchSilence = std::chrono::seconds(40);
constexpr auto kRetryDelay = std::chrono::milliseconds(500);
constexpr int kWriteAttempts = 3;

Result<store::KeyValue> kv_from_json(const json& item) {
  if (!item.is_object() || !item.contains("key") || !item["key"].is_string()) {
    return make_error(ErrorCode::Internal, "a key-value without a key");
  }
  store::KeyValue kv;
  kv.key = item["key"].get<std::string>();
  kv.value = item.value("value", "");
  kv.mod_revision = item.value("mod_revision", int64_t{0});
  kv.create_revision = item.value("create_revision", kv.mod_revision);
  kv.version = item.value("version", int64_t{1});
  return kv;
}

bool under(const std::string& key, const std::string& prefix) {
  return key.compare(0, prefix.size(), prefix) == 0;
}
}  // namespace

const std::vector<std::string>& mirrored_prefixes() {
  static const std::vector<std::string> prefixes = {api::store_prefix("deployments"), api::store_prefix("replicas"),
                                                    std::string(api::kKeyRoot) + "apikeys/",
                                                    std::string(api::kKeyRoot) + "usage/"};
  return prefixes;
}

bool gateway_may_write(std::string_view key) {
  for (const auto& prefix : mirrored_prefixes()) {
    if (key.size() > prefix.size() && key.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

class MirrorStore::Handle final : public store::WatchHandle {
 public:
  Handle(MirrorStore& store, uint64_t id) : store_(store), id_(id) {}
  ~Handle() override { cancel(); }
  void cancel() override {
    if (id_ == 0) return;
    store_.unwatch(id_);
    id_ = 0;
  }

 private:
  MirrorStore& store_;
  uint64_t id_;
};

MirrorStore::MirrorStore(asio::io_context& io, std::vector<std::string> servers, std::string api_key)
    : io_(io), servers_(std::move(servers)), api_key_(std::move(api_key)) {
  if (servers_.empty()) servers_.emplace_back();
  for (auto& server : servers_) {
    while (!server.empty() && server.back() == '/') server.pop_back();
  }
  http::ClientOptions options;
  options.connect_timeout = std::chrono::seconds(3);
  writer_ = std::make_unique<http::BlockingClient>(options);
  client_ = std::make_unique<http::Client>(io, options);
}

MirrorStore::~MirrorStore() {
  stop();
}

http::Headers MirrorStore::auth_headers() const {
  http::Headers headers;
  if (!api_key_.empty()) headers.push_back({"Authorization", "Bearer " + api_key_});
  return headers;
}

size_t MirrorStore::current() const {
  return current_.load() % servers_.size();
}

std::string MirrorStore::server() const {
  return servers_[current()];
}

void MirrorStore::next_server(size_t failed) {
  if (servers_.size() < 2) return;
  size_t next = (failed + 1) % servers_.size();
  if (current_.compare_exchange_strong(failed, next)) {
    failovers_ += 1;
    spdlog::warn("gateway: {} does not answer; following {} instead", servers_[failed], servers_[next]);
  }
}

Result<http::Response> MirrorStore::call(const std::string& method, const std::string& target,
                                         const std::string& body) {
  http::Headers headers = auth_headers();
  if (!body.empty()) headers.push_back({"Content-Type", "application/json"});
  std::lock_guard lock(write_mutex_);
  Result<http::Response> response = make_error(ErrorCode::Unavailable, "no server");
  for (size_t tried = 0; tried < servers_.size(); ++tried) {
    size_t index = current();
    response = writer_->request(method, servers_[index] + target, body, headers, kWriteTimeout);
    if (response && response->status < 500) break;
    next_server(index);
  }
  return response;
}

Result<http::Response> MirrorStore::write(json request) {
  std::string id;
  {
    std::lock_guard lock(write_mutex_);
    id = fmt::format("{}-{}", writer_id_, ++write_sequence_);
  }
  request["id"] = id;
  std::string body = request.dump();
  // An unanswered write may have been applied: it is sent again with the same id, which the
  // server answers as it answered the first (a usage delta is added once, not twice).
  Result<http::Response> response = make_error(ErrorCode::Unavailable, "not sent");
  for (int attempt = 0; attempt < kWriteAttempts; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(kRetryDelay * attempt);
    response = call("POST", "/api/v1/gateway/state", body);
    if (response && response->status < 500) break;
  }
  return response;
}

Status MirrorStore::start() {
  std::map<std::string, store::KeyValue> listed;
  int64_t revision = 0;
  auto response = call("GET", "/api/v1/gateway/state", "");  // each server in turn
  if (!response)
    return make_error(ErrorCode::Unavailable, "cannot reach " + server() + ": " + response.error().message);
  if (response->status != 200) {
    return make_error(ErrorCode::Unavailable, fmt::format("{} answered {} to the gateway's listing: {}", server(),
                                                          response->status, response->body.substr(0, 200)));
  }
  auto body = parse_json(response->body);
  if (!body || !body->is_object() || !(*body)["kvs"].is_array()) {
    return make_error(ErrorCode::Unavailable, server() + " sent a listing that is not one");
  }
  revision = body->value("revision", int64_t{0});
  for (const auto& item : (*body)["kvs"]) {
    if (auto kv = kv_from_json(item)) listed[kv->key] = std::move(*kv);
  }
  resync(std::move(listed), revision);
  asio::co_spawn(io_, follow(), asio::detached);
  return {};
}

void MirrorStore::stop() {
  if (*stopped_) return;
  *stopped_ = true;
  // The watch's response lives on the io_context: cancelled there.
  auto stopped = stopped_;
  asio::post(io_, [this, stopped] {
    if (streaming_ && *streaming_) (*streaming_)->cancel();
  });
}

bool MirrorStore::following() const {
  std::lock_guard lock(mutex_);
  return following_;
}

uint64_t MirrorStore::resyncs() const {
  std::lock_guard lock(mutex_);
  return resyncs_;
}

awaitable<void> MirrorStore::follow() {
  auto stopped = stopped_;
  asio::steady_timer delay(io_);
  bool relist = false;
  while (!*stopped) {
    const size_t index = current();
    const std::string& server = servers_[index];
    if (relist) {
      auto listing = co_await client_->request("GET", server + "/api/v1/gateway/state", "", auth_headers(),
                                               std::chrono::seconds(30));
      if (*stopped) co_return;
      auto body = listing && listing->status == 200 ? parse_json(listing->body) : Result<json>(json());
      if (body && body->is_object() && (*body)["kvs"].is_array()) {
        std::map<std::string, store::KeyValue> listed;
        for (const auto& item : (*body)["kvs"]) {
          if (auto kv = kv_from_json(item)) listed[kv->key] = std::move(*kv);
        }
        resync(std::move(listed), body->value("revision", int64_t{0}));
        relist = false;
      } else {
        spdlog::warn("gateway: cannot list {}: {}", server,
                     listing ? fmt::format("status {}", listing->status) : listing.error().message);
        next_server(index);
        delay.expires_after(kRetryDelay);
        boost::system::error_code ec;
        co_await delay.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
    }
    // From the last revision seen, not the next: on etcd one transaction writes several keys at
    // one revision, and a watch that broke among them must see the rest (what it already has is
    // skipped by mod_revision in apply).
    int64_t from = std::max<int64_t>(1, revision());
    auto opened =
        co_await client_->open("GET", fmt::format("{}/api/v1/gateway/state?watch=1&revision={}", server, from), "",
                               auth_headers(), std::chrono::seconds(10));
    if (*stopped) co_return;
    if (opened && (*opened)->status == 200) {
      std::unique_ptr<http::StreamingResponse> response = std::move(*opened);
      streaming_ = &response;
      {
        std::lock_guard lock(mutex_);
        following_ = true;
      }
      std::string pending;
      while (true) {
        auto piece = co_await response->read(kWatchSilence);
        if (!piece || piece->empty() || *stopped) break;
        pending += *piece;
        size_t start = 0;
        for (size_t end; (end = pending.find('\n', start)) != std::string::npos; start = end + 1) {
          std::string_view line(pending.data() + start, end - start);
          if (line.empty()) continue;  // keep-alive
          auto event_json = parse_json(line);
          if (!event_json || !event_json->is_object()) continue;
          store::WatchEvent event;
          event.type = event_json->value("type", "") == "DELETE" ? store::WatchEvent::Type::Delete
                                                                 : store::WatchEvent::Type::Put;
          event.kv.key = event_json->value("key", "");
          event.kv.value = event_json->value("value", "");
          event.kv.mod_revision = event_json->value("revision", int64_t{0});
          event.kv.create_revision = event_json->value("create_revision", event.kv.mod_revision);
          event.kv.version = event_json->value("version", int64_t{1});
          std::lock_guard lock(mutex_);
          apply(event);
        }
        pending.erase(0, start);
      }
      streaming_ = nullptr;
      {
        std::lock_guard lock(mutex_);
        following_ = false;
      }
      if (*stopped) co_return;
      spdlog::warn("gateway: the watch of {} broke; listing again", server);
      // Listed again from the next server: a server whose watch broke is likely going away.
      next_server(index);
      relist = true;
    } else {
      // 410: the revision was compacted away. Anything else: the server is away. Either way the
      // copy is listed afresh once the server answers.
      if (opened) spdlog::warn("gateway: watching {} answered {}", server, (*opened)->status);
      if (!opened || (*opened)->status >= 500) next_server(index);
      relist = true;
      delay.expires_after(kRetryDelay);
      boost::system::error_code ec;
      co_await delay.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }
}

void MirrorStore::apply(const store::WatchEvent& event) {
  if (event.kv.mod_revision <= 0) return;
  auto existing = kvs_.find(event.kv.key);
  // Already reflected (a write of ours the server answered, or a listing newer than the event).
  if (existing != kvs_.end() && existing->second.mod_revision >= event.kv.mod_revision) {
    revision_ = std::max(revision_, event.kv.mod_revision);
    return;
  }
  store::WatchEvent delivered = event;
  if (existing != kvs_.end()) delivered.prev = existing->second;
  if (event.type == store::WatchEvent::Type::Put) {
    kvs_[event.kv.key] = event.kv;
  } else {
    if (existing == kvs_.end()) {
      revision_ = std::max(revision_, event.kv.mod_revision);
      return;
    }
    kvs_.erase(existing);
  }
  revision_ = std::max(revision_, event.kv.mod_revision);
  history_.push_back(delivered);
  if (history_.size() > kHistory) history_.pop_front();
  for (const auto& watcher : watchers_) {
    if (under(delivered.kv.key, watcher.prefix)) watcher.callback(delivered);
  }
}

void MirrorStore::resync(std::map<std::string, store::KeyValue> listed, int64_t revision) {
  std::lock_guard lock(mutex_);
  resyncs_ += 1;
  // Keys gone from the listing were deleted while the watch was away: at the listing's revision.
  std::vector<std::string> gone;
  for (const auto& [key, kv] : kvs_) {
    if (!listed.count(key)) gone.push_back(key);
  }
  for (const auto& key : gone) {
    store::WatchEvent event;
    event.type = store::WatchEvent::Type::Delete;
    event.kv.key = key;
    event.kv.mod_revision = std::max(revision, kvs_[key].mod_revision + 1);
    apply(event);
  }
  for (auto& [key, kv] : listed) {
    store::WatchEvent event;
    event.kv = std::move(kv);
    apply(event);
  }
  revision_ = std::max(revision_, revision);
}

Result<std::optional<store::KeyValue>> MirrorStore::get(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto found = kvs_.find(key);
  if (found == kvs_.end()) return std::optional<store::KeyValue>();
  return std::optional<store::KeyValue>(found->second);
}

Result<store::ListResult> MirrorStore::list(const std::string& prefix) {
  std::lock_guard lock(mutex_);
  store::ListResult result;
  result.revision = revision_;
  for (auto it = kvs_.lower_bound(prefix); it != kvs_.end() && under(it->first, prefix); ++it) {
    result.kvs.push_back(it->second);
  }
  return result;
}

Result<int64_t> MirrorStore::put(const std::string& key, const std::string& value, store::Precondition precondition,
                                 int64_t lease) {
  if (lease != 0) return make_error(ErrorCode::InvalidArgument, "a gateway writes no keys with a lease");
  if (!gateway_may_write(key)) return make_error(ErrorCode::PermissionDenied, "a gateway may not write " + key);
  auto response =
      write(json{{"op", "put"}, {"key", key}, {"value", value}, {"mod_revision", precondition.mod_revision}});
  if (!response)
    return make_error(ErrorCode::Unavailable, "cannot write to " + server() + ": " + response.error().message);
  auto body = parse_json(response->body);
  if (response->status == 409) {
    // The copy was behind: bring the key up to what the server has, so a retry reads it.
    if (body && body->is_object() && (*body)["current"].is_object()) {
      if (auto current = kv_from_json((*body)["current"])) {
        store::WatchEvent event;
        event.kv = std::move(*current);
        std::lock_guard lock(mutex_);
        apply(event);
      }
    }
    return make_error(ErrorCode::Conflict, "the key changed: " + key);
  }
  if (response->status != 200 || !body || !body->is_object()) {
    return make_error(ErrorCode::Unavailable, fmt::format("{} answered {} to a write", server(), response->status));
  }
  store::WatchEvent event;
  event.kv.key = key;
  event.kv.value = value;
  event.kv.mod_revision = body->value("revision", int64_t{0});
  event.kv.create_revision = body->value("create_revision", event.kv.mod_revision);
  event.kv.version = body->value("version", int64_t{1});
  {
    std::lock_guard lock(mutex_);
    apply(event);
  }
  return event.kv.mod_revision;
}

Result<int64_t> MirrorStore::remove(const std::string& key, store::Precondition precondition) {
  if (!gateway_may_write(key)) return make_error(ErrorCode::PermissionDenied, "a gateway may not delete " + key);
  auto response = write(json{{"op", "delete"}, {"key", key}, {"mod_revision", precondition.mod_revision}});
  if (!response)
    return make_error(ErrorCode::Unavailable, "cannot write to " + server() + ": " + response.error().message);
  if (response->status == 404) return make_error(ErrorCode::NotFound, key + " does not exist");
  if (response->status == 409) return make_error(ErrorCode::Conflict, "the key changed: " + key);
  auto body = parse_json(response->body);
  if (response->status != 200 || !body || !body->is_object()) {
    return make_error(ErrorCode::Unavailable, fmt::format("{} answered {} to a delete", server(), response->status));
  }
  store::WatchEvent event;
  event.type = store::WatchEvent::Type::Delete;
  event.kv.key = key;
  event.kv.mod_revision = body->value("revision", int64_t{0});
  {
    std::lock_guard lock(mutex_);
    apply(event);
  }
  return event.kv.mod_revision;
}

int64_t MirrorStore::revision() {
  std::lock_guard lock(mutex_);
  return revision_;
}

Result<std::unique_ptr<store::WatchHandle>> MirrorStore::watch(const std::string& prefix, int64_t from_revision,
                                                               store::WatchCallback callback,
                                                               store::WatchEndCallback /*on_end*/) {
  std::lock_guard lock(mutex_);
  if (from_revision > 0 && from_revision <= revision_) {
    if (!history_.empty() && history_.front().kv.mod_revision > from_revision) {
      return make_error(ErrorCode::Compacted, fmt::format("revision {} is no longer kept", from_revision));
    }
    for (const auto& event : history_) {
      if (event.kv.mod_revision >= from_revision && under(event.kv.key, prefix)) callback(event);
    }
  }
  uint64_t id = next_watcher_++;
  watchers_.push_back({id, prefix, std::move(callback)});
  return std::unique_ptr<store::WatchHandle>(std::make_unique<Handle>(*this, id));
}

void MirrorStore::unwatch(uint64_t id) {
  std::lock_guard lock(mutex_);
  std::erase_if(watchers_, [id](const Watcher& watcher) { return watcher.id == id; });
}

Result<int64_t> MirrorStore::grant_lease(int64_t) {
  return make_error(ErrorCode::Unavailable, "a gateway's copy of the store has no leases");
}
Status MirrorStore::keep_alive(int64_t) {
  return make_error(ErrorCode::Unavailable, "a gateway's copy of the store has no leases");
}
Status MirrorStore::revoke_lease(int64_t) {
  return make_error(ErrorCode::Unavailable, "a gateway's copy of the store has no leases");
}

}  // namespace nebula::gateway
