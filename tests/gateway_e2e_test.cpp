// The gateway against real processes: `nebula up --auth keys`, real engine-sim replicas, the CLI
// and concurrent HTTP clients.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "http/sse.h"
#include "nebula_fixture.h"

namespace nebula {
namespace {

using namespace std::chrono_literals;
using testing::bearer;
using testing::eventually;

const std::string kChat = R"({"model":"chat","max_tokens":8,"messages":[{"role":"user","content":"hello there"}]})";

// The body must be OpenAI error JSON with the given status and code.
void expect_openai_error(const Result<http::Response>& response, int status, const std::string& code) {
  ASSERT_TRUE(response) << response.error().message;
  EXPECT_EQ(response->status, status) << response->body;
  auto body = parse_json(response->body);
  ASSERT_TRUE(body) << response->body;
  ASSERT_TRUE((*body)["error"].is_object()) << response->body;
  EXPECT_EQ((*body)["error"]["code"], code) << response->body;
  EXPECT_TRUE((*body)["error"]["message"].is_string());
  EXPECT_TRUE((*body)["error"].contains("type"));
  EXPECT_TRUE((*body)["error"].contains("param"));
  EXPECT_FALSE(response->header("x-request-id").empty());
}

class GatewayE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    up_ = new testing::NebulaUp({"--auth", "keys"});
    ASSERT_TRUE(up_->wait_node_ready()) << up_->process().output();
    admin_ = up_->admin_key();
    ASSERT_EQ(admin_.rfind("nb-", 0), 0u);
    // Two replicas, each taking 4 requests at once, 5 ms per token.
    auto deployed =
        up_->cli({"deploy", "chat", "--engine", "sim", "--model", "qwen2.5-0.5b", "--replicas", "2", "--max-seqs", "4",
                  "--engine-arg=--step-base-ms", "--engine-arg=5", "--wait", "--timeout", "60s"});
    ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  }
  static void TearDownTestSuite() {
    delete up_;
    up_ = nullptr;
  }

  std::string create_key(std::vector<std::string> flags) {
    flags.insert(flags.begin(), {"keys", "create", "test-key", "-o", "json"});
    auto created = up_->cli(flags);
    EXPECT_EQ(created.exit_code, 0) << created.out;
    auto parsed = parse_json(created.out);
    return parsed ? (*parsed).value("secret", "") : "";
  }

  Result<http::Response> post(const std::string& path, const std::string& body, const std::string& key) {
    http::BlockingClient client;
    return client.request("POST", up_->server() + path, body, bearer(key));
  }

  // Sends `count` requests at once from `count` threads; returns their statuses.
  std::vector<int> burst(int count, const std::string& key, const std::string& body = kChat) {
    std::vector<int> statuses(count, 0);
    std::vector<std::thread> threads;
    std::atomic<int> ready{0};
    for (int i = 0; i < count; ++i) {
      threads.emplace_back([&, i] {
        http::BlockingClient client;
        ready++;
        while (ready.load() < count) std::this_thread::yield();
        auto response = client.request("POST", up_->server() + "/v1/chat/completions", body, bearer(key));
        statuses[i] = response ? response->status : -1;
      });
    }
    for (auto& thread : threads) thread.join();
    return statuses;
  }

  static testing::NebulaUp* up_;
  static std::string admin_;
};

testing::NebulaUp* GatewayE2E::up_ = nullptr;
std::string GatewayE2E::admin_;

TEST_F(GatewayE2E, KeysGuardEveryDoor) {
  std::string key = create_key({"--models", "chat"});
  ASSERT_FALSE(key.empty());
  EXPECT_EQ(post("/v1/chat/completions", kChat, key)->status, 200);
  expect_openai_error(post("/v1/chat/completions", kChat, ""), 401, "invalid_api_key");
  expect_openai_error(post("/v1/chat/completions", kChat, "nb-wrong_123"), 401, "invalid_api_key");
  // A key limited to other models.
  std::string other = create_key({"--models", "elsewhere"});
  expect_openai_error(post("/v1/chat/completions", kChat, other), 403, "model_not_allowed");
  // Inference keys cannot manage; the management API wants a key at all.
  http::BlockingClient client;
  expect_openai_error(client.request("GET", up_->server() + "/api/v1/deployments", "", bearer(key)), 403,
                      "permission_denied");
  expect_openai_error(client.request("GET", up_->server() + "/api/v1/deployments"), 401, "invalid_api_key");
  EXPECT_EQ(client.request("GET", up_->server() + "/api/v1/deployments", "", bearer(admin_))->status, 200);
  // Revoked and expired keys stop working.
  std::string id = key.substr(3, key.find('_') - 3);
  ASSERT_EQ(up_->cli({"keys", "revoke", id}).exit_code, 0);
  ASSERT_TRUE(eventually([&] { return post("/v1/chat/completions", kChat, key)->status == 401; }, 5s));
  std::string short_lived = create_key({"--expires", "1s"});
  EXPECT_TRUE(eventually([&] { return post("/v1/chat/completions", kChat, short_lived)->status == 401; }, 5s));
  expect_openai_error(post("/v1/chat/completions", kChat, short_lived), 401, "invalid_api_key");
  auto listing = up_->cli({"keys", "ls"});
  EXPECT_NE(listing.out.find("revoked"), std::string::npos) << listing.out;
  EXPECT_EQ(listing.out.find(key), std::string::npos) << "a secret must never be listed";
}

