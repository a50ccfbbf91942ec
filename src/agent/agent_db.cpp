#include "agent/agent_db.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

namespace nebula::agent {

namespace {
constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS engines (
  replica TEXT PRIMARY KEY,
  engine TEXT NOT NULL,
  pid INTEGER NOT NULL,
  start_time INTEGER NOT NULL,
  port INTEGER NOT NULL,
  endpoint TEXT NOT NULL,
  restarts INTEGER NOT NULL,
  plan_version INTEGER NOT NULL,
  container_id TEXT NOT NULL DEFAULT ''
))";

// A prepared statement that finalizes itself.
struct Statement {
  sqlite3_stmt* statement = nullptr;
  ~Statement() { sqlite3_finalize(statement); }
};

Error db_error(sqlite3* db, const std::string& what) {
  return make_error(ErrorCode::Internal, fmt::format("agent.db: {}: {}", what, sqlite3_errmsg(db)));
}
}  // namespace

Result<std::unique_ptr<AgentDb>> AgentDb::open(const std::string& path) {
  // Its owner's alone (SQLite gives its -wal and -shm files the same mode). A missing directory
  // is left for SQLite to report.
  if (int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600); fd >= 0) {
    ::fchmod(fd, 0600);
    ::close(fd);
  }
  sqlite3* db = nullptr;
  int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    Error error = make_error(ErrorCode::Internal, fmt::format("cannot open {}: {}", path, sqlite3_errstr(rc)));
    sqlite3_close(db);
    return error;
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<AgentDb> result(new AgentDb(db));
  for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", kSchema}) {
    if (auto done = result->exec(sql); !done) return done.error();
  }
  return result;
}

AgentDb::~AgentDb() {
  sqlite3_close(db_);
}

Status AgentDb::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message ? message : "unknown error";
    sqlite3_free(message);
    return make_error(ErrorCode::Internal, "agent.db: " + text);
  }
  return {};
}

Status AgentDb::put(const EngineRecord& record) {
  Statement s;
  const char* sql =
      "INSERT OR REPLACE INTO engines (replica, engine, pid, start_time, port, endpoint, restarts, plan_version, "
      "container_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
  if (sqlite3_prepare_v2(db_, sql, -1, &s.statement, nullptr) != SQLITE_OK) return db_error(db_, "prepare");
  sqlite3_bind_text(s.statement, 1, record.replica.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(s.statement, 2, record.engine.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(s.statement, 3, record.pid);
  sqlite3_bind_int64(s.statement, 4, record.start_time);
  sqlite3_bind_int64(s.statement, 5, record.port);
  sqlite3_bind_text(s.statement, 6, record.endpoint.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(s.statement, 7, record.restarts);
  sqlite3_bind_int64(s.statement, 8, record.plan_version);
  sqlite3_bind_text(s.statement, 9, record.container_id.c_str(), -1, SQLITE_TRANSIENT);
  if (sqlite3_step(s.statement) != SQLITE_DONE) return db_error(db_, "write " + record.replica);
  return {};
}

Status AgentDb::remove(const std::string& replica) {
  Statement s;
  if (sqlite3_prepare_v2(db_, "DELETE FROM engines WHERE replica = ?", -1, &s.statement, nullptr) != SQLITE_OK) {
    return db_error(db_, "prepare");
  }
  sqlite3_bind_text(s.statement, 1, replica.c_str(), -1, SQLITE_TRANSIENT);
  if (sqlite3_step(s.statement) != SQLITE_DONE) return db_error(db_, "remove " + replica);
  return {};
}

Result<std::vector<EngineRecord>> AgentDb::all() {
  Statement s;
  const char* sql =
      "SELECT replica, engine, pid, start_time, port, endpoint, restarts, plan_version, container_id FROM engines "
      "ORDER BY replica";
  if (sqlite3_prepare_v2(db_, sql, -1, &s.statement, nullptr) != SQLITE_OK) return db_error(db_, "prepare");
  std::vector<EngineRecord> records;
  int rc;
  while ((rc = sqlite3_step(s.statement)) == SQLITE_ROW) {
    EngineRecord record;
    auto text = [&](int column) {
      const unsigned char* value = sqlite3_column_text(s.statement, column);
      return value ? std::string(reinterpret_cast<const char*>(value)) : std::string();
    };
    record.replica = text(0);
    record.engine = text(1);
    record.pid = static_cast<pid_t>(sqlite3_column_int64(s.statement, 2));
    record.start_time = sqlite3_column_int64(s.statement, 3);
    record.port = static_cast<int>(sqlite3_column_int64(s.statement, 4));
    record.endpoint = text(5);
    record.restarts = static_cast<int>(sqlite3_column_int64(s.statement, 6));
    record.plan_version = sqlite3_column_int64(s.statement, 7);
    record.container_id = text(8);
    records.push_back(std::move(record));
  }
  if (rc != SQLITE_DONE) return db_error(db_, "read");
  return records;
}

}  // namespace nebula::agent
