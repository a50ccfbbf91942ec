#include "gateway/origin_guard.h"

#include <gtest/gtest.h>

namespace nebula::gateway {
namespace {

http::Request request(const std::string& method, http::Headers headers, std::string body = "") {
  http::Request result;
  result.method = method;
  result.path = "/api/v1/deployments";
  result.headers = std::move(headers);
  result.body = std::move(body);
  return result;
}

int status_of(const http::Request& req, const OriginOptions& options) {
  auto answer = screen(req, options);
  return answer ? answer->status : 0;
}

TEST(OriginGuard, HostMustBeTheServersOwnWithoutKeys) {
  OriginOptions options;
  options.listen_host = "127.0.0.1";
  options.allowed_hosts = {"nebula.internal", "gpu-*.lab:8080"};
  for (const std::string host :
       {"127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "nebula.internal:1234", "gpu-7.lab:8080"}) {
    EXPECT_EQ(status_of(request("GET", {{"Host", host}}), options), 0) << host;
  }
  for (const std::string host : {"evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io:8080",
                                 "gpu-7.lab:9090", "[::1", "a:b:c", "localhost:99999"}) {
    EXPECT_EQ(status_of(request("GET", {{"Host", host}}), options), 403) << host;
  }
  options.check_host = false;
  EXPECT_EQ(status_of(request("GET", {{"Host", "evil.example"}}), options), 0);
  EXPECT_EQ(status_of(request("GET", {{"Host", "127.0.0.1"}, {"host", "evil.example"}}), options), 400);
}

TEST(OriginGuard, OriginsAreTheServersOwnOrListed) {
  OriginOptions options;
  options.allowed_origins = {"http://localhost:*", "https://*.example.com"};
  auto from = [&](const std::string& origin) {
    return status_of(request("GET", {{"Host", "127.0.0.1:8080"}, {"Origin", origin}}), options);
  };
  EXPECT_EQ(from("http://127.0.0.1:8080"), 0);
  EXPECT_EQ(from("http://localhost:3000"), 0);
  EXPECT_EQ(from("https://app.example.com"), 0);
  EXPECT_EQ(from("http://127.0.0.1:8081"), 403);
  EXPECT_EQ(from("https://example.com.evil.io"), 403);
  EXPECT_EQ(from("https://evilexample.com"), 403);
  EXPECT_EQ(from("null"), 403);
  options.allowed_origins = {"*"};
  EXPECT_EQ(from("http://anything.example"), 0);
}

TEST(OriginGuard, PreflightAndCorsHeadersOnlyForAllowedOrigins) {
  OriginOptions options;
  options.allowed_origins = {"http://app.example"};
  auto preflight = screen(
      request("OPTIONS",
              {{"Host", "127.0.0.1:8080"}, {"Origin", "http://app.example"}, {"Access-Control-Request-Method", "PUT"}}),
      options);
  ASSERT_TRUE(preflight);
  EXPECT_EQ(preflight->status, 204);
  EXPECT_EQ(preflight->header("access-control-allow-origin"), "http://app.example");
  auto listed = request("GET", {{"Host", "127.0.0.1:8080"}, {"Origin", "http://app.example"}});
  EXPECT_EQ(http::find_header(cors_headers(listed, options), "access-control-allow-origin"), "http://app.example");
  auto own = request("GET", {{"Host", "127.0.0.1:8080"}, {"Origin", "http://127.0.0.1:8080"}});
  EXPECT_TRUE(cors_headers(own, options).empty());
  // An OPTIONS without a preflight's headers is an ordinary request.
  EXPECT_EQ(status_of(request("OPTIONS", {{"Host", "127.0.0.1:8080"}}), options), 0);
}

TEST(OriginGuard, WriteBodiesMustBeJson) {
  OriginOptions options;
  http::Headers host = {{"Host", "127.0.0.1:8080"}};
  auto with = [&](const std::string& method, const std::string& content_type, const std::string& body) {
    http::Headers headers = host;
    if (!content_type.empty()) headers.push_back({"Content-Type", content_type});
    return status_of(request(method, headers, body), options);
  };
  EXPECT_EQ(with("POST", "application/json", "{}"), 0);
  EXPECT_EQ(with("PUT", "Application/JSON; charset=utf-8", "{}"), 0);
  EXPECT_EQ(with("POST", "application/merge-patch+json", "{}"), 0);
  EXPECT_EQ(with("POST", "", ""), 0);  // a body-less action (drain, switch)
  EXPECT_EQ(with("POST", "text/plain", "{}"), 415);
  EXPECT_EQ(with("POST", "application/x-www-form-urlencoded", ""), 415);
  EXPECT_EQ(with("DELETE", "multipart/form-data; boundary=x", "--x--"), 415);
  EXPECT_EQ(with("POST", "", "{}"), 415);
  EXPECT_EQ(with("GET", "text/plain", "x"), 0);
}

TEST(OriginGuard, InferenceRefusesOnlyTheFormEncodingsThatCarryJson) {
  OriginOptions options;
  auto with = [&](const std::string& content_type) {
    auto req = request("POST", {{"Host", "127.0.0.1:8080"}, {"Content-Type", content_type}}, "{}");
    req.path = "/v1/chat/completions";
    return status_of(req, options);
  };
  EXPECT_EQ(with("application/json"), 0);
  EXPECT_EQ(with("application/x-www-form-urlencoded"), 0);  // curl -d
  EXPECT_EQ(with("text/plain;charset=UTF-8"), 415);
  EXPECT_EQ(with("multipart/form-data; boundary=x"), 415);
}

TEST(OriginGuard, MalformedFlagValuesAreRefused) {
  OriginOptions options;
  options.allowed_origins = {"http://localhost:*", "*", "https://a.example"};
  EXPECT_TRUE(validate(options).ok());
  options.allowed_origins = {"example.com"};
  EXPECT_FALSE(validate(options).ok());
  options.allowed_origins = {"https://a.example/path"};
  EXPECT_FALSE(validate(options).ok());
  options.allowed_origins = {};
  options.allowed_hosts = {"bad host"};
  EXPECT_FALSE(validate(options).ok());
}

}  // namespace
}  // namespace nebula::gateway