// An agent's key (given at join) may do what its agent does, for its own node only.
TEST_F(GatewayE2E, ANodeKeyMayChangeOnlyItsOwnNode) {
  std::string token;
  ASSERT_TRUE(static_cast<bool>(std::getline(std::ifstream(up_->data_dir() + "/join-token"), token)));
  http::BlockingClient client;
  auto join = [&] {
    auto joined = client.request("POST", up_->server() + "/api/v1/nodes/join",
                                 json{{"token", token}, {"name", "intruder"}}.dump());
    EXPECT_TRUE(joined && joined->status == 200) << (joined ? joined->body : joined.error().message);
    auto parsed = joined ? parse_json(joined->body) : Result<json>(make_error(ErrorCode::Internal, "no answer"));
    return parsed ? parsed->value("credential", "") : std::string();
  };
  std::string first = join();
  std::string node_key = join();  // a rejoin revokes the key the node had
  ASSERT_EQ(node_key.rfind("nb-", 0), 0u);
  EXPECT_EQ(client.request("GET", up_->server() + "/api/v1/replicas", "", bearer(first))->status, 401);

  auto listing = client.request("GET", up_->server() + "/api/v1/replicas", "", bearer(node_key));
  ASSERT_TRUE(listing && listing->status == 200);
  auto replicas = parse_json(listing->body);
  ASSERT_TRUE(replicas);
  std::string replica, local_node;
  for (const auto& item : (*replicas)["items"]) {
    if (item["spec"]["deployment"] == "chat") {
      replica = item["metadata"]["name"];
      local_node = item["spec"]["node"];
    }
  }
  ASSERT_FALSE(replica.empty()) << listing->body;
  ASSERT_FALSE(local_node.empty());
  auto as_node = [&](const std::string& method, const std::string& path) {
    return client.request(method, up_->server() + path, "{}", bearer(node_key));
  };
  // Its own node's status is its to report (the body is then judged by the handler)...
  auto own = as_node("PUT", "/api/v1/nodes/intruder/status");
  ASSERT_TRUE(own);
  EXPECT_NE(own->status, 401);
  EXPECT_NE(own->status, 403) << own->body;
  // ...another node's, and the replicas placed there, are not.
  expect_openai_error(as_node("PUT", "/api/v1/nodes/" + local_node + "/status"), 403, "permission_denied");
  expect_openai_error(as_node("PUT", "/api/v1/replicas/" + replica + "/status"), 403, "permission_denied");
  expect_openai_error(as_node("DELETE", "/api/v1/replicas/" + replica), 403, "permission_denied");
  expect_openai_error(as_node("POST", "/api/v1/nodes/" + local_node + "/drain"), 403, "permission_denied");
  expect_openai_error(as_node("GET", "/api/v1/deployments"), 403, "permission_denied");
  EXPECT_EQ(as_node("DELETE", "/api/v1/replicas/no-such-replica")->status, 404);
  EXPECT_EQ(as_node("GET", "/api/v1/replicas/" + replica)->status, 200);
  // The replica is untouched.
  EXPECT_EQ(client.request("GET", up_->server() + "/api/v1/replicas/" + replica, "", bearer(admin_))->status, 200);
}

TEST_F(GatewayE2E, RequestsPerMinuteHoldUnderParallelLoad) {
  std::string key = create_key({"--rpm", "5"});
  auto statuses = burst(12, key);
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 200), 5);
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 429), 7);
  auto refused = post("/v1/chat/completions", kChat, key);
  expect_openai_error(refused, 429, "rate_limit_exceeded");
  EXPECT_FALSE(refused->header("retry-after").empty());
  EXPECT_EQ(refused->header("x-ratelimit-limit-requests"), "5");
  EXPECT_EQ(refused->header("x-ratelimit-remaining-requests"), "0");
}

