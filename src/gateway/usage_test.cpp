#include "gateway/usage.h"

#include <gtest/gtest.h>

#include "common/json.h"
#include "store/forwarding_store.h"
#include "store/memory_store.h"

namespace nebula::gateway {
namespace {

// A store whose writes take effect but whose answers can be lost, as an etcd member or a server
// that dies between applying a write and answering it: the seam where double counting starts.
class LossyStore final : public store::ForwardingStore {
 public:
  LossyStore() : ForwardingStore(inner) {}
  int lose_answers = 0;   // the next N writes take effect, then fail with Unavailable
  int refuse_writes = 0;  // the next N writes fail with Unavailable without taking effect
  int conflict_lost = 0;  // the next N writes take effect, then answer Conflict (a retried id)
  store::MemoryStore inner;

  Result<int64_t> put(const std::string& key, const std::string& value,
                      store::Precondition precondition = store::Precondition::none(), int64_t lease = 0) override {
    if (refuse_writes > 0) {
      --refuse_writes;
      return make_error(ErrorCode::Unavailable, "refused");
    }
    auto written = inner.put(key, value, precondition, lease);
    if (written && lose_answers > 0) {
      --lose_answers;
      return make_error(ErrorCode::Unavailable, "the answer was lost");
    }
    if (written && conflict_lost > 0) {
      --conflict_lost;
      return make_error(ErrorCode::Conflict, "the key changed");
    }
    return written;
  }
  // A transaction would go around the failures above: hidden, so every write goes through put().
  Result<std::vector<int64_t>> put_all(const std::vector<store::Put>& puts) override {
    return store::Store::put_all(puts);
  }
};

json stored_record(store::Store& store, const std::string& key, const std::string& model,
                   std::chrono::system_clock::time_point when) {
  api::UsageRecord record;
  record.day = utc_day(when);
  record.key = key;
  record.model = model;
  auto kv = store.get(api::usage_key(record));
  if (!kv || !*kv) return json();
  auto document = parse_json((*kv)->value);
  return document ? *document : json();
}

TEST(UsageExactlyOnce, AWriteWhoseAnswerWasLostIsNotAddedTwice) {
  LossyStore store;
  UsageRecorder usage(store, std::chrono::hours(1));
  ASSERT_TRUE(usage.start());
  auto now = std::chrono::system_clock::now();
  usage.record("k1", "chat", {10, 20, 0, false}, now);
  store.lose_answers = 1;
  EXPECT_FALSE(usage.flush());  // took effect, but the recorder cannot know
  usage.record("k1", "chat", {1, 2, 0, false}, now);
  ASSERT_TRUE(usage.flush());  // the lost batch is settled (already there), the new one waits
  ASSERT_TRUE(usage.flush());
  json record = stored_record(store, "k1", "chat", now);
  EXPECT_EQ(record.value("prompt_tokens", 0), 11);
  EXPECT_EQ(record.value("completion_tokens", 0), 22);
  EXPECT_EQ(record.value("requests", 0), 2);
  auto queried = usage.query("k1", "chat", "");
  ASSERT_EQ(queried.size(), 1u);
  EXPECT_EQ(queried[0].prompt_tokens, 11);
}

TEST(UsageExactlyOnce, ARetryAnsweredConflictAfterItTookEffectIsNotAddedAgain) {
  // A server that restarted between a write and its retry forgot the write's id: the retried
  // compare-and-swap answers Conflict although the first one took effect.
  LossyStore store;
  UsageRecorder usage(store, std::chrono::hours(1));
  ASSERT_TRUE(usage.start());
  auto now = std::chrono::system_clock::now();
  usage.record("k1", "chat", {5, 5, 0, false}, now);
  store.conflict_lost = 1;
  ASSERT_TRUE(usage.flush());  // update() reads again, sees its own write, and stops
  EXPECT_EQ(stored_record(store, "k1", "chat", now).value("total_tokens", 0), 10);
}

TEST(UsageExactlyOnce, ARefusedWriteIsSentAgainAndCountedOnce) {
  LossyStore store;
  UsageRecorder usage(store, std::chrono::hours(1));
  ASSERT_TRUE(usage.start());
  auto now = std::chrono::system_clock::now();
  usage.record("k1", "chat", {3, 4, 0, false}, now);
  store.refuse_writes = 1;
  EXPECT_FALSE(usage.flush());
  EXPECT_TRUE(stored_record(store, "k1", "chat", now).is_null());
  ASSERT_TRUE(usage.flush());
  EXPECT_EQ(stored_record(store, "k1", "chat", now).value("total_tokens", 0), 7);
}

TEST(UsageExactlyOnce, SeveralRecordersAddUpOnOneRecord) {
  LossyStore store;
  auto now = std::chrono::system_clock::now();
  std::vector<std::unique_ptr<UsageRecorder>> recorders;
  for (int i = 0; i < 3; ++i) {
    recorders.push_back(std::make_unique<UsageRecorder>(store, std::chrono::hours(1)));
    ASSERT_TRUE(recorders.back()->start());
  }
  for (int round = 0; round < 4; ++round) {
    for (auto& recorder : recorders) {
      recorder->record("k1", "chat", {1, 1, 0, false}, now);
      if (round == 1) store.lose_answers = 1;
      (void)recorder->flush();
    }
  }
  for (auto& recorder : recorders) ASSERT_TRUE(recorder->flush());
  json record = stored_record(store, "k1", "chat", now);
  EXPECT_EQ(record.value("requests", 0), 12);
  EXPECT_EQ(record.value("total_tokens", 0), 24);
  EXPECT_EQ(record["writers"].size(), 3u);
}

TEST(UsageExactlyOnce, ForgetsWritersPastTheirMemoryAndSurvivesHostileRecords) {
  LossyStore store;
  auto now = std::chrono::system_clock::now();
  api::UsageRecord seed{"k1", "chat", utc_day(now), 1, 0, 1, 1, 0};
  int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  json document = api::to_json(seed);
  document["writers"] = {
      {"old", {7, now_s - 3 * 24 * 3600}}, {"recent", {3, now_s - 60}}, {"junk", "not a pair"}, {"negative", {-1, -1}}};
  ASSERT_TRUE(store.put(api::usage_key(seed), document.dump()));
  UsageRecorder usage(store, std::chrono::hours(1));
  ASSERT_TRUE(usage.start());
  usage.record("k1", "chat", {1, 1, 0, false}, now);
  ASSERT_TRUE(usage.flush());
  json record = stored_record(store, "k1", "chat", now);
  EXPECT_EQ(record.value("total_tokens", 0), 4);
  EXPECT_FALSE(record["writers"].contains("old"));
  EXPECT_FALSE(record["writers"].contains("junk"));
  EXPECT_TRUE(record["writers"].contains("recent"));
  EXPECT_FALSE(record["writers"].contains("negative"));
  EXPECT_EQ(record["writers"].size(), 2u);  // recent and ours

  // A record whose "writers" is not an object is overwritten with a fresh one, counts kept.
  json broken = stored_record(store, "k1", "chat", now);
  broken["writers"] = "x";
  ASSERT_TRUE(store.put(api::usage_key(seed), broken.dump()));
  usage.record("k1", "chat", {1, 1, 0, false}, now);
  ASSERT_TRUE(usage.flush());
  EXPECT_EQ(stored_record(store, "k1", "chat", now).value("total_tokens", 0), 6);
}

}  // namespace
}  // namespace nebula::gateway
