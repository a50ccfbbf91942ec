#include "store/sqlite_store.h"

#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <utility>

namespace nebula::store {

namespace {

constexpr int kBusyTimeoutMs = 5000;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compact_revision', 0), ('next_lease', 1);
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value BLOB NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease);
CREATE TABLE IF NOT EXISTS log (
  revision INTEGER PRIMARY KEY,
  type INTEGER NOT NULL,
  key TEXT NOT NULL,
  value BLOB NOT NULL,
  create_revision INTEGER NOT NULL,
  mod_revision INTEGER NOT NULL,
  version INTEGER NOT NULL,
  lease INTEGER NOT NULL,
  prev_value BLOB,
  prev_create_revision INTEGER,
  prev_mod_revision INTEGER,
  prev_version INTEGER,
  prev_lease INTEGER
);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL, deadline INTEGER NOT NULL);
)sql";

constexpr int kLogPut = 0;
constexpr int kLogDelete = 1;

}  // namespace

enum SqliteStore::Statement : int {
  kBegin,
  kCommit,
  kRollback,
  kGetMeta,
  kSetMeta,
  kGetKv,
  kListKv,
  kUpsertKv,
  kDeleteKv,
  kInsertLog,
  kReplayLog,
  kCompactLog,
  kGetLease,
  kInsertLease,
  kSetLeaseDeadline,
  kDeleteLease,
  kKvOfLease,
  kExpiredLeases,
  kLogBytes,
  kLogBytesThrough,
  kLogSizesAfter,
  kStatementCount,
};

namespace {

// Indexed by SqliteStore::Statement.
constexpr const char* kStatementSql[] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "SELECT value FROM meta WHERE name = ?1",
    "UPDATE meta SET value = ?2 WHERE name = ?1",
    "SELECT key, value, create_revision, mod_revision, version, lease FROM kv WHERE key = ?1",
    "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
    "WHERE key >= ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key",
    "INSERT OR REPLACE INTO kv (key, value, create_revision, mod_revision, version, lease) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    "DELETE FROM kv WHERE key = ?1",
    "INSERT INTO log (revision, type, key, value, create_revision, mod_revision, version, lease, prev_value, "
    "prev_create_revision, prev_mod_revision, prev_version, prev_lease) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    "SELECT revision, type, key, value, create_revision, mod_revision, version, lease, prev_value, "
    "prev_create_revision, prev_mod_revision, prev_version, prev_lease FROM log "
    "WHERE revision >= ?1 AND key >= ?2 AND (?3 IS NULL OR key < ?3) ORDER BY revision",
    "DELETE FROM log WHERE revision <= ?1",
    "SELECT id FROM leases WHERE id = ?1",
    "INSERT INTO leases (id, ttl_ms, deadline) VALUES (?1, ?2, ?3)",
    "UPDATE leases SET deadline = ?2 + ttl_ms WHERE id = ?1",
    "DELETE FROM leases WHERE id = ?1",
    "SELECT key, value, create_revision, mod_revision, version, lease FROM kv WHERE lease = ?1 ORDER BY key",
    "SELECT id FROM leases WHERE deadline <= ?1 ORDER BY id",
    "SELECT COALESCE(SUM(length(key) + length(value) + COALESCE(length(prev_value), 0)), 0) FROM log",
    "SELECT COALESCE(SUM(length(key) + length(value) + COALESCE(length(prev_value), 0)), 0) FROM log "
    "WHERE revision <= ?1",
    "SELECT revision, length(key) + length(value) + COALESCE(length(prev_value), 0) FROM log WHERE revision > ?1 "
    "ORDER BY revision",
};

}  // namespace