TEST_F(GatewayE2E, ConcurrencyAndTokenLimitsHoldUnderParallelLoad) {
  std::string slow = R"({"model":"chat","max_tokens":60,"messages":[{"role":"user","content":"hi"}]})";
  std::string concurrent = create_key({"--max-concurrency", "2"});
  auto statuses = burst(6, concurrent, slow);
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 200), 2);
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 429), 4);
  // Each request is charged prompt estimate + 60 up front: 4 fit in 300 tokens per minute.
  std::string tokens = create_key({"--tpm", "300"});
  auto token_statuses = burst(8, tokens, slow);
  int admitted = static_cast<int>(std::count(token_statuses.begin(), token_statuses.end(), 200));
  EXPECT_EQ(admitted, 4);
  // The monthly budget counts what is in flight as well as what was used: 4 fit in 300 tokens.
  std::string budget = create_key({"--budget-tokens", "300/month"});
  auto budget_statuses = burst(8, budget, slow);
  EXPECT_EQ(std::count(budget_statuses.begin(), budget_statuses.end(), 200), 4);
  EXPECT_EQ(std::count(budget_statuses.begin(), budget_statuses.end(), 429), 4);
  // Once they are done, what they used (the engine's counts, at least 61 each) leaves no room
  // for a fifth.
  auto over = post("/v1/chat/completions", slow, budget);
  expect_openai_error(over, 429, "insufficient_quota");  // OpenAI's code: no wait helps
  EXPECT_NE(over->body.find("budget"), std::string::npos) << over->body;
  EXPECT_EQ(over->header("retry-after"), "");
  EXPECT_EQ(over->header("x-should-retry"), "false");
}

TEST_F(GatewayE2E, UsageMatchesWhatTheEngineReported) {
  std::string key = create_key({});
  std::string id = key.substr(3, key.find('_') - 3);
  int64_t prompt = 0, completion = 0;
  for (int i = 0; i < 3; ++i) {
    auto response = post("/v1/chat/completions", kChat, key);
    ASSERT_EQ(response->status, 200);
    auto body = json::parse(response->body);
    prompt += body["usage"]["prompt_tokens"].get<int64_t>();
    completion += body["usage"]["completion_tokens"].get<int64_t>();
  }
  // Streams: the gateway asks for usage, and strips it when the client did not.
  for (bool include : {false, true}) {
    json request = json::parse(kChat);
    request["stream"] = true;
    if (include) request["stream_options"] = {{"include_usage", true}};
    http::BlockingClient client;
    http::SseParser parser;
    std::vector<http::SseEvent> events;
    auto status = client.stream("POST", up_->server() + "/v1/chat/completions", request.dump(), bearer(key),
                                [&](std::string_view piece) {
                                  parser.feed(piece, events);
                                  return true;
                                });
    ASSERT_TRUE(status && *status == 200);
    bool saw_usage = false;
    int content_chunks = 0;
    for (const auto& event : events) {
      if (event.data == "[DONE]") continue;
      auto chunk = json::parse(event.data);
      if (chunk.contains("usage") && chunk["usage"].is_object() && chunk["choices"].empty()) {
        saw_usage = true;
        prompt += chunk["usage"]["prompt_tokens"].get<int64_t>();
        completion += chunk["usage"]["completion_tokens"].get<int64_t>();
      } else if (!chunk["choices"].empty() && chunk["choices"][0]["delta"].contains("content") &&
                 !chunk["choices"][0]["delta"]["content"].get<std::string>().empty()) {
        ++content_chunks;
      }
    }
    EXPECT_EQ(saw_usage, include);
    if (!include) completion += content_chunks;  // one token per chunk
    if (!include) prompt += 2;                   // "hello there": two words
  }
  bool matched = eventually(
      [&] {
        json usage = up_->get_json("/api/v1/usage?key=" + id, admin_);
        return usage["total"]["requests"] == 5 && usage["total"]["prompt_tokens"] == prompt &&
               usage["total"]["completion_tokens"] == completion;
      },
      10s);
  EXPECT_TRUE(matched) << up_->get_json("/api/v1/usage?key=" + id, admin_).dump() << " expected prompt " << prompt
                       << " completion " << completion;
  auto shown = up_->cli({"usage", "--key", id});
  EXPECT_EQ(shown.exit_code, 0);
  EXPECT_NE(shown.out.find("chat"), std::string::npos) << shown.out;
}

