#include "sim/sim.h"

#include <gtest/gtest.h>

#include <map>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cstdio>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include "common/json.h"
#include "http/http.h"
#include "http/sse.h"
#include "http/test_server.h"
#include "sim/generator.h"
#include "sim/tokenizer.h"
#include "sim/wire.h"

namespace nebula::sim {
namespace {

using namespace std::chrono_literals;

TEST(Tokenizer, OneTokenPerWord) {
  EXPECT_EQ(count_tokens(""), 0);
  EXPECT_EQ(count_tokens("  hello \n\tworld  "), 2);
  auto words = split_words("a bb  ccc");
  ASSERT_EQ(words.size(), 3u);
  EXPECT_EQ(words[2], "ccc");
  EXPECT_EQ(token_text("x", 0), "x");
  EXPECT_EQ(token_text("x", 1), " x");
}

TEST(Generator, LoremIsSeededAndPrefixStable) {
  GenerationInput input;
  input.prompt_text = "tell me a story";
  input.max_tokens = 20;
  Generation twenty = generate(GenerationMode::Lorem, input);
  EXPECT_EQ(twenty.completion_tokens(), 20);
  EXPECT_EQ(twenty.finish_reason, FinishReason::Length);
  EXPECT_EQ(count_tokens(twenty.text()), 20);
  input.max_tokens = 5;
  Generation five = generate(GenerationMode::Lorem, input);
  EXPECT_EQ(twenty.text().rfind(five.text(), 0), 0u) << "a shorter completion is a prefix of a longer one";
  input.seed = 7;
  EXPECT_NE(generate(GenerationMode::Lorem, input).text(), five.text());
}

TEST(Generator, StopStringSpanningTokensCutsEarlierTokens) {
  GenerationInput input;
  input.echo_text = "one two three four five";
  input.max_tokens = 10;
  input.stop = {"zzz", "two thr"};
  Generation generation = generate(GenerationMode::Echo, input);
  EXPECT_EQ(generation.text(), "one ");
  EXPECT_EQ(generation.completion_tokens(), 3);  // "one", " two", " three" were generated
  EXPECT_EQ(generation.finish_reason, FinishReason::Stop);
  EXPECT_EQ(generation.stop_reason, "two thr");
}

TEST(Generator, EchoStopsWhenThePromptRunsOut) {
  GenerationInput input;
  input.echo_text = "a b c";
  input.max_tokens = 10;
  Generation all = generate(GenerationMode::Echo, input);
  EXPECT_EQ(all.text(), "a b c");
  EXPECT_EQ(all.finish_reason, FinishReason::Stop);
  input.max_tokens = 2;
  Generation cut = generate(GenerationMode::Echo, input);
  EXPECT_EQ(cut.text(), "a b");
  EXPECT_EQ(cut.finish_reason, FinishReason::Length);
}

TEST(SimWire, FastTokenEventsEqualTheJsonChunks) {
  for (Endpoint endpoint : {Endpoint::ChatCompletions, Endpoint::Completions}) {
    CompletionIdentity identity{endpoint, "chatcmpl-abc", 1700000000, "m\"odel", "", std::nullopt};
    TokenEventFormatter formatter(identity, 3);
    for (std::string text : {std::string(" plain"), std::string(" quo\"te\\"), std::string(" caf\xc3\xa9\n")}) {
      std::string event;
      formatter.append(event, text);
      ASSERT_EQ(event.rfind("data: ", 0), 0u);
      ASSERT_EQ(event.substr(event.size() - 2), "\n\n");
      auto parsed = parse_json(event.substr(6, event.size() - 8));
      ASSERT_TRUE(parsed) << event;
      EXPECT_EQ(*parsed, chunk_json(identity, 3, text, nullptr, std::nullopt)) << event;
    }
  }
}

struct StreamResult {
  int status = 0;
  std::vector<json> chunks;  // every data event but [DONE]
  bool done = false;         // [DONE] came last
  std::string content;       // the concatenated deltas (chat) or texts (completions)
};

// Waits up to `limit` for a condition, checking every 10 ms.
template <typename Condition>
bool eventually(Condition condition, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// The status of model `id` in a router's GET /models (found by id: the list may hold others).
std::string router_status(const http::Response& listing, const std::string& id) {
  auto body = parse_json(listing.body);
  if (!body || !body->is_object() || !(*body)["data"].is_array()) return "?";
  for (const json& entry : (*body)["data"]) {
    if (entry.value("id", "") == id) return entry["status"].value("value", "?");
  }
  return "absent";
}

// An engine on a loopback port with fast pacing, served from its own thread.
class EngineSimTest : public ::testing::Test {
 protected:
  static SimOptions fast_options() {
    SimOptions options;
    options.step_base_ms = 1;
    options.prefill_step_ms = 1;
    options.prefill_ms_per_token = 0;
    options.decode_ms_per_seq = 0;
    options.step_noise = 0;
    options.kv_blocks = 4096;
    return options;
  }

  void start(SimOptions options = fast_options()) {
    engine_ = std::make_unique<EngineSim>(server_.io(), options);
    http::Router router;
    engine_->add_routes(router);
    auto port = server_.start(std::move(router));
    ASSERT_TRUE(port) << port.error().message;
    base_ = server_.url();
  }

  void TearDown() override { server_.stop(); }

  http::Response post(const std::string& path, const json& body, http::Headers headers = {}) {
    return post_text(path, body.dump(), std::move(headers));
  }

  http::Response post_text(const std::string& path, const std::string& body, http::Headers headers = {}) {
    auto response = client_.request("POST", base_ + path, body, std::move(headers), 10s);
    EXPECT_TRUE(response) << response.error().message;
    return response ? *response : http::Response{};
  }

  http::Response get(const std::string& path) {
    auto response = client_.request("GET", base_ + path, "", {}, 10s);
    EXPECT_TRUE(response) << response.error().message;
    return response ? *response : http::Response{};
  }

  StreamResult stream(const std::string& path, json body) {
    body["stream"] = true;
    StreamResult result;
    http::SseParser parser;
    std::vector<http::SseEvent> events;
    auto status = client_.stream("POST", base_ + path, body.dump(), {}, [&](std::string_view data) {
      parser.feed(data, events);
      return true;
    });
    EXPECT_TRUE(status) << status.error().message;
    result.status = status ? *status : 0;
    for (const http::SseEvent& event : events) {
      EXPECT_FALSE(result.done) << "an event after [DONE]: " << event.data;
      if (event.data == "[DONE]") {
        result.done = true;
        continue;
      }
      auto chunk = parse_json(event.data);
      EXPECT_TRUE(chunk) << "not JSON: " << event.data;
      if (!chunk) continue;
      for (const json& choice : (*chunk)["choices"]) {
        if (choice.contains("delta") && choice["delta"].contains("content")) {
          result.content += choice["delta"]["content"].get<std::string>();
        }
        if (choice.contains("text")) result.content += choice["text"].get<std::string>();
      }
      result.chunks.push_back(std::move(*chunk));
    }
    return result;
  }

  static json body_of(const http::Response& response) {
    auto parsed = parse_json(response.body);
    EXPECT_TRUE(parsed) << response.body;
    return parsed ? *parsed : json();
  }

  // The "code" of an OpenAI error body, after checking its shape.
  static std::string error_code_of(const http::Response& response) {
    json body = body_of(response);
    EXPECT_TRUE(body.contains("error")) << response.body;
    if (!body.contains("error")) return "";
    const json& error = body["error"];
    for (const char* field : {"message", "type", "param", "code"}) {
      EXPECT_TRUE(error.contains(field)) << field << " missing in " << response.body;
    }
    EXPECT_TRUE(error["message"].is_string());
    return error["code"].is_string() ? error["code"].get<std::string>() : "";
  }

  // The value of the first sample whose line starts with `series` ("name{labels}" or "name").
  static double metric(const std::string& text, const std::string& series) {
    size_t position = 0;
    while ((position = text.find(series, position)) != std::string::npos) {
      bool line_start = position == 0 || text[position - 1] == '\n';
      size_t after = position + series.size();
      if (line_start && after < text.size() && text[after] == ' ') {
        return std::stod(text.substr(after + 1, text.find('\n', after) - after - 1));
      }
      position = after;
    }
    ADD_FAILURE() << series << " not in the metrics";
    return -1;
  }

  static std::string words(int count, const std::string& word = "w") {
    std::string text;
    for (int i = 0; i < count; ++i) text += word + std::to_string(i) + " ";
    return text;
  }

  static json chat_body(int max_tokens) {
    return json{{"model", "sim-model"},
                {"messages", json::array({json{{"role", "system"}, {"content", "You are helpful"}},
                                          json{{"role", "user"}, {"content", "Say hello to me"}}})},
                {"max_tokens", max_tokens}};
  }

  http::testing::ServerThread server_;  // its io_context outlives the engine built on it
  std::unique_ptr<EngineSim> engine_;
  std::string base_;
  http::BlockingClient client_;
};

TEST_F(EngineSimTest, HealthAndModels) {
  start();
  auto health = get("/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "");
  auto models = get("/v1/models");
  EXPECT_EQ(models.status, 200);
  json body = body_of(models);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  EXPECT_EQ(body["data"][0]["id"], "sim-model");
  EXPECT_EQ(body["data"][0]["object"], "model");
  EXPECT_EQ(body["data"][0]["owned_by"], "nebula-sim");
  EXPECT_EQ(body["data"][0]["max_model_len"], 8192);
  EXPECT_TRUE(body["data"][0]["created"].is_number_integer());
}

TEST_F(EngineSimTest, NonStreamChatHonoursMaxTokens) {
  start();
  auto response = post("/v1/chat/completions", chat_body(8), {{"x-request-id", "req-42"}});
  ASSERT_EQ(response.status, 200) << response.body;
  EXPECT_EQ(response.header("x-request-id"), "req-42");
  json body = body_of(response);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["model"], "sim-model");
  EXPECT_EQ(body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(count_tokens(choice["message"]["content"].get<std::string>()), 8);
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(body["usage"]["completion_tokens"], 8);
  EXPECT_EQ(body["usage"]["total_tokens"], 15);

  json newer = chat_body(100);
  newer["max_completion_tokens"] = 3;
  EXPECT_EQ(body_of(post("/v1/chat/completions", newer))["usage"]["completion_tokens"], 3);
}

TEST_F(EngineSimTest, StreamedChatEqualsNonStreamed) {
  start();
  json request = chat_body(12);
  std::string expected = body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"];
  StreamResult streamed = stream("/v1/chat/completions", request);
  EXPECT_EQ(streamed.status, 200);
  EXPECT_TRUE(streamed.done);
  EXPECT_EQ(streamed.content, expected);
  ASSERT_GE(streamed.chunks.size(), 13u);  // the role chunk and one per token
  const json& first = streamed.chunks.front();
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "");
  for (size_t i = 0; i + 1 < streamed.chunks.size(); ++i) {
    EXPECT_TRUE(streamed.chunks[i]["choices"][0]["finish_reason"].is_null()) << i;
    EXPECT_EQ(streamed.chunks[i]["id"], first["id"]);
  }
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(streamed.chunks.back().contains("usage"));
}

TEST_F(EngineSimTest, ARequiredToolIsCalledWithTheTextAsArguments) {
  start();
  json request = chat_body(6);
  request["tools"] = json::parse(R"([{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}},
                                      {"type":"function","function":{"name":"other"}}])");
  request["tool_choice"] = json::parse(R"({"type":"function","function":{"name":"lookup"}})");
  json body = body_of(post("/v1/chat/completions", request));
  const json& message = body["choices"][0]["message"];
  EXPECT_TRUE(message["content"].is_null()) << body.dump();
  ASSERT_EQ(message["tool_calls"].size(), 1u);
  const json& call = message["tool_calls"][0];
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["function"]["name"], "lookup");
  EXPECT_EQ(call["id"].get<std::string>().rfind("call_", 0), 0u);
  json arguments = json::parse(call["function"]["arguments"].get<std::string>());
  std::string text = arguments["text"];
  EXPECT_EQ(count_tokens(text), 6);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["completion_tokens"], 6);

