#include "gateway/response_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>

#include "gateway/redis_responses.h"
#include "process_helpers.h"
#include "redis_server.h"

namespace nebula::gateway {
namespace {

using testing::RedisServer;
using testing::TempDir;

constexpr int64_t kHour = 3'600'000;

json response_of(const std::string& id, const std::string& text) {
  return json{{"id", id},
              {"object", "response"},
              {"output", json::array({json{{"type", "message"}, {"role", "assistant"}, {"content", text}}})}};
}

StoredTurn turn(json response, json input, std::string previous = "", std::string root = "") {
  return StoredTurn{std::move(response), std::move(input), std::move(previous), std::move(root)};
}

json user(const std::string& text) {
  return json::array({json{{"type", "message"}, {"role", "user"}, {"content", text}}});
}

// The same behaviour from each place responses can live; the clock is the test's, except Redis's
// own expiry of a turn (its TTL), which is tested apart on a real clock.
class StoreFactory {
 public:
  virtual ~StoreFactory() = default;
  virtual std::string skip() { return ""; }
  virtual std::shared_ptr<ResponseStore> make(ResponseStoreOptions options) = 0;
};

class MemoryFactory final : public StoreFactory {
 public:
  std::shared_ptr<ResponseStore> make(ResponseStoreOptions options) override {
    return std::make_shared<MemoryResponseStore>(std::move(options));
  }
};

class SqliteFactory final : public StoreFactory {
 public:
  std::shared_ptr<ResponseStore> make(ResponseStoreOptions options) override {
    auto store = open_response_store("sqlite://" + dir_.path() + "/responses.db", std::move(options));
    EXPECT_TRUE(store) << store.error().message;
    return store ? *store : nullptr;
  }
  TempDir dir_;
};

class RedisFactory final : public StoreFactory {
 public:
  std::string skip() override { return RedisServer::missing(); }
  std::shared_ptr<ResponseStore> make(ResponseStoreOptions options) override {
    if (!redis_) redis_ = std::make_unique<RedisServer>();
    auto store = open_response_store(redis_->url(), std::move(options));
    EXPECT_TRUE(store) << store.error().message;
    return store ? *store : nullptr;
  }
  std::unique_ptr<RedisServer> redis_;
};

template <class Factory>
class ResponseStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = factory_.skip(); !why.empty()) GTEST_SKIP() << why;
  }
  std::shared_ptr<ResponseStore> make(size_t per_key = 100, size_t per_key_bytes = 1 << 20) {
    ResponseStoreOptions options;
    options.retention = std::chrono::milliseconds(kHour);
    options.per_key = per_key;
    options.per_key_bytes = per_key_bytes;
    options.now_ms = [this] { return now_.load(); };
    return factory_.make(std::move(options));
  }
  Factory factory_;
  std::atomic<int64_t> now_{1'800'000'000'000};
};

using Factories = ::testing::Types<MemoryFactory, SqliteFactory, RedisFactory>;
TYPED_TEST_SUITE(ResponseStoreTest, Factories);

TYPED_TEST(ResponseStoreTest, EachKeySeesOnlyItsOwnResponses) {
  auto store = this->make();
  ASSERT_TRUE(store->put("k1", "resp_1", turn(response_of("resp_1", "hi"), user("hello"))));
  auto got = store->response("k1", "resp_1");
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ((*got)["output"][0]["content"], "hi");
  EXPECT_EQ(store->response("k2", "resp_1").error().code, ErrorCode::NotFound);
  EXPECT_EQ(store->conversation("k2", "resp_1").error().code, ErrorCode::NotFound);
  EXPECT_FALSE(*store->erase("k2", "resp_1"));
  EXPECT_TRUE(store->response("k1", "resp_1"));
  EXPECT_TRUE(*store->erase("k1", "resp_1"));
  EXPECT_FALSE(*store->erase("k1", "resp_1"));
  EXPECT_EQ(store->response("k1", "resp_1").error().code, ErrorCode::NotFound);
  // Hostile ids are ids like any other: they name nothing of the store's own.
  for (const std::string& id :
       std::vector<std::string>{"order", "sizes", "bytes", "r:x", "}:order", std::string("a\0b", 3),
                                std::string(5000, 'z'), std::string("\xff\xfe"), "' OR 1=1 --"}) {
    EXPECT_EQ(store->response("k1", id).error().code, ErrorCode::NotFound) << id;
    EXPECT_FALSE(*store->erase("k1", id));
  }
  ASSERT_TRUE(store->put("k1", "odd:id}{", turn(response_of("odd:id}{", "x"), user("y"))));
  EXPECT_TRUE(store->response("k1", "odd:id}{"));
}

