#include "store/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "etcd_cluster.h"
#include "process_helpers.h"
#include "store/etcd_store.h"
#include "store/memory_store.h"
#include "store/sqlite_store.h"

namespace nebula::store {
namespace {

namespace fs = std::filesystem;

// Works for Result<T> and Status; prints the error on failure.
#define ASSERT_OK(expr)                                   \
  do {                                                    \
    const auto& result_ = (expr);                         \
    ASSERT_TRUE(result_.ok()) << result_.error().message; \
  } while (0)
using namespace std::chrono_literals;

std::string make_temp_dir() {
  std::string pattern = (fs::temp_directory_path() / "nebula_store_test_XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

// Collects events; thread-safe. Must outlive the watch handles that feed it.
class Recorder {
 public:
  WatchCallback callback() {
    return [this](const WatchEvent& event) {
      std::lock_guard lock(mu_);
      events_.push_back(event);
    };
  }
  std::vector<WatchEvent> events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::vector<int64_t> revisions() {
    std::vector<int64_t> out;
    for (const auto& event : events()) out.push_back(event.kv.mod_revision);
    return out;
  }
  // Waits until at least `count` events arrived (EtcdStore delivers them on its own thread; the
  // other stores before the call that caused them returns). True when they did.
  bool wait_for(size_t count) {
    return testing::eventually([&] { return events().size() >= count; }, 10s, 5ms);
  }

 private:
  std::mutex mu_;
  std::vector<WatchEvent> events_;
};

// Stops and joins writer threads, also when a test assertion returns early.
class Joiner {
 public:
  Joiner(std::atomic<bool>& stop, std::vector<std::thread>& threads) : stop_(stop), threads_(threads) {}
  ~Joiner() { join(); }
  void join() {
    stop_ = true;
    for (auto& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

 private:
  std::atomic<bool>& stop_;
  std::vector<std::thread>& threads_;
};

std::vector<int64_t> range(int64_t first, int64_t last) {
  std::vector<int64_t> out;
  for (int64_t r = first; r <= last; ++r) out.push_back(r);
  return out;
}

std::vector<std::string> keys_of(const ListResult& list) {
  std::vector<std::string> out;
  for (const auto& kv : list.kvs) out.push_back(kv.key);
  return out;
}

struct MemoryFactory {
  static std::unique_ptr<Store> make(const std::string& dir, const Clock& clock, size_t history_limit) {
    return std::make_unique<MemoryStore>(clock, history_limit);
  }
};

struct SqliteFactory {
  static std::unique_ptr<Store> make(const std::string& dir, const Clock& clock, size_t history_limit) {
    auto store = SqliteStore::open(dir + "/store.db", clock, history_limit);
    if (!store) throw std::runtime_error(store.error().message);
    return std::move(store).value();
  }
};

// A fresh single-member etcd cluster per test (a store's revisions start at 0 only on an empty
// cluster). etcd compacts only when asked: compact() stands in for the other stores' history limit.
struct EtcdFactory {
  std::unique_ptr<testing::EtcdCluster> cluster;
  std::unique_ptr<Store> make(const std::string&, const Clock&, size_t) {
    if (!cluster) cluster = std::make_unique<testing::EtcdCluster>(1);
    EtcdOptions options;
    options.endpoints = cluster->endpoints();
    auto store = EtcdStore::open(options);
    if (!store) throw std::runtime_error(store.error().message);
    return std::move(store).value();
  }
};

template <typename Factory>
constexpr bool kIsEtcd = std::is_same_v<Factory, EtcdFactory>;

struct FactoryNames {
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, MemoryFactory>) return "Memory";
    return std::is_same_v<T, SqliteFactory> ? "Sqlite" : "Etcd";
  }
};

template <typename Factory>
class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kIsEtcd<Factory> && !testing::EtcdCluster::available()) GTEST_SKIP() << "etcd is not installed (not on PATH)";
    dir_ = make_temp_dir();
  }
  void TearDown() override {
    store_.reset();
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  Store& open(size_t history_limit = 10000) {
    store_.reset();
    store_ = factory_.make(dir_, clock_, history_limit);
    return *store_;
  }
  // What the history limit does on its own in the other stores: keep only the events after
  // `revision - 1`.
  void compact_before(int64_t revision) {
    if constexpr (kIsEtcd<Factory>) {
      ASSERT_TRUE(static_cast<EtcdStore&>(*store_).compact(revision).ok());
    }
  }

  FakeClock clock_;
  std::string dir_;
  Factory factory_;  // outlives store_ (an etcd cluster)
  std::unique_ptr<Store> store_;
};

using Implementations = ::testing::Types<MemoryFactory, SqliteFactory, EtcdFactory>;
TYPED_TEST_SUITE(StoreTest, Implementations, FactoryNames);

TYPED_TEST(StoreTest, RevisionsIncreaseByOnePerMutation) {
  Store& store = this->open();
  EXPECT_EQ(store.revision(), 0);
  EXPECT_EQ(*store.put("a", "1"), 1);
  EXPECT_EQ(*store.put("b", "1"), 2);
  EXPECT_EQ(*store.put("a", "2"), 3);
  EXPECT_EQ(*store.remove("b"), 4);
  EXPECT_FALSE(store.put("a", "3", Precondition::absent()).ok());
  EXPECT_FALSE(store.remove("missing").ok());
  EXPECT_EQ(store.revision(), 4);
  EXPECT_EQ(*store.put("c", "1"), 5);
}

TYPED_TEST(StoreTest, GetPutRemove) {
  Store& store = this->open();
  EXPECT_FALSE(store.get("k")->has_value());
  ASSERT_OK(store.put("k", "v1"));
  auto kv = *store.get("k");
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->key, "k");
  EXPECT_EQ(kv->value, "v1");
  EXPECT_EQ(kv->create_revision, 1);
  EXPECT_EQ(kv->mod_revision, 1);
  EXPECT_EQ(kv->version, 1);
  EXPECT_EQ(kv->lease, 0);

