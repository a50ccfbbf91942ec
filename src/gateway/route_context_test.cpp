#include "gateway/route_context.h"

#include <gtest/gtest.h>

#include "gateway/responses.h"

namespace nebula::gateway {
namespace {

http::Request request_with(const std::string& body, const std::string& session = "") {
  http::Request request;
  request.method = "POST";
  request.path = "/v1/chat/completions";
  request.body = body;
  if (!session.empty()) request.headers.push_back({"X-Session-Id", session});
  return request;
}

router::RouteContext context_of(const http::Request& request, const std::string& root = "") {
  auto facts = read_request(request.body);
  EXPECT_TRUE(facts) << request.body;
  return route_context(request, *facts, nullptr, root, 0);
}

TEST(RouteContext, TheSessionIsTheHeaderElseTheUserElseTheConversation) {
  const std::string body = R"({"model":"m","user":"alice","messages":[{"role":"user","content":"hi"}]})";
  EXPECT_EQ(context_of(request_with(body, "s-1"), "resp_1").session_key, "s-1");
  EXPECT_EQ(context_of(request_with(body), "resp_1").session_key, "alice");
  const std::string anonymous = R"({"model":"m","messages":[{"role":"user","content":"hi"}]})";
  EXPECT_EQ(context_of(request_with(anonymous), "resp_1").session_key, "resp_1");
  EXPECT_EQ(context_of(request_with(anonymous)).session_key, "");
  // A `user` that is not a string is no session.
  EXPECT_EQ(context_of(request_with(R"({"model":"m","user":{"id":1},"prompt":"x"})")).session_key, "");
}

TEST(RouteContext, PromptsSharingAPrefixShareItsHashes) {
  std::string shared(200, 's');
  auto first = context_of(request_with(
      R"({"model":"m","messages":[{"role":"system","content":")" + shared +
      R"("},{"role":"user","content":"question one, a long one to fill blocks, and then some more words"}]})"));
  auto second = context_of(request_with(
      R"({"model":"m","messages":[{"role":"system","content":")" + shared +
      R"("},{"role":"user","content":[{"type":"text","text":"another question entirely, long as well, and longer still"}]}]})"));
  ASSERT_GE(first.prefix_hashes.size(), 4u);
  ASSERT_GE(second.prefix_hashes.size(), 4u);
  // 200 shared bytes: blocks 0..2 (bytes 0..191) are the same, block 3 is not.
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(first.prefix_hashes[i], second.prefix_hashes[i]) << i;
  EXPECT_NE(first.prefix_hashes[3], second.prefix_hashes[3]);
  EXPECT_EQ(first.prefix_hashes,
            router::block_hashes(shared + "question one, a long one to fill blocks, and then some more words"));
}

TEST(RouteContext, CompletionPromptsAndTheirEstimate) {
  std::string prompt(130, 'p');
  auto context = context_of(request_with(R"({"model":"m","prompt":")" + prompt + R"("})"));
  EXPECT_EQ(context.prefix_hashes, router::block_hashes(prompt));
  EXPECT_EQ(context.prefix_hashes.size(), 2u);
  EXPECT_EQ(context.prompt_tokens, 130 / 4 + 1);
  auto facts = read_request(R"({"model":"m","prompt":")" + prompt + R"("})");
  EXPECT_EQ(route_context(request_with(""), *facts, nullptr, "", 70).prompt_tokens, 200 / 4 + 1);
}

TEST(RouteContext, AResponsesRequestIsHashedAsTheChatItBecomes) {
  json body = {{"model", "m"}, {"instructions", std::string(64, 'i')}, {"input", std::string(64, 'q')}};
  auto chat = responses_to_chat(body);
  ASSERT_TRUE(chat);
  auto request = request_with(body.dump());
  auto facts = read_request(request.body);
  auto context = route_context(request, *facts, &*chat, "resp_first", 0);
  EXPECT_EQ(context.prefix_hashes, router::block_hashes(std::string(64, 'i') + std::string(64, 'q')));
  EXPECT_EQ(context.session_key, "resp_first");
}

TEST(RouteContext, LongPromptsAreHashedUpToTheLimitAndOddShapesAreSkipped) {
  std::string huge(kPromptTextLimit + 1000, 'x');
  auto context = context_of(request_with(R"({"model":"m","prompt":")" + huge + R"("})"));
  EXPECT_EQ(context.prefix_hashes.size(), kPromptTextLimit / 64);
  EXPECT_EQ(context.prompt_tokens, static_cast<int64_t>(huge.size()) / 4 + 1) << "the estimate counts it all";
  for (const char* body :
       {R"({"model":"m","messages":"not an array"})", R"({"model":"m","messages":[1,null,{"content":5}]})",
        R"({"model":"m","messages":[{"content":[{"text":7},"part",{"type":"image_url"}]}]})"}) {
    EXPECT_TRUE(context_of(request_with(body)).prefix_hashes.empty()) << body;
  }
  EXPECT_EQ(chat_prompt_text(json::parse(R"({"messages":[{"content":[{"text":7},{"text":"ok"}]},"x"]})")), "ok");
  EXPECT_EQ(chat_prompt_text(json::array()), "");
  EXPECT_EQ(chat_prompt_text(json(nullptr)), "");
}

}  // namespace
}  // namespace nebula::gateway