  // Streamed: the first piece names the call, the pieces join into the same arguments.
  StreamResult streamed = stream("/v1/chat/completions", request);
  ASSERT_TRUE(streamed.done);
  std::string joined;
  int named = 0;
  for (const json& chunk : streamed.chunks) {
    const json& delta = chunk["choices"][0]["delta"];
    if (!delta.contains("tool_calls")) continue;
    const json& piece = delta["tool_calls"][0];
    if (piece.contains("id")) {
      ++named;
      EXPECT_EQ(piece["function"]["name"], "lookup");
    }
    joined += piece["function"]["arguments"].get<std::string>();
  }
  EXPECT_EQ(named, 1);
  EXPECT_EQ(count_tokens(json::parse(joined)["text"].get<std::string>()), 6) << joined;

  // "required" calls the first tool, and a model that stops by itself (here at a stop string)
  // ends with "tool_calls".
  request["tool_choice"] = "required";
  request["stop"] = std::string(split_words(text)[2]);
  body = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "lookup");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "tool_calls");
  // "auto" answers in text; a named function that is not among the tools is a 400.
  request["tool_choice"] = "auto";
  EXPECT_TRUE(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"].is_string());
  request["tool_choice"] = json::parse(R"({"type":"function","function":{"name":"missing"}})");
  EXPECT_EQ(post("/v1/chat/completions", request).status, 400);
}

TEST_F(EngineSimTest, SeedChangesTheText) {
  start();
  json request = chat_body(10);
  request["seed"] = 1;
  std::string one = body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"];
  EXPECT_EQ(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"], one);
  request["seed"] = 2;
  EXPECT_NE(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"], one);
}

TEST_F(EngineSimTest, StopStringEndsTheCompletion) {
  start();
  json request = chat_body(30);
  std::string full = body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"];
  auto words = split_words(full);
  std::string stop = " " + std::string(words[5]);
  request["stop"] = json::array({"never-generated", stop});
  json body = body_of(post("/v1/chat/completions", request));
  std::string cut = body["choices"][0]["message"]["content"];
  EXPECT_EQ(cut, full.substr(0, full.find(stop)));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["stop_reason"], stop);
  EXPECT_LT(body["usage"]["completion_tokens"].get<int>(), 30);

  StreamResult streamed = stream("/v1/chat/completions", request);
  EXPECT_EQ(streamed.content, cut);
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["finish_reason"], "stop");

  request["stop"] = stop;  // a plain string works too
  EXPECT_EQ(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"], cut);
}

TEST_F(EngineSimTest, IncludeUsageAddsAFinalUsageChunk) {
  start();
  json request = chat_body(5);
  request["stream_options"] = {{"include_usage", true}};
  StreamResult streamed = stream("/v1/chat/completions", request);
  ASSERT_TRUE(streamed.done);
  ASSERT_GE(streamed.chunks.size(), 2u);
  const json& last = streamed.chunks.back();
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_EQ(last["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(last["usage"]["completion_tokens"], 5);
  EXPECT_EQ(last["usage"]["total_tokens"], 12);
  EXPECT_EQ(streamed.chunks[streamed.chunks.size() - 2]["choices"][0]["finish_reason"], "length");
}

TEST_F(EngineSimTest, CompletionsEndpoint) {
  start();
  json request = {{"model", "sim-model"}, {"prompt", "Once upon a time"}, {"max_tokens", 6}};
  json body = body_of(post("/v1/completions", request));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  std::string text = body["choices"][0]["text"];
  EXPECT_EQ(count_tokens(text), 6);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], 4);

  StreamResult streamed = stream("/v1/completions", request);
  EXPECT_TRUE(streamed.done);
  EXPECT_EQ(streamed.content, text);
  ASSERT_EQ(streamed.chunks.size(), 6u);
  EXPECT_EQ(streamed.chunks[0]["object"], "text_completion");
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["finish_reason"], "length");
}