TYPED_TEST(ResponseStoreTest, AConversationJoinsEachTurnStoredOnce) {
  auto store = this->make();
  ASSERT_TRUE(store->put("k", "resp_1", turn(response_of("resp_1", "a1"), user("q1"))));
  ASSERT_TRUE(store->put("k", "resp_2", turn(response_of("resp_2", "a2"), user("q2"), "resp_1", "resp_1")));
  ASSERT_TRUE(store->put("k", "resp_3", turn(response_of("resp_3", "a3"), user("q3"), "resp_2", "resp_1")));
  auto conversation = store->conversation("k", "resp_3");
  ASSERT_TRUE(conversation) << conversation.error().message;
  ASSERT_EQ(conversation->items.size(), 6u);
  std::vector<std::string> texts;
  for (const auto& item : conversation->items) texts.push_back(item["content"].template get<std::string>());
  EXPECT_EQ(texts, (std::vector<std::string>{"q1", "a1", "q2", "a2", "q3", "a3"}));
  EXPECT_EQ(conversation->root, "resp_1");
  EXPECT_EQ(conversation->response["id"], "resp_3");
  EXPECT_EQ(conversation->bytes, conversation->items.dump().size());
  auto first = store->conversation("k", "resp_1");
  ASSERT_TRUE(first);
  EXPECT_EQ(first->items.size(), 2u);
  EXPECT_EQ(first->root, "resp_1");
  // A turn in the middle deleted: the chain after it says what is missing.
  ASSERT_TRUE(*store->erase("k", "resp_2"));
  auto broken = store->conversation("k", "resp_3");
  ASSERT_TRUE(broken);
  EXPECT_EQ(broken->missing, "resp_2");
  EXPECT_TRUE(broken->items.empty());
  EXPECT_EQ(store->conversation("k", "resp_1")->missing, "");
}

TYPED_TEST(ResponseStoreTest, OneKeyCannotPushOutAnothersResponses) {
  auto store = this->make(3, 1 << 20);
  ASSERT_TRUE(store->put("quiet", "resp_q", turn(response_of("resp_q", "kept"), user("mine"))));
  for (int i = 0; i < 50; ++i) {
    std::string id = "resp_" + std::to_string(i);
    this->now_ += 1;
    ASSERT_TRUE(store->put("loud", id, turn(response_of(id, "x"), user("y"))));
  }
  EXPECT_TRUE(store->response("quiet", "resp_q"));
  EXPECT_EQ(store->response("loud", "resp_46").error().code, ErrorCode::NotFound);  // its own oldest went
  for (const char* kept : {"resp_47", "resp_48", "resp_49"}) EXPECT_TRUE(store->response("loud", kept)) << kept;
  // Reading a conversation marks it used: it outlives newer ones that nobody read.
  this->now_ += 1;
  ASSERT_TRUE(store->conversation("loud", "resp_47"));
  this->now_ += 1;
  ASSERT_TRUE(store->put("loud", "resp_50", turn(response_of("resp_50", "x"), user("y"))));
  EXPECT_TRUE(store->response("loud", "resp_47"));
  EXPECT_EQ(store->response("loud", "resp_48").error().code, ErrorCode::NotFound);
}

