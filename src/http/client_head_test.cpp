// The client refuses, before connecting, a request whose line or headers could be split into
// more than one: the CLI's names reach URLs and a CR/LF there smuggled a second request.
#include <gtest/gtest.h>

#include "http/http.h"

namespace nebula::http {
namespace {

TEST(ClientRequestHead, RefusesLineBreaksNulAndSpacesInTheTarget) {
  BlockingClient client;
  for (std::string target : {std::string("/api/v1/deployments/a\r\nDELETE /x HTTP/1.1"), std::string("/a\nb"),
                             std::string("/a b"), std::string("/a\0b", 4), std::string("/a?x=\r\n")}) {
    // Port 9 (discard): nothing is meant to be reached; the refusal comes first.
    auto response = client.request("GET", "http://127.0.0.1:9" + target, "", {}, std::chrono::seconds(2));
    ASSERT_FALSE(response.ok());
    EXPECT_EQ(response.error().code, ErrorCode::InvalidArgument) << response.error().message;
  }
}

TEST(ClientRequestHead, RefusesLineBreaksInHeadersAndBadNames) {
  BlockingClient client;
  for (const Headers& headers :
       {Headers{{"Authorization", "Bearer k\r\nX-Evil: 1"}}, Headers{{"X-A", "a\nb"}},
        Headers{{"X-A", std::string("a\0b", 3)}}, Headers{{"Bad Name", "v"}}, Headers{{"X-A:\r\nB", "v"}}}) {
    auto response = client.request("GET", "http://127.0.0.1:9/ok", "", headers, std::chrono::seconds(2));
    ASSERT_FALSE(response.ok());
    EXPECT_EQ(response.error().code, ErrorCode::InvalidArgument) << response.error().message;
  }
  auto method = client.request("GET /x HTTP/1.1\r\n", "http://127.0.0.1:9/ok", "", {}, std::chrono::seconds(2));
  ASSERT_FALSE(method.ok());
  EXPECT_EQ(method.error().code, ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace nebula::http