TEST_F(GatewayE2E, ResponsesApiStreamsTheEventSequence) {
  std::string key = create_key({});
  auto plain = post("/v1/responses", R"({"model":"chat","input":"tell me","max_output_tokens":5})", key);
  ASSERT_EQ(plain->status, 200) << plain->body;
  auto response = json::parse(plain->body);
  EXPECT_EQ(response["object"], "response");
  EXPECT_EQ(response["id"].get<std::string>().rfind("resp_", 0), 0u);
  EXPECT_EQ(response["usage"]["output_tokens"], 5);
  EXPECT_FALSE(response["output"][0]["content"][0]["text"].get<std::string>().empty());
  // Cut by max_output_tokens: incomplete, as OpenAI reports it.
  EXPECT_EQ(response["status"], "incomplete") << plain->body;
  EXPECT_EQ(response["incomplete_details"]["reason"], "max_output_tokens") << plain->body;

  http::BlockingClient client;
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  auto status =
      client.stream("POST", up_->server() + "/v1/responses",
                    R"({"model":"chat","stream":true,"input":[{"role":"user","content":"hi"}],"max_output_tokens":4})",
                    bearer(key), [&](std::string_view piece) {
                      parser.feed(piece, events);
                      return true;
                    });
  ASSERT_TRUE(status && *status == 200);
  ASSERT_GE(events.size(), 9u);
  int sequence = -1;
  std::string text;
  for (const auto& event : events) {
    auto body = json::parse(event.data);
    EXPECT_EQ(body["type"], event.event);
    EXPECT_GT(body["sequence_number"].get<int>(), sequence);
    sequence = body["sequence_number"];
    if (event.event == "response.output_text.delta") text += body["delta"].get<std::string>();
  }
  EXPECT_EQ(events.front().event, "response.created");
  // The stream stopped at max_output_tokens: it ends with response.incomplete, not completed.
  EXPECT_EQ(events.back().event, "response.incomplete");
  auto completed = json::parse(events.back().data);
  EXPECT_EQ(completed["response"]["status"], "incomplete");
  EXPECT_EQ(completed["response"]["incomplete_details"]["reason"], "max_output_tokens");
  EXPECT_EQ(completed["response"]["output"][0]["content"][0]["text"], text);
  EXPECT_EQ(completed["response"]["usage"]["output_tokens"], 4);
}

// A function-calling round trip through /v1/responses on an engine that only speaks chat.
TEST_F(GatewayE2E, ResponsesApiCallsFunctionsAndTakesTheirOutputsBack) {
  std::string key = create_key({});
  const std::string tools = R"("tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"}}],)"
                            R"("tool_choice":{"type":"function","name":"get_weather"})";
  auto called =
      post("/v1/responses", R"({"model":"chat","input":"weather in Paris?","max_output_tokens":4,)" + tools + "}", key);
  ASSERT_EQ(called->status, 200) << called->body;
  auto response = json::parse(called->body);
  ASSERT_EQ(response["output"].size(), 1u) << called->body;
  const json& call = response["output"][0];
  EXPECT_EQ(call["type"], "function_call");
  EXPECT_EQ(call["name"], "get_weather");
  std::string call_id = call["call_id"];
  EXPECT_FALSE(call_id.empty());
  EXPECT_TRUE(json::parse(call["arguments"].get<std::string>()).is_object()) << call.dump();
  EXPECT_EQ(response["usage"]["output_tokens"], 4);

  // The call and its output go back as input; the model answers in text.
  json next = {{"model", "chat"},
               {"max_output_tokens", 3},
               {"input", json::array({{{"role", "user"}, {"content", "weather in Paris?"}},
                                      call,
                                      {{"type", "function_call_output"}, {"call_id", call_id}, {"output", "18C"}}})}};
  auto answered = post("/v1/responses", next.dump(), key);
  ASSERT_EQ(answered->status, 200) << answered->body;
  auto text = json::parse(answered->body);
  EXPECT_EQ(text["output"][0]["type"], "message") << answered->body;
  EXPECT_FALSE(text["output"][0]["content"][0]["text"].get<std::string>().empty());

  // Streamed, the call arrives as an item whose arguments come in pieces.
  http::BlockingClient client;
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  auto status =
      client.stream("POST", up_->server() + "/v1/responses",
                    R"({"model":"chat","stream":true,"input":"weather?","max_output_tokens":4,)" + tools + "}",
                    bearer(key), [&](std::string_view piece) {
                      parser.feed(piece, events);
                      return true;
                    });
  ASSERT_TRUE(status && *status == 200);
  std::string arguments;
  int sequence = -1;
  bool added = false;
  for (const auto& event : events) {
    auto body = json::parse(event.data);
    EXPECT_GT(body["sequence_number"].get<int>(), sequence);
    sequence = body["sequence_number"];
    if (event.event == "response.output_item.added") {
      added = true;
      EXPECT_EQ(body["item"]["type"], "function_call") << event.data;
    }
    if (event.event == "response.function_call_arguments.delta") arguments += body["delta"].get<std::string>();
    EXPECT_NE(event.event, "response.output_text.delta");
  }
  EXPECT_TRUE(added);
  ASSERT_FALSE(events.empty());
  auto last = json::parse(events.back().data)["response"];
  ASSERT_EQ(last["output"].size(), 1u) << events.back().data;
  EXPECT_EQ(last["output"][0]["arguments"], arguments);
  EXPECT_TRUE(json::parse(arguments).is_object()) << arguments;
  EXPECT_EQ(last["usage"]["output_tokens"], 4);
}