TEST_F(EngineSimTest, EchoModeRepeatsTheLastUserMessage) {
  SimOptions options = fast_options();
  options.mode = "echo";
  start(options);
  json request = chat_body(50);
  json body = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Say hello to me");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["completion_tokens"], 5) << "four words and the EOS, as vLLM counts them";
  request["messages"][1]["content"] = json::array({json{{"type", "text"}, {"text", "parts work too"}}});
  EXPECT_EQ(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"], "parts work too");
  StreamResult streamed = stream("/v1/chat/completions", request);
  EXPECT_EQ(streamed.content, "parts work too");
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["delta"]["content"], "") << "the EOS has a chunk without text";

  request["messages"][1]["content"] = "";  // nothing to echo: no tokens, but still a finish chunk
  body = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(body["choices"][0]["message"]["content"], "");
  EXPECT_EQ(body["usage"]["completion_tokens"], 1) << "the EOS alone";
  streamed = stream("/v1/chat/completions", request);
  EXPECT_TRUE(streamed.done);
  ASSERT_EQ(streamed.chunks.size(), 2u);
  EXPECT_EQ(streamed.chunks[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(streamed.chunks[1]["choices"][0]["finish_reason"], "stop");
}

TEST_F(EngineSimTest, ErrorsAreOpenAiJson) {
  start();
  json too_long = chat_body(9000);
  auto response = post("/v1/chat/completions", too_long);
  EXPECT_EQ(response.status, 400);
  EXPECT_EQ(error_code_of(response), "context_length_exceeded");

  json other_model = chat_body(5);
  other_model["model"] = "gpt-9";
  response = post("/v1/chat/completions", other_model);
  EXPECT_EQ(response.status, 404);
  EXPECT_EQ(error_code_of(response), "model_not_found");

  response = post_text("/v1/chat/completions", "{\"messages\": [");
  EXPECT_EQ(response.status, 400);
  error_code_of(response);
  EXPECT_EQ(body_of(response)["error"]["type"], "invalid_request_error");

  response = post("/v1/chat/completions", json{{"model", "sim-model"}});
  EXPECT_EQ(response.status, 400);
  EXPECT_EQ(body_of(response)["error"]["param"], "messages");
  response = post("/v1/completions", json{{"model", "sim-model"}});
  EXPECT_EQ(response.status, 400);
  EXPECT_EQ(body_of(response)["error"]["param"], "prompt");
  response = post("/v1/completions", json{{"prompt", "hi"}, {"max_tokens", 0}});
  EXPECT_EQ(response.status, 400);
}

TEST_F(EngineSimTest, WithoutMaxTokensACompletionFillsTheContextLeft) {
  SimOptions options = fast_options();
  options.max_model_len = 40;
  start(options);
  json request = chat_body(1);
  request.erase("max_tokens");
  json body = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(body["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(body["usage"]["completion_tokens"], 33) << "max_model_len 40 - 7 prompt tokens";
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");

  // vLLM's two messages: a prompt that leaves no room, and a max_tokens beyond the room.
  request["messages"][1]["content"] = words(40);
  auto response = post("/v1/chat/completions", request);
  EXPECT_EQ(response.status, 400);
  EXPECT_EQ(error_code_of(response), "context_length_exceeded");
  EXPECT_EQ(body_of(response)["error"]["message"],
            "This model's maximum context length is 40 tokens. However, your request has 43 input tokens. Please "
            "reduce the length of the input messages.");
  response = post("/v1/chat/completions", chat_body(34));
  EXPECT_EQ(response.status, 400);
  EXPECT_EQ(body_of(response)["error"]["message"],
            "'max_tokens' or 'max_completion_tokens' is too large: 34. This model's maximum context length is 40 "
            "tokens and your request has 7 input tokens (34 > 40 - 7).");
  EXPECT_EQ(body_of(response)["error"]["param"], "messages");
  EXPECT_EQ(post("/v1/chat/completions", chat_body(33)).status, 200);
}

TEST_F(EngineSimTest, PromptTokensDetailsAreNullWhenDisabledAsInVllm) {
  SimOptions options = fast_options();
  options.enable_prompt_tokens_details = false;
  start(options);
  json body = body_of(post("/v1/chat/completions", chat_body(2)));
  ASSERT_TRUE(body["usage"].contains("prompt_tokens_details")) << body.dump();
  EXPECT_TRUE(body["usage"]["prompt_tokens_details"].is_null());
  EXPECT_EQ(body["usage"]["total_tokens"], 9);
  json request = chat_body(2);
  request["stream_options"] = {{"include_usage", true}};
  StreamResult streamed = stream("/v1/chat/completions", request);
  ASSERT_FALSE(streamed.chunks.empty());
  EXPECT_TRUE(streamed.chunks.back()["usage"]["prompt_tokens_details"].is_null());
  EXPECT_EQ(streamed.chunks.back()["usage"]["completion_tokens"], 2);
}

TEST_F(EngineSimTest, DefaultMaxTokensCapsARequestWithoutOne) {
  SimOptions options = fast_options();
  options.default_max_tokens = 5;
  start(options);
  json request = chat_body(1);
  request.erase("max_tokens");
  EXPECT_EQ(body_of(post("/v1/chat/completions", request))["usage"]["completion_tokens"], 5);
  EXPECT_EQ(body_of(post("/v1/chat/completions", chat_body(9)))["usage"]["completion_tokens"], 9);
}

// Every bad field is a 400 naming the field, in the message and in `param`, with vLLM's words.
TEST_F(EngineSimTest, BadSamplingFieldsAre400sNamingTheField) {
  start();
  struct Case {
    const char* endpoint;
    const char* patch;  // merged into a valid body
    const char* param;
    const char* says;
  };
  const Case cases[] = {
      {"/v1/chat/completions", R"({"temperature":-0.5})", "temperature", "temperature must be non-negative, got -0.5."},
      {"/v1/chat/completions", R"({"temperature":"hot"})", "temperature", "'temperature' must be a number"},
      {"/v1/chat/completions", R"({"top_p":0})", "top_p", "top_p must be in (0, 1], got 0."},
      {"/v1/chat/completions", R"({"top_p":1.5})", "top_p", "top_p must be in (0, 1], got 1.5."},
      {"/v1/chat/completions", R"({"top_k":-2})", "top_k", "top_k must be 0 (disable), or at least 1, got -2."},
      {"/v1/chat/completions", R"({"min_p":2})", "min_p", "min_p must be in [0, 1], got 2."},
      {"/v1/chat/completions", R"({"n":0})", "n", "n must be at least 1, got 0."},
      {"/v1/chat/completions", R"({"presence_penalty":2.5})", "presence_penalty",
       "presence_penalty must be in [-2, 2], got 2.5."},
      {"/v1/chat/completions", R"({"frequency_penalty":-3})", "frequency_penalty",
       "frequency_penalty must be in [-2, 2], got -3."},
      {"/v1/chat/completions", R"({"repetition_penalty":0})", "repetition_penalty",
       "repetition_penalty must be greater than zero, got 0."},
      {"/v1/chat/completions", R"({"max_tokens":0})", "max_tokens", "max_tokens must be at least 1, got 0."},
      {"/v1/chat/completions", R"({"max_tokens":null,"max_completion_tokens":-1})", "max_completion_tokens",
       "max_tokens must be at least 1, got -1."},
      {"/v1/chat/completions", R"({"messages":[{"role":"wizard","content":"hi"}]})", "messages[0].role",
       "Invalid value: \"wizard\""},
      {"/v1/chat/completions", R"({"stop":["ok",""]})", "stop", "stop cannot contain an empty string."},
      {"/v1/chat/completions", R"({"tool_choice":"required"})", "tool_choice",
       "When using `tool_choice`, `tools` must be set."},
      {"/v1/chat/completions", R"({"tool_choice":{"type":"function","function":{"name":"f"}}})", "tool_choice",
       "When using `tool_choice`, `tools` must be set."},
      {"/v1/chat/completions", R"({"tool_choice":"auto"})", "tool_choice",
       "When using `tool_choice`, `tools` must be set."},
      {"/v1/chat/completions", R"({"stream_options":{"include_usage":true}})", "stream_options",
       "Stream options can only be defined when `stream=True`."},
      {"/v1/chat/completions", R"({"top_logprobs":2})", "top_logprobs",
       "when using `top_logprobs`, `logprobs` must be set to true."},
      {"/v1/chat/completions", R"({"logprobs":true,"top_logprobs":-1})", "top_logprobs",
       "`top_logprobs` must be a positive value."},
      {"/v1/chat/completions", R"({"logprobs":true,"top_logprobs":21})", "top_logprobs",
       "Requested sample logprobs of 21, which is greater than max allowed: 20"},
      {"/v1/chat/completions", R"({"logprobs":3})", "logprobs", "'logprobs' must be a boolean"},
      {"/v1/completions", R"({"logprobs":21})", "logprobs",
       "Requested sample logprobs of 21, which is greater than max allowed: 20"},
      {"/v1/completions", R"({"logprobs":-1})", "logprobs", "`logprobs` must be a positive value."},
      {"/v1/completions", R"({"echo":"yes"})", "echo", "'echo' must be a boolean"},
      {"/v1/completions", R"({"suffix":" end"})", "suffix", "suffix is not currently supported"},
      {"/v1/completions", R"({"prompt":[["a"]]})", "prompt", "'prompt' must be"},
      {"/v1/completions", R"({"prompt":[]})", "prompt", "'prompt' must be"},
      {"/v1/completions", R"({"prompt":[1,-5]})", "prompt", "Token id -5 is out of vocabulary"},
      {"/v1/completions", R"({"prompt":[[1],[4294967296]]})", "prompt", "Token id 4294967296 is out of vocabulary"},
      {"/v1/chat/completions", R"({"response_format":{"type":"xml"}})", "response_format",
       "response_format type must be 'text', 'json_object' or 'json_schema', got 'xml'"},
      {"/v1/chat/completions", R"({"response_format":"json"})", "response_format", "must be an object"},
      {"/v1/chat/completions", R"({"response_format":{"type":"json_schema"}})", "response_format",
       "needs a 'json_schema' object"},
      {"/v1/chat/completions", R"({"response_format":{"type":"json_schema","json_schema":{"schema":{}}}})",
       "response_format", "name is required"},
      {"/v1/chat/completions", R"({"response_format":{"type":"json_schema","json_schema":{"name":"x"}}})",
       "response_format", "schema is required"},
      {"/v1/chat/completions",
       R"({"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":"object"}}})", "response_format",
       "Invalid JSON schema in response_format: the schema must be a JSON object"},
      {"/v1/completions",
       R"({"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"obj"}}}})",
       "response_format", "unknown type \"obj\""},
  };
  for (const Case& bad : cases) {
    bool chat = std::string(bad.endpoint) == "/v1/chat/completions";
    json request = chat ? chat_body(4) : json{{"model", "sim-model"}, {"prompt", "hello there"}, {"max_tokens", 4}};
    request.merge_patch(json::parse(bad.patch));
    auto response = post(bad.endpoint, request);
    EXPECT_EQ(response.status, 400) << bad.patch << " " << response.body;
    json error = body_of(response)["error"];
    EXPECT_EQ(error["param"], bad.param) << bad.patch << " " << response.body;
    EXPECT_EQ(error["type"], "invalid_request_error") << bad.patch;
    EXPECT_NE(error["message"].get<std::string>().find(bad.says), std::string::npos)
        << bad.patch << " said: " << error["message"];
  }
  // What vLLM accepts: temperature above 2, top_k -1 and 0, tool_choice none without tools, many
  // stop strings, logprobs at the maximum.
  for (const char* fine : {R"({"temperature":3.5})", R"({"top_k":-1})", R"({"top_k":0})", R"({"tool_choice":"none"})",
                           R"({"stop":["a","b","c","d","e","f"]})", R"({"logprobs":true,"top_logprobs":20})",
                           R"({"response_format":{"type":"text"}})", R"({"stream_options":{}})"}) {
    json request = chat_body(4);
    request.merge_patch(json::parse(fine));
    auto response = post("/v1/chat/completions", request);
    EXPECT_EQ(response.status, 200) << fine << " " << response.body;
  }
}

