#include "webui/webui.h"

#include <gtest/gtest.h>

namespace nebula::webui {
namespace {

http::Request get(std::string path, http::Headers headers = {}) {
  http::Request request;
  request.method = "GET";
  request.target = path;
  request.path = std::move(path);
  request.headers = std::move(headers);
  return request;
}

const Asset* script() {
  for (const auto& asset : assets()) {
    if (asset.path.starts_with("assets/") && asset.path.ends_with(".js")) return &asset;
  }
  return nullptr;
}

// A build with -DNEBULA_UI=OFF (the sanitizer builds) embeds nothing: the tests of the files
// are skipped there, and /ui/ must say why it has none.
#define SKIP_WITHOUT_DASHBOARD() \
  if (assets().empty()) GTEST_SKIP() << "built with -DNEBULA_UI=OFF"

TEST(WebUi, WithoutTheDashboardUiSaysHowToGetIt) {
  if (!assets().empty()) GTEST_SKIP() << "built with the dashboard";
  auto response = serve(get("/ui/"));
  EXPECT_EQ(response.status, 404);
  EXPECT_NE(response.body.find("NEBULA_UI=OFF"), std::string::npos);
}

TEST(WebUi, TheBuiltDashboardIsEmbeddedSortedWithTypesAndEtags) {
  SKIP_WITHOUT_DASHBOARD();
  ASSERT_NE(find_asset("index.html"), nullptr);
  ASSERT_NE(script(), nullptr);
  for (size_t i = 1; i < assets().size(); ++i) EXPECT_LT(assets()[i - 1].path, assets()[i].path);
  EXPECT_EQ(find_asset("index.html")->content_type, "text/html; charset=utf-8");
  EXPECT_EQ(script()->content_type, "text/javascript; charset=utf-8");
  EXPECT_EQ(find_asset("nope.html"), nullptr);
  EXPECT_EQ(find_asset(""), nullptr);
}

TEST(WebUi, RootAndBareUiRedirect) {
  for (const char* path : {"/", "/ui"}) {
    auto response = serve(get(path));
    EXPECT_EQ(response.status, 302) << path;
    EXPECT_EQ(response.header("location"), "/ui/") << path;
  }
}

TEST(WebUi, EveryAnswerCarriesTheStrictPolicy) {
  SKIP_WITHOUT_DASHBOARD();
  for (const char* path : {"/ui/", "/ui/deployments/chat", "/ui/missing.js"}) {
    auto response = serve(get(path));
    std::string csp = response.header("content-security-policy");
    EXPECT_NE(csp.find("script-src 'self'"), std::string::npos) << path;
    EXPECT_EQ(csp.find("unsafe"), std::string::npos) << path;
    EXPECT_EQ(response.header("x-content-type-options"), "nosniff") << path;
    EXPECT_EQ(response.header("x-frame-options"), "DENY") << path;
  }
}

TEST(WebUi, AppRoutesGetIndexAndFilesWithAnExtensionMustExist) {
  SKIP_WITHOUT_DASHBOARD();
  auto index = serve(get("/ui/"));
  EXPECT_EQ(index.status, 200);
  EXPECT_EQ(index.body, find_asset("index.html")->body);
  EXPECT_EQ(index.header("cache-control"), "no-cache");
  EXPECT_EQ(serve(get("/ui/nodes/gpu-box")).body, index.body);
  EXPECT_EQ(serve(get("/ui/assets/missing.js")).status, 404);
  EXPECT_EQ(serve(get("/ui/favicon.svgx")).status, 404);
  // Hostile paths name no file: the table is the only source, so nothing outside it is reachable.
  EXPECT_EQ(serve(get("/ui/../../etc/passwd")).body, index.body);
  EXPECT_EQ(serve(get("/ui/../../etc/shadow.txt")).status, 404);
  EXPECT_EQ(serve(get("/ui/%2e%2e/%2e%2e/etc/passwd")).body, index.body);
  EXPECT_EQ(serve(get("/uix")).status, 404);
  EXPECT_EQ(serve(get(std::string("/ui/assets/\0.js", 16))).status, 404);
}

TEST(WebUi, HashedAssetsAreImmutableGzippedWhenAcceptedAndRevalidated) {
  SKIP_WITHOUT_DASHBOARD();
  const Asset* js = script();
  ASSERT_NE(js, nullptr);
  std::string path = "/ui/" + std::string(js->path);
  auto plain = serve(get(path));
  EXPECT_EQ(plain.status, 200);
  EXPECT_EQ(plain.body, js->body);
  EXPECT_EQ(plain.header("content-encoding"), "");
  EXPECT_EQ(plain.header("cache-control"), "public, max-age=31536000, immutable");
  ASSERT_FALSE(js->gzip.empty());
  auto gzipped = serve(get(path, {{"Accept-Encoding", "deflate, gzip, br"}}));
  EXPECT_EQ(gzipped.header("content-encoding"), "gzip");
  EXPECT_EQ(gzipped.body, js->gzip);
  EXPECT_LT(gzipped.body.size(), plain.body.size());
  EXPECT_EQ(serve(get(path, {{"Accept-Encoding", "gzip;q=0"}})).header("content-encoding"), "");
  auto again = serve(get(path, {{"If-None-Match", std::string(js->etag)}}));
  EXPECT_EQ(again.status, 304);
  EXPECT_TRUE(again.body.empty());
  EXPECT_EQ(serve(get(path, {{"If-None-Match", "\"other\""}})).status, 200);
}

TEST(WebUi, TheCatalogListsModelsWithTheirVariants) {
  json catalog = catalog_json();
  ASSERT_TRUE(catalog["items"].is_array());
  ASSERT_FALSE(catalog["items"].empty());
  bool found = false;
  for (const auto& item : catalog["items"]) {
    if (item["alias"] == "llama-3.1-70b-instruct") {
      found = true;
      EXPECT_GT(item["parameters"].get<int64_t>(), 70'000'000'000);
      EXPECT_FALSE(item["variants"].empty());
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace nebula::webui