// Stored responses: a conversation continued by previous_response_id, read back, and deleted.
TEST_F(GatewayE2E, ResponsesContinueAStoredConversation) {
  std::string key = create_key({});
  auto first = post("/v1/responses", R"({"model":"chat","input":"my name is Ada","max_output_tokens":3})", key);
  ASSERT_EQ(first->status, 200) << first->body;
  auto first_body = json::parse(first->body);
  std::string id = first_body["id"];
  int first_input = first_body["usage"]["input_tokens"];

  // The engine sees the earlier turn and its answer: more prompt tokens than the new input alone.
  json follow = {
      {"model", "chat"}, {"input", "what is my name?"}, {"max_output_tokens", 3}, {"previous_response_id", id}};
  auto second = post("/v1/responses", follow.dump(), key);
  ASSERT_EQ(second->status, 200) << second->body;
  auto alone = post("/v1/responses", R"({"model":"chat","input":"what is my name?","max_output_tokens":3})", key);
  ASSERT_EQ(alone->status, 200);
  int continued_input = json::parse(second->body)["usage"]["input_tokens"];
  int alone_input = json::parse(alone->body)["usage"]["input_tokens"];
  EXPECT_GT(continued_input, alone_input + first_input - 1) << second->body;

  // Streamed answers are stored too, and can be continued.
  std::string streamed_id;
  http::BlockingClient client;
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  json streamed = follow;
  streamed["stream"] = true;
  streamed["previous_response_id"] = json::parse(second->body)["id"];
  auto status =
      client.stream("POST", up_->server() + "/v1/responses", streamed.dump(), bearer(key), [&](std::string_view piece) {
        parser.feed(piece, events);
        return true;
      });
  ASSERT_TRUE(status && *status == 200);
  ASSERT_FALSE(events.empty());
  streamed_id = json::parse(events.back().data)["response"]["id"];
  auto read_back = client.request("GET", up_->server() + "/v1/responses/" + streamed_id, "", bearer(key));
  ASSERT_EQ(read_back->status, 200) << read_back->body;
  EXPECT_EQ(json::parse(read_back->body)["id"], streamed_id);

  // Another key sees none of it; an unknown id is a 404 naming it.
  std::string other = create_key({});
  EXPECT_EQ(client.request("GET", up_->server() + "/v1/responses/" + id, "", bearer(other))->status, 404);
  json elsewhere = follow;
  elsewhere["previous_response_id"] = id;
  expect_openai_error(post("/v1/responses", elsewhere.dump(), other), 404, "previous_response_not_found");
  // "store": false keeps nothing; DELETE forgets.
  auto unstored = post("/v1/responses", R"({"model":"chat","input":"x","max_output_tokens":1,"store":false})", key);
  std::string unstored_id = json::parse(unstored->body)["id"];
  EXPECT_EQ(client.request("GET", up_->server() + "/v1/responses/" + unstored_id, "", bearer(key))->status, 404);
  auto deleted = client.request("DELETE", up_->server() + "/v1/responses/" + id, "", bearer(key));
  ASSERT_EQ(deleted->status, 200) << deleted->body;
  EXPECT_EQ(json::parse(deleted->body)["deleted"], true);
  expect_openai_error(client.request("GET", up_->server() + "/v1/responses/" + id, "", bearer(key)), 404, "not_found");
  expect_openai_error(client.request("GET", up_->server() + "/v1/responses/" + id, ""), 401, "invalid_api_key");
  // The second turn is still there, but the conversation it continues is broken: continuing it,
  // or listing its input items, is a 404 that names the turn that is gone.
  std::string second_id = json::parse(second->body)["id"];
  ASSERT_EQ(client.request("GET", up_->server() + "/v1/responses/" + second_id, "", bearer(key))->status, 200);
  json after_delete = follow;
  after_delete["previous_response_id"] = second_id;
  auto broken = post("/v1/responses", after_delete.dump(), key);
  expect_openai_error(broken, 404, "previous_response_not_found");
  EXPECT_NE(broken->body.find("Previous response with id '" + second_id + "' continues '" + id + "'"),
            std::string::npos)
      << broken->body;
  auto items = client.request("GET", up_->server() + "/v1/responses/" + second_id + "/input_items", "", bearer(key));
  expect_openai_error(items, 404, "not_found");
  EXPECT_NE(items->body.find("continues '" + id + "'"), std::string::npos) << items->body;
}

TEST_F(GatewayE2E, DisconnectMidStreamFreesTheEngineSlot) {
  std::string key = create_key({});
  std::string body = R"({"model":"chat","stream":true,"max_tokens":400,"messages":[{"role":"user","content":"hi"}]})";
  http::BlockingClient client;
  int pieces = 0;
  auto status = client.stream("POST", up_->server() + "/v1/chat/completions", body, bearer(key),
                              [&](std::string_view) { return ++pieces < 5; });
  ASSERT_TRUE(status);
  auto endpoints = up_->endpoints_of("chat");
  ASSERT_EQ(endpoints.size(), 2u);
  // Every engine soon runs nothing: the gateway cancelled the upstream request.
  bool freed = eventually(
      [&] {
        for (const auto& endpoint : endpoints) {
          auto metrics = client.request("GET", endpoint + "/metrics");
          if (!metrics) return false;
          if (metrics->body.find("vllm:num_requests_running{model_name=\"chat\"} 0") == std::string::npos) {
            return false;
          }
        }
        return true;
      },
      5s);
  EXPECT_TRUE(freed);
}

