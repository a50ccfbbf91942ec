#pragma once
// The web dashboard: the files of ui/ built by Vite and embedded into the binary at build time
// (scripts/build-ui writes them into a generated source file), served at /ui/ with a strict
// Content-Security-Policy. `/` redirects to /ui/. The dashboard itself talks only to /api/v1 and
// /v1, through the same guards as any client.
#include <cstddef>
#include <span>
#include <string_view>

#include "http/http.h"

namespace nebula::webui {

// One embedded file. `path` is relative to the dashboard's root ("index.html",
// "assets/index-abc123.js"); `gzip` is the same body gzip-compressed, empty when that is not
// smaller; `etag` is a quoted strong validator derived from the content.
struct Asset {
  std::string_view path;
  std::string_view content_type;
  std::string_view body;
  std::string_view gzip;
  std::string_view etag;
};

// Every embedded file (none when the binary was built with -DNEBULA_UI=OFF).
std::span<const Asset> assets();
const Asset* find_asset(std::string_view path);

// The headers every /ui/ answer carries: CSP (no inline script or style, same-origin
// connections only), nosniff, no framing, no referrer.
http::Headers security_headers();

// The answer to a GET or HEAD of `request.path` under /ui/ (or of `/`): a pure function of the
// request. Paths without a file extension that name no file get index.html, so the dashboard's
// client-side routes (/ui/deployments/chat) survive a reload.
http::Response serve(const http::Request& request);

// The model catalog as the dashboard's deploy form suggests it:
// {"items":[{"id","alias","parameters","context_length","variants":[{"id","alias","quantization"}]}]}.
json catalog_json();

// GET and HEAD of `/`, `/ui` and `/ui/*`; GET /api/v1/catalog (guarded like all of /api/v1).
void add_routes(http::Router& router);

}  // namespace nebula::webui
