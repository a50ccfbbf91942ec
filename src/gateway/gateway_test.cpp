#include "gateway/gateway.h"
#include "common/ids.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <thread>

#include "gateway/request_json.h"
#include "gateway/responses.h"
#include "gateway/usage.h"
#include "http/sse.h"
#include "http/test_server.h"
#include "store/memory_store.h"

namespace nebula::gateway {
namespace {

using namespace std::chrono_literals;

api::ApiKey key_with(int64_t rpm, int64_t tpm, int64_t concurrency, int64_t budget) {
  api::ApiKey key;
  key.metadata.name = "k1";
  key.rpm = rpm;
  key.tpm = tpm;
  key.max_concurrency = concurrency;
  key.budget_tokens = budget;
  return key;
}

TEST(Limiter, RequestsPerMinuteTripAtExactlyTheLimit) {
  MemoryLimiter limiter;
  auto key = key_with(5, 0, 0, 0);
  auto now = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    auto admitted = limiter.admit(key, 10, 0, now);
    ASSERT_TRUE(admitted.allowed) << i;
    limiter.finish("k1", admitted.ticket, 10, 10, now);
  }
  auto refused = limiter.admit(key, 10, 0, now);
  EXPECT_FALSE(refused.allowed);
  EXPECT_EQ(refused.retry_after_s, 60);
  auto headers = Limiter::headers(key, limiter.window("k1", now));
  EXPECT_EQ(http::find_header(headers, "x-ratelimit-remaining-requests"), "0");
  // The window slides: a minute later the oldest requests no longer count.
  EXPECT_TRUE(limiter.admit(key, 10, 0, now + 61s).allowed);
}

TEST(Limiter, TokensAreChargedUpFrontThenCorrected) {
  MemoryLimiter limiter;
  auto key = key_with(0, 1000, 0, 0);
  auto now = std::chrono::steady_clock::now();
  auto first = limiter.admit(key, 600, 0, now);
  ASSERT_TRUE(first.allowed);
  EXPECT_FALSE(limiter.admit(key, 600, 0, now).allowed);  // 1200 > 1000 while the estimate stands
  limiter.finish("k1", first.ticket, 600, 100, now);      // the engine reported 100
  EXPECT_TRUE(limiter.admit(key, 600, 0, now).allowed);   // 700 <= 1000
  EXPECT_EQ(http::find_header(Limiter::headers(key, limiter.window("k1", now)), "x-ratelimit-remaining-tokens"), "300");
}

TEST(Limiter, ConcurrencyAndMonthlyBudget) {
  MemoryLimiter limiter;
  auto key = key_with(0, 0, 2, 0);
  auto now = std::chrono::steady_clock::now();
  auto a = limiter.admit(key, 1, 0, now);
  auto b = limiter.admit(key, 1, 0, now);
  ASSERT_TRUE(a.allowed && b.allowed);
  EXPECT_FALSE(limiter.admit(key, 1, 0, now).allowed);
  limiter.finish("k1", a.ticket, 1, 1, now);
  EXPECT_TRUE(limiter.admit(key, 1, 0, now).allowed);

  auto budgeted = key_with(0, 0, 0, 1000);
  budgeted.metadata.name = "k2";
  EXPECT_TRUE(limiter.admit(budgeted, 100, 800, now).allowed);   // 800 used + 100 in flight + 100
  EXPECT_FALSE(limiter.admit(budgeted, 150, 800, now).allowed);  // would pass 1000
}

TEST(Usage, FlushesBatchesAndAnswersQueries) {
  store::MemoryStore store;
  UsageRecorder usage(store, std::chrono::hours(1));
  ASSERT_TRUE(usage.start());
  auto now = std::chrono::system_clock::now();
  usage.record("k1", "chat", {10, 20, 5, false}, now);
  usage.record("k1", "chat", {1, 2, 0, true}, now);
  usage.record("k2", "chat", {100, 200, 0, false}, now);
  EXPECT_EQ(usage.month_tokens("k1", now), 33);
  ASSERT_TRUE(usage.flush());
  usage.record("k1", "chat", {1, 1, 0, false}, now);  // pending, not yet flushed
  auto k1 = usage.query("k1", "", "");
  ASSERT_EQ(k1.size(), 1u);
  EXPECT_EQ(k1[0].requests, 3);
  EXPECT_EQ(k1[0].errors, 1);
  EXPECT_EQ(k1[0].prompt_tokens, 12);
  EXPECT_EQ(k1[0].completion_tokens, 23);
  EXPECT_EQ(k1[0].cached_tokens, 5);
  usage.stop();
  // A restarted recorder sees the month's totals from the store.
  UsageRecorder restarted(store, std::chrono::hours(1));
  ASSERT_TRUE(restarted.start());
  EXPECT_EQ(restarted.month_tokens("k1", now), 35);
  EXPECT_EQ(restarted.month_tokens("k2", now), 300);
}

TEST(Responses, TranslatesRequestsToChat) {
  auto chat = responses_to_chat(json{
      {"model", "m"}, {"input", "hello"}, {"instructions", "be brief"}, {"max_output_tokens", 7}, {"stream", true}});
  ASSERT_TRUE(chat);
  EXPECT_EQ((*chat)["messages"][0]["role"], "system");
  EXPECT_EQ((*chat)["messages"][1]["content"], "hello");
  EXPECT_EQ((*chat)["max_tokens"], 7);
  EXPECT_EQ((*chat)["stream_options"]["include_usage"], true);
  auto items = responses_to_chat(json::parse(
      R"({"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_text","text":"b"}]}]})"));
  ASSERT_TRUE(items);
  EXPECT_EQ((*items)["messages"][0]["content"], "ab");
  EXPECT_FALSE(responses_to_chat(json{{"model", "m"}}));
  EXPECT_FALSE(responses_to_chat(json{{"model", "m"}, {"input", 5}}));
}

// The SSE events of a Responses stream's wire text.
std::vector<http::SseEvent> events_of(const std::string& wire) {
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  parser.feed(wire, events);
  return events;
}

// The events' types, checking that each body names its event and that sequence numbers count
// from 0 without a gap.
std::vector<std::string> checked_types(const std::vector<http::SseEvent>& events) {
  std::vector<std::string> types;
  int expected_sequence = 0;
  for (const auto& event : events) {
    auto body = json::parse(event.data);
    EXPECT_EQ(body["type"], event.event);
    EXPECT_EQ(body["sequence_number"], expected_sequence++);
    types.push_back(event.event);
  }
  return types;
}

TEST(Responses, StreamsTheEventSequenceWithIncreasingNumbers) {
  ResponsesStream stream("resp_1", "m", 100);
  std::string wire = stream.begin();  // one statement each: the events are numbered as they are made
  wire += stream.delta("Hello");
  wire += stream.delta(" world");
  wire += stream.end(json{{"prompt_tokens", 3}, {"completion_tokens", 2}});
  auto events = events_of(wire);
  std::vector<std::string> types = checked_types(events);
  std::vector<std::string> expected = {"response.created",           "response.in_progress",
                                       "response.output_item.added", "response.content_part.added",
                                       "response.output_text.delta", "response.output_text.delta",
                                       "response.output_text.done",  "response.content_part.done",
                                       "response.output_item.done",  "response.completed"};
  EXPECT_EQ(types, expected);
  auto completed = json::parse(events.back().data)["response"];
  EXPECT_EQ(completed["output"][0]["content"][0]["text"], "Hello world");
  EXPECT_EQ(completed["usage"]["total_tokens"], 5);
}

TEST(Responses, TranslatesFunctionToolsCallsAndTheirOutputs) {
  auto chat = responses_to_chat(json::parse(R"({
    "model":"m", "parallel_tool_calls":false,
    "tools":[{"type":"function","name":"get_weather","description":"Weather","parameters":{"type":"object"},"strict":true}],
    "tool_choice":{"type":"function","name":"get_weather"},
    "text":{"format":{"type":"json_schema","name":"w","schema":{"type":"object"},"strict":true}},
    "input":[
      {"role":"user","content":"weather in Paris and Rome?"},
      {"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
      {"type":"function_call","call_id":"call_2","name":"get_weather","arguments":"{\"city\":\"Rome\"}"},
      {"type":"function_call_output","call_id":"call_1","output":"18C"},
      {"type":"function_call_output","call_id":"call_2","output":[{"type":"input_text","text":"21C"}]}
    ]})"));
  ASSERT_TRUE(chat) << chat.error().message;
  EXPECT_EQ((*chat)["tools"][0]["type"], "function");
  EXPECT_EQ((*chat)["tools"][0]["function"]["name"], "get_weather");
  EXPECT_EQ((*chat)["tools"][0]["function"]["parameters"]["type"], "object");
  EXPECT_EQ((*chat)["tools"][0]["function"]["strict"], true);
  EXPECT_EQ((*chat)["tool_choice"]["function"]["name"], "get_weather");
  EXPECT_EQ((*chat)["parallel_tool_calls"], false);
  EXPECT_EQ((*chat)["response_format"]["type"], "json_schema");
  EXPECT_EQ((*chat)["response_format"]["json_schema"]["name"], "w");
  const json& messages = (*chat)["messages"];
  ASSERT_EQ(messages.size(), 4u) << messages.dump();
  // The two calls are one assistant turn; each output is a tool message.
  EXPECT_EQ(messages[1]["role"], "assistant");
  EXPECT_TRUE(messages[1]["content"].is_null());
  ASSERT_EQ(messages[1]["tool_calls"].size(), 2u);
  EXPECT_EQ(messages[1]["tool_calls"][1]["id"], "call_2");
  EXPECT_EQ(messages[1]["tool_calls"][1]["function"]["arguments"], "{\"city\":\"Rome\"}");
  EXPECT_EQ(messages[2]["role"], "tool");
  EXPECT_EQ(messages[2]["tool_call_id"], "call_1");
  EXPECT_EQ(messages[3]["content"], "21C");
  EXPECT_EQ(responses_to_chat(json::parse(R"({"model":"m","input":"x","tool_choice":"required"})"))->at("tool_choice"),
            "required");
  // Hosted tools and malformed items are refused with a reason, never passed on.
  auto hosted = responses_to_chat(json::parse(R"({"model":"m","input":"x","tools":[{"type":"web_search"}]})"));
  ASSERT_FALSE(hosted);
  EXPECT_NE(hosted.error().message.find("web_search"), std::string::npos);
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":"m","input":"x","tool_choice":{"type":"function"}})")));
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":"m","input":[{"type":"function_call","name":"f"}]})")));
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":"m","input":"x","text":{"format":{"type":"yaml"}}})")));
}