  ASSERT_OK(store.put("other", "x"));
  ASSERT_OK(store.put("k", "v2"));
  kv = *store.get("k");
  EXPECT_EQ(kv->value, "v2");
  EXPECT_EQ(kv->create_revision, 1);
  EXPECT_EQ(kv->mod_revision, 3);
  EXPECT_EQ(kv->version, 2);

  EXPECT_EQ(*store.remove("k"), 4);
  EXPECT_FALSE(store.get("k")->has_value());
  auto missing = store.remove("k");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::NotFound);

  // Recreating starts a new generation.
  ASSERT_OK(store.put("k", "v3"));
  kv = *store.get("k");
  EXPECT_EQ(kv->create_revision, 5);
  EXPECT_EQ(kv->version, 1);

  // Binary and empty values round-trip.
  std::string binary("a\0b\xff", 4);
  ASSERT_OK(store.put("bin", binary));
  EXPECT_EQ((*store.get("bin"))->value, binary);
  ASSERT_OK(store.put("empty", ""));
  EXPECT_EQ((*store.get("empty"))->value, "");

  auto empty_key = store.put("", "x");
  ASSERT_FALSE(empty_key.ok());
  EXPECT_EQ(empty_key.error().code, ErrorCode::InvalidArgument);
}

TYPED_TEST(StoreTest, ListByPrefixIsSorted) {
  Store& store = this->open();
  for (const char* key : {"b/1", "a/2", "a", "a/1", "ab", "a/\xff"}) ASSERT_OK(store.put(key, "v"));
  auto list = *store.list("a/");
  EXPECT_EQ(keys_of(list), (std::vector<std::string>{"a/1", "a/2", "a/\xff"}));
  EXPECT_EQ(list.revision, 6);
  EXPECT_EQ(keys_of(*store.list("")), (std::vector<std::string>{"a", "a/1", "a/2", "a/\xff", "ab", "b/1"}));
  EXPECT_TRUE(store.list("c")->kvs.empty());
  ASSERT_OK(store.remove("a/1"));
  list = *store.list("a/");
  EXPECT_EQ(keys_of(list), (std::vector<std::string>{"a/2", "a/\xff"}));
  EXPECT_EQ(list.revision, 7);
}

TYPED_TEST(StoreTest, CompareAndSwap) {
  Store& store = this->open();
  EXPECT_EQ(*store.put("k", "1", Precondition::absent()), 1);
  auto conflict = store.put("k", "2", Precondition::absent());
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().code, ErrorCode::Conflict);

  EXPECT_EQ(*store.put("k", "2", Precondition::at(1)), 2);
  conflict = store.put("k", "3", Precondition::at(1));
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().code, ErrorCode::Conflict);
  EXPECT_EQ((*store.get("k"))->value, "2");

  conflict = store.put("missing", "x", Precondition::at(2));
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().code, ErrorCode::Conflict);

  auto removed = store.remove("k", Precondition::at(1));
  ASSERT_FALSE(removed.ok());
  EXPECT_EQ(removed.error().code, ErrorCode::Conflict);
  EXPECT_EQ(*store.remove("k", Precondition::at(2)), 3);
  EXPECT_EQ(store.revision(), 3);
}

