#pragma once
// API keys: creation (the secret is returned once), a watch-fed cache for authentication, and the
// bearer token of a request.
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "api/keys.h"
#include "http/http.h"
#include "store/list_watch.h"
#include "store/store.h"

namespace nebula::auth {

struct NewKey {
  api::ApiKey key;
  std::string secret;  // "nb-<id>_<32 hex>": shown once, never stored
};
// Stores a new key (id and hash filled in) and returns it with its secret.
Result<NewKey> create_key(store::Store& store, api::ApiKey key, int64_t now_ms);
// Marks a key revoked. NotFound if the id is unknown.
Result<api::ApiKey> revoke_key(store::Store& store, const std::string& id);

// Raises the stored last_used_ms of each key (id → Unix ms) to the time given, never lowering
// it; ids no longer stored are skipped.
Status record_last_use(store::Store& store, const std::map<std::string, int64_t>& uses);

// "Authorization: Bearer X" or "x-api-key: X"; "" when neither.
std::string bearer_token(const http::Request& request);

// Every key, kept current from a store watch. Thread-safe.
class KeyRing {
 public:
  Status start(store::Store& store);
  ~KeyRing();
  // The key a secret belongs to: Unauthenticated when unknown, revoked or expired. A success
  // counts as the key's use at now_ms.
  Result<std::shared_ptr<const api::ApiKey>> authenticate(std::string_view secret, int64_t now_ms) const;
  size_t size() const;
  // How many times an unknown secret was looked up in the store (find_in_store), for tests.
  uint64_t store_lookups() const { return store_lookups_.load(); }
  // The latest use of a key this ring saw (0 when none since it started).
  int64_t last_use(const std::string& id) const;
  // The keys used since the last call, with their latest use (id → Unix ms), for the store.
  std::map<std::string, int64_t> take_unrecorded_uses();
  // A key this process has just revoked in the store: refused from now on, without waiting for
  // the watch to bring the revocation (read-your-writes for the server that answered the
  // DELETE). Revocation is final, so an older event the watch delivers later cannot undo it.
  void revoked_here(const std::string& id);

 private:
  void apply(const std::string& key, const std::string* value);
  // The stored key a well-formed secret names, when its hash matches: a key created elsewhere an
  // instant ago that the watch has not brought yet. nullptr when there is none.
  std::shared_ptr<const api::ApiKey> find_in_store(std::string_view secret, const std::string& hash) const;
  store::Store* store_ = nullptr;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const api::ApiKey>> by_hash_;
  std::map<std::string, std::string> hash_by_id_;
  std::set<std::string> revoked_here_;  // ids revoke_key() was called for by this process
  // Uses are noted under the lock authenticate() takes anyway: a map write per request.
  mutable std::map<std::string, int64_t> last_use_;
  mutable std::map<std::string, int64_t> unrecorded_;
  std::unique_ptr<store::ListWatch> watch_;
  // Store lookups of unknown secrets are budgeted: a token bucket of 50 refilled at 50 a second,
  // and none for 5 s after a lookup failed (the store away), so that a flood of random
  // well-formed secrets cannot turn every request into a store read on the gateway's I/O thread.
  // Past the budget an unknown secret is refused as any wrong one is.
  bool take_lookup() const;
  mutable std::mutex lookup_mutex_;
  mutable double lookup_tokens_ = 50;
  mutable std::chrono::steady_clock::time_point lookup_refilled_{};
  mutable std::chrono::steady_clock::time_point lookups_paused_until_{};
  mutable std::atomic<uint64_t> store_lookups_{0};
};

}  // namespace nebula::auth
