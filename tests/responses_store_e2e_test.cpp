// Stored responses outside the process, against real processes: a `nebula server` on SQLite
// killed with -9 and started again, and two `nebula gateway` processes sharing a real
// redis-server, a conversation going back and forth between them.
#include <gtest/gtest.h>
#include <signal.h>

#include "nebula_fixture.h"
#include "redis_server.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::Child;
using testing::eventually;
using testing::RedisServer;

json json_or_null(const std::string& text) {
  auto parsed = parse_json(text);
  return parsed ? *parsed : json();
}

json response_body(const std::string& input, const std::string& previous = "", bool stream = false) {
  json body = {{"model", "chat"}, {"input", input}, {"max_output_tokens", 4}};
  if (!previous.empty()) body["previous_response_id"] = previous;
  if (stream) body["stream"] = true;
  return body;
}

// POST /v1/responses; the response object (the final event's when streamed), or
// the error answer's body with its status under "_status".
json respond(const std::string& url, const std::string& key, const json& body) {
  http::BlockingClient client;
  auto answer =
      client.request("POST", url + "/v1/responses", body.dump(), key.empty() ? http::Headers{} : bearer(key), 30s);
  if (!answer) return json{{"_status", 0}};
  if (answer->status != 200) {
    auto parsed = parse_json(answer->body);
    json error = parsed ? *parsed : json::object();
    error["_status"] = answer->status;
    return error;
  }
  if (!body.value("stream", false)) return json_or_null(answer->body);
  for (size_t at = 0; (at = answer->body.find("data: ", at)) != std::string::npos;) {
    size_t end = answer->body.find('\n', at);
    auto event = parse_json(answer->body.substr(at + 6, end - at - 6));
    at = end;
    std::string type = event ? (*event).value("type", "") : "";
    if (type == "response.completed" || type == "response.incomplete") return (*event)["response"];
  }
  return json{{"_status", -1}, {"body", answer->body}};
}

int get_status(const std::string& url, const std::string& key, const std::string& path, json* body = nullptr,
               const std::string& method = "GET") {
  http::BlockingClient client;
  auto answer = client.request(method, url + path, "", key.empty() ? http::Headers{} : bearer(key), 10s);
  if (!answer) return 0;
  if (body) *body = json_or_null(answer->body);
  return answer->status;
}

// The user texts of a response's input items, oldest first.
std::vector<std::string> user_texts(const std::string& url, const std::string& key, const std::string& id) {
  json page;
  if (get_status(url, key, "/v1/responses/" + id + "/input_items?order=asc", &page) != 200) return {"<error>"};
  std::vector<std::string> texts;
  for (const auto& item : page["data"]) {
    if (item.value("role", "") != "user") continue;
    for (const auto& part : item["content"]) texts.push_back(part.value("text", ""));
  }
  return texts;
}

TEST(ResponsesStore, ASqliteServerKilledWithMinusNineStillContinuesItsConversations) {
  testing::TempDir temp;
  auto server = std::make_unique<testing::NebulaServer>(temp.path() + "/server", temp.path() + "/server-1.log");
  ASSERT_TRUE(server->start()) << server->process().output();
  std::vector<std::string> argv = {NEBULA_BINARY,
                                   "agent",
                                   "--server",
                                   server->url(),
                                   "--token",
                                   server->token(),
                                   "--name",
                                   "gpu1",
                                   "--listen",
                                   "127.0.0.1:" + std::to_string(testing::free_port()),
                                   "--sim-gpus",
                                   "1xH100-80GB",
                                   "--data-dir",
                                   temp.path() + "/agent",
                                   "--exit-with-parent"};
  Child agent(argv, temp.path() + "/agent.log");
  ASSERT_TRUE(eventually([&] { return server->node_ready("gpu1"); }, 20s)) << agent.output();
  auto deployed =
      server->cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;

  json first = respond(server->url(), "", response_body("first question"));
  ASSERT_TRUE(first.contains("id")) << first.dump();
  json second = respond(server->url(), "", response_body("second question", first["id"], true));
  ASSERT_TRUE(second.contains("id")) << second.dump();
  json forgotten = respond(server->url(), "", response_body("to be deleted"));
  ASSERT_EQ(get_status(server->url(), "", "/v1/responses/" + forgotten["id"].get<std::string>(), nullptr, "DELETE"),
            200);

  server->process().stop(SIGKILL, 5s);
  server = std::make_unique<testing::NebulaServer>(temp.path() + "/server", temp.path() + "/server-2.log");
  ASSERT_TRUE(server->start()) << server->process().output();
  // The engine outlived the server; the new one routes to it from the stored replica.
  ASSERT_TRUE(eventually([&] { return server->ready_replicas("chat").size() == 1; }, 20s));

  json got;
  ASSERT_EQ(get_status(server->url(), "", "/v1/responses/" + second["id"].get<std::string>(), &got), 200);
  EXPECT_EQ(got["id"], second["id"]);
  EXPECT_EQ(get_status(server->url(), "", "/v1/responses/" + forgotten["id"].get<std::string>()), 404);
  json third = respond(server->url(), "", response_body("third question", second["id"]));
  ASSERT_TRUE(third.contains("id")) << third.dump();
  EXPECT_EQ(user_texts(server->url(), "", third["id"]),
            (std::vector<std::string>{"first question", "second question", "third question"}));
  // Each turn is one row, holding only its own input.
  auto rows = testing::run_command({"sqlite3", temp.path() + "/server/responses.db",
                                    "SELECT count(*), sum(input LIKE '%first question%') FROM responses"});
  EXPECT_EQ(rows.out, "3|1\n") << rows.out;  // the sqlite3 shell, from scripts/install-deps
}