TEST(Responses, AnAnswerThatCallsFunctionsHasAFunctionCallItemPerCall) {
  json completion = json::parse(R"({"choices":[{"finish_reason":"tool_calls","message":{"role":"assistant",
      "content":null,"tool_calls":[{"id":"call_9","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}}],
      "usage":{"prompt_tokens":5,"completion_tokens":7}})");
  auto response = chat_to_response(completion, "resp_1", "m", 0);
  EXPECT_EQ(response["status"], "completed");
  ASSERT_EQ(response["output"].size(), 1u) << response.dump();
  const json& item = response["output"][0];
  EXPECT_EQ(item["type"], "function_call");
  EXPECT_EQ(item["call_id"], "call_9");
  EXPECT_EQ(item["name"], "f");
  EXPECT_EQ(item["arguments"], "{\"a\":1}");
  EXPECT_EQ(item["id"].get<std::string>().rfind("fc_", 0), 0u);
}

TEST(Responses, StreamsFunctionCallsAfterTheTextTheyFollow) {
  ResponsesStream stream("resp_3", "m", 0);
  std::string wire = stream.begin();
  wire += stream.delta("Let me check.");
  wire += stream.tool_calls(
      json::parse(R"([{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}])"));
  wire += stream.tool_calls(json::parse(R"([{"index":0,"function":{"arguments":"{\"city\":"}}])"));
  wire += stream.tool_calls(json::parse(R"([{"index":0,"function":{"arguments":"\"Paris\"}"}}])"));
  stream.set_finish_reason("tool_calls");
  wire += stream.end(json{{"prompt_tokens", 3}, {"completion_tokens", 9}});
  auto events = events_of(wire);
  std::vector<std::string> types = checked_types(events);
  std::vector<std::string> expected = {"response.created",
                                       "response.in_progress",
                                       "response.output_item.added",
                                       "response.content_part.added",
                                       "response.output_text.delta",
                                       "response.output_item.added",
                                       "response.function_call_arguments.delta",
                                       "response.function_call_arguments.delta",
                                       "response.output_text.done",
                                       "response.content_part.done",
                                       "response.output_item.done",
                                       "response.function_call_arguments.done",
                                       "response.output_item.done",
                                       "response.completed"};
  EXPECT_EQ(types, expected);
  auto added = json::parse(events[5].data);
  EXPECT_EQ(added["output_index"], 1);
  EXPECT_EQ(added["item"]["type"], "function_call");
  EXPECT_EQ(added["item"]["status"], "in_progress");
  EXPECT_EQ(json::parse(events[11].data)["arguments"], "{\"city\":\"Paris\"}");
  auto completed = json::parse(events.back().data)["response"];
  EXPECT_EQ(completed["status"], "completed");
  ASSERT_EQ(completed["output"].size(), 2u);
  EXPECT_EQ(completed["output"][0]["content"][0]["text"], "Let me check.");
  EXPECT_EQ(completed["output"][1]["call_id"], "call_1");
  EXPECT_EQ(completed["output"][1]["name"], "get_weather");
  EXPECT_EQ(completed["output"][1]["arguments"], "{\"city\":\"Paris\"}");
  EXPECT_EQ(completed["output"][1]["status"], "completed");

  // Only a call: the call is item 0 and no message item appears.
  ResponsesStream calls_only("resp_4", "m", 0);
  std::string only = calls_only.begin();
  only += calls_only.tool_calls(json::parse(R"([{"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}])"));
  only += calls_only.end(json());
  events = events_of(only);
  checked_types(events);
  auto last = json::parse(events.back().data)["response"];
  ASSERT_EQ(last["output"].size(), 1u);
  EXPECT_EQ(last["output"][0]["type"], "function_call");
}