TEST_F(EngineSimTest, JsonSchemaResponseFormatConformsStreamedOrNot) {
  start();
  json request = chat_body(200);
  request["seed"] = 11;
  // Written as text: the schema's property order must reach the engine (json sorts keys).
  const std::string format = R"({"type":"json_schema","json_schema":{"name":"person","strict":true,
      "schema":{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,
      "maximum":120},"pets":{"type":"array","items":{"enum":["cat","dog"]},"minItems":1,"maxItems":3}},
      "required":["name","age","pets"],"additionalProperties":false}}})";
  std::string ordered = request.dump();
  ordered.pop_back();  // the closing brace
  ordered += ",\"response_format\":" + format + "}";
  json body = body_of(post_text("/v1/chat/completions", ordered));
  std::string content = body["choices"][0]["message"]["content"];
  auto value = parse_json(content);
  ASSERT_TRUE(value) << content;
  ASSERT_TRUE(value->is_object());
  EXPECT_EQ(value->size(), 3u) << content;
  EXPECT_TRUE((*value)["name"].is_string());
  EXPECT_GE((*value)["age"].get<int>(), 0);
  EXPECT_LE((*value)["age"].get<int>(), 120);
  EXPECT_GE((*value)["pets"].size(), 1u);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop") << "the JSON ended by itself";
  EXPECT_LT(body["usage"]["completion_tokens"].get<int>(), 200);
  EXPECT_EQ(content.rfind("{\"name\": ", 0), 0u) << "properties in the schema's order: " << content;

  // From here the body goes through json (its properties sorted): another schema order, another text.
  request["response_format"] = json::parse(format);
  content = body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"];
  ASSERT_TRUE(parse_json(content)) << content;

  StreamResult streamed = stream("/v1/chat/completions", request);
  EXPECT_EQ(streamed.content, content);
  EXPECT_EQ(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"], content)
      << "deterministic given the seed";

  // Cut by max_tokens: truncated JSON and "length", as vLLM.
  request["max_tokens"] = 3;
  body = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
  std::string cut = body["choices"][0]["message"]["content"];
  EXPECT_EQ(content.rfind(cut, 0), 0u);
  EXPECT_FALSE(parse_json(cut)) << cut;

  // json_object: some object. Completions take response_format too.
  request["max_tokens"] = 300;
  request["response_format"] = {{"type", "json_object"}};
  auto object =
      parse_json(body_of(post("/v1/chat/completions", request))["choices"][0]["message"]["content"].get<std::string>());
  ASSERT_TRUE(object);
  EXPECT_TRUE(object->is_object());
  json completion = {{"model", "sim-model"},
                     {"prompt", "JSON please"},
                     {"max_tokens", 300},
                     {"response_format", request["response_format"]}};
  auto text = parse_json(body_of(post("/v1/completions", completion))["choices"][0]["text"].get<std::string>());
  ASSERT_TRUE(text);
  EXPECT_TRUE(text->is_object());
}

TEST_F(EngineSimTest, ChatLogprobsHaveOpenAisShapeStreamedOrNot) {
  start();
  json request = chat_body(6);
  request["seed"] = 5;
  request["logprobs"] = true;
  request["top_logprobs"] = 3;
  json body = body_of(post("/v1/chat/completions", request));
  const json& content = body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 6u) << body.dump();
  std::string text;
  for (const json& entry : content) {
    std::string token = entry["token"];
    text += token;
    EXPECT_LE(entry["logprob"].get<double>(), 0);
    std::vector<int> bytes(token.begin(), token.end());
    EXPECT_EQ(entry["bytes"], bytes);
    const json& top = entry["top_logprobs"];
    ASSERT_EQ(top.size(), 3u);
    EXPECT_EQ(top[0]["token"], token) << "the chosen token is the most likely";
    EXPECT_EQ(top[0]["logprob"], entry["logprob"]);
    std::set<std::string> distinct;
    for (size_t rank = 0; rank < top.size(); ++rank) {
      distinct.insert(top[rank]["token"].get<std::string>());
      EXPECT_TRUE(top[rank]["bytes"].is_array());
      if (rank > 0) {
        EXPECT_LT(top[rank]["logprob"].get<double>(), top[rank - 1]["logprob"].get<double>());
      }
    }
    EXPECT_EQ(distinct.size(), 3u);
  }
  EXPECT_EQ(text, body["choices"][0]["message"]["content"]);
  EXPECT_EQ(body_of(post("/v1/chat/completions", request))["choices"][0]["logprobs"], body["choices"][0]["logprobs"])
      << "deterministic given the seed";

  // Streamed: each token's chunk carries its entry; together they are the whole list.
  StreamResult streamed = stream("/v1/chat/completions", request);
  json joined = json::array();
  for (const json& chunk : streamed.chunks) {
    const json& choice = chunk["choices"][0];
    if (choice["delta"].contains("role")) continue;
    ASSERT_TRUE(choice["logprobs"].is_object()) << chunk.dump();
    for (const json& entry : choice["logprobs"]["content"]) joined.push_back(entry);
  }
  EXPECT_EQ(joined, content);

  // logprobs without top_logprobs: entries with empty top lists. Without logprobs: null.
  request.erase("top_logprobs");
  body = body_of(post("/v1/chat/completions", request));
  EXPECT_TRUE(body["choices"][0]["logprobs"]["content"][0]["top_logprobs"].empty());
  request.erase("logprobs");
  EXPECT_TRUE(body_of(post("/v1/chat/completions", request))["choices"][0]["logprobs"].is_null());
}

