#include "gateway/responses.h"

#include <gtest/gtest.h>

namespace nebula::gateway {
namespace {

const json kCompletion = json::parse(R"({"choices":[{"message":{"role":"assistant","content":"hi"},
  "finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":3}}})");

TEST(ResponseObject, RepeatsTheRequestWithOpenAIsDefaults) {
  json defaults = chat_to_response(kCompletion, "resp_1", "m", 7);
  EXPECT_EQ(defaults["instructions"], nullptr);
  EXPECT_EQ(defaults["tools"], json::array());
  EXPECT_EQ(defaults["tool_choice"], "auto");
  EXPECT_EQ(defaults["parallel_tool_calls"], true);
  EXPECT_EQ(defaults["temperature"], 1.0);
  EXPECT_EQ(defaults["top_p"], 1.0);
  EXPECT_EQ(defaults["metadata"], json::object());
  EXPECT_EQ(defaults["error"], nullptr);
  EXPECT_EQ(defaults["previous_response_id"], nullptr);
  EXPECT_EQ(defaults["store"], true);
  EXPECT_EQ(defaults["text"], json::parse(R"({"format":{"type":"text"}})"));
  EXPECT_EQ(defaults["max_output_tokens"], nullptr);
  EXPECT_EQ(defaults["background"], false);

  json request = json::parse(R"({"model":"m","input":"x","instructions":"be brief","temperature":0.2,"top_p":0.5,
    "metadata":{"a":"b"},"store":false,"max_output_tokens":99,"previous_response_id":"resp_0","tool_choice":"required",
    "tools":[{"type":"function","name":"f"}],"parallel_tool_calls":false,
    "text":{"format":{"type":"json_schema","name":"w","schema":{"type":"object"}}}})");
  json echoed = chat_to_response(kCompletion, "resp_1", "m", 7, request);
  for (const char* field : {"instructions", "temperature", "top_p", "metadata", "store", "max_output_tokens",
                            "previous_response_id", "tool_choice", "tools", "parallel_tool_calls", "text"}) {
    EXPECT_EQ(echoed[field], request[field]) << field;
  }
  // What the answer says wins over what the request said.
  EXPECT_EQ(echoed["id"], "resp_1");
  EXPECT_EQ(echoed["model"], "m");
  EXPECT_EQ(echoed["status"], "completed");

  // Hostile values of the echoed fields do not break the object.
  json odd = chat_to_response(kCompletion, "resp_2", "m", 7, json::parse(R"({"metadata":[1],"text":"x"})"));
  EXPECT_EQ(odd["metadata"], json::object());
  EXPECT_EQ(odd["text"]["format"]["type"], "text");
  EXPECT_EQ(chat_to_response(kCompletion, "resp_3", "m", 7, json::array())["store"], true);
}

TEST(ResponseObject, UsageHasTheDetailsClientsRead) {
  json usage = chat_to_response(kCompletion, "resp_1", "m", 7)["usage"];
  EXPECT_EQ(usage["input_tokens"], 5);
  EXPECT_EQ(usage["input_tokens_details"]["cached_tokens"], 3);
  EXPECT_EQ(usage["output_tokens"], 2);
  EXPECT_EQ(usage["output_tokens_details"]["reasoning_tokens"], 0);
  EXPECT_EQ(usage["total_tokens"], 7);
  EXPECT_EQ(responses_usage(json())["input_tokens_details"]["cached_tokens"], 0);
}

