#include "gateway/redis_connection.h"

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include "redis_server.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;
using testing::RedisServer;

// ARGV[1] back, as the script's answer.
const std::vector<std::string> kEcho = {"return ARGV[1]"};

std::string text_of(const RedisReplyPtr& reply) {
  return reply && reply->type == REDIS_REPLY_STRING ? std::string(reply->str, reply->len) : std::string();
}

class RedisConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
    redis_ = std::make_unique<RedisServer>();
    ASSERT_TRUE(redis_->ready());
  }
  RedisAddress address() const {
    RedisAddress address;
    address.port = redis_->port();
    return address;
  }
  std::unique_ptr<RedisServer> redis_;
};

TEST(RedisAddressTest, HostAndPortOrARefusal) {
  auto full = parse_redis_address("redis://10.0.0.5:6380/");
  ASSERT_TRUE(full);
  EXPECT_EQ(full->host, "10.0.0.5");
  EXPECT_EQ(full->port, 6380);
  auto bare = parse_redis_address("redis://cache.local");
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->port, 6379);
  for (const char* bad : {"",
                          "redis:/h",
                          "REDIS://h",
                          "redis://",
                          "redis://:1",
                          "redis://h:",
                          "redis://h:0",
                          "redis://h:65536",
                          "redis://h:1:2x",
                          "redis://u@h:1",
                          "redis://:@h",
                          "redis://u:p%4@h",
                          "redis://u:%-1@h",
                          "redis://u:%+f@h",
                          "redis://h:1/16",
                          "redis://h:1/x",
                          "redis://h:1/-1",
                          "redis://h?x=1",
                          "redis://h#x",
                          "redis://h h:1",
                          "redis://h:+1"}) {
    EXPECT_FALSE(parse_redis_address(bad)) << bad;
  }
  for (std::string bad :
       {std::string(10'000, 'h'), "redis://" + std::string(10'000, ':'), std::string("redis://h\r\n:1"),
        std::string("redis://h\t:1"), std::string("redis://h\0x:1", 13)}) {
    EXPECT_FALSE(parse_redis_address(bad)) << bad.size();
  }
}

TEST(RedisAddressTest, ALoginAndADatabaseAndThePasswordNeverInAMessage) {
  auto full = parse_redis_address("redis://app:s%40cr%3At@10.0.0.5:6380/3");
  ASSERT_TRUE(full) << full.error().message;
  EXPECT_EQ(full->user, "app");
  EXPECT_EQ(full->password, "s@cr:t");
  EXPECT_EQ(full->host, "10.0.0.5");
  EXPECT_EQ(full->port, 6380);
  EXPECT_EQ(full->db, 3);
  auto password_only = parse_redis_address("redis://:hunter2@cache/");
  ASSERT_TRUE(password_only);
  EXPECT_EQ(password_only->user, "");
  EXPECT_EQ(password_only->password, "hunter2");
  EXPECT_EQ(password_only->db, 0);
  // Hostile or mistyped URLs are refused without echoing the password.
  for (const char* bad : {"redis://app:hunter2@", "redis://app:hunter2@h:0", "redis://app:hunter2@h/99",
                          "rediss://app:hunter2@h", "redis://app:hunter2@h h"}) {
    auto refused = parse_redis_address(bad);
    ASSERT_FALSE(refused) << bad;
    EXPECT_EQ(refused.error().message.find("hunter2"), std::string::npos) << refused.error().message;
  }
  EXPECT_EQ(redacted_redis_url("redis://app:hunter2@h:1/2"), "redis://***@h:1/2");
  EXPECT_EQ(redacted_redis_url("redis://h:1"), "redis://h:1");
  // Without a password in the URL, NEBULA_REDIS_PASSWORD gives it; one in the URL wins.
  ::setenv("NEBULA_REDIS_PASSWORD", "from-env", 1);
  auto from_env = parse_redis_address("redis://h");
  auto from_url = parse_redis_address("redis://:from-url@h");
  ::unsetenv("NEBULA_REDIS_PASSWORD");
  EXPECT_EQ(from_env->password, "from-env");
  EXPECT_EQ(from_url->password, "from-url");
}