TEST_F(EngineSimTest, CompletionsTakeListsOfPromptsEchoAndLogprobs) {
  start();
  json request = {{"model", "sim-model"}, {"prompt", {"first prompt", "the second one"}}, {"n", 2}, {"max_tokens", 3}};
  json body = body_of(post("/v1/completions", request));
  ASSERT_EQ(body["choices"].size(), 4u) << body.dump();
  for (int index = 0; index < 4; ++index) EXPECT_EQ(body["choices"][index]["index"], index);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5) << "2 + 3, each prompt once";
  EXPECT_EQ(body["usage"]["completion_tokens"], 12);
  EXPECT_NE(body["choices"][0]["text"], body["choices"][2]["text"]) << "each prompt its own continuation";

  // Token-id prompts, one or a list of them.
  request = {{"model", "sim-model"}, {"prompt", {{1, 2, 3}, {4, 5}}}, {"max_tokens", 2}};
  body = body_of(post("/v1/completions", request));
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5);
  request["prompt"] = {7, 8, 9, 10};
  EXPECT_EQ(body_of(post("/v1/completions", request))["usage"]["prompt_tokens"], 4);

  // echo: the prompt comes back first; with logprobs, its tokens lead (the first unscored).
  request = {{"model", "sim-model"}, {"prompt", "Once upon  a time"},
             {"max_tokens", 4},      {"echo", true},
             {"logprobs", 2},        {"seed", 3}};
  body = body_of(post("/v1/completions", request));
  std::string text = body["choices"][0]["text"];
  EXPECT_EQ(text.rfind("Once upon  a time ", 0), 0u) << text;
  const json& logprobs = body["choices"][0]["logprobs"];
  ASSERT_EQ(logprobs["tokens"].size(), 8u) << logprobs.dump();
  EXPECT_TRUE(logprobs["token_logprobs"][0].is_null());
  EXPECT_TRUE(logprobs["top_logprobs"][0].is_null());
  std::string joined;
  for (size_t index = 0; index < 8; ++index) {
    EXPECT_EQ(logprobs["text_offset"][index], joined.size());
    joined += logprobs["tokens"][index].get<std::string>();
    if (index == 0) continue;
    EXPECT_LE(logprobs["token_logprobs"][index].get<double>(), 0);
    const json& top = logprobs["top_logprobs"][index];
    EXPECT_EQ(top.size(), 2u);
    EXPECT_TRUE(top.contains(logprobs["tokens"][index].get<std::string>())) << top.dump();
  }
  EXPECT_EQ(joined, text);
  // Streamed: the prompt comes with the first token; the offsets run on across the chunks.
  StreamResult streamed = stream("/v1/completions", request);
  EXPECT_EQ(streamed.content, text);
  json offsets = json::array();
  for (const json& chunk : streamed.chunks) {
    for (const json& offset : chunk["choices"][0]["logprobs"]["text_offset"]) offsets.push_back(offset);
  }
  EXPECT_EQ(offsets, logprobs["text_offset"]);
  // logprobs 0: the chosen token alone.
  request["logprobs"] = 0;
  request["echo"] = false;
  body = body_of(post("/v1/completions", request));
  EXPECT_EQ(body["choices"][0]["logprobs"]["top_logprobs"][0].size(), 1u);
}

TEST_F(EngineSimTest, StreamedToolCallsFinishInAChunkOfTheirOwn) {
  start();
  json request = chat_body(4);
  request["tools"] = json::parse(R"([{"type":"function","function":{"name":"lookup"}}])");
  request["tool_choice"] = "required";
  request["stream_options"] = {{"include_usage", true}};
  StreamResult streamed = stream("/v1/chat/completions", request);
  ASSERT_TRUE(streamed.done);
  ASSERT_GE(streamed.chunks.size(), 3u);
  const json& usage = streamed.chunks.back();
  EXPECT_TRUE(usage["choices"].empty());
  const json& finish = streamed.chunks[streamed.chunks.size() - 2]["choices"][0];
  EXPECT_EQ(finish["delta"], json::object()) << finish.dump();
  EXPECT_EQ(finish["finish_reason"], "length");
  for (size_t index = 0; index + 2 < streamed.chunks.size(); ++index) {
    EXPECT_TRUE(streamed.chunks[index]["choices"][0]["finish_reason"].is_null()) << streamed.chunks[index].dump();
  }

  // A call the model ends by itself (here at a stop string) finishes with "tool_calls".
  request.erase("stream_options");
  json body = body_of(post("/v1/chat/completions", request));
  std::string arguments = body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"];
  request["stop"] = std::string(split_words(json::parse(arguments)["text"].get<std::string>())[2]);
  streamed = stream("/v1/chat/completions", request);
  ASSERT_TRUE(streamed.done);
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["delta"], json::object());
  EXPECT_EQ(streamed.chunks.back()["choices"][0]["finish_reason"], "tool_calls");
}

TEST_F(EngineSimTest, SimErrorHeaderForcesAnError) {
  start();
  auto response = post("/v1/chat/completions", chat_body(5), {{"X-Sim-Error", "503"}});
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(error_code_of(response), "service_unavailable");
  response = post("/v1/completions", json{{"prompt", "hi"}}, {{"X-Sim-Error", "429"}});
  EXPECT_EQ(response.status, 429);
  EXPECT_EQ(error_code_of(response), "rate_limit_exceeded");
  EXPECT_FALSE(response.header("retry-after").empty());
  response = post("/v1/chat/completions", chat_body(5), {{"X-Sim-Error", "500"}});
  EXPECT_EQ(response.status, 500);
  error_code_of(response);
}

TEST_F(EngineSimTest, HealthIs503DuringStartup) {
  SimOptions options = fast_options();
  options.startup_seconds = 0.3;
  start(options);
  EXPECT_EQ(get("/health").status, 503);
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 503);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (get("/health").status != 200 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(get("/health").status, 200);
  EXPECT_TRUE(engine_->ready());
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200);
}