TEST(ResponseObject, StreamedObjectsRepeatTheRequestToo) {
  ResponsesStream stream("resp_1", "m", 7, json{{"instructions", "be brief"}, {"metadata", {{"k", "v"}}}});
  std::string begun = stream.begin();
  EXPECT_NE(begun.find(R"("instructions":"be brief")"), std::string::npos) << begun;
  (void)stream.delta("hello");
  (void)stream.end(json{{"prompt_tokens", 1}, {"completion_tokens", 1}});
  EXPECT_EQ(stream.final_response()["metadata"]["k"], "v");
  EXPECT_EQ(stream.final_response()["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
}

TEST(ResponseObject, ABrokenStreamEndsWithFailedAndAnErrorEvent) {
  ResponsesStream stream("resp_1", "m", 7);
  (void)stream.begin();  // 0 and 1
  (void)stream.delta("partial");
  std::string failed = stream.fail("the engine's stream broke off");
  auto failed_at = failed.find("event: response.failed\n");
  auto error_at = failed.find("event: error\n");
  ASSERT_NE(failed_at, std::string::npos) << failed;
  ASSERT_NE(error_at, std::string::npos) << failed;
  EXPECT_LT(failed_at, error_at);
  EXPECT_EQ(stream.final_response()["status"], "failed");
  EXPECT_EQ(stream.final_response()["error"]["message"], "the engine's stream broke off");
  // The error event's data: OpenAI's fields, and an `error` object for the SDKs to raise.
  auto data = failed.find("data: ", error_at);
  auto body = json::parse(failed.substr(data + 6, failed.find('\n', data) - data - 6));
  EXPECT_EQ(body["type"], "error");
  EXPECT_EQ(body["sequence_number"], 6);  // after added, part added, delta and failed
  EXPECT_EQ(body["error"]["message"], "the engine's stream broke off");

  std::string chat = stream_error_event("gone");
  EXPECT_EQ(chat.rfind("data: ", 0), 0u) << chat;
  auto chat_body = json::parse(chat.substr(6));
  EXPECT_EQ(chat_body["error"]["type"], "server_error");
  EXPECT_EQ(chat_body["error"]["message"], "gone");
}

TEST(ResponsesRequest, BackgroundIsAskedOfTheEngineAsAPlainRequest) {
  auto chat = responses_to_chat(json{{"model", "m"}, {"input", "x"}, {"background", true}});
  ASSERT_TRUE(chat);
  EXPECT_FALSE(chat->contains("background"));
  EXPECT_EQ((*chat)["stream"], false);
  EXPECT_EQ(response_echo(json{{"background", true}})["background"], true);
  EXPECT_FALSE(responses_to_chat(json::array()));
}

TEST(InputItems, PagesTheInputNewestFirstWithStableIds) {
  json response = {{"id", "resp_abc"}, {"output", json::array({{{"type", "message"}, {"role", "assistant"}}})}};
  json conversation = json::array({{{"role", "user"}, {"content", "one"}},
                                   {{"role", "assistant"}, {"content", "two"}},
                                   {{"type", "message"}, {"id", "msg_client"}, {"role", "user"}, {"content", "three"}},
                                   {{"type", "message"}, {"role", "assistant"}}});  // the output
  auto page = input_items_page(response, conversation, {});
  ASSERT_TRUE(page) << page.error().message;
  ASSERT_EQ((*page)["data"].size(), 3u);
  EXPECT_EQ((*page)["data"][0]["id"], "msg_client");
  EXPECT_EQ((*page)["data"][2]["id"], "msg_abc_0");
  EXPECT_EQ((*page)["data"][2]["content"], json::parse(R"([{"type":"input_text","text":"one"}])"));
  EXPECT_EQ((*page)["data"][1]["content"][0]["type"], "output_text");
  EXPECT_EQ((*page)["data"][1]["type"], "message");
  EXPECT_EQ((*page)["has_more"], false);
  EXPECT_EQ((*page)["first_id"], "msg_client");

  auto first = input_items_page(response, conversation, {{"order", "asc"}, {"limit", "2"}});
  ASSERT_TRUE(first);
  EXPECT_EQ((*first)["data"].size(), 2u);
  EXPECT_EQ((*first)["has_more"], true);
  auto rest = input_items_page(response, conversation, {{"order", "asc"}, {"after", (*first)["last_id"]}});
  ASSERT_TRUE(rest);
  ASSERT_EQ((*rest)["data"].size(), 1u);
  EXPECT_EQ((*rest)["data"][0]["id"], "msg_client");

  for (const auto& bad : std::vector<std::map<std::string, std::string>>{{{"limit", "0"}},
                                                                         {{"limit", "101"}},
                                                                         {{"limit", "-1"}},
                                                                         {{"limit", "x"}},
                                                                         {{"limit", "99999999999"}},
                                                                         {{"order", "up"}},
                                                                         {{"after", "msg_nope"}}}) {
    EXPECT_FALSE(input_items_page(response, conversation, bad)) << bad.begin()->first << "=" << bad.begin()->second;
  }
  // A conversation shorter than the output (never stored so) lists nothing rather than failing.
  auto empty = input_items_page(response, json::array(), {});
  ASSERT_TRUE(empty);
  EXPECT_EQ((*empty)["data"].size(), 0u);
  EXPECT_EQ((*empty)["first_id"], nullptr);
}

}  // namespace
}  // namespace nebula::gateway