TEST_F(GatewayE2E, ANonStreamedClientThatLeavesFreesTheEngineSlot) {
  std::string key = create_key({});
  // A long non-streamed completion; the client sends it and hangs up.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(std::stoi(up_->server().substr(up_->server().rfind(':') + 1))));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  std::string body =
      R"({"model":"chat","max_tokens":2000,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]})";
  std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key +
                        "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                        "\r\n\r\n" + body;
  ASSERT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  auto endpoints = up_->endpoints_of("chat");
  http::BlockingClient client;
  auto running = [&] {
    int total = 0;
    for (const auto& endpoint : endpoints) {
      auto metrics = client.request("GET", endpoint + "/metrics");
      if (!metrics) continue;
      if (metrics->body.find("vllm:num_requests_running{model_name=\"chat\"} 1") != std::string::npos) ++total;
    }
    return total;
  };
  ASSERT_TRUE(eventually([&] { return running() == 1; }, 5s)) << "the request never reached an engine";
  ::close(fd);
  EXPECT_TRUE(eventually([&] { return running() == 0; }, 3s)) << "the engine kept generating for a gone client";
}

TEST_F(GatewayE2E, AnEngineErrorIsRelayedOnceNoOtherReplicaIsLeft) {
  auto deployed = up_->cli({"deploy", "flaky", "--engine", "sim", "--model", "qwen2.5-0.5b", "--engine-arg=--fail-rate",
                            "--engine-arg=1", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  std::string key = create_key({});
  auto started = std::chrono::steady_clock::now();
  auto response = post("/v1/chat/completions", R"({"model":"flaky","messages":[{"role":"user","content":"hi"}]})", key);
  ASSERT_TRUE(response);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s) << "a retry must not wait in the queue for nothing";
  EXPECT_TRUE(response->status == 429 || response->status == 500 || response->status == 503) << response->status;
  auto body = parse_json(response->body);
  ASSERT_TRUE(body) << response->body;
  EXPECT_TRUE((*body)["error"].is_object()) << response->body;
  EXPECT_EQ(up_->cli({"rm", "flaky"}).exit_code, 0);
}

TEST_F(GatewayE2E, AnIdleDeploymentSleepsAndTheNextRequestWakesIt) {
  auto deployed = up_->cli({"deploy", "sleepy", "--engine", "sim", "--model", "qwen2.5-0.5b", "--idle-timeout", "1s",
                            "--on-idle", "sleep-l1", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  auto pids = up_->engine_pids("sleepy");
  ASSERT_EQ(pids.size(), 1u);
  ASSERT_TRUE(eventually(
      [&] {
        auto replicas = up_->replicas_of("sleepy");
        return replicas.size() == 1 && replicas[0]["status"]["phase"] == "Sleeping";
      },
      10s))
      << up_->get_json("/api/v1/replicas", admin_).dump();
  EXPECT_EQ(up_->get_json("/api/v1/deployments/sleepy", admin_)["status"]["phase"], "Idle");
  // The next request waits for the wake and is served by the same engine process.
  std::string key = create_key({});
  auto response = post("/v1/chat/completions",
                       R"({"model":"sleepy","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})", key);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 200) << response->body;
  EXPECT_EQ(up_->engine_pids("sleepy"), pids);
  EXPECT_EQ(up_->cli({"rm", "sleepy"}).exit_code, 0);
}

TEST_F(GatewayE2E, ABurstForAStoppedModelStartsItOnce) {
  auto deployed = up_->cli({"deploy", "cold", "--engine", "sim", "--model", "qwen2.5-0.5b", "--idle-timeout", "1s",
                            "--on-idle", "stop", "--wait", "--timeout", "60s"});
  ASSERT_EQ(deployed.exit_code, 0) << deployed.out;
  ASSERT_TRUE(eventually([&] { return up_->replicas_of("cold").empty(); }, 15s)) << "it never scaled to zero";
  std::string key = create_key({});
  std::vector<int> statuses(100, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&, i] {
      http::BlockingClient client;
      auto response =
          client.request("POST", up_->server() + "/v1/chat/completions",
                         R"({"model":"cold","max_tokens":4,"messages":[{"role":"user","content":"hi"}]})", bearer(key));
      statuses[i] = response ? response->status : -1;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(std::count(statuses.begin(), statuses.end(), 200), 100);
  // One start: one replica, never restarted, and one Waking event.
  auto replicas = up_->replicas_of("cold");
  ASSERT_EQ(replicas.size(), 1u);
  EXPECT_EQ(replicas[0]["status"]["restarts"], 0);
  json events = up_->get_json("/api/v1/events", admin_);
  int wakes = 0;
  for (const auto& event : events["items"]) {
    if (event["object"] == "deployment/cold" && event["reason"] == "Waking") ++wakes;
  }
  EXPECT_EQ(wakes, 1);
  EXPECT_EQ(up_->cli({"rm", "cold"}).exit_code, 0);
}

TEST_F(GatewayE2E, IdleDeploymentsAreEvictedToMakeRoomAndNeverOvercommit) {
  // a sleeps while idle and holds 40 GB; b needs 40 GB more than the 80 GB GPU has left.
  auto a = up_->cli({"deploy", "roomy-a", "--engine", "sim", "--model", "m", "--vram", "40GB", "--idle-timeout", "1s",
                     "--on-idle", "sleep-l1", "--wait", "--timeout", "60s"});
  ASSERT_EQ(a.exit_code, 0) << a.out;
  ASSERT_TRUE(eventually(
      [&] { return up_->get_json("/api/v1/deployments/roomy-a", admin_)["status"]["phase"] == "Idle"; }, 10s));
  auto b = up_->cli(
      {"deploy", "roomy-b", "--engine", "sim", "--model", "m", "--vram", "40GB", "--wait", "--timeout", "60s"});
  ASSERT_EQ(b.exit_code, 0) << b.out;
  json events = up_->get_json("/api/v1/events", admin_);
  bool evicted = false;
  for (const auto& event : events["items"]) {
    if (event["object"] == "deployment/roomy-a" && event["reason"] == "Evicted") evicted = true;
  }
  EXPECT_TRUE(evicted);
  EXPECT_TRUE(eventually([&] { return up_->replicas_of("roomy-a").empty(); }, 10s));
  // No GPU ever holds more than it has.
  // (Kept in a variable: a range-for over get_json(...)["items"] reads the temporary after it died.)
  json gpus = up_->get_json("/api/v1/gpus", admin_);
  for (const auto& gpu : gpus["items"]) {
    EXPECT_LE(gpu["memory_allocated_mb"].get<int64_t>(), gpu["memory_total_mb"].get<int64_t>());
  }
  // Waking a, with b awake and serving, finds no room and nothing to evict: a fast, clear 503.
  std::string key = create_key({});
  auto started = std::chrono::steady_clock::now();
  auto response =
      post("/v1/chat/completions", R"({"model":"roomy-a","messages":[{"role":"user","content":"hi"}]})", key);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 503) << response->body;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 10s);
  EXPECT_NE(response->body.find("cannot start"), std::string::npos) << response->body;
  EXPECT_EQ(up_->cli({"rm", "roomy-a", "roomy-b"}).exit_code, 0);
}

TEST_F(GatewayE2E, QueueIsFairAcrossKeys) {
  // Fill both replicas (4 slots each) with key A's long requests plus a backlog, then key B asks
  // once: B must not wait behind A's whole backlog.
  std::string a = create_key({});
  std::string b = create_key({});
  std::string long_body = R"({"model":"chat","max_tokens":40,"messages":[{"role":"user","content":"x"}]})";
  std::mutex mutex;
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> finished;
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 24; ++i) {
    threads.emplace_back([&] {
      http::BlockingClient client;
      auto response = client.request("POST", up_->server() + "/v1/chat/completions", long_body, bearer(a));
      std::lock_guard lock(mutex);
      finished.emplace_back(response && response->status == 200 ? "a" : "a-failed", std::chrono::steady_clock::now());
    });
  }
  // A's backlog is queued: 8 running, 16 waiting (the first finish after 40 tokens of 5 ms).
  http::BlockingClient metrics_client;
  auto queue_depth = [&] {
    auto metrics = metrics_client.request("GET", up_->server() + "/metrics", "", bearer(admin_));
    const std::string series = "nebula_queue_depth{model=\"chat\"} ";
    size_t at = metrics ? metrics->body.find(series) : std::string::npos;
    return at == std::string::npos ? 0 : std::atoi(metrics->body.c_str() + at + series.size());
  };
  ASSERT_TRUE(eventually([&] { return queue_depth() >= 14; }, 10s, 5ms)) << queue_depth();
  threads.emplace_back([&] {
    http::BlockingClient client;
    auto response = client.request("POST", up_->server() + "/v1/chat/completions", long_body, bearer(b));
    std::lock_guard lock(mutex);
    finished.emplace_back(response && response->status == 200 ? "b" : "b-failed", std::chrono::steady_clock::now());
  });
  for (auto& thread : threads) thread.join();
  std::sort(finished.begin(), finished.end(), [](auto& x, auto& y) { return x.second < y.second; });
  size_t b_position = 0;
  for (size_t i = 0; i < finished.size(); ++i) {
    EXPECT_EQ(finished[i].first.find("failed"), std::string::npos) << finished[i].first;
    if (finished[i].first == "b") b_position = i;
  }
  // 8 run at first, 16 of A wait; fair queueing serves B with the next free slot, so within the
  // second wave (positions 8..15), far ahead of A's last request.
  EXPECT_LT(b_position, 16u) << "B finished at position " << b_position << " of " << finished.size();
  (void)start;
}