class ResponsesOnRedis : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new testing::NebulaUp({"--auth", "keys"});
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    admin_ = up_->admin_key();
    auto deployed =
        up_->cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--engine-arg=--step-base-ms",
                  "--engine-arg=20", "--wait", "--timeout", "60s"},  // 20 ms a token: a long answer can be cancelled
                 admin_);
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
  }
  void SetUp() override {
    if (auto missing = RedisServer::missing(); !missing.empty()) GTEST_SKIP() << missing;
  }

  std::string create_key(const std::string& name) {
    auto created = up_->cli({"keys", "create", name, "-o", "json"}, admin_);
    EXPECT_EQ(created.exit_code, 0) << created.out;
    auto parsed = parse_json(created.out);
    return parsed ? (*parsed).value("secret", "") : "";
  }

  std::unique_ptr<Child> start_gateway(int port, std::vector<std::string> extra) {
    return testing::start_gateway(up_->server(), admin_, port, extra,
                                  temp_.path() + "/gateway-" + std::to_string(port) + ".log");
  }

  bool knows_key(const std::string& url, const std::string& key) { return testing::gateway_knows_key(url, key); }

  static std::string url_of(int port) { return testing::local_url(port); }

  testing::TempDir temp_;
  static testing::NebulaUp* up_;
  static std::string admin_;
};

testing::NebulaUp* ResponsesOnRedis::up_ = nullptr;
std::string ResponsesOnRedis::admin_;

