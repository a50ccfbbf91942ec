#pragma once
// MemoryStore: the Store in process memory, for tests and simulations. Thread-safe; one mutex.
#include <chrono>
#include <cstddef>
#include <deque>
#include <map>
#include <mutex>
#include <set>

#include "common/clock.h"
#include "store/store.h"
#include "store/watchers.h"

namespace nebula::store {

class MemoryStore final : public Store {
 public:
  // Keeps the last history_limit events for watch-from-revision; older ones are compacted.
  // Lease deadlines use clock.steady_now(). clock must outlive the store.
  explicit MemoryStore(const Clock& clock = SystemClock::instance(), size_t history_limit = 10000);

  Result<std::optional<KeyValue>> get(const std::string& key) override;
  Result<ListResult> list(const std::string& prefix) override;
  Result<int64_t> put(const std::string& key, const std::string& value,
                      Precondition precondition = Precondition::none(), int64_t lease = 0) override;
  Result<int64_t> remove(const std::string& key, Precondition precondition = Precondition::none()) override;
  Result<std::vector<int64_t>> put_all(const std::vector<Put>& puts) override;
  int64_t revision() override;
  Result<std::unique_ptr<WatchHandle>> watch(const std::string& prefix, int64_t from_revision, WatchCallback callback,
                                             WatchEndCallback on_end = {}) override;
  Result<int64_t> grant_lease(int64_t ttl_ms) override;
  Status keep_alive(int64_t lease) override;
  Status revoke_lease(int64_t lease) override;
  int expire_leases() override;

 private:
  struct Lease {
    std::chrono::milliseconds ttl{0};
    std::chrono::steady_clock::time_point deadline;
    std::set<std::string> keys;
  };

  std::optional<KeyValue> find_locked(const std::string& key) const;
  // Records a committed event: history, compaction, watchers.
  void publish_locked(WatchEvent event);
  void delete_locked(const KeyValue& current);
  void revoke_locked(std::map<int64_t, Lease>::iterator lease);

  const Clock& clock_;
  const size_t history_limit_;
  std::mutex mu_;
  int64_t revision_ = 0;
  int64_t compacted_revision_ = 0;  // events up to and including this revision are gone
  std::map<std::string, KeyValue> kvs_;
  std::deque<WatchEvent> history_;
  std::map<int64_t, Lease> leases_;
  int64_t next_lease_ = 1;
  WatcherRegistry watchers_;
};

}  // namespace nebula::store
