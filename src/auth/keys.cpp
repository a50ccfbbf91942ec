#include "auth/keys.h"

#include <algorithm>
#include <utility>

#include "common/ids.h"

namespace nebula::auth {

namespace {
const std::string kKeysPrefix = std::string(api::kKeyRoot) + "apikeys/";
}

Result<NewKey> create_key(store::Store& store, api::ApiKey key, int64_t now_ms) {
  if (key.scope != api::scope::kAdmin && key.scope != api::scope::kInference && key.scope != api::scope::kNode) {
    return make_error(ErrorCode::InvalidArgument, "scope must be admin or inference, got '" + key.scope + "'");
  }
  if (key.rpm < 0 || key.tpm < 0 || key.max_concurrency < 0 || key.budget_tokens < 0) {
    return make_error(ErrorCode::InvalidArgument, "limits cannot be negative");
  }
  NewKey created;
  key.metadata.name = random_id(8);
  key.metadata.uid = random_id(16);
  key.metadata.created_ms = now_ms;
  created.secret = "nb-" + key.metadata.name + "_" + random_secret_hex(16);
  key.hash = sha256_hex(created.secret);
  auto revision =
      store.put(kKeysPrefix + key.metadata.name, api::to_stored_json(key).dump(), store::Precondition::absent());
  if (!revision) return revision.error();
  created.key = std::move(key);
  return created;
}

Result<api::ApiKey> revoke_key(store::Store& store, const std::string& id) {
  api::ApiKey revoked;
  auto written = store::update(store, kKeysPrefix + id,
                               [&](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
                                 if (!current) return make_error(ErrorCode::NotFound, "key '" + id + "' not found");
                                 auto document = parse_json(*current);
                                 if (!document) return document.error();
                                 auto key = api::api_key_from_json(*document);
                                 if (!key) return key.error();
                                 key->revoked = true;
                                 revoked = *key;
                                 return std::optional<std::string>(api::to_stored_json(revoked).dump());
                               });
  if (!written) return written.error();
  return revoked;
}

Status record_last_use(store::Store& store, const std::map<std::string, int64_t>& uses) {
  for (const auto& [id, used_ms] : uses) {
    auto written = store::update(store, kKeysPrefix + id,
                                 [&](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
                                   if (!current)
                                     return std::optional<std::string>();  // deleted meanwhile: leave it absent
                                   auto document = parse_json(*current);
                                   if (!document) return document.error();
                                   auto key = api::api_key_from_json(*document);
                                   if (!key) return key.error();
                                   if (key->last_used_ms >= used_ms)
                                     return std::optional<std::string>();  // already newer
                                   key->last_used_ms = used_ms;
                                   return std::optional<std::string>(api::to_stored_json(*key).dump());
                                 });
    if (!written) return written.error();
  }
  return {};
}

std::string bearer_token(const http::Request& request) {
  std::string authorization = request.header("authorization");
  if (authorization.size() > 7 &&
      (authorization.compare(0, 7, "Bearer ") == 0 || authorization.compare(0, 7, "bearer ") == 0)) {
    return authorization.substr(7);
  }
  return request.header("x-api-key");
}

Status KeyRing::start(store::Store& store) {
  store_ = &store;
  watch_ = std::make_unique<store::ListWatch>(store, kKeysPrefix, [this](const store::WatchEvent& event) {
    apply(event.kv.key, event.type == store::WatchEvent::Type::Put ? &event.kv.value : nullptr);
  });
  return watch_->start();
}

KeyRing::~KeyRing() {
  if (watch_) watch_->stop();
}

std::shared_ptr<const api::ApiKey> KeyRing::find_in_store(std::string_view secret, const std::string& hash) const {
  // "nb-<id>_<hex>", the id made of lowercase letters and digits.
  if (!store_ || secret.size() > 256 || secret.rfind("nb-", 0) != 0) return nullptr;
  size_t underscore = secret.find('_', 3);
  if (underscore == std::string_view::npos || underscore == 3) return nullptr;
  std::string id(secret.substr(3, underscore - 3));
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return nullptr;
  }
  {
    std::lock_guard lock(mutex_);
    if (hash_by_id_.count(id)) {
      // The watch may have brought the key since authenticate() looked: then it is in by_hash_.
      // Otherwise the ring knows this id with another secret (ids are never reused).
      auto it = by_hash_.find(hash);
      return it == by_hash_.end() ? nullptr : it->second;
    }
  }
  if (!take_lookup()) return nullptr;
  store_lookups_ += 1;
  auto stored = store_->get(kKeysPrefix + id);
  if (!stored) {
    std::lock_guard lock(lookup_mutex_);
    lookups_paused_until_ = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    return nullptr;
  }
  if (!stored->has_value()) return nullptr;
  auto document = parse_json((*stored)->value);
  if (!document) return nullptr;
  auto key = api::api_key_from_json(*document);
  if (!key || key->hash != hash) return nullptr;
  return std::make_shared<const api::ApiKey>(std::move(*key));
}

