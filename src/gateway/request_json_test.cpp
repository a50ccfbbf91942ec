#include "gateway/request_json.h"

#include <gtest/gtest.h>

namespace nebula::gateway {
namespace {

// The problem read_request finds in a chat body with `fields` added to a valid one.
std::optional<RequestProblem> chat_problem(const std::string& fields) {
  auto facts = read_request(R"({"model":"m","messages":[{"role":"user","content":"x"}])" + fields + "}", Api::Chat);
  EXPECT_TRUE(facts) << fields;
  return facts ? facts->problem : std::nullopt;
}

TEST(RequestProblems, AValidRequestHasNone) {
  EXPECT_FALSE(chat_problem(""));
  EXPECT_FALSE(chat_problem(R"(,"max_tokens":1,"temperature":0,"top_p":1,"n":128,"presence_penalty":-2)"));
  // null is the default, for OpenAI as for the engines.
  EXPECT_FALSE(chat_problem(R"(,"max_tokens":null,"temperature":null,"n":null)"));
}

TEST(RequestProblems, RangesAsOpenAIWordsThem) {
  auto below = chat_problem(R"(,"max_tokens":0)");
  ASSERT_TRUE(below);
  EXPECT_EQ(below->param, "max_tokens");
  EXPECT_EQ(below->code, "integer_below_min_value");
  EXPECT_EQ(below->message,
            "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead.");

  auto hot = chat_problem(R"(,"temperature":2.5)");
  ASSERT_TRUE(hot);
  EXPECT_EQ(hot->code, "decimal_above_max_value");
  EXPECT_EQ(hot->message,
            "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead.");

  struct Case {
    const char* fields;
    const char* param;
    const char* code;
  };
  for (const Case& c :
       {Case{R"(,"max_completion_tokens":-3)", "max_completion_tokens", "integer_below_min_value"},
        Case{R"(,"n":0)", "n", "integer_below_min_value"}, Case{R"(,"n":129)", "n", "integer_above_max_value"},
        Case{R"(,"top_p":-0.5)", "top_p", "decimal_below_min_value"},
        Case{R"(,"frequency_penalty":2.01)", "frequency_penalty", "decimal_above_max_value"},
        Case{R"(,"top_logprobs":21)", "top_logprobs", "integer_above_max_value"},
        Case{R"(,"max_tokens":"ten")", "max_tokens", "invalid_type"},
        Case{R"(,"max_tokens":2.5)", "max_tokens", "invalid_type"},
        Case{R"(,"temperature":"hot")", "temperature", "invalid_type"},
        Case{R"(,"temperature":[1])", "temperature", "invalid_type"}}) {
    auto problem = chat_problem(c.fields);
    ASSERT_TRUE(problem) << c.fields;
    EXPECT_EQ(problem->param, c.param) << c.fields;
    EXPECT_EQ(problem->code, c.code) << c.fields;
  }
}

TEST(RequestProblems, RequiredFieldsPerEndpoint) {
  auto missing = read_request(R"({"model":"m"})", Api::Chat);
  ASSERT_TRUE(missing);
  ASSERT_TRUE(missing->problem);
  EXPECT_EQ(missing->problem->code, "missing_required_parameter");
  EXPECT_EQ(missing->problem->message, "Missing required parameter: 'messages'.");

  auto empty = read_request(R"({"model":"m","messages":[]})", Api::Chat);
  ASSERT_TRUE(empty && empty->problem);
  EXPECT_EQ(empty->problem->code, "empty_array");
  EXPECT_EQ(empty->problem->param, "messages");

  auto not_list = read_request(R"({"model":"m","messages":"hi"})", Api::Chat);
  ASSERT_TRUE(not_list && not_list->problem);
  EXPECT_EQ(not_list->problem->code, "invalid_type");

  auto prompt = read_request(R"({"model":"m"})", Api::Completions);
  ASSERT_TRUE(prompt && prompt->problem);
  EXPECT_EQ(prompt->problem->param, "prompt");
  for (Api api : {Api::Embeddings, Api::Responses}) {
    auto input = read_request(R"({"model":"m"})", api);
    ASSERT_TRUE(input && input->problem);
    EXPECT_EQ(input->problem->param, "input");
  }
  // Responses: at least one output token (OpenAI asks for 16, which engines do not need).
  auto small = read_request(R"({"model":"m","input":"x","max_output_tokens":0})", Api::Responses);
  ASSERT_TRUE(small && small->problem);
  EXPECT_EQ(small->problem->code, "integer_below_min_value");
  EXPECT_FALSE(read_request(R"({"model":"m","input":"x","max_output_tokens":1})", Api::Responses)->problem);
  // Background responses are polled, so stored and not streamed.
  EXPECT_FALSE(read_request(R"({"model":"m","input":"x","background":true})", Api::Responses)->problem);
  auto streamed = read_request(R"({"model":"m","input":"x","background":true,"stream":true})", Api::Responses);
  ASSERT_TRUE(streamed && streamed->problem);
  EXPECT_EQ(streamed->problem->param, "background");
  auto unstored = read_request(R"({"model":"m","input":"x","background":true,"store":false})", Api::Responses);
  ASSERT_TRUE(unstored && unstored->problem);
  EXPECT_EQ(unstored->problem->param, "store");
  EXPECT_FALSE(read_request(R"({"model":"m","input":"x","stream":true,"store":false})", Api::Responses)->problem);
  // Without an endpoint only the common fields are checked.
  EXPECT_FALSE(read_request(R"({"model":"m"})")->problem);
}

}  // namespace
}  // namespace nebula::gateway