TEST(UsageOf, ReadsOnlyTheTopLevelUsageObject) {
  auto usage =
      usage_of(R"({"id":"x","choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\": 99}"}}],)"
               R"("usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}})");
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage["prompt_tokens"], 12);
  EXPECT_EQ(usage["completion_tokens"], 3);
  EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"], 8);
  // A nested "usage" is not the answer's.
  EXPECT_TRUE(usage_of(R"({"choices":[{"usage":{"prompt_tokens":1}}]})").is_null());
  EXPECT_TRUE(usage_of(R"({"usage":null})").is_null());
  EXPECT_TRUE(usage_of(R"({"usage":5})").is_null());
  EXPECT_TRUE(usage_of("not json").is_null());
  EXPECT_TRUE(usage_of("").is_null());
  EXPECT_TRUE(usage_of(R"([{"usage":{}}])").is_null());
  EXPECT_TRUE(usage_of(R"({"usage":{"prompt_tokens":1)").is_null());  // cut off inside usage
  // On-demand parsing does not read past the usage object: a whole one is taken as reported.
  EXPECT_EQ(usage_of(R"({"usage":{"prompt_tokens":1})")["prompt_tokens"], 1);
}

TEST(Responses, AnAnswerCutByTheTokenLimitIsIncomplete) {
  json completion = {
      {"choices", {{{"message", {{"role", "assistant"}, {"content", "Hel"}}}, {"finish_reason", "length"}}}},
      {"usage", {{"prompt_tokens", 3}, {"completion_tokens", 2}}}};
  auto response = chat_to_response(completion, "resp_1", "m", 0);
  EXPECT_EQ(response["status"], "incomplete");
  EXPECT_EQ(response["incomplete_details"]["reason"], "max_output_tokens");
  EXPECT_EQ(response["output"][0]["status"], "incomplete");
  completion["choices"][0]["finish_reason"] = "stop";
  response = chat_to_response(completion, "resp_1", "m", 0);
  EXPECT_EQ(response["status"], "completed");
  EXPECT_TRUE(response["incomplete_details"].is_null());

  ResponsesStream stream("resp_2", "m", 0);
  std::string text = stream.begin() + stream.delta("Hel");
  stream.set_finish_reason("length");
  text += stream.end({{"prompt_tokens", 3}, {"completion_tokens", 1}});
  auto events = events_of(text);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().event, "response.incomplete");
  auto last = json::parse(events.back().data)["response"];
  EXPECT_EQ(last["status"], "incomplete");
  EXPECT_EQ(last["incomplete_details"]["reason"], "max_output_tokens");
  EXPECT_EQ(last["output"][0]["content"][0]["text"], "Hel");
}