bool KeyRing::take_lookup() const {
  constexpr double kBurst = 50;
  constexpr double kPerSecond = 50;
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(lookup_mutex_);
  if (now < lookups_paused_until_) return false;
  if (lookup_refilled_ != std::chrono::steady_clock::time_point{}) {
    double seconds = std::chrono::duration<double>(now - lookup_refilled_).count();
    lookup_tokens_ = std::min(kBurst, lookup_tokens_ + seconds * kPerSecond);
  }
  lookup_refilled_ = now;
  if (lookup_tokens_ < 1) return false;
  lookup_tokens_ -= 1;
  return true;
}

void KeyRing::apply(const std::string& store_key, const std::string* value) {
  std::string id = store_key.substr(kKeysPrefix.size());
  std::lock_guard lock(mutex_);
  if (auto old = hash_by_id_.find(id); old != hash_by_id_.end()) {
    by_hash_.erase(old->second);
    hash_by_id_.erase(old);
  }
  if (!value) return;
  auto document = parse_json(*value);
  if (!document) return;
  auto key = api::api_key_from_json(*document);
  if (!key || key->hash.empty()) return;
  if (revoked_here_.count(id)) key->revoked = true;
  std::string hash = key->hash;  // copied first: the assignment below moves the key
  hash_by_id_[id] = hash;
  by_hash_[hash] = std::make_shared<const api::ApiKey>(std::move(*key));
}

Result<std::shared_ptr<const api::ApiKey>> KeyRing::authenticate(std::string_view secret, int64_t now_ms) const {
  if (secret.empty()) {
    return make_error(ErrorCode::Unauthenticated,
                      "You didn't provide an API key. Send it as 'Authorization: Bearer nb-...'.");
  }
  std::string hash = sha256_hex(secret);
  std::shared_ptr<const api::ApiKey> key;
  {
    std::lock_guard lock(mutex_);
    if (auto it = by_hash_.find(hash); it != by_hash_.end()) key = it->second;
  }
  // On a store whose watch delivers asynchronously (etcd), a key created an instant ago, here or
  // on another server, may not be in the ring yet: an unknown secret is looked up in the store
  // once (not cached: the watch brings it, in order with any later revocation).
  if (!key) key = find_in_store(secret, hash);
  if (!key) return make_error(ErrorCode::Unauthenticated, "Incorrect API key provided.");
  if (key->revoked) return make_error(ErrorCode::Unauthenticated, "This API key has been revoked.");
  if (key->expires_ms > 0 && now_ms >= key->expires_ms) {
    return make_error(ErrorCode::Unauthenticated, "This API key has expired.");
  }
  std::lock_guard lock(mutex_);
  const std::string& id = key->metadata.name;
  int64_t& last = last_use_[id];
  if (now_ms > last) {
    last = now_ms;
    unrecorded_[id] = now_ms;
  }
  return key;
}

int64_t KeyRing::last_use(const std::string& id) const {
  std::lock_guard lock(mutex_);
  auto it = last_use_.find(id);
  return it == last_use_.end() ? 0 : it->second;
}

std::map<std::string, int64_t> KeyRing::take_unrecorded_uses() {
  std::lock_guard lock(mutex_);
  return std::exchange(unrecorded_, {});
}

void KeyRing::revoked_here(const std::string& id) {
  std::lock_guard lock(mutex_);
  revoked_here_.insert(id);
  auto hash = hash_by_id_.find(id);
  if (hash == hash_by_id_.end()) return;
  auto cached = by_hash_.find(hash->second);
  if (cached == by_hash_.end() || cached->second->revoked) return;
  auto revoked = std::make_shared<api::ApiKey>(*cached->second);
  revoked->revoked = true;
  cached->second = std::move(revoked);
}

size_t KeyRing::size() const {
  std::lock_guard lock(mutex_);
  return by_hash_.size();
}

}  // namespace nebula::auth