// A cached prepared statement in use; resets it when done. Bind errors surface at step(). At most one
// Query per statement may be alive at a time.
class SqliteStore::Query {
 public:
  Query(const SqliteStore& store, sqlite3_stmt* stmt) : store_(store), stmt_(stmt) {}
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;
  ~Query() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  Query& bind(int index, int64_t value) { return check(sqlite3_bind_int64(stmt_, index, value)); }
  Query& bind_text(int index, const std::string& value) {
    return check(sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT));
  }
  // Never binds NULL: an empty string is an empty blob.
  Query& bind_blob(int index, const std::string& value) {
    return check(sqlite3_bind_blob(stmt_, index, value.empty() ? "" : value.data(), static_cast<int>(value.size()),
                                   SQLITE_TRANSIENT));
  }
  Query& bind_null(int index) { return check(sqlite3_bind_null(stmt_, index)); }
  Query& bind_text_or_null(int index, const std::optional<std::string>& value) {
    return value ? bind_text(index, *value) : bind_null(index);
  }

  // true: a row is ready; false: done.
  Result<bool> step() {
    if (bind_rc_ != SQLITE_OK) return store_.sql_error(sqlite3_sql(stmt_));
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return store_.sql_error(sqlite3_sql(stmt_));
  }
  Status run() {
    for (;;) {
      auto row = step();
      if (!row) return row.error();
      if (!*row) return {};
    }
  }

  bool is_null(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  int64_t int64(int column) const { return sqlite3_column_int64(stmt_, column); }
  std::string bytes(int column) const {
    const void* data = sqlite3_column_blob(stmt_, column);
    int size = sqlite3_column_bytes(stmt_, column);
    if (data == nullptr || size == 0) return {};
    return std::string(static_cast<const char*>(data), static_cast<size_t>(size));
  }
  // Columns key, value, create_revision, mod_revision, version, lease from first.
  KeyValue kv(int first) const {
    return KeyValue{bytes(first),     bytes(first + 1), int64(first + 2),
                    int64(first + 3), int64(first + 4), int64(first + 5)};
  }

 private:
  Query& check(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
    return *this;
  }

  const SqliteStore& store_;
  sqlite3_stmt* stmt_;
  int bind_rc_ = SQLITE_OK;
};

Result<std::unique_ptr<SqliteStore>> SqliteStore::open(const std::string& path, const Clock& clock,
                                                       size_t history_limit) {
  SqliteHistory history;
  history.max_revisions = history_limit;
  return open(path, clock, history);
}

Result<std::unique_ptr<SqliteStore>> SqliteStore::open(const std::string& path, const Clock& clock,
                                                       SqliteHistory history) {
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return make_error(ErrorCode::Internal, "sqlite store '" + path + "': cannot open: " + message);
  }
  std::unique_ptr<SqliteStore> store(new SqliteStore(db, path, clock, history));
  if (auto status = store->init(); !status) return status.error();
  return store;
}

SqliteStore::SqliteStore(sqlite3* db, std::string path, const Clock& clock, SqliteHistory history)
    : db_(db), path_(std::move(path)), clock_(clock), history_(history) {}

SqliteStore::~SqliteStore() {
  for (sqlite3_stmt* stmt : statements_) sqlite3_finalize(stmt);
  sqlite3_close(db_);
}

Error SqliteStore::sql_error(const std::string& what) const {
  return make_error(ErrorCode::Internal, "sqlite store '" + path_ + "': " + sqlite3_errmsg(db_) + " (" + what + ")");
}

Status SqliteStore::init() {
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  // Incremental auto-vacuum lets compaction give pages back to the file system. It must be set
  // before the first table exists; a file made without it is converted once by a VACUUM.
  int auto_vacuum = 0;
  sqlite3_exec(
      db_, "PRAGMA auto_vacuum",
      [](void* out, int, char** values, char**) {
        if (values[0] != nullptr) *static_cast<int*>(out) = std::atoi(values[0]);
        return 0;
      },
      &auto_vacuum, nullptr);
  constexpr int kIncremental = 2;
  if (auto_vacuum != kIncremental) {
    for (const char* sql : {"PRAGMA auto_vacuum=INCREMENTAL", "VACUUM"}) {
      if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return sql_error(sql);
    }
  }
  // The write-ahead log is truncated back to this after a checkpoint instead of keeping its peak.
  for (const char* sql :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA journal_size_limit=16777216", kSchema}) {
    if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return sql_error(sql);
  }
  static_assert(std::size(kStatementSql) == kStatementCount);
  for (const char* sql : kStatementSql) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK) {
      return sql_error(sql);
    }
    statements_.push_back(stmt);
  }
  for (auto [name, target] : {std::pair{"revision", &revision_}, std::pair{"compact_revision", &compacted_revision_}}) {
    auto q = query(kGetMeta);
    q.bind_text(1, name);
    auto row = q.step();
    if (!row) return row.error();
    if (!*row) return make_error(ErrorCode::Internal, "sqlite store '" + path_ + "': meta " + name + " missing");
    *target = q.int64(0);
  }
  {
    auto q = query(kLogBytes);
    auto row = q.step();
    if (!row) return row.error();
    log_bytes_ = *row ? static_cast<size_t>(q.int64(0)) : 0;
  }
  // What is in the log now counts as old as this process: it is kept for max_age from here.
  checkpoints_.emplace_back(clock_.steady_now(), revision_);
  return {};
}