TYPED_TEST(ResponseStoreTest, AKeysBytesAreBoundedAndATooLargeTurnIsRefused) {
  auto store = this->make(100, 4000);
  std::string big(1500, 'b');
  for (int i = 0; i < 3; ++i) {
    std::string id = "resp_" + std::to_string(i);
    this->now_ += 1;
    ASSERT_TRUE(store->put("k", id, turn(response_of(id, "x"), user(big))));
  }
  EXPECT_EQ(store->response("k", "resp_0").error().code, ErrorCode::NotFound);
  EXPECT_TRUE(store->response("k", "resp_2"));
  auto refused = store->put("k", "resp_huge", turn(response_of("resp_huge", "x"), user(std::string(5000, 'h'))));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::TooLarge);
  EXPECT_TRUE(store->response("k", "resp_2"));  // nothing was pushed out for it
}

TYPED_TEST(ResponseStoreTest, ARewrittenResponseReplacesItsTurn) {
  auto store = this->make();
  ASSERT_TRUE(store->put("k", "resp_1", turn(response_of("resp_1", "queued"), user("q"))));
  ASSERT_TRUE(store->put("k", "resp_1", turn(response_of("resp_1", "done"), user("q"))));
  auto conversation = store->conversation("k", "resp_1");
  ASSERT_TRUE(conversation);
  ASSERT_EQ(conversation->items.size(), 2u);
  EXPECT_EQ(conversation->items[1]["content"], "done");
}

// Memory and SQLite on the test's clock: a turn lasts `retention` after its last use, so a
// conversation that is read stays whole.
template <class Factory>
class ResponseRetentionTest : public ResponseStoreTest<Factory> {};
using ClockedFactories = ::testing::Types<MemoryFactory, SqliteFactory>;
TYPED_TEST_SUITE(ResponseRetentionTest, ClockedFactories);

TYPED_TEST(ResponseRetentionTest, TurnsExpireAfterTheirLastUse) {
  auto store = this->make();
  ASSERT_TRUE(store->put("k", "resp_1", turn(response_of("resp_1", "a1"), user("q1"))));
  ASSERT_TRUE(store->put("k", "lone", turn(response_of("lone", "a"), user("q"))));
  this->now_ += kHour / 2;
  ASSERT_TRUE(store->put("k", "resp_2", turn(response_of("resp_2", "a2"), user("q2"), "resp_1", "resp_1")));
  this->now_ += kHour * 3 / 4;  // resp_1 and lone are past their hour, unread
  EXPECT_EQ(store->response("k", "lone").error().code, ErrorCode::NotFound);
  EXPECT_EQ(store->conversation("k", "resp_2")->missing, "resp_1");  // resp_2 stays, its chain is broken
  ASSERT_TRUE(store->put("k", "resp_3", turn(response_of("resp_3", "a3"), user("q3"))));
  ASSERT_TRUE(store->put("k", "resp_4", turn(response_of("resp_4", "a4"), user("q4"), "resp_3", "resp_3")));
  for (int step = 0; step < 4; ++step) {  // read every 45 minutes: it never expires
    this->now_ += kHour * 3 / 4;
    ASSERT_TRUE(store->conversation("k", "resp_4")) << step;
  }
}

TEST(SqliteResponseStore, SurvivesAReopenAndKeepsEachTurnOnce) {
  TempDir dir;
  std::string path = dir.path() + "/responses.db";
  {
    auto store = open_response_store("sqlite://" + path, {});
    ASSERT_TRUE(store) << store.error().message;
    ASSERT_TRUE((*store)->put("k", "resp_1", turn(response_of("resp_1", "a1"), user("q1"))));
    ASSERT_TRUE((*store)->put("k", "resp_2", turn(response_of("resp_2", "a2"), user("q2"), "resp_1", "resp_1")));
  }
  auto store = open_response_store("sqlite://" + path, {});
  ASSERT_TRUE(store);
  auto conversation = (*store)->conversation("k", "resp_2");
  ASSERT_TRUE(conversation) << conversation.error().message;
  EXPECT_EQ(conversation->items.size(), 4u);
  // The second row holds only its own input.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* select = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT input FROM responses WHERE id = 'resp_2'", -1, &select, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(select), SQLITE_ROW);
  EXPECT_EQ(json::parse(reinterpret_cast<const char*>(sqlite3_column_text(select, 0))), user("q2"));
  sqlite3_finalize(select);
  sqlite3_close(db);
}

