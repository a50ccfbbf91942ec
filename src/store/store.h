#pragma once
// The versioned key-value store with watch (DESIGN.md §2): the shape of etcd v3.
// Every mutation gets the next store-wide revision. Watches deliver every change after a
// revision, in revision order, exactly once. Implementations: SqliteStore (durable, WAL),
// EtcdStore (several servers on one etcd cluster), MemoryStore (tests). Control-plane logic is
// written once against Store.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace nebula::store {

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;  // revision of the put that created this key
  int64_t mod_revision = 0;     // revision of the last put
  int64_t version = 0;          // number of puts since creation (1 after create)
  int64_t lease = 0;            // 0 = no lease
};

struct WatchEvent {
  enum class Type { Put, Delete };
  Type type = Type::Put;
  // For Put: the new key-value. For Delete: key set, value empty, mod_revision = the delete's revision.
  KeyValue kv;
  // The key-value before this event, when there was one.
  std::optional<KeyValue> prev;
};

// Compare-and-swap conditions for put/remove.
struct Precondition {
  // -1: no condition. 0: the key must not exist. N > 0: the key's mod_revision must equal N.
  int64_t mod_revision = -1;
  static Precondition none() { return {}; }
  static Precondition absent() { return {0}; }
  static Precondition at(int64_t revision) { return {revision}; }
};

// One write of a batch (Store::put_all).
struct Put {
  std::string key;
  std::string value;
  Precondition precondition;
};

// The most puts one put_all takes: etcd's default limit of operations in a transaction
// (--max-txn-ops 128).
inline constexpr size_t kMaxBatch = 128;
// The most batches of one put_batches in flight at once (EtcdStore).
inline constexpr size_t kBatchesInFlight = 4;

struct ListResult {
  std::vector<KeyValue> kvs;  // sorted by key
  int64_t revision = 0;       // the store revision the listing reflects
};

// Called for each event, on the thread that committed the change (or, for replayed history, on the
// thread that called watch(); EtcdStore: on its own watch thread, after watch() returned), while
// the store holds its lock: keep it short and never call back
// into the store from it. Events arrive in strictly increasing revision order.
using WatchCallback = std::function<void(const WatchEvent&)>;

// Called at most once, from the store's own thread, when a watch ends by itself: EtcdStore ends
// a watch with Compacted when etcd compacted the revisions it had still to deliver (it was away
// on a lost member, or too slow). No event follows; the watcher resyncs from a fresh list and
// watches again. MemoryStore and SqliteStore never end a watch by themselves. Same rules as the
// WatchCallback: short, and never back into the store.
using WatchEndCallback = std::function<void(const Error&)>;

// Cancels the watch when destroyed. After cancel() returns, the callback is not running and will
// not be called again.
class WatchHandle {
 public:
  virtual ~WatchHandle() = default;
  virtual void cancel() = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  virtual Result<std::optional<KeyValue>> get(const std::string& key) = 0;
  // All keys that start with prefix ("" lists everything).
  virtual Result<ListResult> list(const std::string& prefix) = 0;
  // Returns the new revision. Fails with Conflict when the precondition does not hold.
  virtual Result<int64_t> put(const std::string& key, const std::string& value,
                              Precondition precondition = Precondition::none(), int64_t lease = 0) = 0;
  // Returns the revision of the delete. NotFound if the key does not exist.
  virtual Result<int64_t> remove(const std::string& key, Precondition precondition = Precondition::none()) = 0;
  // Applies every put or none: one SQLite transaction, one etcd transaction (all at one
  // revision). Conflict, and nothing written, when any precondition does not hold. Returns each
  // put's revision. At most kMaxBatch puts, each key once, no leases (InvalidArgument otherwise).
  // A store that cannot (the default: a gateway's MirrorStore) answers Unavailable without
  // writing; on etcd, Unavailable may also mean the answer was lost, the outcome unknown. Either
  // way the caller can fall back to one compare-and-swap put per key.
  virtual Result<std::vector<int64_t>> put_all(const std::vector<Put>& puts);
  // Many put_all batches at once: each batch is applied (or refused) as put_all would, on its
  // own and at its own revision; batches may be applied in any order, and one failing leaves the
  // others as they went. The answer holds each batch's outcome at its index. A key in two
  // batches is InvalidArgument for both of them, and neither is written (their order would be
  // undefined). EtcdStore keeps up to kBatchesInFlight transactions in flight, each on its own
  // connection, so etcd works on several at once; the default calls put_all on each in turn.
  virtual std::vector<Result<std::vector<int64_t>>> put_batches(const std::vector<std::vector<Put>>& batches);
  // The current store revision (0 for an empty, never-written store).
  virtual int64_t revision() = 0;

  // Watches keys starting with prefix. from_revision: deliver every event with revision >=
  // from_revision first (history), then live events; 0 = live events only. Fails with Compacted
  // when from_revision is older than the history kept. on_end: see WatchEndCallback.
  virtual Result<std::unique_ptr<WatchHandle>> watch(const std::string& prefix, int64_t from_revision,
                                                     WatchCallback callback, WatchEndCallback on_end = {}) = 0;
  // As watch(), but events may come without `prev`: for consumers that apply whole values (an
  // informer, a cache). On etcd it halves what the watch costs (each value is sent once); the
  // other stores give prev anyway.
  virtual Result<std::unique_ptr<WatchHandle>> watch_values(const std::string& prefix, int64_t from_revision,
                                                            WatchCallback callback, WatchEndCallback on_end = {}) {
    return watch(prefix, from_revision, std::move(callback), std::move(on_end));
  }

  // Leases: keys put with a lease are deleted when it expires (expire_leases) or is revoked.
  // ttl in milliseconds. Returns the lease id.
  virtual Result<int64_t> grant_lease(int64_t ttl_ms) = 0;
  virtual Status keep_alive(int64_t lease) = 0;
  virtual Status revoke_lease(int64_t lease) = 0;
  // Deletes keys of leases whose deadline passed; returns how many leases expired. The owner of
  // the store calls this periodically (it uses the Clock given at construction). EtcdStore: etcd
  // expires leases on its own clock; this does nothing and returns 0.
  virtual int expire_leases() = 0;
};

// Read-modify-write of one key with compare-and-swap retries. `change` gets the current value
// (nullopt when the key is absent) and returns the new value, nullopt to leave the key as it is,
// or an error that update() returns. Returns the written revision (0 when left as it is), or
// Conflict after `attempts` lost races.
using Change = std::function<Result<std::optional<std::string>>(const std::optional<std::string>& current)>;
Result<int64_t> update(Store& store, const std::string& key, const Change& change, int attempts = 16);

// Opens the store a URL names: sqlite://PATH (the file is created when missing) or
// etcd://HOST:PORT[,HOST:PORT...][?options] (options in etcd_store.h). InvalidArgument, saying what
// is accepted, for any other URL; Unavailable when no etcd member answers.
Result<std::unique_ptr<Store>> open(const std::string& url);

}  // namespace nebula::store
