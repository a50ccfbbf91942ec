#include "gateway/response_store.h"

#include <sqlite3.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <algorithm>

#include "gateway/redis_connection.h"
#include "gateway/redis_responses.h"

namespace nebula::gateway {

int64_t response_store_now_ms(const ResponseStoreOptions& options) {
  if (options.now_ms) return options.now_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Error response_not_found(const std::string& id) {
  return make_error(ErrorCode::NotFound, fmt::format("Response with id '{}' not found.", id));
}

Conversation broken_chain(const std::string& gone) {
  Conversation broken;
  broken.missing = gone;
  return broken;
}

std::string broken_chain_message(const std::string& what, const std::string& asked, const std::string& gone) {
  return fmt::format("{} with id '{}' continues '{}', which was deleted or has expired.", what, asked, gone);
}

size_t turn_bytes(const TurnRecord& record) {
  return record.response.size() + record.input.size() + record.previous.size() + record.root.size();
}

TurnRecord record_of(const std::string& id, const StoredTurn& turn) {
  return TurnRecord{turn.response.dump(), turn.input.is_array() ? turn.input.dump() : "[]", turn.previous,
                    turn.root.empty() ? id : turn.root};
}

Error turn_too_large(size_t bytes, size_t bound) {
  return make_error(
      ErrorCode::TooLarge,
      fmt::format("the response and its input ({} bytes) exceed the {} bytes one key may store", bytes, bound));
}

Result<Conversation> join_turns(const std::vector<TurnRecord>& newest_first) {
  Conversation conversation;
  if (newest_first.empty()) return conversation;
  for (auto turn = newest_first.rbegin(); turn != newest_first.rend(); ++turn) {
    auto response = parse_json(turn->response);
    auto input = parse_json(turn->input);
    if (!response || !input || !input->is_array()) {
      return make_error(ErrorCode::Internal, "a stored response is not valid JSON");
    }
    for (auto& item : *input) conversation.items.push_back(std::move(item));
    if (auto output = response->find("output"); output != response->end() && output->is_array()) {
      for (const auto& item : *output) conversation.items.push_back(item);
    }
    if (turn + 1 == newest_first.rend()) conversation.response = std::move(*response);
  }
  conversation.root = newest_first.back().root;
  conversation.bytes = conversation.items.dump().size();
  return conversation;
}

Result<std::shared_ptr<ResponseStore>> open_response_store(const std::string& url, ResponseStoreOptions options) {
  if (url.empty() || url == "memory")
    return std::shared_ptr<ResponseStore>(std::make_shared<MemoryResponseStore>(options));
  if (url.rfind("sqlite://", 0) == 0) {
    std::string path = url.substr(9);
    if (path.empty()) return make_error(ErrorCode::InvalidArgument, "sqlite:// needs a path: sqlite:///var/lib/x.db");
    auto store = SqliteResponseStore::open(path, std::move(options));
    if (!store) return store.error();
    return std::shared_ptr<ResponseStore>(std::move(*store));
  }
  if (url.rfind("redis://", 0) == 0) {
    auto store = RedisResponseStore::open(url, std::move(options));
    if (!store) return store.error();
    return std::shared_ptr<ResponseStore>(std::move(*store));
  }
  return make_error(ErrorCode::InvalidArgument,
                    fmt::format("'{}' names no response store: use memory, sqlite://PATH or redis://HOST[:PORT]",
                                redacted_redis_url(url)));
}

// ---- memory

MemoryResponseStore::MemoryResponseStore(ResponseStoreOptions options, size_t capacity, size_t max_bytes)
    : options_(std::move(options)), capacity_(capacity), max_bytes_(max_bytes) {}

int64_t MemoryResponseStore::now() const {
  return response_store_now_ms(options_);
}

void MemoryResponseStore::remove(Key& key, std::unordered_map<std::string, Entry>::iterator entry) {
  key.bytes -= entry->second.bytes;
  bytes_ -= entry->second.bytes;
  count_ -= 1;
  key.order.erase(entry->second.age);
  key.entries.erase(entry);
}

void MemoryResponseStore::expire(Key& key, int64_t now) {
  while (!key.order.empty()) {
    auto oldest = key.entries.find(key.order.front());
    if (now - oldest->second.used_ms < options_.retention.count()) break;
    remove(key, oldest);
  }
}

Status MemoryResponseStore::put(const std::string& key_id, const std::string& id, const StoredTurn& turn) {
  TurnRecord record = record_of(id, turn);
  size_t bytes = turn_bytes(record);
  size_t bound = std::min(options_.per_key_bytes, max_bytes_);
  if (bytes > bound) return turn_too_large(bytes, bound);
  int64_t at = now();
  std::lock_guard lock(mutex_);
  Key& key = keys_[key_id];
  expire(key, at);
  if (auto old = key.entries.find(id); old != key.entries.end()) remove(key, old);
  key.order.push_back(id);
  key.entries[id] = Entry{std::move(record), bytes, at, std::prev(key.order.end())};
  key.bytes += bytes;
  bytes_ += bytes;
  count_ += 1;
  // The key's own bounds first: it gives up its least recently used turns.
  while (key.order.size() > 1 && (key.order.size() > options_.per_key || key.bytes > options_.per_key_bytes)) {
    remove(key, key.entries.find(key.order.front()));
  }
  // Then the process's: the key holding the most bytes gives way, not whoever is oldest.
  while (count_ > capacity_ || bytes_ > max_bytes_) {
    auto biggest = std::max_element(keys_.begin(), keys_.end(),
                                    [](const auto& a, const auto& b) { return a.second.bytes < b.second.bytes; });
    if (biggest == keys_.end() || biggest->second.order.empty()) break;
    remove(biggest->second, biggest->second.entries.find(biggest->second.order.front()));
    if (biggest->second.order.empty()) keys_.erase(biggest);
  }
  return {};
}

Result<json> MemoryResponseStore::response(const std::string& key_id, const std::string& id) {
  int64_t at = now();
  std::lock_guard lock(mutex_);
  auto key = keys_.find(key_id);
  if (key == keys_.end()) return response_not_found(id);
  expire(key->second, at);
  auto entry = key->second.entries.find(id);
  if (entry == key->second.entries.end()) return response_not_found(id);
  auto parsed = parse_json(entry->second.record.response);
  if (!parsed) return make_error(ErrorCode::Internal, "a stored response is not valid JSON");
  return std::move(*parsed);
}

Result<Conversation> MemoryResponseStore::conversation(const std::string& key_id, const std::string& id) {
  int64_t at = now();
  std::vector<TurnRecord> turns;
  {
    std::lock_guard lock(mutex_);
    auto key = keys_.find(key_id);
    if (key == keys_.end()) return response_not_found(id);
    Key& owned = key->second;
    expire(owned, at);
    for (std::string next = id; !next.empty() && turns.size() < kMaxTurns;) {
      auto entry = owned.entries.find(next);
      if (entry == owned.entries.end()) {
        if (next == id) return response_not_found(id);
        return broken_chain(next);
      }
      entry->second.used_ms = at;  // a chain in use stays whole
      owned.order.splice(owned.order.end(), owned.order, entry->second.age);
      turns.push_back(entry->second.record);
      next = entry->second.record.previous;
    }
  }
  return join_turns(turns);
}

Result<bool> MemoryResponseStore::erase(const std::string& key_id, const std::string& id) {
  std::lock_guard lock(mutex_);
  auto key = keys_.find(key_id);
  if (key == keys_.end()) return false;
  auto entry = key->second.entries.find(id);
  if (entry == key->second.entries.end()) return false;
  remove(key->second, entry);
  if (key->second.order.empty()) keys_.erase(key);
  return true;
}

size_t MemoryResponseStore::size() const {
  std::lock_guard lock(mutex_);
  return count_;
}

size_t MemoryResponseStore::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

// ---- SQLite

namespace {

// A statement prepared once per store (cached by its SQL text's address) and reset when done;
// bind by position from 1.
class Statement {
 public:
  Statement(std::unordered_map<const char*, sqlite3_stmt*>& cache, sqlite3* db, const char* sql) : db_(db) {
    auto& cached = cache[sql];
    if (!cached && sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &cached, nullptr) != SQLITE_OK) {
      cached = nullptr;
    }
    statement_ = cached;
  }
  ~Statement() {
    if (!statement_) return;
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  bool ok() const { return statement_ != nullptr; }
  Statement& bind(int index, const std::string& text) {
    sqlite3_bind_text(statement_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& bind(int index, int64_t value) {
    sqlite3_bind_int64(statement_, index, value);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error code.
  int step() { return statement_ ? sqlite3_step(statement_) : SQLITE_ERROR; }
  std::string text(int column) const {
    const auto* data = reinterpret_cast<const char*>(sqlite3_column_text(statement_, column));
    return data ? std::string(data, static_cast<size_t>(sqlite3_column_bytes(statement_, column))) : std::string();
  }
  int64_t integer(int column) const { return sqlite3_column_int64(statement_, column); }
  Error error(const char* what) const {
    return make_error(ErrorCode::Unavailable, fmt::format("response store: {}: {}", what, sqlite3_errmsg(db_)));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* statement_ = nullptr;
};

// Turns are rows; response_keys holds each key's count and bytes, kept by the triggers.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS responses(
  key_id TEXT NOT NULL, id TEXT NOT NULL, previous TEXT NOT NULL, root TEXT NOT NULL,
  response TEXT NOT NULL, input TEXT NOT NULL, bytes INTEGER NOT NULL, used_ms INTEGER NOT NULL,
  PRIMARY KEY(key_id, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS responses_by_key_use ON responses(key_id, used_ms);
CREATE INDEX IF NOT EXISTS responses_by_use ON responses(used_ms);
CREATE TABLE IF NOT EXISTS response_keys(
  key_id TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS responses_added AFTER INSERT ON responses BEGIN
  INSERT INTO response_keys(key_id, count, bytes) VALUES(new.key_id, 1, new.bytes)
    ON CONFLICT(key_id) DO UPDATE SET count = count + 1, bytes = bytes + new.bytes;
END;
CREATE TRIGGER IF NOT EXISTS responses_removed AFTER DELETE ON responses BEGIN
  UPDATE response_keys SET count = count - 1, bytes = bytes - old.bytes WHERE key_id = old.key_id;
  DELETE FROM response_keys WHERE key_id = old.key_id AND count <= 0;
END;
CREATE TRIGGER IF NOT EXISTS responses_resized AFTER UPDATE OF bytes ON responses BEGIN
  UPDATE response_keys SET bytes = bytes - old.bytes + new.bytes WHERE key_id = new.key_id;
END;
)sql";

// Rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    began_ = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (began_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool began() const { return began_; }
  bool commit() {
    done_ = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
    return done_;
  }

 private:
  sqlite3* db_;
  bool began_ = false;
  bool done_ = false;
};

}  // namespace

Result<std::unique_ptr<SqliteResponseStore>> SqliteResponseStore::open(const std::string& path,
                                                                       ResponseStoreOptions options) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return make_error(ErrorCode::Unavailable, fmt::format("cannot open the response store {}: {}", path, message));
  }
  sqlite3_busy_timeout(db, 5'000);
  std::unique_ptr<SqliteResponseStore> store(new SqliteResponseStore(db, std::move(options)));
  for (const char* sql : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", kSchema}) {
    if (auto done = store->exec(sql); !done) {
      return make_error(ErrorCode::Unavailable,
                        fmt::format("cannot open the response store {}: {}", path, done.error().message));
    }
  }
  return store;
}

SqliteResponseStore::~SqliteResponseStore() {
  for (auto& [sql, statement] : statements_) sqlite3_finalize(statement);
  sqlite3_close(db_);
}

int64_t SqliteResponseStore::now() const {
  return response_store_now_ms(options_);
}

Status SqliteResponseStore::exec(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message ? message : "error";
    sqlite3_free(message);
    return make_error(ErrorCode::Unavailable, text);
  }
  return {};
}

Status SqliteResponseStore::put(const std::string& key_id, const std::string& id, const StoredTurn& turn) {
  TurnRecord record = record_of(id, turn);
  auto bytes = static_cast<int64_t>(turn_bytes(record));
  if (static_cast<size_t>(bytes) > options_.per_key_bytes)
    return turn_too_large(static_cast<size_t>(bytes), options_.per_key_bytes);
  int64_t at = now();
  std::lock_guard lock(mutex_);
  Transaction transaction(db_);
  if (!transaction.began())
    return make_error(ErrorCode::Unavailable, fmt::format("response store: {}", sqlite3_errmsg(db_)));
  // Expired turns go in batches, at most once a second.
  if (at - swept_ms_ >= 1'000) {
    swept_ms_ = at;
    Statement sweep(statements_, db_,
                    "DELETE FROM responses WHERE (key_id, id) IN "
                    "(SELECT key_id, id FROM responses WHERE used_ms <= ? LIMIT 1000)");
    if (sweep.bind(1, at - options_.retention.count()).step() != SQLITE_DONE) return sweep.error("expire");
  }
  Statement insert(statements_, db_,
                   "INSERT INTO responses(key_id, id, previous, root, response, input, bytes, used_ms) "
                   "VALUES(?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key_id, id) DO UPDATE SET previous = excluded.previous, "
                   "root = excluded.root, response = excluded.response, input = excluded.input, "
                   "bytes = excluded.bytes, used_ms = excluded.used_ms");
  insert.bind(1, key_id).bind(2, id).bind(3, record.previous).bind(4, record.root).bind(5, record.response);
  insert.bind(6, record.input).bind(7, bytes).bind(8, at);
  if (insert.step() != SQLITE_DONE) return insert.error("put");
  // The key's bounds: its least recently used turns go (never the one just stored).
  for (;;) {
    Statement usage(statements_, db_, "SELECT count, bytes FROM response_keys WHERE key_id = ?");
    if (usage.bind(1, key_id).step() != SQLITE_ROW) break;
    if (static_cast<size_t>(usage.integer(0)) <= options_.per_key &&
        static_cast<size_t>(usage.integer(1)) <= options_.per_key_bytes) {
      break;
    }
    Statement evict(statements_, db_,
                    "DELETE FROM responses WHERE key_id = ?1 AND id = "
                    "(SELECT id FROM responses WHERE key_id = ?1 AND id != ?2 ORDER BY used_ms LIMIT 1)");
    evict.bind(1, key_id).bind(2, id);
    if (evict.step() != SQLITE_DONE) return evict.error("evict");
    if (sqlite3_changes(db_) == 0) break;
  }
  if (!transaction.commit())
    return make_error(ErrorCode::Unavailable, fmt::format("response store: {}", sqlite3_errmsg(db_)));
  return {};
}

Result<json> SqliteResponseStore::response(const std::string& key_id, const std::string& id) {
  int64_t at = now();
  std::lock_guard lock(mutex_);
  Statement select(statements_, db_, "SELECT response FROM responses WHERE key_id = ? AND id = ? AND used_ms > ?");
  int step = select.bind(1, key_id).bind(2, id).bind(3, at - options_.retention.count()).step();
  if (step == SQLITE_DONE) return response_not_found(id);
  if (step != SQLITE_ROW) return select.error("get");
  auto parsed = parse_json(select.text(0));
  if (!parsed) return make_error(ErrorCode::Internal, "a stored response is not valid JSON");
  return std::move(*parsed);
}

Result<Conversation> SqliteResponseStore::conversation(const std::string& key_id, const std::string& id) {
  int64_t at = now();
  std::vector<TurnRecord> turns;
  {
    std::lock_guard lock(mutex_);
    Transaction transaction(db_);
    if (!transaction.began())
      return make_error(ErrorCode::Unavailable, fmt::format("response store: {}", sqlite3_errmsg(db_)));
    // The whole chain in one query, newest first; a missing link ends it early.
    Statement chain(statements_, db_, R"sql(
WITH RECURSIVE chain(id, previous, response, input, root, depth) AS (
  SELECT id, previous, response, input, root, 0 FROM responses WHERE key_id = ?1 AND id = ?2 AND used_ms > ?3
  UNION ALL
  SELECT r.id, r.previous, r.response, r.input, r.root, c.depth + 1 FROM chain c
    JOIN responses r ON r.key_id = ?1 AND r.id = c.previous AND r.used_ms > ?3
    WHERE c.previous != '' AND c.depth < ?4)
SELECT id, response, input, previous, root FROM chain ORDER BY depth)sql");
    chain.bind(1, key_id).bind(2, id).bind(3, at - options_.retention.count());
    chain.bind(4, static_cast<int64_t>(kMaxTurns));
    std::vector<std::string> ids;
    int step = SQLITE_ROW;
    while ((step = chain.step()) == SQLITE_ROW) {
      ids.push_back(chain.text(0));
      turns.push_back(TurnRecord{chain.text(1), chain.text(2), chain.text(3), chain.text(4)});
    }
    if (step != SQLITE_DONE) return chain.error("read");
    if (turns.empty()) return response_not_found(id);
    if (!turns.back().previous.empty() && turns.size() < kMaxTurns) return broken_chain(turns.back().previous);
    // A conversation in use stays whole: every turn of it was used now.
    for (const auto& used : ids) {
      Statement touch(statements_, db_, "UPDATE responses SET used_ms = ?3 WHERE key_id = ?1 AND id = ?2");
      if (touch.bind(1, key_id).bind(2, used).bind(3, at).step() != SQLITE_DONE) return touch.error("touch");
    }
    if (!transaction.commit())
      return make_error(ErrorCode::Unavailable, fmt::format("response store: {}", sqlite3_errmsg(db_)));
  }
  return join_turns(turns);
}

Result<bool> SqliteResponseStore::erase(const std::string& key_id, const std::string& id) {
  std::lock_guard lock(mutex_);
  Statement remove(statements_, db_, "DELETE FROM responses WHERE key_id = ? AND id = ?");
  if (remove.bind(1, key_id).bind(2, id).step() != SQLITE_DONE) return remove.error("delete");
  return sqlite3_changes(db_) > 0;
}

}  // namespace nebula::gateway
