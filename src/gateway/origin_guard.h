#pragma once
// What keeps web pages the user visits from driving the server through the user's browser
// (docs/security.md): the Host check against DNS rebinding, the Origin check with CORS for the
// origins an operator allows, and JSON-only request bodies. It wraps the server's router, so it
// runs before authentication and before any route.
#include <optional>
#include <string>
#include <vector>

#include "http/http.h"

namespace nebula::gateway {

struct OriginOptions {
  // Refuse requests whose Host is not the server's own (DNS rebinding). On without API keys,
  // where a request needs no secret to do anything; with keys a rebound page has no key.
  bool check_host = true;
  std::string listen_host;  // the --listen host, allowed as a Host besides the loopback names
  // --allowed-host: more host names (with or without a port; `*` matches any characters).
  std::vector<std::string> allowed_hosts;
  // --allowed-origins: browser origins besides the server's own, "scheme://host[:port]" with `*`
  // matching any characters ("http://localhost:*", "https://*.example.com"), or "*" for any.
  std::vector<std::string> allowed_origins;
};

// InvalidArgument naming the flag and the value when an allowed host or origin is malformed.
Status validate(const OriginOptions& options);

// The answer that stops the request (403 for a foreign Host or Origin, 415 for a body that is not
// JSON, 204 for an allowed CORS preflight), or nullopt to let it through.
std::optional<http::Response> screen(const http::Request& request, const OriginOptions& options);

// CORS headers for the response to an allowed cross-origin request; empty for the rest.
http::Headers cors_headers(const http::Request& request, const OriginOptions& options);

// A router that screens every request, then dispatches to `inner` with CORS headers added to the
// answer when the request came from an allowed foreign origin.
http::Router guard_origins(http::Router inner, OriginOptions options);

}  // namespace nebula::gateway
