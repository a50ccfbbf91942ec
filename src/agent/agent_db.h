#pragma once
// agent.db: the engines this agent runs, persisted so that a restarted agent re-adopts them
// instead of killing them (pid plus process start time rules out a reused pid).
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "common/result.h"

struct sqlite3;

namespace nebula::agent {

struct EngineRecord {
  std::string replica;
  std::string engine;
  pid_t pid = 0;
  int64_t start_time = 0;  // clock ticks since boot, field 22 of /proc/PID/stat
  int port = 0;
  std::string endpoint;
  int restarts = 0;
  int64_t plan_version = 0;
  std::string container_id;  // docker replicas: the container (pid and start_time are 0)
};

class AgentDb {
 public:
  static Result<std::unique_ptr<AgentDb>> open(const std::string& path);
  ~AgentDb();
  AgentDb(const AgentDb&) = delete;
  AgentDb& operator=(const AgentDb&) = delete;

  Status put(const EngineRecord& record);
  Status remove(const std::string& replica);
  Result<std::vector<EngineRecord>> all();

 private:
  explicit AgentDb(sqlite3* db) : db_(db) {}
  Status exec(const char* sql);
  sqlite3* db_;
};

}  // namespace nebula::agent
