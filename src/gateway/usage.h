#pragma once
// Usage accounting: every request's tokens as the engine reported them, aggregated per
// key × model × day in memory and added to the store in batches every flush interval. A crash
// loses at most the last interval's counts. Thread-safe.
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "api/keys.h"
#include "store/store.h"

namespace nebula::gateway {

struct UsageDelta {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  bool error = false;
};

class UsageRecorder {
 public:
  UsageRecorder(store::Store& store, std::chrono::milliseconds flush_interval);
  ~UsageRecorder();
  // Loads this month's totals and starts the flush thread.
  Status start();
  void stop();  // flushes what is pending

  void record(const std::string& key, const std::string& model, const UsageDelta& delta,
              std::chrono::system_clock::time_point when);
  // Tokens the key used in the calendar month (UTC) of `when`, flushed or not.
  int64_t month_tokens(const std::string& key, std::chrono::system_clock::time_point when) const;
  // Adds pending counts to the stored records (compare-and-swap per record).
  Status flush();

  // Stored records filtered by key, model and first day (YYYY-MM-DD), plus what is pending.
  std::vector<api::UsageRecord> query(const std::string& key, const std::string& model, const std::string& since_day);

 private:
  using Slot = std::tuple<std::string, std::string, std::string>;  // day, key, model
  void run();
  store::Store& store_;
  std::chrono::milliseconds flush_interval_;
  mutable std::mutex mutex_;
  std::map<Slot, api::UsageRecord> pending_;
  std::map<std::pair<std::string, std::string>, int64_t> month_totals_;  // (month, key) -> tokens
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// "2026-11-23" for a time, in UTC.
std::string utc_day(std::chrono::system_clock::time_point when);

}  // namespace nebula::gateway
