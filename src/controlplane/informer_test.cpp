#include "controlplane/informer.h"

#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include "common/clock.h"
#include "controlplane/resources.h"
#include "store/memory_store.h"

namespace nebula::controlplane {
namespace {

// A MemoryStore whose watches the test can end, as EtcdStore ends one whose history was compacted.
// Everything else goes straight to the real store.
class EndingStore final : public store::Store {
 public:
  explicit EndingStore(const Clock& clock) : inner_(clock) {}

  Result<std::optional<store::KeyValue>> get(const std::string& key) override { return inner_.get(key); }
  Result<store::ListResult> list(const std::string& prefix) override { return inner_.list(prefix); }
  Result<int64_t> put(const std::string& key, const std::string& value, store::Precondition precondition,
                      int64_t lease) override {
    return inner_.put(key, value, precondition, lease);
  }
  Result<int64_t> remove(const std::string& key, store::Precondition precondition) override {
    return inner_.remove(key, precondition);
  }
  int64_t revision() override { return inner_.revision(); }
  Result<std::unique_ptr<store::WatchHandle>> watch(const std::string& prefix, int64_t from_revision,
                                                    store::WatchCallback callback,
                                                    store::WatchEndCallback on_end) override {
    auto handle = inner_.watch(prefix, from_revision, std::move(callback));
    if (!handle) return handle.error();
    std::lock_guard lock(mutex_);
    watches_.push_back(Watch{std::move(*handle), std::move(on_end)});
    ++watches_made_;
    return std::unique_ptr<store::WatchHandle>(std::make_unique<NoopHandle>());
  }
  Result<int64_t> grant_lease(int64_t ttl_ms) override { return inner_.grant_lease(ttl_ms); }
  Status keep_alive(int64_t lease) override { return inner_.keep_alive(lease); }
  Status revoke_lease(int64_t lease) override { return inner_.revoke_lease(lease); }
  int expire_leases() override { return inner_.expire_leases(); }

  // Stops every live watch: the writes after this reach no watcher until it watches again.
  void pause_watches() {
    std::lock_guard lock(mutex_);
    for (auto& watch : watches_) watch.handle->cancel();
  }
  // Ends every watch with Compacted, as the store does when it lost what it had still to deliver.
  void end_watches() {
    std::vector<Watch> ended;
    {
      std::lock_guard lock(mutex_);
      ended.swap(watches_);
    }
    for (auto& watch : ended) {
      watch.handle->cancel();
      if (watch.on_end) watch.on_end(Error{ErrorCode::Compacted, "history compacted"});
    }
  }
  int watches_made() {
    std::lock_guard lock(mutex_);
    return watches_made_;
  }

 private:
  class NoopHandle final : public store::WatchHandle {
   public:
    void cancel() override {}
  };
  struct Watch {
    std::unique_ptr<store::WatchHandle> handle;
    store::WatchEndCallback on_end;
  };
  store::MemoryStore inner_;
  std::mutex mutex_;
  std::vector<Watch> watches_;
  int watches_made_ = 0;
};

api::Node node(const std::string& name) {
  api::Node node;
  node.metadata.name = name;
  node.status.ready = true;
  node.status.engines = {"sim"};
  node.status.gpus.push_back({0, "GPU-0", "H100-80GB", 80 * 1024, 0, 0, 0});
  return node;
}

std::vector<std::string> names(const std::vector<api::Node>& nodes) {
  std::vector<std::string> out;
  for (const auto& each : nodes) out.push_back(each.metadata.name);
  return out;
}

// A watch the store ends (etcd compacted the revisions it still had to deliver) is not the end of
// the cache: the next sync lists again, so what changed in the gap (a node added, one deleted, one
// changed) is there, and the new watch follows what comes after.
TEST(InformerTest, ListsAgainWhenTheStoreEndsItsWatch) {
  FakeClock clock;
  EndingStore store(clock);
  Resources resources(store, clock);
  ASSERT_TRUE(resources.create(node("a")));
  ASSERT_TRUE(resources.create(node("b")));

  Informer informer(store);
  int woken = 0;
  ASSERT_TRUE(informer.start([&woken] { ++woken; }).ok());
  ASSERT_TRUE(informer.sync());
  EXPECT_EQ(names(informer.nodes()), (std::vector<std::string>{"a", "b"}));
  uint64_t generation = informer.capacity_generation();

  // The gap: changes no watch delivers.
  store.pause_watches();
  ASSERT_TRUE(resources.create(node("c")));
  ASSERT_TRUE(resources.remove<api::Node>("a"));
  ASSERT_TRUE(resources.modify<api::Node>("b", [](api::Node& current) {
    current.status.gpus[0].memory_total_mb = 40 * 1024;
    return true;
  }));
  int woken_before = woken;
  store.end_watches();
  EXPECT_GT(woken, woken_before) << "the end of the watch wakes the controller";

  ASSERT_TRUE(informer.sync());
  EXPECT_EQ(names(informer.nodes()), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(informer.nodes()[0].status.gpus[0].memory_total_mb, 40 * 1024);
  EXPECT_GT(informer.capacity_generation(), generation) << "what did not fit is tried again";
  EXPECT_EQ(store.watches_made(), 2);

  // And it follows again from there.
  ASSERT_TRUE(resources.create(node("d")));
  ASSERT_TRUE(informer.sync());
  EXPECT_EQ(names(informer.nodes()), (std::vector<std::string>{"b", "c", "d"}));
}

}  // namespace
}  // namespace nebula::controlplane