TEST_F(GatewayE2E, MetricsAndErrorsAreOpenAiShaped) {
  std::string key = create_key({});
  expect_openai_error(post("/v1/chat/completions", "{broken", key), 400, "invalid_request");
  expect_openai_error(post("/v1/chat/completions", R"({"messages":[]})", key), 400, "invalid_request");
  expect_openai_error(post("/v1/chat/completions", R"({"model":"nope","messages":[]})", key), 404, "model_not_found");
  expect_openai_error(post("/v1/responses", R"({"model":"chat"})", key), 400, "missing_required_parameter");
  // A stream with a stream_options that is not an object still gets its usage asked for, and
  // its answer: the gateway replaces it rather than failing.
  auto odd_options = post("/v1/chat/completions",
                          R"({"model":"chat","stream":true,"stream_options":"none","max_tokens":2,)"
                          R"("messages":[{"role":"user","content":"hi"}]})",
                          key);
  ASSERT_TRUE(odd_options);
  EXPECT_EQ(odd_options->status, 200) << odd_options->body;
  EXPECT_NE(odd_options->body.find("[DONE]"), std::string::npos) << odd_options->body;
  EXPECT_EQ(odd_options->body.find("\"usage\":{"), std::string::npos) << "usage was not asked for";
  // A client's request id with a quote, a backslash and non-ASCII bytes still gives a valid
  // access log line (checked below with every other line).
  http::Headers odd_id = bearer(key);
  // ("\xc3\xa9" "bytes": a hex escape takes every hex digit after it, so "\xa9bytes" would be
  // the one out-of-range escape \xa9b.)
  const std::string odd_request_id =
      "id\"with\\odd\xc3\xa9"
      "bytes";
  odd_id.push_back({"X-Request-Id", odd_request_id});
  auto odd_request = http::BlockingClient().request("POST", up_->server() + "/v1/chat/completions", kChat, odd_id);
  ASSERT_TRUE(odd_request);
  EXPECT_EQ(odd_request->status, 200) << odd_request->body;
  auto embeddings = post("/v1/embeddings", R"({"model":"chat","input":"vector me"})", key);
  ASSERT_TRUE(embeddings);
  ASSERT_EQ(embeddings->status, 200) << embeddings->body;
  auto vectors = parse_json(embeddings->body);
  ASSERT_TRUE(vectors) << embeddings->body;
  ASSERT_TRUE((*vectors)["data"].is_array() && (*vectors)["data"].size() == 1) << embeddings->body;
  EXPECT_TRUE((*vectors)["data"][0]["embedding"].is_array()) << embeddings->body;
  EXPECT_FALSE((*vectors)["data"][0]["embedding"].empty()) << embeddings->body;
  http::BlockingClient client;
  auto metrics = client.request("GET", up_->server() + "/metrics", "", bearer(admin_));
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("nebula_requests_total{model=\"chat\""), std::string::npos);
  EXPECT_NE(metrics->body.find("nebula_request_duration_seconds_bucket"), std::string::npos);
  // One JSON access log line per request, flushed once a second.
  int lines = 0;
  bool odd_id_logged = false;
  // The log writes each byte above 0x7f as \u00XX: the id reads back one Latin-1 character per byte.
  std::string logged_id;
  for (unsigned char c : odd_request_id) {
    if (c < 0x80) {
      logged_id.push_back(static_cast<char>(c));
    } else {
      logged_id.push_back(static_cast<char>(0xC0 | (c >> 6)));
      logged_id.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  for (int attempt = 0; attempt < 30 && (lines < 5 || !odd_id_logged); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream log(up_->data_dir() + "/access.log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    text.erase(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);  // whole lines only
    std::istringstream whole(text);
    std::string line;
    lines = 0;
    while (std::getline(whole, line)) {
      auto entry = parse_json(line);
      ASSERT_TRUE(entry) << line;
      if ((*entry).value("id", "") == logged_id) odd_id_logged = true;
      EXPECT_TRUE((*entry).contains("id") && (*entry).contains("status") && (*entry).contains("duration_ms"));
      EXPECT_TRUE((*entry)["id"].is_string() && (*entry)["stream"].is_boolean()) << line;
      ++lines;
    }
  }
  EXPECT_GE(lines, 5);  // at least this test's seven requests
  EXPECT_TRUE(odd_id_logged) << "no access log line has the id " << odd_request_id;
}

}  // namespace
}  // namespace nebula
