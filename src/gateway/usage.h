#pragma once
// Usage accounting: every request's tokens as the engine reported them, aggregated per
// key × model × day in memory and added to the store in batches every flush interval. A crash
// loses at most the last interval's counts. Thread-safe.
//
// Exactly once: each batch added to a record is a write (this recorder's writer id, a sequence
// number) that the record remembers (its "writers": the last sequence applied per writer, kept
// kUsageWriterMemory), in the same compare-and-swap as the counts. A write whose answer was lost
// (etcd or the server answered nothing, or answered Conflict to a retry that had already taken
// effect) is sent again with the same sequence and the same counts, before any newer counts for
// that record: the record tells whether it already took effect. So every gateway and server adds
// each count once, whatever the store, the server's restarts or the retries in between.
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
  // A batch sent to the store whose outcome is not known yet.
  struct Unconfirmed {
    uint64_t sequence = 0;
    api::UsageRecord counts;
  };
  void run();
  // Adds one batch to its record, unless the record says it already took effect.
  Status write(const Unconfirmed& batch);
  store::Store& store_;
  std::chrono::milliseconds flush_interval_;
  mutable std::mutex mutex_;
  std::map<Slot, api::UsageRecord> pending_;
  std::map<Slot, Unconfirmed> unconfirmed_;  // at most one per record, retried as it was
  std::string writer_id_;
  uint64_t next_sequence_ = 1;
  std::map<std::pair<std::string, std::string>, int64_t> month_totals_;  // (month, key) -> tokens
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// How long a usage record remembers a writer's last sequence: far longer than any retry (a
// record is written during its day only), and bounded so a record's list of writers stays short.
constexpr std::chrono::hours kUsageWriterMemory{48};

// "2026-11-23" for a time, in UTC.
std::string utc_day(std::chrono::system_clock::time_point when);

}  // namespace nebula::gateway