TYPED_TEST(StoreTest, PutAllWritesEveryKeyOrNone) {
  Store& store = this->open();
  int64_t first = *store.put("a", "1");
  Recorder recorder;
  auto handle = store.watch("", 0, recorder.callback());
  ASSERT_OK(handle);
  auto written = store.put_all(
      {{"a", "2", Precondition::at(first)}, {"b", "1", Precondition::absent()}, {"c", "1", Precondition::none()}});
  ASSERT_OK(written);
  ASSERT_EQ(written->size(), 3u);
  // One revision on etcd (one transaction), consecutive ones elsewhere; never before the last.
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_GT((*written)[i], first);
    if (i > 0) {
      EXPECT_GE((*written)[i], (*written)[i - 1]);
    }
    EXPECT_EQ((*written)[i], (*store.get(std::string(1, char('a' + i))))->mod_revision);
  }
  EXPECT_EQ(store.revision(), written->back());
  EXPECT_EQ((*store.get("a"))->value, "2");
  ASSERT_TRUE(recorder.wait_for(3));
  auto events = recorder.events();
  EXPECT_EQ(events[0].kv.key, "a");
  ASSERT_TRUE(events[0].prev.has_value());
  EXPECT_EQ(events[0].prev->value, "1");

  // One precondition fails: nothing is written.
  int64_t before = store.revision();
  auto conflict = store.put_all({{"a", "3", Precondition::at((*written)[0])}, {"b", "2", Precondition::absent()}});
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().code, ErrorCode::Conflict);
  conflict = store.put_all({{"d", "1", Precondition::absent()}, {"a", "3", Precondition::at(first)}});
  ASSERT_FALSE(conflict.ok());
  EXPECT_EQ(conflict.error().code, ErrorCode::Conflict);
  EXPECT_EQ(store.revision(), before);
  EXPECT_EQ((*store.get("a"))->value, "2");
  EXPECT_FALSE(store.get("d")->has_value());

  // Bad batches are refused whole.
  std::vector<Put> too_many;
  for (size_t i = 0; i <= kMaxBatch; ++i) too_many.push_back({"many/" + std::to_string(i), "x", Precondition::none()});
  for (const auto& bad :
       std::vector<std::vector<Put>>{too_many,
                                     {{"e", "1", Precondition::none()}, {"e", "2", Precondition::none()}},
                                     {{"f", "1", Precondition{-2}}},
                                     {{"g", "1", Precondition::none()}, {"", "1", Precondition::none()}}}) {
    auto refused = store.put_all(bad);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code, ErrorCode::InvalidArgument) << refused.error().message;
  }
  EXPECT_EQ(store.revision(), before);
  EXPECT_FALSE(store.get("g")->has_value());
  auto empty = store.put_all({});
  ASSERT_OK(empty);
  EXPECT_TRUE(empty->empty());
  std::vector<Put> full;
  for (size_t i = 0; i < kMaxBatch; ++i) full.push_back({"full/" + std::to_string(i), "x", Precondition::absent()});
  ASSERT_OK(store.put_all(full));
  EXPECT_EQ(store.list("full/")->kvs.size(), kMaxBatch);
}

