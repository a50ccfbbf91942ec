#pragma once
// SqliteStore: the durable Store, one SQLite file in WAL mode, laid out like k3s's kine: `kv` holds
// the current keys, `log` one row per revision (watches replay it), `leases` the leases, `meta` the
// store revision (kept explicitly so it never goes backwards, even after the log is compacted).
// Thread-safe: one mutex serializes every call. One process owns a file at a time (the revision is
// cached in memory).
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/clock.h"
#include "store/store.h"
#include "store/watchers.h"

struct sqlite3;
struct sqlite3_stmt;

namespace nebula::store {

class SqliteStore final : public Store {
 public:
  // Opens or creates the store at path. Keeps the last history_limit log entries (compacting in
  // batches of about 10%). Lease deadlines are wall-clock (clock.wall_now()) so they survive a
  // restart. clock must outlive the store. Fails with Internal (message names the path) when the
  // file cannot be opened or is not a store.
  static Result<std::unique_ptr<SqliteStore>> open(const std::string& path,
                                                   const Clock& clock = SystemClock::instance(),
                                                   size_t history_limit = 10000);
  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  Result<std::optional<KeyValue>> get(const std::string& key) override;
  Result<ListResult> list(const std::string& prefix) override;
  Result<int64_t> put(const std::string& key, const std::string& value,
                      Precondition precondition = Precondition::none(), int64_t lease = 0) override;
  Result<int64_t> remove(const std::string& key, Precondition precondition = Precondition::none()) override;
  int64_t revision() override;
  Result<std::unique_ptr<WatchHandle>> watch(const std::string& prefix, int64_t from_revision, WatchCallback callback,
                                             WatchEndCallback on_end = {}) override;
  Result<int64_t> grant_lease(int64_t ttl_ms) override;
  Status keep_alive(int64_t lease) override;
  Status revoke_lease(int64_t lease) override;
  int expire_leases() override;

 private:
  enum Statement : int;
  class Query;
  using Events = std::vector<WatchEvent>;

  SqliteStore(sqlite3* db, std::string path, const Clock& clock, size_t history_limit);
  Status init();
  Error sql_error(const std::string& what) const;
  Query query(Statement statement);
  Status exec(Statement statement);
  Status set_meta_locked(const std::string& name, int64_t value);
  Result<std::optional<KeyValue>> read_kv_locked(const std::string& key);
  int64_t next_revision(const Events& events) const { return revision_ + 1 + static_cast<int64_t>(events.size()); }
  // Writes the event to kv and log and appends it to events.
  Status record_locked(Events& events, WatchEvent event);
  // Runs body in one transaction; on success commits (bumping the revision, compacting the log) and
  // then notifies watchers of the recorded events. Returns the store revision after.
  Result<int64_t> mutate_locked(const std::function<Status(Events&)>& body);
  Status revoke_locked(int64_t lease);
  int64_t now_ms() const;

  sqlite3* db_;
  const std::string path_;
  const Clock& clock_;
  const size_t history_limit_;
  std::mutex mu_;
  std::vector<sqlite3_stmt*> statements_;
  int64_t revision_ = 0;
  int64_t compacted_revision_ = 0;  // log entries up to and including this revision are gone
  WatcherRegistry watchers_;
};

}  // namespace nebula::store
