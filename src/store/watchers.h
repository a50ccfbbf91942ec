#pragma once
// Shared by the Store implementations: the registry of live watches, and the rules every
// implementation applies to mutations (preconditions, event shapes, prefix matching).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "store/store.h"

namespace nebula::store {

// Live watchers. notify() is called by the store, under the store lock, once per committed event in
// revision order; it runs the matching callbacks while holding the registry's own mutex, so a
// handle's cancel() (which takes only that mutex) returns only when no callback is running. Lock
// order: store lock, then registry mutex. cancel() may be called from any thread, any number of
// times, but not from inside a watch callback (it would deadlock). A handle may outlive the
// registry; cancel() is then a no-op.
class WatcherRegistry {
 public:
  WatcherRegistry();
  WatcherRegistry(const WatcherRegistry&) = delete;
  WatcherRegistry& operator=(const WatcherRegistry&) = delete;

  // Events whose revision is below min_revision are skipped (a watch that starts in the future).
  std::unique_ptr<WatchHandle> add(std::string prefix, int64_t min_revision, WatchCallback callback);
  void notify(const WatchEvent& event);

 private:
  struct Watcher {
    std::string prefix;
    int64_t min_revision = 0;
    WatchCallback callback;
  };
  struct State {
    std::mutex mu;
    uint64_t next_id = 1;
    std::map<uint64_t, Watcher> watchers;
  };
  class Handle;

  std::shared_ptr<State> state_;
};

inline bool has_prefix(const std::string& key, const std::string& prefix) {
  return key.size() >= prefix.size() && key.compare(0, prefix.size(), prefix) == 0;
}

// The exclusive upper bound of the keys starting with prefix; nullopt when there is none ("" or all 0xff).
std::optional<std::string> prefix_end(const std::string& prefix);

Status check_key(const std::string& key);
// current: the key's present value, if any.
Status check_put(const std::string& key, const std::optional<KeyValue>& current, Precondition precondition);
Status check_remove(const std::string& key, const std::optional<KeyValue>& current, Precondition precondition);
// A put_all's batch: at most kMaxBatch puts, each key once, valid preconditions (keys are checked
// by each put).
Status check_batch(const std::vector<Put>& puts);
// For put_batches: which batches hold a key that another batch holds too (refused, all of them).
std::vector<bool> keys_in_several(const std::vector<std::vector<Put>>& batches);
Error shared_key_error();
// from_revision is valid when it is 0 (live only) or newer than compacted_revision (the newest
// revision whose event is no longer kept).
Status check_watch_from(int64_t from_revision, int64_t compacted_revision);

WatchEvent make_put_event(const std::string& key, const std::string& value, int64_t lease, int64_t revision,
                          const std::optional<KeyValue>& current);
WatchEvent make_delete_event(const KeyValue& current, int64_t revision);

}  // namespace nebula::store