TEST_F(EngineSimTest, DisconnectStopsGeneration) {
  SimOptions options = fast_options();
  options.step_base_ms = 5;  // 2000 tokens would take 10 s
  start(options);
  json request = chat_body(2000);
  request["stream"] = true;
  size_t running_while_streaming = 0;
  auto started = std::chrono::steady_clock::now();
  auto status = client_.stream("POST", base_ + "/v1/chat/completions", request.dump(), {}, [&](std::string_view data) {
    running_while_streaming = engine_->running();
    return false;
  });
  ASSERT_TRUE(status) << status.error().message;
  EXPECT_EQ(*status, 200);
  EXPECT_EQ(running_while_streaming, 1u);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (engine_->running() != 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(engine_->running(), 0u);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST_F(EngineSimTest, ConcurrentStreamsShareOneThread) {
  start();
  constexpr int kClients = 8;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      http::BlockingClient client;
      json request = chat_body(50);
      request["stream"] = true;
      std::string all;
      auto status =
          client.stream("POST", base_ + "/v1/chat/completions", request.dump(), {}, [&](std::string_view data) {
            all += data;
            return true;
          });
      if (status && *status == 200 && all.find("data: [DONE]") != std::string::npos) ++ok;
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(ok.load(), kClients);
  EXPECT_EQ(engine_->running(), 0u);
}

TEST_F(EngineSimTest, MetricsUseVllmNames) {
  start();
  ASSERT_EQ(post("/v1/chat/completions", chat_body(4)).status, 200);
  auto metrics = get("/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("vllm:num_requests_running{model_name=\"sim-model\"} 0"), std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find("vllm:num_requests_waiting{model_name=\"sim-model\"} 0"), std::string::npos);
  EXPECT_NE(metrics.body.find("vllm:prompt_tokens_total{model_name=\"sim-model\"} 7"), std::string::npos);
  EXPECT_NE(metrics.body.find("vllm:generation_tokens_total{model_name=\"sim-model\"} 4"), std::string::npos);
  EXPECT_NE(metrics.body.find("# TYPE vllm:prompt_tokens_total counter"), std::string::npos);
}

TEST_F(EngineSimTest, RepeatedLongPromptReportsCachedTokensAndALowerTtft) {
  SimOptions options = fast_options();
  options.prefill_ms_per_token = 0.1;  // 2,000 prompt tokens = 200 ms of prefill
  start(options);
  json request = {{"model", "sim-model"},
                  {"messages", json::array({json{{"role", "user"}, {"content", words(2000)}}})},
                  {"max_tokens", 3},
                  {"stream_options", {{"include_usage", true}}}};
  auto timed_stream = [&](double& ttft_ms) {
    auto started = std::chrono::steady_clock::now();
    ttft_ms = -1;
    request["stream"] = true;
    std::string all;
    auto status = client_.stream("POST", base_ + "/v1/chat/completions", request.dump(), {}, [&](std::string_view d) {
      if (ttft_ms < 0) {
        ttft_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
      }
      all += d;
      return true;
    });
    EXPECT_TRUE(status && *status == 200);
    size_t usage = all.rfind("\"usage\"");
    EXPECT_NE(usage, std::string::npos) << all;
    size_t line_start = all.rfind("data: ", usage) + 6;
    return parse_json(all.substr(line_start, all.find('\n', line_start) - line_start)).value()["usage"];
  };
  double cold_ttft = 0, warm_ttft = 0;
  json cold = timed_stream(cold_ttft);
  json warm = timed_stream(warm_ttft);
  EXPECT_EQ(cold["prompt_tokens"], 2000);
  EXPECT_EQ(cold["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(warm["prompt_tokens_details"]["cached_tokens"], 1984);  // all full blocks but the last token's
  EXPECT_GT(cold_ttft, 150);
  EXPECT_LT(warm_ttft, cold_ttft / 2);
  request.erase("stream");
  request.erase("stream_options");  // vLLM refuses them without stream
  json plain = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(plain["usage"]["prompt_tokens_details"]["cached_tokens"], 1984);
}

TEST_F(EngineSimTest, MetricsAgreeWithWhatClientsSaw) {
  SimOptions options = fast_options();
  options.step_base_ms = 4;
  start(options);
  int prompt_tokens = 0, completion_tokens = 0;
  double client_e2e_seconds = 0;
  for (int i = 0; i < 6; ++i) {
    json request = chat_body(5 + i);
    request["messages"][1]["content"] = words(10 + i);
    auto started = std::chrono::steady_clock::now();
    if (i % 2 == 0) {
      json body = body_of(post("/v1/chat/completions", request));
      prompt_tokens += body["usage"]["prompt_tokens"].get<int>();
      completion_tokens += body["usage"]["completion_tokens"].get<int>();
    } else {
      request["stream_options"] = {{"include_usage", true}};
      StreamResult streamed = stream("/v1/chat/completions", request);
      ASSERT_TRUE(streamed.done);
      prompt_tokens += streamed.chunks.back()["usage"]["prompt_tokens"].get<int>();
      completion_tokens += streamed.chunks.back()["usage"]["completion_tokens"].get<int>();
    }
    client_e2e_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }
  std::string text = get("/metrics").body;
  const std::string label = "{model_name=\"sim-model\"}";
  EXPECT_EQ(metric(text, "vllm:prompt_tokens_total" + label), prompt_tokens);
  EXPECT_EQ(metric(text, "vllm:generation_tokens_total" + label), completion_tokens);
  EXPECT_EQ(metric(text, "vllm:request_success_total{model_name=\"sim-model\",finished_reason=\"length\"}"), 6);
  EXPECT_EQ(metric(text, "vllm:time_to_first_token_seconds_count" + label), 6);
  EXPECT_EQ(metric(text, "vllm:e2e_request_latency_seconds_count" + label), 6);
  EXPECT_EQ(metric(text, "vllm:request_queue_time_seconds_count" + label), 6);
  EXPECT_EQ(metric(text, "vllm:inter_token_latency_seconds_count" + label), completion_tokens - 6);
  EXPECT_EQ(metric(text, "vllm:prefix_cache_queries_total" + label), prompt_tokens);
  EXPECT_EQ(metric(text, "vllm:num_requests_running" + label), 0);
  EXPECT_EQ(metric(text, "vllm:kv_cache_usage_perc" + label), 0);
  // The engine's latencies are what the clients measured, less the loopback and JSON overhead.
  double engine_e2e_seconds = metric(text, "vllm:e2e_request_latency_seconds_sum" + label);
  EXPECT_LE(engine_e2e_seconds, client_e2e_seconds);
  EXPECT_GE(engine_e2e_seconds, client_e2e_seconds - 6 * 0.02);
  // Every decode step of a lone sequence takes step_base_ms.
  double itl_sum = metric(text, "vllm:inter_token_latency_seconds_sum" + label);
  EXPECT_NEAR(itl_sum / (completion_tokens - 6), 0.004, 0.002);
}

TEST_F(EngineSimTest, SleepReleasesMemoryAndIsSleepingReflectsIt) {
  SimOptions options = fast_options();
  options.wake_l1_seconds = 0.05;
  options.wake_l2_seconds = 0.2;
  start(options);
  ASSERT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200);
  auto memory = [&] {
    return metric(get("/metrics").body, "nebula_sim_gpu_memory_used_bytes{model_name=\"sim-model\"}");
  };
  double awake = memory();
  EXPECT_FALSE(body_of(get("/is_sleeping"))["is_sleeping"].get<bool>());
  EXPECT_EQ(post_text("/sleep?level=1", "").status, 200);
  EXPECT_TRUE(body_of(get("/is_sleeping"))["is_sleeping"].get<bool>());
  double asleep = memory();
  EXPECT_LT(asleep, awake - 16e9) << "the weights and the KV cache left the GPU";
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 503);
  EXPECT_EQ(get("/health").status, 200);

  auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(post_text("/wake_up", "").status, 200);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 50ms);
  EXPECT_FALSE(body_of(get("/is_sleeping"))["is_sleeping"].get<bool>());
  EXPECT_EQ(memory(), awake);
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200);

  // Level 2 drops the weights: waking reloads them, which takes longer; tags wake in parts.
  EXPECT_EQ(post_text("/sleep?level=2", "").status, 200);
  started = std::chrono::steady_clock::now();
  EXPECT_EQ(post_text("/wake_up?tags=weights", "").status, 200);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 200ms);
  EXPECT_TRUE(body_of(get("/is_sleeping"))["is_sleeping"].get<bool>()) << "the KV cache is still released";
  EXPECT_EQ(post_text("/wake_up?tags=kv_cache", "").status, 200);
  EXPECT_FALSE(body_of(get("/is_sleeping"))["is_sleeping"].get<bool>());
  EXPECT_EQ(post_text("/sleep?level=3", "").status, 400);
}

TEST_F(EngineSimTest, EmbeddingsAndTokenize) {
  start();
  json body = body_of(post("/v1/embeddings", json{{"model", "sim-model"}, {"input", json::array({"a b c", "d e"})}}));
  ASSERT_EQ(body["data"].size(), 2u);
  EXPECT_EQ(body["object"], "list");
  EXPECT_EQ(body["data"][1]["index"], 1);
  EXPECT_EQ(body["data"][0]["embedding"].size(), 4096u);
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5);
  double norm = 0;
  for (const json& value : body["data"][0]["embedding"]) norm += value.get<double>() * value.get<double>();
  EXPECT_NEAR(norm, 1.0, 1e-4);
  json again = body_of(post("/v1/embeddings", json{{"input", "a b c"}, {"dimensions", 8}}));
  EXPECT_EQ(again["data"][0]["embedding"].size(), 8u);
  json base64 = body_of(post("/v1/embeddings", json{{"input", "a b c"}, {"encoding_format", "base64"}}));
  EXPECT_EQ(base64["data"][0]["embedding"].get<std::string>().size(), (4096u * 4 + 2) / 3 * 4);

  json tokens = body_of(post("/tokenize", json{{"model", "sim-model"}, {"prompt", "one two three"}}));
  EXPECT_EQ(tokens["count"], 3);
  EXPECT_EQ(tokens["max_model_len"], 8192);
  EXPECT_EQ(tokens["tokens"][1], token_id("two"));
  json chat_tokens = body_of(post("/tokenize", json{{"messages", chat_body(1)["messages"]}}));
  EXPECT_EQ(chat_tokens["count"], 7);
}

TEST_F(EngineSimTest, NChoicesAndIgnoreEos) {
  SimOptions options = fast_options();
  options.mode = "echo";
  start(options);
  json request = chat_body(10);
  request["n"] = 2;
  json body = body_of(post("/v1/chat/completions", request));
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["message"]["content"], "Say hello to me");
  EXPECT_EQ(body["usage"]["completion_tokens"], 10);
  // Streamed, each choice's deltas (by index) make its text. Both decode in the same steps, but
  // how their chunks interleave depends on how often the handler wakes (a loaded machine batches
  // two steps into one write), so only the per-choice text is checked.
  StreamResult streamed = stream("/v1/chat/completions", request);
  std::map<int, std::string> by_choice;
  for (const json& chunk : streamed.chunks) {
    for (const json& choice : chunk["choices"]) {
      if (choice.contains("delta") && choice["delta"].contains("content") && choice["delta"]["content"].is_string()) {
        by_choice[choice["index"].get<int>()] += choice["delta"]["content"].get<std::string>();
      }
    }
  }
  ASSERT_EQ(by_choice.size(), 2u) << streamed.content;
  EXPECT_EQ(by_choice[0], "Say hello to me");
  EXPECT_EQ(by_choice[1], "Say hello to me");
  request["n"] = 1;
  request["ignore_eos"] = true;
  body = body_of(post("/v1/chat/completions", request));
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Say hello to me Say hello to me Say hello");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
}

