#include "gateway/mirror_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <optional>
#include <thread>

#include "api/api.h"
#include "gateway/gateway.h"
#include "process_helpers.h"
#include "store/memory_store.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;
using testing::eventually;

// The server's side: /api/v1/gateway/state of a Gateway over `store`, on a given port so that it
// can go away and come back where the mirror looks for it.
class StateServer {
 public:
  StateServer(store::Store& store, int port) {
    gateway_ = std::make_unique<Gateway>(store, io_);
    http::Router router;
    gateway_->add_routes(router);
    server_ = std::make_unique<http::Server>(io_, std::move(router));
    auto listening = server_->listen({"127.0.0.1", static_cast<uint16_t>(port)});
    EXPECT_TRUE(listening) << (listening ? "" : listening.error().message);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~StateServer() {
    server_->stop();
    gateway_->stop();
    work_.reset();
    io_.stop();
    thread_.join();
  }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::unique_ptr<Gateway> gateway_;
  std::unique_ptr<http::Server> server_;
  std::thread thread_;
};

// A mirror on an io_context of its own, as in `nebula gateway`.
class Mirror {
 public:
  explicit Mirror(int port) : store_(io_, "http://127.0.0.1:" + std::to_string(port), "") {}
  Status start() {
    auto started = store_.start();
    thread_ = std::thread([this] { io_.run(); });
    return started;
  }
  ~Mirror() {
    store_.stop();
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  MirrorStore& store() { return store_; }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  MirrorStore store_;
  std::thread thread_;
};

std::string value_of(store::Store& store, const std::string& key) {
  auto got = store.get(key);
  return got && *got ? (*got)->value : std::string("<absent>");
}

TEST(MirrorStore, FollowsTheServerAndWritesThroughIt) {
  store::MemoryStore source;
  std::string deployment = api::store_key("deployments", "a");
  ASSERT_TRUE(source.put(deployment, "{\"v\":1}"));
  ASSERT_TRUE(source.put("/nebula/nodes/n1", "{}"));  // not a gateway's business
  int port = testing::free_port();
  StateServer server(source, port);
  Mirror mirror(port);
  ASSERT_TRUE(mirror.start());
  auto& copy = mirror.store();
  EXPECT_EQ(value_of(copy, deployment), "{\"v\":1}");
  EXPECT_EQ(value_of(copy, "/nebula/nodes/n1"), "<absent>");
  std::atomic<int> events{0};
  auto watch = copy.watch(api::store_prefix("deployments"), 0, [&](const store::WatchEvent&) { events++; });
  ASSERT_TRUE(watch);

  ASSERT_TRUE(source.put(deployment, "{\"v\":2}"));
  ASSERT_TRUE(source.put(api::store_key("deployments", "b"), "{}"));
  ASSERT_TRUE(source.remove(api::store_key("deployments", "b")));
  EXPECT_TRUE(eventually([&] { return events.load() == 3; }, 5s, 10ms)) << events.load();
  EXPECT_EQ(value_of(copy, deployment), "{\"v\":2}");
  EXPECT_EQ(copy.revision(), source.revision());

  // Writes go to the server, compare-and-swap included.
  std::string usage = "/nebula/usage/2026-12-06/k/m";
  auto created = copy.put(usage, "{\"requests\":1}", store::Precondition::absent());
  ASSERT_TRUE(created);
  EXPECT_EQ(value_of(source, usage), "{\"requests\":1}");
  EXPECT_EQ(value_of(copy, usage), "{\"requests\":1}");  // at once, not only when the watch brings it
  auto again = copy.put(usage, "{\"requests\":9}", store::Precondition::absent());
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::Conflict);
  // Another gateway wrote meanwhile: the conflict brings the copy up to date for the retry.
  ASSERT_TRUE(source.put(usage, "{\"requests\":5}"));
  auto stale = copy.put(usage, "{\"requests\":2}", store::Precondition::at(*created));
  ASSERT_FALSE(stale);
  EXPECT_EQ(value_of(copy, usage), "{\"requests\":5}");
  auto added = store::update(copy, usage, [](const std::optional<std::string>& current) {
    EXPECT_EQ(current.value_or(""), "{\"requests\":5}");
    return Result<std::optional<std::string>>(std::optional<std::string>("{\"requests\":6}"));
  });
  ASSERT_TRUE(added);
  EXPECT_EQ(value_of(source, usage), "{\"requests\":6}");
  // What a gateway may not write.
  auto outside = copy.put("/nebula/nodes/n1", "{}");
  ASSERT_FALSE(outside);
  EXPECT_EQ(outside.error().code, ErrorCode::PermissionDenied);
  EXPECT_FALSE(copy.put(usage, "{}", store::Precondition::none(), 7));  // no leases here
  ASSERT_TRUE(copy.remove(usage));
  EXPECT_EQ(value_of(source, usage), "<absent>");
  EXPECT_EQ(copy.remove(usage).error().code, ErrorCode::NotFound);
}

TEST(MirrorStore, ListsAgainWhenTheWatchBreaksAndDeliversWhatItMissed) {
  // Five events of history: the changes made while the mirror is away are compacted by the time
  // it comes back, so it must list.
  store::MemoryStore source(SystemClock::instance(), 5);
  std::string kept = api::store_key("replicas", "kept");
  std::string gone = api::store_key("replicas", "gone");
  ASSERT_TRUE(source.put(kept, "1"));
  ASSERT_TRUE(source.put(gone, "1"));
  int port = testing::free_port();
  auto server = std::make_unique<StateServer>(source, port);
  Mirror mirror(port);
  ASSERT_TRUE(mirror.start());
  auto& copy = mirror.store();
  ASSERT_TRUE(eventually([&] { return copy.following(); }, 5s, 10ms));
  std::mutex mutex;
  std::vector<std::string> seen;
  auto watch = copy.watch(api::store_prefix("replicas"), 0, [&](const store::WatchEvent& event) {
    std::lock_guard lock(mutex);
    seen.push_back((event.type == store::WatchEvent::Type::Put ? "put " : "delete ") + event.kv.key);
  });
  ASSERT_TRUE(watch);

  server.reset();  // the server goes away
  ASSERT_TRUE(eventually([&] { return !copy.following(); }, 5s, 10ms));
  ASSERT_TRUE(source.remove(gone));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(source.put(kept, std::to_string(i + 2)));
  std::string fresh = api::store_key("replicas", "fresh");
  ASSERT_TRUE(source.put(fresh, "1"));
  server = std::make_unique<StateServer>(source, port);

  ASSERT_TRUE(eventually([&] { return copy.following() && copy.revision() == source.revision(); }, 10s, 10ms));
  EXPECT_EQ(value_of(copy, kept), "11");
  EXPECT_EQ(value_of(copy, gone), "<absent>");
  EXPECT_EQ(value_of(copy, fresh), "1");
  EXPECT_GE(copy.resyncs(), 2u);
  {
    std::lock_guard lock(mutex);
    std::vector<std::string> expected = {"delete " + gone, "put " + fresh, "put " + kept};
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, expected);  // one event per difference, not the ten puts it missed
  }
  // And it follows again.
  ASSERT_TRUE(source.put(fresh, "2"));
  EXPECT_TRUE(eventually([&] { return value_of(copy, fresh) == "2"; }, 5s, 10ms));
}

TEST(MirrorStore, StartFailsWithoutAServer) {
  Mirror mirror(testing::free_port());
  EXPECT_FALSE(mirror.start());
}

}  // namespace
}  // namespace nebula::gateway
