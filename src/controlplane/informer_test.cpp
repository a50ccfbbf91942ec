#include "controlplane/informer.h"

#include <gtest/gtest.h>

#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/clock.h"
#include "controlplane/resources.h"
#include "store/forwarding_store.h"
#include "store/memory_store.h"

namespace nebula::controlplane {
namespace {

// A MemoryStore whose watches the test can end, as EtcdStore ends one whose history was compacted.
// Everything else goes straight to the real store.
class EndingStore final : public store::ForwardingStore {
 public:
  explicit EndingStore(const Clock& clock) : ForwardingStore(inner_), inner_(clock) {}

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

api::Replica replica(const std::string& name, const std::string& deployment, const std::string& node_name) {
  api::Replica replica;
  replica.metadata.name = name;
  replica.spec.deployment = deployment;
  replica.spec.model = "m";
  replica.spec.node = node_name;
  replica.spec.vram_mb = 1024;
  return replica;
}

std::vector<std::string> names(const std::vector<api::Replica>& replicas) {
  std::vector<std::string> out;
  for (const auto& each : replicas) out.push_back(each.metadata.name);
  return out;
}

// What the controller's work queue is fed from: which objects each sync changed (a replica's
// deployment before and after), the indexes by deployment and node kept in step, and a node's
// periodic status refresh told apart from a change that could let something fit.
TEST(InformerTest, SaysWhatChangedAndKeepsItsIndexesInStep) {
  FakeClock clock;
  store::MemoryStore store(clock);
  Resources resources(store, clock);
  ASSERT_TRUE(resources.create(node("a")));
  api::Deployment deployment;
  deployment.metadata.name = "d1";
  deployment.spec.model = "m";
  ASSERT_TRUE(resources.create(deployment));
  ASSERT_TRUE(resources.create(replica("r1", "d1", "a")));
  ASSERT_TRUE(resources.create(replica("r2", "d1", "")));

  Informer informer(store);
  ASSERT_TRUE(informer.start().ok());
  ASSERT_TRUE(informer.sync());
  auto listed = informer.take_changes();
  EXPECT_EQ(listed.nodes, (std::set<std::string>{"a"}));
  EXPECT_EQ(listed.deployments, (std::set<std::string>{"d1"}));
  EXPECT_TRUE(informer.take_changes().deployments.empty()) << "taking the changes resets them";
  EXPECT_EQ(names(informer.replicas_of("d1")), (std::vector<std::string>{"r1", "r2"}));
  EXPECT_EQ(names(informer.replicas_on("a")), (std::vector<std::string>{"r1"}));
  EXPECT_EQ(informer.deployments_on("a"), (std::set<std::string>{"d1"}));
  EXPECT_EQ(informer.unplaced(), (std::set<std::string>{"r2"}));

  // r2 is placed: its deployment changed, no node did; nothing is left to place.
  ASSERT_TRUE(resources.modify<api::Replica>("r2", [](api::Replica& current) {
    current.spec.node = "a";
    return true;
  }));
  ASSERT_TRUE(informer.sync());
  auto placed = informer.take_changes();
  EXPECT_EQ(placed.deployments, (std::set<std::string>{"d1"}));
  EXPECT_TRUE(placed.nodes.empty());
  EXPECT_TRUE(informer.unplaced().empty());
  EXPECT_EQ(names(informer.replicas_on("a")), (std::vector<std::string>{"r1", "r2"}));

  // The node's refresh (heartbeat, utilization) is a change, not one of capacity; its GPU memory is.
  uint64_t generation = informer.capacity_generation();
  ASSERT_TRUE(resources.modify<api::Node>("a", [](api::Node& current) {
    current.status.heartbeat_ms += 15'000;
    current.status.gpus[0].utilization = 88;
    current.status.gpus[0].temperature_c = 71;
    return true;
  }));
  ASSERT_TRUE(informer.sync());
  EXPECT_EQ(informer.take_changes().nodes, (std::set<std::string>{"a"}));
  EXPECT_EQ(informer.capacity_generation(), generation);
  ASSERT_TRUE(resources.modify<api::Node>("a", [](api::Node& current) {
    current.status.gpus[0].memory_used_mb = 4096;
    return true;
  }));
  ASSERT_TRUE(informer.sync());
  EXPECT_GT(informer.capacity_generation(), generation);

  // A replica removed, another overwritten with something that is not a replica: both are gone
  // from every index, and their deployment is told.
  (void)informer.take_changes();
  ASSERT_TRUE(resources.remove<api::Replica>("r1"));
  ASSERT_TRUE(store.put(api::store_key("replicas", "r2"), "[\"not a replica\"]"));
  ASSERT_TRUE(store.put(api::store_key("modes", "day"), "{}"));
  ASSERT_TRUE(informer.sync());
  auto gone = informer.take_changes();
  EXPECT_EQ(gone.deployments, (std::set<std::string>{"d1"}));
  EXPECT_TRUE(gone.modes);
  EXPECT_TRUE(informer.replicas_of("d1").empty());
  EXPECT_TRUE(informer.replicas_on("a").empty());
  EXPECT_TRUE(informer.deployments_on("a").empty());
  EXPECT_EQ(informer.replica("r2"), nullptr);
  EXPECT_NE(informer.deployment("d1"), nullptr);
  EXPECT_EQ(informer.node("zzz"), nullptr);
}

}  // namespace
}  // namespace nebula::controlplane