TEST_F(EngineSimTest, DisconnectFreesTheSequenceAndItsKvBlocks) {
  SimOptions options = fast_options();
  options.step_base_ms = 5;
  start(options);
  json request = chat_body(2000);
  request["stream"] = true;
  double usage_while_streaming = 0;
  auto status = client_.stream("POST", base_ + "/v1/chat/completions", request.dump(), {},
                               [&](std::string_view) { return false; });
  ASSERT_TRUE(status);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  std::string text;
  do {
    std::this_thread::sleep_for(10ms);
    text = get("/metrics").body;
  } while (metric(text, "vllm:num_requests_running{model_name=\"sim-model\"}") != 0 &&
           std::chrono::steady_clock::now() < deadline);
  (void)usage_while_streaming;
  EXPECT_EQ(metric(text, "vllm:kv_cache_usage_perc{model_name=\"sim-model\"}"), 0);
  EXPECT_EQ(metric(text, "vllm:request_success_total{model_name=\"sim-model\",finished_reason=\"abort\"}"), 1);
}

TEST_F(EngineSimTest, FailRateAnswersOpenAiErrors) {
  SimOptions options = fast_options();
  options.fail_rate = 1;
  start(options);
  std::set<int> statuses;
  for (int i = 0; i < 30; ++i) {
    auto response = post("/v1/chat/completions", chat_body(2));
    statuses.insert(response.status);
    error_code_of(response);
  }
  EXPECT_EQ(statuses, (std::set<int>{429, 500, 503}));
}

TEST_F(EngineSimTest, CrashAfterAndHangAfter) {
  SimOptions options = fast_options();
  std::atomic<int> crashes{0};
  options.crash_after = 2;
  options.crash = [&crashes] { ++crashes; };
  options.hang_after = 3;
  start(options);
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200);
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200);
  EXPECT_EQ(crashes.load(), 0);
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200);  // the hook returned: carry on
  EXPECT_EQ(crashes.load(), 1);
  auto hung = client_.request("POST", base_ + "/v1/chat/completions", chat_body(2).dump(), {}, 300ms);
  EXPECT_FALSE(hung) << "a hung engine answers nothing";
  http::BlockingClient other;
  EXPECT_FALSE(other.request("GET", base_ + "/health", "", {}, 300ms));
}

TEST_F(EngineSimTest, SglangDialect) {
  SimOptions options = fast_options();
  options.dialect = "sglang";
  start(options);
  json body = body_of(post("/generate", json{{"text", "a b c"}, {"sampling_params", {{"max_new_tokens", 4}}}}));
  EXPECT_EQ(count_tokens(body["text"].get<std::string>()), 4);
  EXPECT_EQ(body["meta_info"]["prompt_tokens"], 3);
  EXPECT_EQ(body["meta_info"]["completion_tokens"], 4);
  EXPECT_EQ(body["meta_info"]["finish_reason"]["type"], "length");
  EXPECT_EQ(body_of(get("/get_model_info"))["model_path"], "sim-model");
  std::string text = get("/metrics").body;
  EXPECT_EQ(metric(text, "sglang:num_running_reqs{model_name=\"sim-model\"}"), 0);
  EXPECT_EQ(metric(text, "sglang:generation_tokens_total{model_name=\"sim-model\"}"), 4);
  EXPECT_EQ(text.find("vllm:"), std::string::npos);
  EXPECT_EQ(post("/v1/chat/completions", chat_body(2)).status, 200) << "the OpenAI API stays";
}