TEST_F(ResponsesOnRedis, AConversationGoesBackAndForthBetweenTwoGateways) {
  RedisServer redis;
  int port_a = testing::free_port();
  int port_b = testing::free_port();
  auto a = start_gateway(port_a, {"--responses", redis.url()});
  auto b = start_gateway(port_b, {"--responses", redis.url()});
  std::string key = create_key("talker");
  std::string other = create_key("stranger");
  for (int port : {port_a, port_b}) ASSERT_TRUE(knows_key(url_of(port), key) && knows_key(url_of(port), other));
  std::string a_url = url_of(port_a);
  std::string b_url = url_of(port_b);

  // Streamed on A, continued on B the moment A's stream says completed, and so on.
  std::string previous;
  std::vector<std::string> asked;
  for (int turn = 0; turn < 6; ++turn) {
    const std::string& url = turn % 2 == 0 ? a_url : b_url;
    asked.push_back("question " + std::to_string(turn));
    json answer = respond(url, key, response_body(asked.back(), previous, turn % 2 == 0));
    ASSERT_TRUE(answer.contains("id")) << turn << ": " << answer.dump();
    previous = answer["id"];
  }
  EXPECT_EQ(user_texts(a_url, key, previous), asked);
  EXPECT_EQ(user_texts(b_url, key, previous), asked);
  json got;
  ASSERT_EQ(get_status(b_url, key, "/v1/responses/" + previous, &got), 200);
  EXPECT_EQ(got["id"], previous);
  // Another key sees none of it, and cannot continue it.
  EXPECT_EQ(get_status(b_url, other, "/v1/responses/" + previous), 404);
  EXPECT_EQ(respond(a_url, other, response_body("mine now?", previous))["_status"], 404);
  // store: false is kept nowhere.
  json unstored = response_body("forget me");
  unstored["store"] = false;
  json answer = respond(a_url, key, unstored);
  ASSERT_TRUE(answer.contains("id"));
  EXPECT_EQ(get_status(b_url, key, "/v1/responses/" + answer["id"].get<std::string>()), 404);
  // Deleted on A: gone on B, and what continued it says which turn is missing.
  json first = respond(a_url, key, response_body("one"));
  json second = respond(b_url, key, response_body("two", first["id"]));
  ASSERT_TRUE(second.contains("id")) << second.dump();
  ASSERT_EQ(get_status(a_url, key, "/v1/responses/" + first["id"].get<std::string>(), nullptr, "DELETE"), 200);
  EXPECT_EQ(get_status(b_url, key, "/v1/responses/" + first["id"].get<std::string>()), 404);
  json broken = respond(b_url, key, response_body("three", second["id"]));
  EXPECT_EQ(broken["_status"], 404);
  EXPECT_NE(broken["error"].value("message", "").find(first["id"].get<std::string>()), std::string::npos)
      << broken.dump();

  // A background response runs on the gateway that took it: another sees its state, and only
  // the first can cancel it.
  json long_one = response_body("a long story");
  long_one["background"] = true;
  long_one["max_output_tokens"] = 1000;
  json queued = respond(a_url, key, long_one);
  ASSERT_TRUE(queued.contains("id")) << queued.dump();
  std::string running = queued["id"];
  json seen;
  ASSERT_EQ(get_status(b_url, key, "/v1/responses/" + running, &seen), 200);
  EXPECT_TRUE(seen["status"] == "queued" || seen["status"] == "in_progress") << seen.dump();
  json elsewhere;
  EXPECT_EQ(get_status(b_url, key, "/v1/responses/" + running + "/cancel", &elsewhere, "POST"), 409);
  EXPECT_EQ(elsewhere["error"].value("code", ""), "response_elsewhere") << elsewhere.dump();
  json cancelled;
  EXPECT_EQ(get_status(a_url, key, "/v1/responses/" + running + "/cancel", &cancelled, "POST"), 200);
  EXPECT_EQ(cancelled["status"], "cancelled");
  EXPECT_TRUE(eventually(
      [&] {
        json state;
        return get_status(b_url, key, "/v1/responses/" + running, &state) == 200 && state["status"] == "cancelled";
      },
      10s));

  // Redis down: continuing or reading a stored response is a 503 that says why; the gateway goes
  // on serving everything else, and the store is back with Redis.
  redis.stop();
  json refused = respond(a_url, key, response_body("while down", previous));
  EXPECT_EQ(refused["_status"], 503) << refused.dump();
  EXPECT_EQ(refused["error"].value("code", ""), "response_store_unavailable") << refused.dump();
  EXPECT_EQ(get_status(b_url, key, "/v1/responses/" + previous), 503);
  json fresh = respond(b_url, key, response_body("a new conversation"));
  EXPECT_TRUE(fresh.contains("id")) << fresh.dump();
  EXPECT_EQ(get_status(a_url, key, "/healthz"), 200);
  redis.start();
  EXPECT_TRUE(eventually(
      [&] {
        json again = respond(a_url, key, response_body("after"));
        return again.contains("id") && get_status(b_url, key, "/v1/responses/" + again["id"].get<std::string>()) == 200;
      },
      10s, 300ms));
}

TEST_F(ResponsesOnRedis, BadResponseStoreFlagsAreRefused) {
  auto run = [](std::vector<std::string> args) {
    args.insert(args.begin(), {NEBULA_BINARY, "gateway", "--server", up_->server(), "--api-key", admin_, "--listen",
                               "127.0.0.1:" + std::to_string(testing::free_port())});
    return testing::run_command(args);
  };
  auto unknown = run({"--responses", "etcd://127.0.0.1:2379"});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_NE(unknown.out.find("--responses"), std::string::npos) << unknown.out;
  auto no_redis = run({"--responses", "redis://127.0.0.1:" + std::to_string(testing::free_port())});
  EXPECT_EQ(no_redis.exit_code, 1) << no_redis.out;
  EXPECT_NE(no_redis.out.find("cannot reach redis"), std::string::npos) << no_redis.out;
  for (const std::string& bad :
       std::vector<std::string>{"sqlite://", "sqlite:///nonexistent-dir/x/responses.db", "redis://a/b:1", "redis://:1",
                                "memory\r\nX-Injected: 1", std::string(10000, 'r')}) {
    auto refused = run({"--responses", bad});
    EXPECT_EQ(refused.exit_code, 1) << bad << ": " << refused.out;
    EXPECT_NE(refused.out.find("--responses"), std::string::npos) << bad << ": " << refused.out;
  }
  EXPECT_EQ(run({"--responses-retention", "soon"}).exit_code, 2);
  EXPECT_EQ(run({"--responses-retention", ""}).exit_code, 2);
  EXPECT_EQ(run({"--responses-per-key", "0"}).exit_code, 2);
  EXPECT_EQ(run({"--responses-per-key", "-5"}).exit_code, 2);
}

}  // namespace
}  // namespace nebula