SqliteStore::Query SqliteStore::query(Statement statement) {
  return Query(*this, statements_[statement]);
}

Status SqliteStore::exec(Statement statement) {
  return query(statement).run();
}

Status SqliteStore::set_meta_locked(const std::string& name, int64_t value) {
  auto q = query(kSetMeta);
  q.bind_text(1, name).bind(2, value);
  return q.run();
}

int64_t SqliteStore::now_ms() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_.wall_now().time_since_epoch()).count();
}

Result<std::optional<KeyValue>> SqliteStore::read_kv_locked(const std::string& key) {
  auto q = query(kGetKv);
  q.bind_text(1, key);
  auto row = q.step();
  if (!row) return row.error();
  if (!*row) return std::optional<KeyValue>();
  return std::optional<KeyValue>(q.kv(0));
}

Result<std::optional<KeyValue>> SqliteStore::get(const std::string& key) {
  std::lock_guard lock(mu_);
  return read_kv_locked(key);
}

Result<ListResult> SqliteStore::list(const std::string& prefix) {
  std::lock_guard lock(mu_);
  ListResult result;
  result.revision = revision_;
  auto q = query(kListKv);
  q.bind_text(1, prefix).bind_text_or_null(2, prefix_end(prefix));
  for (;;) {
    auto row = q.step();
    if (!row) return row.error();
    if (!*row) break;
    result.kvs.push_back(q.kv(0));
  }
  return result;
}

Status SqliteStore::record_locked(Events& events, WatchEvent event) {
  const KeyValue& kv = event.kv;
  bool is_put = event.type == WatchEvent::Type::Put;
  if (is_put) {
    auto q = query(kUpsertKv);
    q.bind_text(1, kv.key).bind_blob(2, kv.value).bind(3, kv.create_revision).bind(4, kv.mod_revision);
    q.bind(5, kv.version).bind(6, kv.lease);
    if (auto status = q.run(); !status) return status;
  } else {
    auto q = query(kDeleteKv);
    q.bind_text(1, kv.key);
    if (auto status = q.run(); !status) return status;
  }
  auto q = query(kInsertLog);
  q.bind(1, kv.mod_revision).bind(2, is_put ? kLogPut : kLogDelete).bind_text(3, kv.key).bind_blob(4, kv.value);
  q.bind(5, kv.create_revision).bind(6, kv.mod_revision).bind(7, kv.version).bind(8, kv.lease);
  if (event.prev) {
    q.bind_blob(9, event.prev->value).bind(10, event.prev->create_revision).bind(11, event.prev->mod_revision);
    q.bind(12, event.prev->version).bind(13, event.prev->lease);
  }
  if (auto status = q.run(); !status) return status;
  events.push_back(std::move(event));
  return {};
}

Result<int64_t> SqliteStore::mutate_locked(const std::function<Status(Events&)>& body) {
  if (auto status = exec(kBegin); !status) return status.error();
  Events events;
  int64_t revision = revision_;
  int64_t compacted = compacted_revision_;
  auto status = body(events);
  size_t freed = 0;
  if (status && !events.empty()) {
    revision = events.back().kv.mod_revision;
    status = set_meta_locked("revision", revision);
    auto target = status ? compaction_target_locked(revision) : Result<int64_t>(compacted);
    if (!target) status = target.error();
    if (status && *target > compacted) {
      auto bytes = log_bytes_through_locked(*target);
      if (!bytes) status = bytes.error();
      if (status) {
        freed = static_cast<size_t>(*bytes);
        compacted = *target;
        auto compact = query(kCompactLog);
        compact.bind(1, compacted);
        status = compact.run();
      }
      if (status) status = set_meta_locked("compact_revision", compacted);
    }
  }
  if (status) status = exec(kCommit);
  if (!status) {
    if (auto rollback = exec(kRollback); !rollback) {
      spdlog::error("store: rollback failed: {}", rollback.error().message);
    }
    return status.error();
  }
  for (const auto& event : events) {
    log_bytes_ += event.kv.key.size() + event.kv.value.size() + (event.prev ? event.prev->value.size() : 0);
  }
  log_bytes_ -= std::min(log_bytes_, freed);
  if (!events.empty()) {
    // One checkpoint a second is enough to compact by age to within a second.
    auto now = clock_.steady_now();
    if (checkpoints_.empty() || now - checkpoints_.back().first >= std::chrono::seconds(1)) {
      checkpoints_.emplace_back(now, revision);
    } else {
      checkpoints_.back().second = revision;
    }
  }
  bool compacted_now = compacted > compacted_revision_;
  revision_ = revision;
  compacted_revision_ = compacted;
  if (compacted_now) reclaim_locked();
  for (const auto& event : events) watchers_.notify(event);
  return revision_;
}