// put_batches: batches applied independently (several at once on etcd), one failing leaves the
// others written, every key of a written batch written once, bad batches refused alone.
TYPED_TEST(StoreTest, PutBatchesAppliesEachBatchOnItsOwn) {
  Store& store = this->open();
  int64_t first = *store.put("taken/0", "old");
  Recorder recorder;
  auto handle = store.watch_values("k/", 0, recorder.callback());
  ASSERT_OK(handle);
  std::vector<std::vector<Put>> batches(9);
  for (size_t batch = 0; batch < batches.size(); ++batch) {
    for (size_t i = 0; i < (batch == 8 ? 5 : kMaxBatch); ++i) {
      batches[batch].push_back({"k/" + std::to_string(batch) + "/" + std::to_string(i), "v", Precondition::absent()});
    }
  }
  // Batch 3 has one stale compare-and-swap: refused whole; batch 5 is malformed (a bad key).
  batches[3][77] = {"taken/0", "new", Precondition::at(first + 1000)};
  batches[5].back().key = "";
  auto outcomes = store.put_batches(batches);
  ASSERT_EQ(outcomes.size(), batches.size());
  size_t written_keys = 0;
  for (size_t batch = 0; batch < batches.size(); ++batch) {
    if (batch == 3) {
      ASSERT_FALSE(outcomes[batch].ok());
      EXPECT_EQ(outcomes[batch].error().code, ErrorCode::Conflict) << outcomes[batch].error().message;
      continue;
    }
    if (batch == 5) {
      ASSERT_FALSE(outcomes[batch].ok());
      EXPECT_EQ(outcomes[batch].error().code, ErrorCode::InvalidArgument) << outcomes[batch].error().message;
      continue;
    }
    ASSERT_OK(outcomes[batch]);
    ASSERT_EQ(outcomes[batch]->size(), batches[batch].size());
    for (size_t i = 0; i < batches[batch].size(); ++i) {
      auto kv = store.get(batches[batch][i].key);
      ASSERT_OK(kv);
      ASSERT_TRUE(kv->has_value()) << batches[batch][i].key;
      EXPECT_EQ((*kv)->mod_revision, (*outcomes[batch])[i]);
      EXPECT_EQ((*kv)->version, 1);
      ++written_keys;
    }
  }
  EXPECT_EQ((*store.get("taken/0"))->value, "old");
  EXPECT_TRUE(store.list("k/3/")->kvs.empty());
  EXPECT_TRUE(store.list("k/5/")->kvs.empty());
  EXPECT_EQ(store.list("k/")->kvs.size(), written_keys);
  // Each written key once in the watch: nothing written twice.
  ASSERT_TRUE(recorder.wait_for(written_keys));
  std::set<std::string> seen;
  for (const auto& event : recorder.events()) EXPECT_TRUE(seen.insert(event.kv.key).second) << event.kv.key;
  EXPECT_EQ(seen.size(), written_keys);

  // Written again at the revisions they were written at: every batch goes through.
  std::vector<std::vector<Put>> again(2);
  for (size_t i = 0; i < 3; ++i) {
    again[0].push_back({batches[0][i].key, "w", Precondition::at((*outcomes[0])[i])});
    again[1].push_back({batches[1][i].key, "w", Precondition::at((*outcomes[1])[i])});
  }
  for (const auto& outcome : store.put_batches(again)) ASSERT_OK(outcome);
  EXPECT_EQ((*store.get(batches[1][2].key))->value, "w");

  // A key in two batches: neither batch is written, the others are.
  int64_t before = store.revision();
  std::vector<std::vector<Put>> overlapping = {{{"o/a", "1", Precondition::none()}, {"o/b", "1", Precondition::none()}},
                                               {{"o/c", "1", Precondition::none()}},
                                               {{"o/b", "2", Precondition::none()}}};
  auto refused = store.put_batches(overlapping);
  ASSERT_EQ(refused.size(), 3u);
  ASSERT_FALSE(refused[0].ok());
  EXPECT_EQ(refused[0].error().code, ErrorCode::InvalidArgument);
  ASSERT_OK(refused[1]);
  ASSERT_FALSE(refused[2].ok());
  EXPECT_EQ(refused[2].error().code, ErrorCode::InvalidArgument);
  EXPECT_EQ(store.list("o/")->kvs.size(), 1u);
  EXPECT_EQ(store.revision(), before + 1);
  EXPECT_TRUE(store.put_batches({}).empty());
  auto nothing = store.put_batches({{}});
  ASSERT_EQ(nothing.size(), 1u);
  ASSERT_OK(nothing[0]);
  EXPECT_TRUE(nothing[0]->empty());
}

TYPED_TEST(StoreTest, WatchReplaysHistoryThenLiveEvents) {
  Store& store = this->open();
  ASSERT_OK(store.put("a", "1"));
  ASSERT_OK(store.put("b", "1"));
  ASSERT_OK(store.put("a", "2"));
  ASSERT_OK(store.remove("a"));

  Recorder recorder;
  auto handle = store.watch("", 2, recorder.callback());
  ASSERT_OK(handle);
  ASSERT_TRUE(recorder.wait_for(3));
  EXPECT_EQ(recorder.revisions(), range(2, 4));
  ASSERT_OK(store.put("c", "1"));
  ASSERT_TRUE(recorder.wait_for(4));
  auto events = recorder.events();
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::Put);
  EXPECT_EQ(events[0].kv.key, "b");
  EXPECT_FALSE(events[0].prev.has_value());
  EXPECT_EQ(events[1].kv.key, "a");
  EXPECT_EQ(events[1].kv.value, "2");
  EXPECT_EQ(events[1].kv.version, 2);
  ASSERT_TRUE(events[1].prev.has_value());
  EXPECT_EQ(events[1].prev->value, "1");
  EXPECT_EQ(events[1].prev->mod_revision, 1);
  EXPECT_EQ(events[2].type, WatchEvent::Type::Delete);
  EXPECT_EQ(events[2].kv.key, "a");
  EXPECT_EQ(events[2].kv.value, "");
  EXPECT_EQ(events[2].kv.mod_revision, 4);
  ASSERT_TRUE(events[2].prev.has_value());
  EXPECT_EQ(events[2].prev->value, "2");
  EXPECT_EQ(events[3].kv.key, "c");
  EXPECT_EQ(events[3].kv.mod_revision, 5);

  // Live only, and a start in the future.
  Recorder live;
  Recorder future;
  auto live_handle = store.watch("", 0, live.callback());
  auto future_handle = store.watch("", store.revision() + 2, future.callback());
  ASSERT_OK(live_handle);
  ASSERT_OK(future_handle);
  ASSERT_OK(store.put("d", "1"));
  ASSERT_OK(store.put("e", "1"));
  ASSERT_TRUE(live.wait_for(2));
  ASSERT_TRUE(future.wait_for(1));
  EXPECT_EQ(live.revisions(), range(6, 7));
  EXPECT_EQ(future.revisions(), range(7, 7));
}