TEST_F(EngineSimTest, LlamacppDialect) {
  SimOptions options = fast_options();
  options.dialect = "llamacpp";
  options.startup_seconds = 0.2;
  start(options);
  auto loading = get("/health");
  EXPECT_EQ(loading.status, 503);
  EXPECT_EQ(body_of(loading)["error"]["message"], "Loading model");
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (get("/health").status != 200 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(body_of(get("/health"))["status"], "ok");
  json body = body_of(post("/completion", json{{"prompt", "a b c"}, {"n_predict", 5}}));
  EXPECT_EQ(body["tokens_predicted"], 5);
  EXPECT_EQ(body["tokens_evaluated"], 3);
  EXPECT_EQ(body["stop_type"], "limit");
  EXPECT_EQ(body_of(get("/slots")).size(), 1024u);  // one slot per max_num_seqs
  EXPECT_EQ(metric(get("/metrics").body, "llamacpp:tokens_predicted_total"), 5);
}

// llama-server's router mode: the model starts unloaded, requests name it, /models/load and
// /models/unload move it on and off the GPU; answers as llama.cpp's router gives them.
TEST_F(EngineSimTest, LlamacppRouterMode) {
  SimOptions options = fast_options();
  options.dialect = "llamacpp";
  options.model = "chat";
  options.router = true;
  options.models_autoload = false;
  options.startup_seconds = 0.1;  // a load takes this long
  start(options);
  auto status_of_model = [&] { return router_status(get("/models"), "chat"); };
  json chat = chat_body(2);
  chat["model"] = "chat";
  EXPECT_EQ(body_of(get("/health"))["status"], "ok") << "the router answers before any model is loaded";
  EXPECT_EQ(status_of_model(), "unloaded");
  EXPECT_EQ(body_of(get("/models"))["data"].size(), 1u) << "no phantom `default` without keys outside sections";
  EXPECT_EQ(router_status(get("/v1/models"), "chat"), "unloaded");

  auto refused = post("/v1/chat/completions", chat);
  EXPECT_EQ(refused.status, 400);
  EXPECT_EQ(body_of(refused)["error"]["message"], "model is not loaded");
  EXPECT_EQ(body_of(refused)["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body_of(refused)["error"]["code"], 400);
  json nameless = chat;
  nameless.erase("model");
  EXPECT_EQ(body_of(post("/v1/chat/completions", nameless))["error"]["message"],
            "model name is missing from the request");
  json other = chat;
  other["model"] = "other";
  EXPECT_EQ(body_of(post("/v1/chat/completions", other))["error"]["message"], "model not found");
  EXPECT_EQ(get("/metrics").status, 400) << "the router's /metrics needs ?model=";
  EXPECT_EQ(get("/metrics?model=chat").status, 400) << "and the model loaded";
  EXPECT_EQ(body_of(get("/props"))["role"], "router");
  auto not_running = post("/models/unload", json{{"model", "chat"}});
  EXPECT_EQ(not_running.status, 400);
  EXPECT_EQ(body_of(not_running)["error"]["message"], "model is not running");
  EXPECT_EQ(post("/models/load", json{{"model", "other"}}).status, 404);

  // Load: answered at once, loaded after the load time.
  auto loaded = post("/models/load", json{{"model", "chat"}});
  EXPECT_EQ(loaded.status, 200);
  EXPECT_EQ(body_of(loaded)["success"], true);
  EXPECT_EQ(status_of_model(), "loading");
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(status_of_model(), "loaded");
  auto running = post("/models/load", json{{"model", "chat"}});
  EXPECT_EQ(running.status, 400);
  EXPECT_EQ(body_of(running)["error"]["message"], "model is already running");
  EXPECT_EQ(post("/v1/chat/completions", chat).status, 200);
  std::string long_prompt;  // two full KV blocks, published to the prefix cache
  for (int i = 0; i < 40; ++i) long_prompt += "word" + std::to_string(i) + " ";
  EXPECT_EQ(post("/completion", json{{"model", "chat"}, {"prompt", long_prompt}, {"n_predict", 2}}).status, 200);
  std::string metrics = get("/metrics?model=chat").body;
  EXPECT_GT(metric(metrics, "nebula_sim_gpu_memory_used_bytes"), 16e9);
  EXPECT_GT(metric(metrics, "nebula_sim_kv_cache_cached_blocks"), 0);
  EXPECT_EQ(metric(metrics, "llamacpp:tokens_predicted_total"), 4);
  EXPECT_EQ(body_of(get("/props?model=chat"))["model_path"], "chat");

  // Unload frees the weights and the KV cache (its cached prefixes too).
  EXPECT_EQ(post("/models/unload", json{{"model", "chat"}}).status, 200);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(status_of_model(), "unloaded");
  EXPECT_EQ(post("/v1/chat/completions", chat).status, 400);
  EXPECT_EQ(post("/models/load", json{{"model", "chat"}}).status, 200);
  std::this_thread::sleep_for(150ms);
  metrics = get("/metrics?model=chat").body;
  EXPECT_EQ(metric(metrics, "nebula_sim_kv_cache_cached_blocks"), 0);
  EXPECT_GT(metric(metrics, "nebula_sim_gpu_memory_used_bytes"), 16e9);

  // Autoload, asked for per request: the request waits for the load.
  EXPECT_EQ(post("/models/unload", json{{"model", "chat"}}).status, 200);
  std::this_thread::sleep_for(50ms);
  auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(post("/v1/chat/completions?autoload=true", chat).status, 200);
  EXPECT_GE(std::chrono::steady_clock::now() - started, 100ms);
  EXPECT_EQ(status_of_model(), "loaded");
  metrics = get("/metrics?model=chat").body;
  EXPECT_EQ(metric(metrics, "llamacpp:tokens_predicted_total"), 6) << "the same engine, counting on";
}

// The real router stops the model's process on unload: requests in flight end without the rest of
// their answer, and the model's memory is free at once.
TEST_F(EngineSimTest, LlamacppRouterUnloadEndsRequestsInFlight) {
  SimOptions options = fast_options();
  options.dialect = "llamacpp";
  options.model = "chat";
  options.router = true;
  options.startup_seconds = 0;
  options.decode_ms_per_seq = 0;
  options.step_base_ms = 20;  // 1,000 tokens take 20 s
  start(options);
  ASSERT_EQ(post("/models/load", json{{"model", "chat"}}).status, 200);
  ASSERT_TRUE(eventually([&] { return router_status(get("/models"), "chat") == "loaded"; }));
  json chat = chat_body(1000);
  chat["model"] = "chat";
  chat["stream"] = true;
  std::atomic<bool> started{false};
  std::atomic<bool> ended{false};
  std::string received;
  Result<int> streamed = 0;
  std::thread reader([&] {
    http::BlockingClient client;
    streamed = client.stream("POST", base_ + "/v1/chat/completions", chat.dump(), {}, [&](std::string_view data) {
      received += data;
      started = true;
      return true;
    });
    ended = true;
  });
  ASSERT_TRUE(eventually([&] { return started.load(); }));
  EXPECT_EQ(post("/models/unload", json{{"model", "chat"}}).status, 200);
  ASSERT_TRUE(eventually([&] { return ended.load(); })) << "the unload ended the stream";
  reader.join();
  EXPECT_EQ(received.find("[DONE]"), std::string::npos) << "cut, not finished: " << received;
  EXPECT_TRUE(eventually([&] { return router_status(get("/models"), "chat") == "unloaded"; }));
  EXPECT_EQ(engine_->running(), 0u);
}

// Preset keys outside any section make llama-server list a phantom model `default`.
TEST_F(EngineSimTest, LlamacppRouterListsThePhantomDefault) {
  SimOptions options = fast_options();
  options.dialect = "llamacpp";
  options.model = "chat";
  options.router = true;
  options.router_lists_default = true;
  start(options);
  EXPECT_EQ(router_status(get("/models"), "default"), "unloaded");
  EXPECT_EQ(router_status(get("/models"), "chat"), "unloaded");
}

// --sleep-idle-seconds: an idle model sleeps (status "sleeping", GPU memory freed), a request wakes it.
TEST_F(EngineSimTest, LlamacppRouterSleepsWhenIdle) {
  SimOptions options = fast_options();
  options.dialect = "llamacpp";
  options.model = "chat";
  options.router = true;
  options.models_autoload = false;
  options.startup_seconds = 0.05;
  options.sleep_idle_seconds = 0.2;
  start(options);
  ASSERT_EQ(post("/models/load", json{{"model", "chat"}}).status, 200);
  ASSERT_TRUE(eventually([&] { return router_status(get("/models"), "chat") == "sleeping"; }));
  EXPECT_EQ(body_of(post("/models/load", json{{"model", "chat"}}))["error"]["message"], "model is already running");
  json chat = chat_body(2);
  chat["model"] = "chat";
  EXPECT_EQ(post("/v1/chat/completions", chat).status, 200) << "a sleeping model wakes for a request";
  EXPECT_EQ(router_status(get("/models"), "chat"), "loaded");
}

TEST(ModelsPreset, ReadsTheFirstModelAndItsLimits) {
  std::string path = ::testing::TempDir() + "/nebula-preset-test.ini";
  std::ofstream(path) << "version = 1\n\n; comment\n[*]\nc = 1024\n\n[chat]\nmodel = /m/a.gguf ; note\n"
                         "parallel = 4\nn-gpu-layers = 999\n\n[second]\nmodel = /m/b.gguf\n";
  PresetModel model = read_models_preset(path);
  EXPECT_EQ(model.name, "chat");
  EXPECT_EQ(model.model, "/m/a.gguf");
  EXPECT_EQ(model.context, 1024) << "from [*]";
  EXPECT_EQ(model.parallel, 4);
  EXPECT_TRUE(model.implicit_default) << "version = 1 sits outside any section";
  std::ofstream(path) << "[*]\nc = 1024\n[chat]\nmodel = /m/a.gguf\n";
  EXPECT_FALSE(read_models_preset(path).implicit_default) << "[*] is no model of its own";
  std::ofstream(path) << "version = 1\n";
  EXPECT_THROW(read_models_preset(path), std::invalid_argument);
  EXPECT_THROW(read_models_preset(path + ".absent"), std::invalid_argument);
  std::remove(path.c_str());
}

TEST(EngineSimRouter, IsLlamaServersOnly) {
  asio::io_context io;
  SimOptions options;
  options.router = true;
  EXPECT_THROW(EngineSim(io, options), std::invalid_argument);
}

TEST_F(EngineSimTest, TgiDialect) {
  SimOptions options = fast_options();
  options.dialect = "tgi";
  start(options);
  json body = body_of(post("/generate", json{{"inputs", "a b c"}, {"parameters", {{"max_new_tokens", 3}}}}));
  EXPECT_EQ(count_tokens(body["generated_text"].get<std::string>()), 3);
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  auto status = client_.stream("POST", base_ + "/generate_stream",
                               json{{"inputs", "a b c"}, {"parameters", {{"max_new_tokens", 3}}}}.dump(), {},
                               [&](std::string_view data) {
                                 parser.feed(data, events);
                                 return true;
                               });
  ASSERT_TRUE(status && *status == 200);
  ASSERT_EQ(events.size(), 3u);
  json last = parse_json(events.back().data).value();
  EXPECT_EQ(last["generated_text"], body["generated_text"]);
  EXPECT_EQ(last["details"]["finish_reason"], "length");
  EXPECT_EQ(body_of(get("/info"))["max_total_tokens"], 8192);
  std::string metrics = get("/metrics").body;
  EXPECT_EQ(metric(metrics, "tgi_queue_size"), 0);
  // TGI's histogram of tokens per request: two requests of 3 tokens.
  EXPECT_EQ(metric(metrics, "tgi_request_generated_tokens_count"), 2);
  EXPECT_EQ(metric(metrics, "tgi_request_generated_tokens_sum"), 6);
  EXPECT_EQ(metric(metrics, "tgi_request_generated_tokens_bucket{le=\"2\"}"), 0);
  EXPECT_EQ(metric(metrics, "tgi_request_generated_tokens_bucket{le=\"4\"}"), 2);
}

// Destroying the io_context destroys the step loop and the handlers' coroutine frames in any
// order (each handler aborts its sequences on the way): shutting down mid-stream must neither
// hang nor crash. (Use-after-free here is silent without a sanitizer.)
TEST(EngineSimShutdown, StopsCleanlyWithStreamsInFlight) {
  std::string base;
  std::atomic<bool> streaming{false};
  std::thread client_thread;
  {
    asio::io_context io;
    SimOptions options;
    options.step_base_ms = 5;
    options.kv_blocks = 4096;
    auto engine = std::make_unique<EngineSim>(io, options);
    http::Router router;
    engine->add_routes(router);
    auto server = std::make_unique<http::Server>(io, std::move(router));
    auto port = server->listen({"127.0.0.1", 0});
    ASSERT_TRUE(port);
    base = "http://127.0.0.1:" + std::to_string(*port);
    std::thread io_thread([&io] { io.run(); });
    client_thread = std::thread([&] {
      http::BlockingClient client;
      json request = {{"messages", json::array({json{{"role", "user"}, {"content", "go on"}}})},
                      {"max_tokens", 5000},
                      {"stream", true}};
      (void)client.stream("POST", base + "/v1/chat/completions", request.dump(), {}, [&](std::string_view) {
        streaming = true;
        return true;
      });
    });
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!streaming && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    EXPECT_TRUE(streaming);
    asio::post(io, [&io] { io.stop(); });
    io_thread.join();
    engine.reset();
    server.reset();
  }  // the io_context goes, closing the client's connection
  client_thread.join();
}

TEST_F(EngineSimTest, UnknownProfileOrDialectIsRefused) {
  SimOptions options;
  options.profile = "nope";
  EXPECT_THROW(EngineSim(server_.io(), options), std::invalid_argument);
  options.profile = "default";
  options.dialect = "nope";
  EXPECT_THROW(EngineSim(server_.io(), options), std::invalid_argument);
}

}  // namespace
}  // namespace nebula::sim