Result<int64_t> SqliteStore::compaction_target_locked(int64_t revision) {
  int64_t target = compacted_revision_;
  // By age: everything up to a checkpoint older than max_age.
  auto oldest_kept = clock_.steady_now() - history_.max_age;
  while (!checkpoints_.empty() && checkpoints_.front().first <= oldest_kept) {
    target = std::max(target, checkpoints_.front().second);
    checkpoints_.pop_front();
  }
  // By count (tests): the last max_revisions, compacted in batches of about 10%.
  if (history_.max_revisions > 0) {
    int64_t limit = static_cast<int64_t>(history_.max_revisions);
    int64_t slack = std::max<int64_t>(1, limit / 10);
    if (revision - compacted_revision_ > limit + slack) target = std::max(target, revision - limit);
  }
  // By size: down to 90% of max_bytes, oldest first. This mutation's rows are not counted yet:
  // they are at most one write's worth.
  if (log_bytes_ > history_.max_bytes) {
    size_t excess = log_bytes_ - history_.max_bytes + history_.max_bytes / 10;
    size_t dropped = 0;
    auto q = query(kLogSizesAfter);
    q.bind(1, target);
    while (dropped < excess) {
      auto row = q.step();
      if (!row) return row.error();
      if (!*row) break;
      target = std::max(target, q.int64(0));
      dropped += static_cast<size_t>(q.int64(1));
    }
  }
  return std::min(target, revision);
}

Result<int64_t> SqliteStore::log_bytes_through_locked(int64_t revision) {
  auto q = query(kLogBytesThrough);
  q.bind(1, revision);
  auto row = q.step();
  if (!row) return row.error();
  return *row ? q.int64(0) : 0;
}

void SqliteStore::reclaim_locked() {
  if (sqlite3_exec(db_, "PRAGMA incremental_vacuum", nullptr, nullptr, nullptr) != SQLITE_OK) {
    spdlog::warn("store: incremental vacuum of {} failed: {}", path_, sqlite3_errmsg(db_));
  }
}

Result<int64_t> SqliteStore::put(const std::string& key, const std::string& value, Precondition precondition,
                                 int64_t lease) {
  std::lock_guard lock(mu_);
  return mutate_locked([&](Events& events) -> Status {
    auto current = read_kv_locked(key);
    if (!current) return current.error();
    if (auto status = check_put(key, *current, precondition); !status) return status;
    if (lease != 0) {
      auto q = query(kGetLease);
      q.bind(1, lease);
      auto row = q.step();
      if (!row) return row.error();
      if (!*row) return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
    }
    return record_locked(events, make_put_event(key, value, lease, next_revision(events), *current));
  });
}

Result<std::vector<int64_t>> SqliteStore::put_all(const std::vector<Put>& puts) {
  if (auto valid = check_batch(puts); !valid) return valid.error();
  std::vector<int64_t> revisions;
  std::lock_guard lock(mu_);
  auto written = mutate_locked([&](Events& events) -> Status {
    for (const auto& put : puts) {
      auto current = read_kv_locked(put.key);
      if (!current) return current.error();
      if (auto status = check_put(put.key, *current, put.precondition); !status) return status;
      revisions.push_back(next_revision(events));
      if (auto status = record_locked(events, make_put_event(put.key, put.value, 0, next_revision(events), *current));
          !status) {
        return status;
      }
    }
    return {};
  });
  if (!written) return written.error();
  return revisions;
}

Result<int64_t> SqliteStore::remove(const std::string& key, Precondition precondition) {
  std::lock_guard lock(mu_);
  return mutate_locked([&](Events& events) -> Status {
    auto current = read_kv_locked(key);
    if (!current) return current.error();
    if (auto status = check_remove(key, *current, precondition); !status) return status;
    return record_locked(events, make_delete_event(**current, next_revision(events)));
  });
}

