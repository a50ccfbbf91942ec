#include "store/memory_store.h"

#include <utility>

namespace nebula::store {

MemoryStore::MemoryStore(const Clock& clock, size_t history_limit) : clock_(clock), history_limit_(history_limit) {}

Result<std::optional<KeyValue>> MemoryStore::get(const std::string& key) {
  std::lock_guard lock(mu_);
  return find_locked(key);
}

Result<ListResult> MemoryStore::list(const std::string& prefix) {
  std::lock_guard lock(mu_);
  ListResult result;
  result.revision = revision_;
  for (auto it = kvs_.lower_bound(prefix); it != kvs_.end() && has_prefix(it->first, prefix); ++it) {
    result.kvs.push_back(it->second);
  }
  return result;
}

Result<int64_t> MemoryStore::put(const std::string& key, const std::string& value, Precondition precondition,
                                 int64_t lease) {
  std::lock_guard lock(mu_);
  auto current = find_locked(key);
  if (auto status = check_put(key, current, precondition); !status) return status.error();
  auto lease_it = leases_.end();
  if (lease != 0) {
    lease_it = leases_.find(lease);
    if (lease_it == leases_.end()) {
      return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
    }
  }
  if (current && current->lease != 0 && current->lease != lease) {
    if (auto old = leases_.find(current->lease); old != leases_.end()) old->second.keys.erase(key);
  }
  if (lease_it != leases_.end()) lease_it->second.keys.insert(key);
  WatchEvent event = make_put_event(key, value, lease, revision_ + 1, current);
  kvs_[key] = event.kv;
  publish_locked(std::move(event));
  return revision_;
}

Result<std::vector<int64_t>> MemoryStore::put_all(const std::vector<Put>& puts) {
  if (auto valid = check_batch(puts); !valid) return valid.error();
  std::lock_guard lock(mu_);
  for (const auto& put : puts) {
    if (auto status = check_put(put.key, find_locked(put.key), put.precondition); !status) return status.error();
  }
  std::vector<int64_t> revisions;
  for (const auto& put : puts) {
    auto current = find_locked(put.key);
    if (current && current->lease != 0) {
      if (auto old = leases_.find(current->lease); old != leases_.end()) old->second.keys.erase(put.key);
    }
    WatchEvent event = make_put_event(put.key, put.value, 0, revision_ + 1, current);
    kvs_[put.key] = event.kv;
    publish_locked(std::move(event));
    revisions.push_back(revision_);
  }
  return revisions;
}

Result<int64_t> MemoryStore::remove(const std::string& key, Precondition precondition) {
  std::lock_guard lock(mu_);
  auto current = find_locked(key);
  if (auto status = check_remove(key, current, precondition); !status) return status.error();
  delete_locked(*current);
  return revision_;
}

int64_t MemoryStore::revision() {
  std::lock_guard lock(mu_);
  return revision_;
}

Result<std::unique_ptr<WatchHandle>> MemoryStore::watch(const std::string& prefix, int64_t from_revision,
                                                        WatchCallback callback,
                                                        WatchEndCallback /*on_end: never ends by itself*/) {
  std::lock_guard lock(mu_);
  if (auto status = check_watch_from(from_revision, compacted_revision_); !status) return status.error();
  if (from_revision != 0 && from_revision <= revision_) {
    // history_ holds revisions compacted_revision_+1 .. revision_, one event each.
    for (size_t i = static_cast<size_t>(from_revision - compacted_revision_ - 1); i < history_.size(); ++i) {
      if (has_prefix(history_[i].kv.key, prefix)) callback(history_[i]);
    }
  }
  return watchers_.add(prefix, from_revision, std::move(callback));
}

Result<int64_t> MemoryStore::grant_lease(int64_t ttl_ms) {
  if (ttl_ms <= 0) return make_error(ErrorCode::InvalidArgument, "store: lease ttl must be positive");
  std::lock_guard lock(mu_);
  int64_t id = next_lease_++;
  std::chrono::milliseconds ttl(ttl_ms);
  leases_.emplace(id, Lease{ttl, clock_.steady_now() + ttl, {}});
  return id;
}

Status MemoryStore::keep_alive(int64_t lease) {
  std::lock_guard lock(mu_);
  auto it = leases_.find(lease);
  if (it == leases_.end())
    return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
  it->second.deadline = clock_.steady_now() + it->second.ttl;
  return {};
}

Status MemoryStore::revoke_lease(int64_t lease) {
  std::lock_guard lock(mu_);
  auto it = leases_.find(lease);
  if (it == leases_.end())
    return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
  revoke_locked(it);
  return {};
}

int MemoryStore::expire_leases() {
  std::lock_guard lock(mu_);
  auto now = clock_.steady_now();
  int expired = 0;
  for (auto it = leases_.begin(); it != leases_.end();) {
    auto next = std::next(it);
    if (it->second.deadline <= now) {
      revoke_locked(it);
      ++expired;
    }
    it = next;
  }
  return expired;
}

std::optional<KeyValue> MemoryStore::find_locked(const std::string& key) const {
  auto it = kvs_.find(key);
  if (it == kvs_.end()) return std::nullopt;
  return it->second;
}

void MemoryStore::publish_locked(WatchEvent event) {
  revision_ = event.kv.mod_revision;
  watchers_.notify(event);
  history_.push_back(std::move(event));
  while (history_.size() > history_limit_) {
    compacted_revision_ = history_.front().kv.mod_revision;
    history_.pop_front();
  }
}

void MemoryStore::delete_locked(const KeyValue& current) {
  if (current.lease != 0) {
    if (auto it = leases_.find(current.lease); it != leases_.end()) it->second.keys.erase(current.key);
  }
  // current may live in kvs_: build the event before erasing.
  WatchEvent event = make_delete_event(current, revision_ + 1);
  kvs_.erase(event.kv.key);
  publish_locked(std::move(event));
}

void MemoryStore::revoke_locked(std::map<int64_t, Lease>::iterator lease) {
  std::set<std::string> keys = std::move(lease->second.keys);
  leases_.erase(lease);
  for (const auto& key : keys) {
    auto it = kvs_.find(key);
    if (it != kvs_.end()) delete_locked(it->second);
  }
}

}  // namespace nebula::store