TEST(ResponseStoreUrl, BadUrlsAreRefusedClearly) {
  EXPECT_FALSE(open_response_store("sqlite://", {}));
  EXPECT_FALSE(open_response_store("sqlite:///nonexistent-dir/x/y.db", {}));
  auto unknown = open_response_store("etcd://x:1", {});
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("memory, sqlite://PATH or redis://"), std::string::npos);
  EXPECT_FALSE(open_response_store("redis://", {}));
  EXPECT_FALSE(open_response_store("redis://h:99999", {}));
  EXPECT_TRUE(open_response_store("memory", {}));
}

TEST(RedisResponseStore, TwoGatewaysShareOneStoreAndRedisExpiresOnItsOwn) {
  if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
  RedisServer redis;
  ResponseStoreOptions options;
  options.retention = std::chrono::milliseconds(300);
  auto one = open_response_store(redis.url(), options);
  auto two = open_response_store(redis.url(), options);
  ASSERT_TRUE(one && two);
  ASSERT_TRUE((*one)->put("k", "resp_1", turn(response_of("resp_1", "a1"), user("q1"))));
  ASSERT_TRUE((*two)->put("k", "resp_2", turn(response_of("resp_2", "a2"), user("q2"), "resp_1", "resp_1")));
  auto conversation = (*one)->conversation("k", "resp_2");
  ASSERT_TRUE(conversation) << conversation.error().message;
  EXPECT_EQ(conversation->items.size(), 4u);
  // Nothing keeps them alive: Redis forgets them after the retention, and its bookkeeping too.
  EXPECT_TRUE(testing::eventually([&] { return !(*two)->response("k", "resp_1"); }, std::chrono::seconds(5),
                                  std::chrono::milliseconds(50)));
  EXPECT_TRUE(testing::eventually([&] { return redis.command("DBSIZE").rfind(":0", 0) == 0; }, std::chrono::seconds(5),
                                  std::chrono::milliseconds(50)));
}

TEST(RedisResponseStore, AnUnreachableRedisIsUnavailableAndComesBack) {
  if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
  RedisServer redis;
  auto store = open_response_store(redis.url(), {});
  ASSERT_TRUE(store);
  ASSERT_TRUE((*store)->put("k", "resp_1", turn(response_of("resp_1", "a1"), user("q1"))));
  redis.stop();
  auto down = (*store)->response("k", "resp_1");
  ASSERT_FALSE(down);
  EXPECT_EQ(down.error().code, ErrorCode::Unavailable);
  EXPECT_EQ((*store)->put("k", "resp_2", turn(response_of("resp_2", "a"), user("q"))).error().code,
            ErrorCode::Unavailable);
  EXPECT_EQ((*store)->conversation("k", "resp_1").error().code, ErrorCode::Unavailable);
  redis.start();  // empty: what it held is gone, and it says so
  EXPECT_TRUE(testing::eventually(
      [&] {
        auto back = (*store)->response("k", "resp_1");
        return !back && back.error().code == ErrorCode::NotFound;
      },
      std::chrono::seconds(5), std::chrono::milliseconds(100)));
  EXPECT_TRUE((*store)->put("k", "resp_3", turn(response_of("resp_3", "a"), user("q"))));
  auto refused = open_response_store("redis://127.0.0.1:" + std::to_string(testing::free_port()), {});
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("cannot reach redis"), std::string::npos);
}

}  // namespace
}  // namespace nebula::gateway