int64_t SqliteStore::revision() {
  std::lock_guard lock(mu_);
  return revision_;
}

Result<std::unique_ptr<WatchHandle>> SqliteStore::watch(const std::string& prefix, int64_t from_revision,
                                                        WatchCallback callback,
                                                        WatchEndCallback /*on_end: never ends by itself*/) {
  std::lock_guard lock(mu_);
  if (auto status = check_watch_from(from_revision, compacted_revision_); !status) return status.error();
  if (from_revision != 0 && from_revision <= revision_) {
    auto q = query(kReplayLog);
    q.bind(1, from_revision).bind_text(2, prefix).bind_text_or_null(3, prefix_end(prefix));
    for (;;) {
      auto row = q.step();
      if (!row) return row.error();
      if (!*row) break;
      WatchEvent event;
      event.type = q.int64(1) == kLogPut ? WatchEvent::Type::Put : WatchEvent::Type::Delete;
      event.kv = q.kv(2);
      if (!q.is_null(10)) {
        event.prev = KeyValue{event.kv.key, q.bytes(8), q.int64(9), q.int64(10), q.int64(11), q.int64(12)};
      }
      callback(event);
    }
  }
  return watchers_.add(prefix, from_revision, std::move(callback));
}

Result<int64_t> SqliteStore::grant_lease(int64_t ttl_ms) {
  if (ttl_ms <= 0) return make_error(ErrorCode::InvalidArgument, "store: lease ttl must be positive");
  std::lock_guard lock(mu_);
  int64_t id = 0;
  auto result = mutate_locked([&](Events&) -> Status {
    auto next = query(kGetMeta);
    next.bind_text(1, "next_lease");
    auto row = next.step();
    if (!row) return row.error();
    if (!*row) return make_error(ErrorCode::Internal, "sqlite store '" + path_ + "': meta next_lease missing");
    id = next.int64(0);
    auto insert = query(kInsertLease);
    insert.bind(1, id).bind(2, ttl_ms).bind(3, now_ms() + ttl_ms);
    if (auto status = insert.run(); !status) return status;
    return set_meta_locked("next_lease", id + 1);
  });
  if (!result) return result.error();
  return id;
}

Status SqliteStore::keep_alive(int64_t lease) {
  std::lock_guard lock(mu_);
  auto q = query(kSetLeaseDeadline);
  q.bind(1, lease).bind(2, now_ms());
  if (auto status = q.run(); !status) return status;
  if (sqlite3_changes(db_) == 0) {
    return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
  }
  return {};
}

Status SqliteStore::revoke_locked(int64_t lease) {
  auto result = mutate_locked([&](Events& events) -> Status {
    auto remove = query(kDeleteLease);
    remove.bind(1, lease);
    if (auto status = remove.run(); !status) return status;
    if (sqlite3_changes(db_) == 0) {
      return make_error(ErrorCode::NotFound, "store: lease " + std::to_string(lease) + " not found");
    }
    std::vector<KeyValue> kvs;
    {
      auto q = query(kKvOfLease);
      q.bind(1, lease);
      for (;;) {
        auto row = q.step();
        if (!row) return row.error();
        if (!*row) break;
        kvs.push_back(q.kv(0));
      }
    }
    for (const auto& kv : kvs) {
      if (auto status = record_locked(events, make_delete_event(kv, next_revision(events))); !status) return status;
    }
    return {};
  });
  if (!result) return result.error();
  return {};
}

Status SqliteStore::revoke_lease(int64_t lease) {
  std::lock_guard lock(mu_);
  return revoke_locked(lease);
}

int SqliteStore::expire_leases() {
  std::lock_guard lock(mu_);
  std::vector<int64_t> expired;
  {
    auto q = query(kExpiredLeases);
    q.bind(1, now_ms());
    for (;;) {
      auto row = q.step();
      if (!row) {
        spdlog::error("store: listing expired leases: {}", row.error().message);
        return 0;
      }
      if (!*row) break;
      expired.push_back(q.int64(0));
    }
  }
  int count = 0;
  for (int64_t lease : expired) {
    if (auto status = revoke_locked(lease); !status) {
      spdlog::error("store: expiring lease {}: {}", lease, status.error().message);
      continue;
    }
    ++count;
  }
  return count;
}

}  // namespace nebula::store