TYPED_TEST(StoreTest, WatchFiltersByPrefix) {
  Store& store = this->open();
  ASSERT_OK(store.put("jobs/1", "x"));
  ASSERT_OK(store.put("nodes/1", "x"));
  Recorder recorder;
  auto handle = store.watch("jobs/", 1, recorder.callback());
  ASSERT_OK(handle);
  ASSERT_OK(store.put("jobsx", "x"));
  ASSERT_OK(store.put("jobs/2", "x"));
  ASSERT_OK(store.remove("nodes/1"));
  ASSERT_OK(store.remove("jobs/1"));
  ASSERT_TRUE(recorder.wait_for(3));
  std::vector<std::string> keys;
  for (const auto& event : recorder.events()) keys.push_back(event.kv.key);
  EXPECT_EQ(keys, (std::vector<std::string>{"jobs/1", "jobs/2", "jobs/1"}));
  EXPECT_EQ(recorder.revisions(), (std::vector<int64_t>{1, 4, 6}));
}

TYPED_TEST(StoreTest, CancelStopsDelivery) {
  Store& store = this->open();
  Recorder recorder;
  auto handle = store.watch("", 0, recorder.callback());
  ASSERT_OK(handle);
  ASSERT_OK(store.put("a", "1"));
  ASSERT_TRUE(recorder.wait_for(1));
  (*handle)->cancel();
  (*handle)->cancel();  // idempotent
  ASSERT_OK(store.put("a", "2"));
  EXPECT_EQ(recorder.revisions(), range(1, 1));

  // The destructor cancels.
  Recorder scoped;
  {
    auto scoped_handle = store.watch("", 0, scoped.callback());
    ASSERT_OK(scoped_handle);
    ASSERT_OK(store.put("a", "3"));
    ASSERT_TRUE(scoped.wait_for(1));
  }
  ASSERT_OK(store.put("a", "4"));
  EXPECT_EQ(scoped.revisions(), range(3, 3));

  // A handle may outlive its store.
  auto late = store.watch("", 0, recorder.callback());
  ASSERT_OK(late);
  this->store_.reset();
  (*late)->cancel();
}

TYPED_TEST(StoreTest, CancelFromAnotherThreadWhileWriting) {
  Store& store = this->open();
  std::atomic<int> delivered{0};
  auto handle = store.watch("", 0, [&](const WatchEvent&) { delivered.fetch_add(1); });
  ASSERT_OK(handle);
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  Joiner joiner(stop, writers);
  writers.emplace_back([&] {
    for (int i = 0; !stop.load(); ++i) ASSERT_OK(store.put("k", std::to_string(i)));
  });
  while (delivered.load() < 20) std::this_thread::yield();
  (*handle)->cancel();
  int after_cancel = delivered.load();
  std::this_thread::sleep_for(20ms);
  joiner.join();
  EXPECT_EQ(delivered.load(), after_cancel);
}

TYPED_TEST(StoreTest, WatchRacingWritersSeesEveryRevisionOnce) {
  // History big enough that the watch below cannot hit compaction however the threads are scheduled.
  Store& store = this->open(/*history_limit=*/1'000'000);
  constexpr int kWriters = 4;
  constexpr int kMaxPutsEach = 5000;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> puts{0};
  std::vector<std::thread> writers;
  Joiner joiner(stop, writers);
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      for (int i = 0; i < kMaxPutsEach && !stop.load(); ++i) {
        ASSERT_OK(store.put("k/" + std::to_string(w) + "/" + std::to_string(i % 7), std::to_string(i)));
        puts.fetch_add(1);
        std::this_thread::sleep_for(10us);
      }
    });
  }
  while (store.revision() < 40) std::this_thread::yield();
  Recorder from_history;
  Recorder live;
  int64_t from = store.revision() - 10;
  auto history_handle = store.watch("k/", from, from_history.callback());
  auto live_handle = store.watch("", 0, live.callback());
  ASSERT_OK(history_handle);
  ASSERT_OK(live_handle);
  int64_t registered = store.revision();
  while (store.revision() < registered + 200 && puts.load() < kWriters * kMaxPutsEach) std::this_thread::yield();
  joiner.join();

  int64_t last = store.revision();
  EXPECT_EQ(last, puts.load());
  ASSERT_TRUE(from_history.wait_for(static_cast<size_t>(last - from + 1)));
  ASSERT_TRUE(
      testing::eventually([&] { return !live.revisions().empty() && live.revisions().back() == last; }, 10s, 5ms));
  EXPECT_EQ(from_history.revisions(), range(from, last));
  auto seen = live.revisions();
  ASSERT_FALSE(seen.empty());
  EXPECT_LE(seen.front(), registered + 1);
  EXPECT_EQ(seen, range(seen.front(), last));
}

