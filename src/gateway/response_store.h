#pragma once
// Stored responses, for `previous_response_id` and GET/DELETE /v1/responses/{id}: each response
// is one turn (its Response object, the input items its request added, and the response it
// continued), stored once; a conversation is read by following a turn's `previous` links back to
// the chain's first and joining every turn's input items and output items. A turn is kept for
// `retention` after it was last used (stored or read as part of a conversation, so a chain in
// use stays whole) and each API key keeps at most `per_key` turns and `per_key_bytes` of JSON
// text (its least recently used go first), so one key cannot push out everyone else's.
//
// Three places: this process's memory (MemoryResponseStore, lost on restart), an SQLite file
// (one server; survives restarts) and Redis (RedisResponseStore in redis_responses.h, shared by
// several servers and gateways). Thread-safe; the SQLite and Redis stores block on I/O
// (blocking() says so), so the gateway calls them off its I/O thread.
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/json.h"
#include "common/result.h"

struct sqlite3;
struct sqlite3_stmt;

namespace nebula::gateway {

struct ResponseStoreOptions {
  std::chrono::milliseconds retention{std::chrono::hours(24 * 30)};  // OpenAI keeps them 30 days
  size_t per_key = 10'000;
  size_t per_key_bytes = size_t{64} << 20;
  // Unix ms now (a test's clock); null = the system clock.
  std::function<int64_t()> now_ms;
};

// One response as stored: a turn of its conversation.
struct StoredTurn {
  json response;               // the Response object
  json input = json::array();  // the input items its request added (not those before it)
  std::string previous;        // the response it continued; "" for the first of a chain
  std::string root;            // the first response of its chain (its own id for the first)
};

// A conversation up to and including one response, for the engine and for input_items.
struct Conversation {
  json response;               // the last turn's Response object
  json items = json::array();  // every turn's input items then output items, oldest first
  std::string root;            // the chain's first response
  size_t bytes = 0;            // the length of the items' JSON text
  // Set when the chain is broken: the id of the earlier turn that was deleted or has expired
  // (then nothing else is set). The caller words the answer: its request named the last turn.
  std::string missing;
};

class ResponseStore {
 public:
  virtual ~ResponseStore() = default;
  // True when calls wait on a file or the network.
  virtual bool blocking() const = 0;
  // Stores (or replaces) the response `id` of key_id. TooLarge when the turn alone exceeds the
  // key's byte bound; Unavailable when the store cannot be reached.
  virtual Status put(const std::string& key_id, const std::string& id, const StoredTurn& turn) = 0;
  // The Response object; NotFound when unknown, expired, deleted or another key's.
  virtual Result<json> response(const std::string& key_id, const std::string& id) = 0;
  // The conversation up to and including `id`, marking each of its turns used. NotFound as
  // response(); when an earlier turn of the chain is gone, a Conversation naming it (`missing`).
  virtual Result<Conversation> conversation(const std::string& key_id, const std::string& id) = 0;
  // False when there was nothing of key_id's to erase.
  virtual Result<bool> erase(const std::string& key_id, const std::string& id) = 0;
};

// The store a URL names: `memory`, `sqlite://PATH` or `redis://HOST[:PORT]`, connected (an
// error when it cannot be opened or reached).
Result<std::shared_ptr<ResponseStore>> open_response_store(const std::string& url, ResponseStoreOptions options);

// A turn as its store keeps it: the JSON text of its response and input.
struct TurnRecord {
  std::string response;
  std::string input;
  std::string previous;
  std::string root;
};
// What the stores share: a turn's record (its root defaulting to its own id) and size, the
// clock, and their errors.
TurnRecord record_of(const std::string& id, const StoredTurn& turn);
size_t turn_bytes(const TurnRecord& record);
int64_t response_store_now_ms(const ResponseStoreOptions& options);
Error response_not_found(const std::string& id);
// The answer of conversation() when the turn `gone` of a chain is missing.
Conversation broken_chain(const std::string& gone);
// "... continues 'gone', which was deleted or has expired."
std::string broken_chain_message(const std::string& what, const std::string& asked, const std::string& gone);
Error turn_too_large(size_t bytes, size_t bound);
// The conversation of turns read newest first (the one asked for first, the chain's first last).
Result<Conversation> join_turns(const std::vector<TurnRecord>& newest_first);
// The most turns a conversation may have (a guard against a corrupted chain).
inline constexpr size_t kMaxTurns = 100'000;

// In this process's memory, also bounded in all by `capacity` turns and `max_bytes`: when full,
// the key holding the most bytes gives up its least recently used turn.
class MemoryResponseStore final : public ResponseStore {
 public:
  explicit MemoryResponseStore(ResponseStoreOptions options = {}, size_t capacity = 100'000,
                               size_t max_bytes = size_t{256} << 20);
  bool blocking() const override { return false; }
  Status put(const std::string& key_id, const std::string& id, const StoredTurn& turn) override;
  Result<json> response(const std::string& key_id, const std::string& id) override;
  Result<Conversation> conversation(const std::string& key_id, const std::string& id) override;
  Result<bool> erase(const std::string& key_id, const std::string& id) override;
  size_t size() const;
  size_t bytes() const;

 private:
  struct Entry {
    TurnRecord record;
    size_t bytes = 0;
    int64_t used_ms = 0;
    std::list<std::string>::iterator age;
  };
  struct Key {
    std::unordered_map<std::string, Entry> entries;
    std::list<std::string> order;  // least recently used first
    size_t bytes = 0;
  };
  int64_t now() const;
  void remove(Key& key, std::unordered_map<std::string, Entry>::iterator entry);
  void expire(Key& key, int64_t now);
  ResponseStoreOptions options_;
  size_t capacity_;
  size_t max_bytes_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Key> keys_;
  size_t count_ = 0;
  size_t bytes_ = 0;
};

// In an SQLite file of its own (WAL), for one server: survives restarts. Expired turns are
// deleted as new ones arrive.
class SqliteResponseStore final : public ResponseStore {
 public:
  static Result<std::unique_ptr<SqliteResponseStore>> open(const std::string& path, ResponseStoreOptions options);
  ~SqliteResponseStore() override;
  bool blocking() const override { return true; }
  Status put(const std::string& key_id, const std::string& id, const StoredTurn& turn) override;
  Result<json> response(const std::string& key_id, const std::string& id) override;
  Result<Conversation> conversation(const std::string& key_id, const std::string& id) override;
  Result<bool> erase(const std::string& key_id, const std::string& id) override;

 private:
  SqliteResponseStore(sqlite3* db, ResponseStoreOptions options) : db_(db), options_(std::move(options)) {}
  int64_t now() const;
  Status exec(const char* sql);
  std::mutex mutex_;
  sqlite3* db_;
  ResponseStoreOptions options_;
  std::unordered_map<const char*, sqlite3_stmt*> statements_;  // prepared once, by SQL text
  int64_t swept_ms_ = 0;                                       // when expired turns were last deleted
};

}  // namespace nebula::gateway