// A fake engine: answers chat completions, or 500 while `failing`; counts what it was sent.
struct FakeEngine {
  std::atomic<bool> failing{false};
  std::atomic<int> hits{0};
  http::testing::ServerThread server;

  void start() {
    http::Router router;
    router.add("POST", "/v1/chat/completions", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
      hits++;
      http::Response response;
      response.status = failing ? 500 : 200;
      response.headers.push_back({"Content-Type", "application/json"});
      response.body = failing ? std::string(R"({"error":{"message":"boom"}})")
                              : std::string(R"({"choices":[{"message":{"content":"ok"}}],)"
                                            R"("usage":{"prompt_tokens":1,"completion_tokens":1}})");
      co_await writer.send(std::move(response));
    });
    ASSERT_TRUE(server.start(std::move(router)));
  }
};

// The breaker as a client sees it: a replica that fails three times in a row gets no traffic for
// the cool-down, then exactly one probe; a failed probe re-opens it, a good one closes it.
TEST(CircuitBreaker, OpensAfterConsecutiveFailuresAndProbesBack) {
  FakeClock clock;
  store::MemoryStore store(clock);
  FakeEngine good, bad;
  good.start();
  bad.start();
  api::Deployment deployment;
  deployment.metadata.name = "m";
  deployment.spec.model = "m";
  ASSERT_TRUE(store.put(api::store_key("deployments", "m"), api::to_json(deployment).dump()));
  int index = 0;
  for (auto* engine : {&good, &bad}) {
    api::Replica replica;
    replica.metadata.name = "m-" + std::to_string(index++);
    replica.spec.deployment = "m";
    replica.status.phase = api::phase::kReady;
    replica.status.endpoint = engine->server.url();
    ASSERT_TRUE(store.put(api::store_key("replicas", replica.metadata.name), api::to_json(replica).dump()));
  }
  http::testing::ServerThread front;
  Options options;
  options.breaker_failures = 3;
  options.breaker_cooldown = 400ms;
  Gateway gateway(store, front.io(), options);
  ASSERT_TRUE(gateway.start());
  http::Router router;
  gateway.add_routes(router);
  ASSERT_TRUE(front.start(std::move(router)));
  http::BlockingClient client;
  auto chat = [&] {
    auto response = client.request("POST", front.url() + "/v1/chat/completions",
                                   R"({"model":"m","messages":[{"role":"user","content":"hi"}]})", {});
    return response ? response->status : -1;
  };

  // Polls (a request every 10 ms) until done() or 5 s pass.
  auto keep_asking_until = [&](const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (chat() != 200) return false;
      if (done()) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  };

  bad.failing = true;
  // Every request succeeds: the failing replica's answers are retried on the good one.
  for (int i = 0; i < 12; ++i) ASSERT_EQ(chat(), 200) << i;
  EXPECT_EQ(bad.hits, 3) << "the breaker opens after exactly three consecutive failures";
  EXPECT_EQ(good.hits, 12);

  // Cool-down over: one probe goes to the failing replica; it fails again and the breaker re-opens.
  ASSERT_TRUE(keep_asking_until([&] { return bad.hits == 4; })) << bad.hits;
  for (int i = 0; i < 6; ++i) ASSERT_EQ(chat(), 200) << i;
  EXPECT_EQ(bad.hits, 4) << "one probe after the cool-down, no more";

  // The replica recovers: the next probe succeeds and traffic is shared again.
  bad.failing = false;
  ASSERT_TRUE(keep_asking_until([&] { return bad.hits == 5; })) << bad.hits;
  for (int i = 0; i < 10; ++i) ASSERT_EQ(chat(), 200) << i;
  EXPECT_GE(bad.hits, 4 + 5) << "a closed breaker shares traffic again";
  gateway.stop();
  front.stop();
}

