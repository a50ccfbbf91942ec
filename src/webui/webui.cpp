#include "webui/webui.h"

#include <algorithm>

#include "models/models.h"

namespace nebula::webui {

namespace generated {
// Defined in the generated webui_assets.cpp, sorted by path.
extern const Asset kAssets[];
extern const size_t kAssetCount;
}  // namespace generated

namespace {
using http::Request;
using http::Response;
using http::ResponseWriter;

constexpr std::string_view kPrefix = "/ui/";

Response redirect(std::string location) {
  Response response;
  response.status = 302;
  response.headers.push_back({"Location", std::move(location)});
  response.headers.push_back({"Cache-Control", "no-cache"});
  return response;
}

Response not_found(std::string_view path) {
  Response response = Response::text(404, "no file " + std::string(path) + " in the dashboard\n");
  for (auto& header : security_headers()) response.headers.push_back(std::move(header));
  return response;
}

bool accepts_gzip(const Request& request) {
  // A client that lists gzip with q=0 is rare enough to treat as one that does not list it.
  std::string accept = request.header("accept-encoding");
  return accept.find("gzip") != std::string::npos && accept.find("gzip;q=0") == std::string::npos &&
         accept.find("gzip; q=0") == std::string::npos;
}

bool has_extension(std::string_view path) {
  size_t slash = path.rfind('/');
  std::string_view last = slash == std::string_view::npos ? path : path.substr(slash + 1);
  return last.find('.') != std::string_view::npos;
}
}  // namespace

std::span<const Asset> assets() {
  return {generated::kAssets, generated::kAssetCount};
}

const Asset* find_asset(std::string_view path) {
  auto all = assets();
  auto it = std::lower_bound(all.begin(), all.end(), path,
                             [](const Asset& asset, std::string_view wanted) { return asset.path < wanted; });
  if (it == all.end() || it->path != path) return nullptr;
  return &*it;
}

http::Headers security_headers() {
  return {{"Content-Security-Policy",
           "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"},
          {"X-Content-Type-Options", "nosniff"},
          {"X-Frame-Options", "DENY"},
          {"Referrer-Policy", "no-referrer"},
          {"Cross-Origin-Opener-Policy", "same-origin"},
          {"Cross-Origin-Resource-Policy", "same-origin"}};
}

Response serve(const Request& request) {
  if (request.path == "/") return redirect("/ui/");
  if (request.path == "/ui") return redirect("/ui/");
  if (request.path.compare(0, kPrefix.size(), kPrefix) != 0) return not_found(request.path);
  std::string_view relative = std::string_view(request.path).substr(kPrefix.size());
  const Asset* asset = relative.empty() ? find_asset("index.html") : find_asset(relative);
  if (!asset && !has_extension(relative)) asset = find_asset("index.html");
  if (!asset) {
    if (assets().empty()) {
      return Response::text(404,
                            "this nebula was built without the web dashboard (-DNEBULA_UI=OFF); rebuild with "
                            "`make build` and Node.js installed\n");
    }
    return not_found(request.path);
  }
  Response response;
  response.headers = security_headers();
  response.headers.push_back({"ETag", std::string(asset->etag)});
  // Vite names every file under assets/ after its content hash; index.html must be revalidated
  // so a new binary's dashboard is picked up at once.
  bool immutable = asset->path.compare(0, 7, "assets/") == 0;
  response.headers.push_back({"Cache-Control", immutable ? "public, max-age=31536000, immutable" : "no-cache"});
  response.headers.push_back({"Vary", "Accept-Encoding"});
  std::string if_none_match = request.header("if-none-match");
  if (!if_none_match.empty() && if_none_match.find(asset->etag) != std::string::npos) {
    response.status = 304;
    return response;
  }
  response.status = 200;
  response.headers.push_back({"Content-Type", std::string(asset->content_type)});
  if (!asset->gzip.empty() && accepts_gzip(request)) {
    response.headers.push_back({"Content-Encoding", "gzip"});
    response.body = std::string(asset->gzip);
  } else {
    response.body = std::string(asset->body);
  }
  return response;
}

json catalog_json() {
  json items = json::array();
  for (const auto& entry : models::catalog()) {
    json variants = json::array();
    for (const auto& variant : entry.variants) {
      variants.push_back({{"id", variant.id}, {"alias", variant.alias}, {"quantization", variant.quantization}});
    }
    items.push_back({{"id", entry.id},
                     {"alias", entry.alias},
                     {"parameters", entry.parameters},
                     {"context_length", entry.context_length},
                     {"variants", variants}});
  }
  return json{{"items", items}};
}

void add_routes(http::Router& router) {
  router.add("GET", "/api/v1/catalog", [](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(Response::json_body(200, catalog_json()));
  });
  auto handler = [](Request& request, ResponseWriter& writer) -> awaitable<void> {
    // For HEAD the server sends the headers (with the body's length) and omits the body.
    co_await writer.send(serve(request));
  };
  for (const char* method : {"GET", "HEAD"}) {
    router.add(method, "/", handler);
    router.add(method, "/ui/*", handler);
  }
}

}  // namespace nebula::webui
