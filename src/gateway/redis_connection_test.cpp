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
  RedisAddress address() const { return {"127.0.0.1", redis_->port()}; }
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
  for (const char* bad : {"", "redis:/h", "REDIS://h", "redis://", "redis://:1", "redis://h:", "redis://h:0",
                          "redis://h:65536", "redis://h:1:2x", "redis://u:p@h:1", "redis://h:1/0", "redis://h?x=1",
                          "redis://h#x", "redis://h h:1", "redis://h:+1"}) {
    EXPECT_FALSE(parse_redis_address(bad)) << bad;
  }
  for (std::string bad :
       {std::string(10'000, 'h'), "redis://" + std::string(10'000, ':'), std::string("redis://h\r\n:1"),
        std::string("redis://h\t:1"), std::string("redis://h\0x:1", 13)}) {
    EXPECT_FALSE(parse_redis_address(bad)) << bad.size();
  }
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
