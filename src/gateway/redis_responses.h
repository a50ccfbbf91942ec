#pragma once
// Stored responses in Redis, shared by every server and gateway that names the same Redis
// (`--responses redis://HOST:PORT`). Per API key K, under the prefix (default nebula:responses:):
//   {K}:r:ID   a hash: response, input, previous, root (the turn), expiring `retention` after its
//              last use;
//   {K}:order  a sorted set of K's turn ids scored by their last use (ms);
//   {K}:sizes  a hash: turn id -> bytes, and {K}:bytes, their sum.
// Every call is one Lua script, atomic in Redis: a put also drops K's expired turns and, while K
// is over its bounds, its least recently used ones; a conversation read follows the `previous`
// links inside Redis (one round trip however long the chain) and marks each turn used. The
// braces keep one key's turns in one Redis Cluster slot.
//
// Threading: calls block for at most `timeout` on one connection (locked; gateway/redis_connection.h),
// so the gateway makes them off its I/O thread. After a failure Redis is not tried again for a second.
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "gateway/redis_connection.h"
#include "gateway/response_store.h"

namespace nebula::gateway {

class RedisResponseStore final : public ResponseStore {
 public:
  // url: redis://HOST[:PORT]. Connects at once: an error when Redis cannot be reached.
  static Result<std::unique_ptr<RedisResponseStore>> open(const std::string& url, ResponseStoreOptions options,
                                                          std::chrono::milliseconds timeout = std::chrono::seconds(2),
                                                          std::string prefix = "nebula:responses:");
  ~RedisResponseStore() override;
  bool blocking() const override { return true; }
  Status put(const std::string& key_id, const std::string& id, const StoredTurn& turn) override;
  Result<json> response(const std::string& key_id, const std::string& id) override;
  Result<Conversation> conversation(const std::string& key_id, const std::string& id) override;
  Result<bool> erase(const std::string& key_id, const std::string& id) override;

 private:
  RedisResponseStore(RedisAddress address, ResponseStoreOptions options, std::chrono::milliseconds timeout,
                     std::string prefix);
  // One of the scripts; null when Redis did not answer or the script failed (under mutex_).
  RedisReplyPtr eval(size_t script, const std::string& key, const std::vector<std::string>& args);
  int64_t now() const;
  std::string base(const std::string& key_id) const { return prefix_ + "{" + key_id + "}:"; }
  Error unavailable() const;

  ResponseStoreOptions options_;
  std::string prefix_;
  std::mutex mutex_;
  RedisConnection connection_;  // guarded by mutex_
};

}  // namespace nebula::gateway