// Found by the fuzzer: fields of the wrong type in a client's Responses body (or an engine's
// answer) threw from inside the handler instead of giving a 400 (or being ignored).
TEST(Responses, FieldsOfTheWrongTypeAreErrorsNotExceptions) {
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":"m","input":"hi","stream":[]})"))->at("stream").get<bool>());
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":5,"input":"hi"})")));
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":"m","input":[{"type":1,"content":"x"}]})")));
  EXPECT_FALSE(responses_to_chat(json::parse(R"({"model":"m","input":[{"role":[],"content":"x"}]})")));
  // A number too large for a double made nlohmann throw out_of_range past parse_json.
  auto huge = parse_json("[[222E2222222222222222222222222222222222[[[");
  EXPECT_FALSE(huge);
  EXPECT_FALSE(parse_json(R"({"model":"m","max_tokens":1e999})"));
  EXPECT_FALSE(read_request(R"({"model":"m","max_tokens":1e999})"));
  auto odd = chat_to_response(json::parse(R"({"choices":[5],"usage":{"prompt_tokens":"3"}})"), "r", "m", 0);
  EXPECT_EQ(odd["usage"]["input_tokens"], 0);
  EXPECT_EQ(odd["output"][0]["content"][0]["text"], "");
}

TEST(RequestJson, ReadsWhatRoutingAndLimitsNeed) {
  auto chat = read_request(
      R"({"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"extra":{"x":[1]},)"
      R"("messages":[{"role":"system","content":"abcd"},)"
      R"({"role":"user","content":[{"type":"text","text":"efgh"},{"type":"image_url","image_url":{}}]},)"
      R"({"role":"assistant","content":null}]})");
  ASSERT_TRUE(chat) << chat.error().message;
  EXPECT_EQ(chat->model, "m");
  EXPECT_TRUE(chat->stream);
  EXPECT_TRUE(chat->include_usage);
  EXPECT_EQ(chat->prompt_bytes, 8);
  EXPECT_EQ(chat->max_tokens, 7);

  auto completion = read_request(R"({"model":"m","prompt":["ab","cd",5],"max_completion_tokens":3,"max_tokens":9})");
  ASSERT_TRUE(completion);
  EXPECT_FALSE(completion->stream);
  EXPECT_EQ(completion->prompt_bytes, 4);
  EXPECT_EQ(completion->max_tokens, 3);  // max_completion_tokens wins

  auto odd = read_request(R"({"model":5,"stream":"yes","stream_options":null,"max_tokens":2.5,"input":"xyz"})");
  ASSERT_TRUE(odd);
  EXPECT_EQ(odd->model, "");
  EXPECT_FALSE(odd->stream);
  EXPECT_FALSE(odd->include_usage);
  EXPECT_FALSE(odd->max_tokens);
  EXPECT_EQ(odd->prompt_bytes, 3);

  for (std::string bad : {"", "{", "[1]", "\"text\"", R"({"model":"m",})", "{\"a\":\"\xff\"}"}) {
    auto refused = read_request(bad);
    ASSERT_FALSE(refused) << bad;
    EXPECT_EQ(refused.error().code, ErrorCode::InvalidArgument);
  }
}

}  // namespace
}  // namespace nebula::gateway