TYPED_TEST(StoreTest, WatchFromCompactedRevisionFails) {
  Store& store = this->open(/*history_limit=*/10);
  for (int i = 0; i < 30; ++i) ASSERT_OK(store.put("k" + std::to_string(i % 3), std::to_string(i)));
  this->compact_before(21);
  Recorder recorder;
  auto compacted = store.watch("", 1, recorder.callback());
  ASSERT_FALSE(compacted.ok());
  EXPECT_EQ(compacted.error().code, ErrorCode::Compacted);
  EXPECT_TRUE(recorder.events().empty());

  auto kept = store.watch("", store.revision() - 9, recorder.callback());
  ASSERT_OK(kept);
  ASSERT_TRUE(recorder.wait_for(10));
  EXPECT_EQ(recorder.revisions(), range(21, 30));

  auto negative = store.watch("", -1, recorder.callback());
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(negative.error().code, ErrorCode::InvalidArgument);
}

TYPED_TEST(StoreTest, LeasesExpireIntoDeleteEvents) {
  if (kIsEtcd<TypeParam>) GTEST_SKIP() << "etcd expires leases on its own clock: EtcdClusterTest.LeaseExpiry";
  Store& store = this->open();
  auto lease = store.grant_lease(1000);
  ASSERT_OK(lease);
  ASSERT_OK(store.put("a", "1", Precondition::none(), *lease));
  ASSERT_OK(store.put("b", "1", Precondition::none(), *lease));
  ASSERT_OK(store.put("c", "1"));
  EXPECT_EQ((*store.get("a"))->lease, *lease);
  Recorder recorder;
  auto handle = store.watch("", 0, recorder.callback());
  ASSERT_OK(handle);

  this->clock_.advance(500ms);
  EXPECT_EQ(store.expire_leases(), 0);
  ASSERT_OK(store.keep_alive(*lease));
  this->clock_.advance(800ms);  // 1300ms: past the first deadline, not the renewed one
  EXPECT_EQ(store.expire_leases(), 0);
  EXPECT_TRUE(store.get("a")->has_value());
  this->clock_.advance(300ms);
  EXPECT_EQ(store.expire_leases(), 1);
  EXPECT_EQ(store.expire_leases(), 0);

  EXPECT_FALSE(store.get("a")->has_value());
  EXPECT_FALSE(store.get("b")->has_value());
  EXPECT_TRUE(store.get("c")->has_value());
  auto events = recorder.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].type, WatchEvent::Type::Delete);
  EXPECT_EQ(events[0].kv.key, "a");
  EXPECT_EQ(events[0].kv.mod_revision, 4);
  EXPECT_EQ(events[1].type, WatchEvent::Type::Delete);
  EXPECT_EQ(events[1].kv.key, "b");
  EXPECT_EQ(events[1].kv.mod_revision, 5);
  EXPECT_EQ(store.revision(), 5);
  EXPECT_EQ(store.keep_alive(*lease).error().code, ErrorCode::NotFound);
}

