#pragma once
// SqliteStore: the durable Store, one SQLite file in WAL mode, laid out like k3s's kine: `kv` holds
// the current keys, `log` one row per revision (watches replay it), `leases` the leases, `meta` the
// store revision (kept explicitly so it never goes backwards, even after the log is compacted).
// Thread-safe: one mutex serializes every call. One process owns a file at a time (the revision is
// cached in memory).
#include <chrono>
#include <cstddef>
#include <deque>
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

// How much history (the log watches replay from) a SqliteStore keeps, as etcd's periodic
// compaction does: the revisions of the last max_age, within max_bytes of documents. The file
// gives back what compaction frees (incremental vacuum), so it does not only grow.
struct SqliteHistory {
  std::chrono::milliseconds max_age{5 * 60'000};
  size_t max_bytes = 64 * 1024 * 1024;  // keys, values and previous values in the log
  size_t max_revisions = 0;             // > 0: no more than this many (tests that need compaction)
};

class SqliteStore final : public Store {
 public:
  // Opens or creates the store at path, keeping the history `history` says (compacting in batches
  // of about 10% of a limit). Lease deadlines are wall-clock (clock.wall_now()) so they survive a
  // restart; the history's age is measured on clock.steady_now() from this process's start. clock
  // must outlive the store. Fails with Internal (message names the path) when the file cannot be
  // opened or is not a store.
  static Result<std::unique_ptr<SqliteStore>> open(const std::string& path,
                                                   const Clock& clock = SystemClock::instance(),
                                                   SqliteHistory history = {});
  // The history as its last history_limit revisions (and the default age and size).
  static Result<std::unique_ptr<SqliteStore>> open(const std::string& path, const Clock& clock, size_t history_limit);
  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

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
  enum Statement : int;
  class Query;
  using Events = std::vector<WatchEvent>;

  SqliteStore(sqlite3* db, std::string path, const Clock& clock, SqliteHistory history);
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
  // Inside the mutation's transaction: the revision history is compacted up to (by age, size or
  // count), or compacted_revision_ when nothing is due.
  Result<int64_t> compaction_target_locked(int64_t revision);
  Result<int64_t> log_bytes_through_locked(int64_t revision);
  // After a commit that compacted: gives the freed pages back to the file system.
  void reclaim_locked();
  int64_t now_ms() const;

  sqlite3* db_;
  const std::string path_;
  const Clock& clock_;
  const SqliteHistory history_;
  // (steady time, store revision then): every revision up to it is at least that old.
  std::deque<std::pair<std::chrono::steady_clock::time_point, int64_t>> checkpoints_;
  size_t log_bytes_ = 0;  // keys, values and previous values of the log's rows
  std::mutex mu_;
  std::vector<sqlite3_stmt*> statements_;
  int64_t revision_ = 0;
  int64_t compacted_revision_ = 0;  // log entries up to and including this revision are gone
  WatcherRegistry watchers_;
};

}  // namespace nebula::store