// A Redis with a password: the right one logs in and runs scripts in the database asked for; a
// wrong or missing one is a clear error, not a hang or a crash.
TEST(RedisLogin, AuthAndSelectOrAClearRefusal) {
  if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
  RedisServer redis("s3cret");
  ASSERT_TRUE(redis.ready());
  auto address = [&](const std::string& login, int db) {
    auto parsed = parse_redis_address("redis://" + login + "127.0.0.1:" + std::to_string(redis.port()) + "/" +
                                      std::to_string(db));
    EXPECT_TRUE(parsed);
    return *parsed;
  };
  RedisConnection right(address(":s3cret@", 2), 1s, 0ms, kEcho);
  ASSERT_NE(right.get(), nullptr) << right.last_error();
  EXPECT_EQ(text_of(right.eval(0, {}, {"in"})), "in");
  ASSERT_TRUE(right.command({"SET", "where", "db2"}));
  EXPECT_EQ(redis.command("GET where").rfind("$-1", 0), 0u) << "written to database 2, not 0";
  RedisConnection again(address(":s3cret@", 2), 1s, 0ms, kEcho);
  ASSERT_NE(again.get(), nullptr);
  auto read = again.command({"GET", "where"});
  ASSERT_TRUE(read);
  EXPECT_EQ(std::string(read->str, read->len), "db2");
  RedisConnection user(address("default:s3cret@", 0), 1s, 0ms, kEcho);  // Redis 6's ACL form
  EXPECT_NE(user.get(), nullptr) << user.last_error();

  RedisConnection wrong(address(":nope@", 0), 1s, 0ms, kEcho);
  EXPECT_EQ(wrong.get(), nullptr);
  EXPECT_NE(wrong.last_error().find("refused the login"), std::string::npos) << wrong.last_error();
  EXPECT_EQ(wrong.last_error().find("nope"), std::string::npos) << wrong.last_error();
  RedisConnection none(address("", 0), 1s, 0ms, kEcho);
  EXPECT_EQ(none.get(), nullptr);
  EXPECT_NE(none.last_error().find("NOAUTH"), std::string::npos) << none.last_error();
}

TEST_F(RedisConnectionTest, RunsScriptsByHashAndLoadsThemAgainAfterAFlush) {
  RedisConnection connection(address(), 1s, 0ms, kEcho);
  ASSERT_NE(connection.get(), nullptr) << connection.last_error();
  EXPECT_EQ(text_of(connection.eval(0, {}, {"one"})), "one");
  ASSERT_EQ(redis_->command("SCRIPT FLUSH").rfind("+OK", 0), 0u);
  EXPECT_EQ(text_of(connection.eval(0, {}, {"two"})), "two");
  // Pipelined: both answers, in order.
  connection.append_eval(0, {}, {"three"});
  connection.append_eval(0, {}, {"four"});
  EXPECT_EQ(text_of(connection.next_reply()), "three");
  EXPECT_EQ(text_of(connection.next_reply()), "four");
  // An error reply is not a broken connection.
  auto error = connection.command({"NOSUCHCOMMAND", "x"});
  ASSERT_TRUE(error);
  EXPECT_EQ(error->type, REDIS_REPLY_ERROR);
  EXPECT_NE(connection.get(), nullptr);
}

TEST_F(RedisConnectionTest, ABrokenScriptIsAnErrorNotAHang) {
  RedisConnection connection(address(), 1s, 0ms, {"return redis.call('NOSUCHCOMMAND')"});
  ASSERT_NE(connection.get(), nullptr);
  EXPECT_FALSE(connection.eval(0, {}, {}));
  EXPECT_FALSE(connection.last_error().empty());
}

TEST_F(RedisConnectionTest, AbsentRedisIsRetriedOnlyOnceTheIntervalHasPassed) {
  auto where = address();
  redis_->stop();
  RedisConnection patient(where, 200ms, 1h, kEcho);
  EXPECT_EQ(patient.get(), nullptr);
  EXPECT_FALSE(patient.last_error().empty());
  redis_->start();
  EXPECT_EQ(patient.get(), nullptr);  // not tried again for an hour
  EXPECT_FALSE(patient.eval(0, {}, {"x"}));
  RedisConnection eager(where, 200ms, 0ms, kEcho);
  EXPECT_NE(eager.get(), nullptr);
}

TEST_F(RedisConnectionTest, ReconnectsWhenRedisIsKilledAndRestarted) {
  RedisConnection connection(address(), 1s, 0ms, kEcho);
  ASSERT_EQ(text_of(connection.eval(0, {}, {"before"})), "before");
  redis_->stop();
  EXPECT_FALSE(connection.eval(0, {}, {"down"}));
  EXPECT_FALSE(connection.last_error().empty());
  redis_->start();  // empty: the scripts are loaded again on the new connection
  EXPECT_TRUE(testing::eventually([&] { return text_of(connection.eval(0, {}, {"after"})) == "after"; }, 10s));
}

TEST_F(RedisConnectionTest, AStalledRedisTimesOutAndIsNotWaitedOnAgainForTheInterval) {
  RedisConnection connection(address(), 200ms, 1h, kEcho);
  ASSERT_NE(connection.get(), nullptr);
  redis_->pause();
  EXPECT_FALSE(connection.eval(0, {}, {"stalled"}));
  // Then down for the retry interval: answered at once, without a connection attempt.
  EXPECT_EQ(connection.get(), nullptr);
  EXPECT_FALSE(connection.eval(0, {}, {"again"}));
  redis_->resume();
}

}  // namespace
}  // namespace nebula::gateway