TYPED_TEST(StoreTest, LeaseErrorsAndRevoke) {
  Store& store = this->open();
  EXPECT_EQ(store.put("a", "1", Precondition::none(), 42).error().code, ErrorCode::NotFound);
  EXPECT_EQ(store.keep_alive(42).error().code, ErrorCode::NotFound);
  EXPECT_EQ(store.revoke_lease(42).error().code, ErrorCode::NotFound);
  EXPECT_EQ(store.grant_lease(0).error().code, ErrorCode::InvalidArgument);
  EXPECT_EQ(store.revision(), 0);

  int64_t first = *store.grant_lease(10'000);
  int64_t second = *store.grant_lease(10'000);
  EXPECT_NE(first, second);
  ASSERT_OK(store.put("a", "1", Precondition::none(), first));
  ASSERT_OK(store.put("b", "1", Precondition::none(), first));
  // Re-putting without the lease detaches the key from it.
  ASSERT_OK(store.put("b", "2"));
  ASSERT_OK(store.put("c", "1", Precondition::none(), second));

  Recorder recorder;
  auto handle = store.watch("", 0, recorder.callback());
  ASSERT_OK(store.revoke_lease(first));
  ASSERT_TRUE(recorder.wait_for(1));
  EXPECT_EQ(recorder.revisions(), range(5, 5));
  EXPECT_FALSE(store.get("a")->has_value());
  EXPECT_TRUE(store.get("b")->has_value());
  EXPECT_TRUE(store.get("c")->has_value());
  EXPECT_EQ(store.revoke_lease(first).error().code, ErrorCode::NotFound);

  if (kIsEtcd<TypeParam>) return;  // the rest runs on the fake clock
  // A lease with no keys expires without events.
  int64_t empty = *store.grant_lease(10);
  this->clock_.advance(10ms);
  EXPECT_EQ(store.expire_leases(), 1);
  EXPECT_EQ(store.keep_alive(empty).error().code, ErrorCode::NotFound);
  EXPECT_EQ(store.revision(), 5);
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    path_ = dir_ + "/store.db";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::unique_ptr<SqliteStore> open(size_t history_limit = 10000) {
    auto store = SqliteStore::open(path_, clock_, history_limit);
    if (!store) ADD_FAILURE() << store.error().message;
    return store ? std::move(store).value() : nullptr;
  }

  FakeClock clock_;
  std::string dir_;
  std::string path_;
};

TEST_F(SqliteStoreTest, SurvivesRestart) {
  int64_t lease = 0;
  {
    auto store = open();
    ASSERT_TRUE(store);
    ASSERT_OK(store->put("a", "1"));
    ASSERT_OK(store->put("b", "1"));
    ASSERT_OK(store->put("a", "2"));
    ASSERT_OK(store->remove("b"));
    lease = *store->grant_lease(1000);
    ASSERT_OK(store->put("leased", "x", Precondition::none(), lease));
    EXPECT_EQ(store->revision(), 5);
  }
  auto store = open();
  ASSERT_TRUE(store);
  EXPECT_EQ(store->revision(), 5);
  auto a = *store->get("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->value, "2");
  EXPECT_EQ(a->create_revision, 1);
  EXPECT_EQ(a->mod_revision, 3);
  EXPECT_EQ(a->version, 2);
  EXPECT_FALSE(store->get("b")->has_value());
  EXPECT_EQ(keys_of(*store->list("")), (std::vector<std::string>{"a", "leased"}));

  Recorder recorder;
  auto handle = store->watch("", 1, recorder.callback());
  ASSERT_OK(handle);
  auto events = recorder.events();
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(recorder.revisions(), range(1, 5));
  EXPECT_EQ(events[2].kv.value, "2");
  ASSERT_TRUE(events[2].prev.has_value());
  EXPECT_EQ(events[2].prev->value, "1");
  EXPECT_EQ(events[3].type, WatchEvent::Type::Delete);
  EXPECT_EQ(events[3].kv.key, "b");
  EXPECT_EQ(events[4].kv.lease, lease);

  EXPECT_EQ(*store->put("c", "1"), 6);
  EXPECT_NE(*store->grant_lease(60'000), lease);

  // The lease survived with its wall-clock deadline.
  clock_.advance(1s);
  EXPECT_EQ(store->expire_leases(), 1);
  EXPECT_FALSE(store->get("leased")->has_value());
  EXPECT_EQ(recorder.revisions(), range(1, 7));
}

TEST_F(SqliteStoreTest, RevisionAndCompactionSurviveRestart) {
  {
    auto store = open(/*history_limit=*/10);
    ASSERT_TRUE(store);
    for (int i = 0; i < 50; ++i) ASSERT_OK(store->put("k", std::to_string(i)));
    ASSERT_OK(store->remove("k"));
  }
  auto store = open(10);
  ASSERT_TRUE(store);
  // Every key is gone and the log is compacted, yet the revision does not go back.
  EXPECT_TRUE(store->list("")->kvs.empty());
  EXPECT_EQ(store->revision(), 51);
  EXPECT_EQ(store->watch("", 1, [](const WatchEvent&) {}).error().code, ErrorCode::Compacted);
  Recorder recorder;
  auto handle = store->watch("", 42, recorder.callback());
  ASSERT_OK(handle);
  EXPECT_EQ(recorder.revisions(), range(42, 51));
  EXPECT_EQ(*store->put("k", "again"), 52);
  EXPECT_EQ((*store->get("k"))->create_revision, 52);
}

TEST_F(SqliteStoreTest, OpenInMissingDirectoryFailsClearly) {
  std::string path = dir_ + "/no/such/dir/store.db";
  auto store = SqliteStore::open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.error().code, ErrorCode::Internal);
  EXPECT_NE(store.error().message.find(path), std::string::npos) << store.error().message;
}

TEST_F(SqliteStoreTest, OpenNonDatabaseFailsClearly) {
  std::ofstream(path_) << std::string(4096, 'x');
  auto store = SqliteStore::open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.error().message.find(path_), std::string::npos) << store.error().message;
}

TEST_F(SqliteStoreTest, HistoryIsKeptByAgeThenCompacted) {
  SqliteHistory history;
  history.max_age = 60s;
  auto store = SqliteStore::open(path_, clock_, history);
  ASSERT_OK(store);
  for (int i = 0; i < 100; ++i) ASSERT_OK((*store)->put("k", std::to_string(i)));
  // However many revisions, none is dropped within max_age.
  Recorder recorder;
  auto all = (*store)->watch("", 1, recorder.callback());
  ASSERT_OK(all);
  EXPECT_EQ(recorder.revisions(), range(1, 100));
  (*all)->cancel();
  clock_.advance(30s);
  ASSERT_OK((*store)->put("k", "later"));
  EXPECT_TRUE((*store)->watch("", 1, [](const WatchEvent&) {}).ok());
  // Once older than max_age, they go (at the next write); what is younger stays.
  clock_.advance(31s);
  ASSERT_OK((*store)->put("k", "now"));
  EXPECT_EQ((*store)->watch("", 100, [](const WatchEvent&) {}).error().code, ErrorCode::Compacted);
  Recorder recent;
  auto kept = (*store)->watch("", 101, recent.callback());
  ASSERT_OK(kept);
  EXPECT_EQ(recent.revisions(), range(101, 102));
  // The current keys are never compacted.
  EXPECT_EQ((*(*store)->get("k"))->value, "now");
}

TEST_F(SqliteStoreTest, HistoryIsBoundedBySizeAndTheFileGivesTheSpaceBack) {
  const std::string document(16 * 1024, 'x');  // a large Node document
  SqliteHistory history;
  history.max_bytes = 1024 * 1024;
  {
    auto store = SqliteStore::open(path_, clock_, history);
    ASSERT_OK(store);
    // 2,000 rewrites of one key: 64 MiB of history (value and previous value) without a bound.
    for (int i = 0; i < 2000; ++i) ASSERT_OK((*store)->put("node", document + std::to_string(i)));
    EXPECT_EQ((*store)->watch("", 1, [](const WatchEvent&) {}).error().code, ErrorCode::Compacted);
    // What is kept is the newest, within max_bytes (each revision holds two documents).
    Recorder recorder;
    auto recent = (*store)->watch("", 1995, recorder.callback());
    ASSERT_OK(recent);
    EXPECT_EQ(recorder.revisions(), range(1995, 2000));
  }
  // The file holds about max_bytes of history, not 64 MiB.
  EXPECT_LT(fs::file_size(path_), 4u * 1024 * 1024);
  // An existing file grows back to nothing when its history ages out, and the file shrinks.
  history.max_bytes = 256 * 1024 * 1024;
  history.max_age = 60s;
  {
    auto store = SqliteStore::open(path_, clock_, history);
    ASSERT_OK(store);
    for (int i = 0; i < 2000; ++i) ASSERT_OK((*store)->put("node", document + std::to_string(i)));
  }
  EXPECT_GT(fs::file_size(path_), 32u * 1024 * 1024);
  {
    auto store = SqliteStore::open(path_, clock_, history);
    ASSERT_OK(store);
    clock_.advance(61s);
    ASSERT_OK((*store)->put("node", "small"));  // nothing of this process is old yet: a checkpoint
    clock_.advance(61s);
    ASSERT_OK((*store)->put("node", "small again"));
    EXPECT_EQ((*store)->watch("", 4000, [](const WatchEvent&) {}).error().code, ErrorCode::Compacted);
  }
  EXPECT_LT(fs::file_size(path_), 1u * 1024 * 1024);
}

TEST_F(SqliteStoreTest, AFileWithoutIncrementalVacuumIsConvertedOnOpen) {
  {
    // A store file as an older version made it: auto_vacuum off.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA auto_vacuum=NONE; CREATE TABLE t (x)", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_OK(store->put("a", "1"));
  store.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  int mode = -1;
  sqlite3_exec(
      db, "PRAGMA auto_vacuum",
      [](void* out, int, char** values, char**) {
        *static_cast<int*>(out) = std::atoi(values[0]);
        return 0;
      },
      &mode, nullptr);
  sqlite3_close(db);
  EXPECT_EQ(mode, 2) << "incremental";
}

}  // namespace
}  // namespace nebula::store
