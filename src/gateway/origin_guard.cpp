#include "gateway/origin_guard.h"

#include <algorithm>
#include <cctype>
#include <memory>

namespace nebula::gateway {

namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// `*` matches any run of characters; everything else itself, ignoring case.
bool glob_match(std::string_view pattern, std::string_view text) {
  size_t p = 0, t = 0, star = std::string_view::npos, resume = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = t;
    } else if (p < pattern.size() && std::tolower(static_cast<unsigned char>(pattern[p])) ==
                                         std::tolower(static_cast<unsigned char>(text[t]))) {
      ++p;
      ++t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// host[:port] of a Host header or an origin: "[::1]:8080" is host "::1", port 8080; port -1 when
// absent. nullopt when malformed.
struct Authority {
  std::string host;
  int port = -1;
};
std::optional<Authority> parse_authority(std::string_view text) {
  Authority authority;
  std::optional<std::string_view> port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    authority.host = lower(text.substr(1, close - 1));
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::nullopt;
      port = rest.substr(1);
    }
  } else {
    size_t colon = text.find(':');
    if (colon != std::string_view::npos && text.find(':', colon + 1) != std::string_view::npos) return std::nullopt;
    authority.host = lower(text.substr(0, colon));
    if (colon != std::string_view::npos) port = text.substr(colon + 1);
  }
  if (authority.host.empty()) return std::nullopt;
  if (port) {
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (port->empty() || port->size() > 5 || !std::all_of(port->begin(), port->end(), digit)) return std::nullopt;
    authority.port = std::stoi(std::string(*port));
    if (authority.port > 65535) return std::nullopt;
  }
  return authority;
}

struct Origin {
  std::string scheme;
  Authority authority;
};
// "scheme://host[:port]" with nothing after it, as browsers send it.
std::optional<Origin> parse_origin(std::string_view text) {
  size_t separator = text.find("://");
  if (separator == std::string_view::npos || separator == 0) return std::nullopt;
  Origin origin;
  origin.scheme = lower(text.substr(0, separator));
  std::string_view rest = text.substr(separator + 3);
  if (rest.find('/') != std::string_view::npos) return std::nullopt;
  auto authority = parse_authority(rest);
  if (!authority) return std::nullopt;
  origin.authority = *authority;
  return origin;
}

int default_port(const std::string& scheme) {
  return scheme == "https" ? 443 : 80;
}

bool is_write(const std::string& method) {
  return method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
}

// The page that sent the request was served by this server: same scheme-less host and port as
// the Host the browser addressed.
bool same_origin(const std::string& origin_text, const std::string& host_header) {
  auto origin = parse_origin(origin_text);
  auto host = parse_authority(host_header);
  if (!origin || !host || (origin->scheme != "http" && origin->scheme != "https")) return false;
  int origin_port = origin->authority.port >= 0 ? origin->authority.port : default_port(origin->scheme);
  int host_port = host->port >= 0 ? host->port : default_port(origin->scheme);
  return origin->authority.host == host->host && origin_port == host_port;
}

bool origin_listed(const std::string& origin, const OriginOptions& options) {
  return std::any_of(options.allowed_origins.begin(), options.allowed_origins.end(),
                     [&](const std::string& pattern) { return glob_match(pattern, origin); });
}

bool host_allowed(const std::string& host_header, const OriginOptions& options) {
  auto host = parse_authority(host_header);
  if (!host) return false;
  if (host->host == "localhost" || host->host == "127.0.0.1" || host->host == "::1") return true;
  if (!options.listen_host.empty() && host->host == lower(options.listen_host)) return true;
  for (const auto& pattern : options.allowed_hosts) {
    // "name:port" must match the whole Host; "name" matches the host on any port.
    bool with_port = pattern.find(':') != std::string::npos && pattern.front() != '[';
    if (glob_match(pattern, with_port ? lower(host_header) : host->host)) return true;
  }
  return false;
}

// The media type of a Content-Type value: "application/json; charset=utf-8" -> "application/json".
std::string media_type(const std::string& content_type) {
  std::string media = lower(content_type.substr(0, content_type.find(';')));
  media.erase(0, media.find_first_not_of(" \t"));
  media.erase(media.find_last_not_of(" \t") + 1);
  return media;
}

bool json_media_type(const std::string& media) {
  return media == "application/json" ||
         (media.rfind("application/", 0) == 0 && media.size() > 5 && media.compare(media.size() - 5, 5, "+json") == 0);
}

http::Response preflight_answer(const http::Request& request) {
  http::Response response;
  response.status = 204;
  std::string headers = request.header("access-control-request-headers");
  if (headers.empty()) headers = "Authorization, Content-Type";
  response.headers = {{"Access-Control-Allow-Origin", request.header("origin")},
                      {"Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE"},
                      {"Access-Control-Allow-Headers", headers},
                      {"Access-Control-Max-Age", "600"},
                      {"Vary", "Origin"}};
  return response;
}

// Adds headers to whatever the inner handler answers.
class HeaderAddingWriter : public http::ResponseWriter {
 public:
  HeaderAddingWriter(http::ResponseWriter& inner, http::Headers extra) : inner_(inner), extra_(std::move(extra)) {}
  awaitable<void> send(http::Response response) override {
    response.headers.insert(response.headers.end(), extra_.begin(), extra_.end());
    co_await inner_.send(std::move(response));
  }
  awaitable<bool> start_stream(int status, http::Headers headers) override {
    headers.insert(headers.end(), extra_.begin(), extra_.end());
    co_return co_await inner_.start_stream(status, std::move(headers));
  }
  awaitable<bool> write(std::string_view data) override { co_return co_await inner_.write(data); }
  awaitable<void> finish() override { co_await inner_.finish(); }
  void abort() override { inner_.abort(); }
  bool answered() const override { return inner_.answered(); }
  void on_client_gone(std::function<void()> callback) override { inner_.on_client_gone(std::move(callback)); }
  bool client_gone() const override { return inner_.client_gone(); }

 private:
  http::ResponseWriter& inner_;
  http::Headers extra_;
};

}  // namespace

Status validate(const OriginOptions& options) {
  for (const auto& origin : options.allowed_origins) {
    if (origin == "*" || origin == "null") continue;
    // Checked with each `*` standing for a character that fits anywhere: a digit.
    std::string sample = origin;
    std::replace(sample.begin(), sample.end(), '*', '1');
    auto parsed = parse_origin(sample);
    if (!parsed) {
      return make_error(ErrorCode::InvalidArgument,
                        "--allowed-origins: '" + origin +
                            "' is not an origin: expected scheme://host[:port] without a path (`*` matches any "
                            "characters, e.g. http://localhost:* or https://*.example.com), or *");
    }
  }
  for (const auto& host : options.allowed_hosts) {
    if (host.empty() || host.find_first_of("/ \t") != std::string::npos) {
      return make_error(ErrorCode::InvalidArgument,
                        "--allowed-host: '" + host + "' is not a host name (e.g. nebula.internal or gpu1:8080)");
    }
  }
  return {};
}

std::optional<http::Response> screen(const http::Request& request, const OriginOptions& options) {
  auto hosts = std::count_if(request.headers.begin(), request.headers.end(), [](const http::Header& header) {
    return header.name.size() == 4 && lower(header.name) == "host";
  });
  if (hosts > 1) return http::error_json(400, "a request has one Host header, this one has several", "bad_request");
  std::string host = request.header("host");
  if (options.check_host && !host.empty() && !host_allowed(host, options)) {
    return http::error_json(403,
                            "Host '" + host +
                                "' is not this server's name: without API keys the server answers only to "
                                "localhost, 127.0.0.1, [::1] and its --listen address; add a name with --allowed-host",
                            "host_not_allowed");
  }
  std::string origin = request.header("origin");
  if (!origin.empty() && !same_origin(origin, host) && !origin_listed(origin, options)) {
    return http::error_json(403,
                            "requests from the web page at origin '" + origin +
                                "' are not allowed; allow the origin with --allowed-origins",
                            "origin_not_allowed");
  }
  // A CORS preflight from an allowed origin: the browser may go on.
  if (request.method == "OPTIONS" && !origin.empty() && !request.header("access-control-request-method").empty()) {
    return preflight_answer(request);
  }
  if (is_write(request.method)) {
    std::string content_type = request.header("content-type");
    std::string media = media_type(content_type);
    bool acceptable = content_type.empty() ? request.body.empty() : json_media_type(media);
    // Inference keeps curl's `-d` default (a browser cannot put JSON in a urlencoded form body),
    // but not the two form encodings that carry a JSON body as it is.
    if (request.path.rfind("/api/", 0) != 0) {
      acceptable = media != "text/plain" && media.rfind("multipart/", 0) != 0;
    }
    if (!acceptable) {
      return http::error_json(415,
                              "request bodies must be JSON: send Content-Type: application/json" +
                                  (content_type.empty() ? std::string() : " (got '" + content_type + "')"),
                              "unsupported_media_type");
    }
  }
  return std::nullopt;
}

http::Headers cors_headers(const http::Request& request, const OriginOptions& options) {
  std::string origin = request.header("origin");
  if (origin.empty() || same_origin(origin, request.header("host")) || !origin_listed(origin, options)) return {};
  return {{"Access-Control-Allow-Origin", origin},
          {"Access-Control-Expose-Headers", "x-request-id, retry-after"},
          {"Vary", "Origin"}};
}

http::Router guard_origins(http::Router inner, OriginOptions options) {
  auto shared_inner = std::make_shared<http::Router>(std::move(inner));
  auto shared_options = std::make_shared<OriginOptions>(std::move(options));
  http::Router outer;
  for (const char* method : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
    outer.add(method, "/*",
              [shared_inner, shared_options](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
                if (auto refusal = screen(request, *shared_options)) {
                  co_await writer.send(std::move(*refusal));
                  co_return;
                }
                request.params.clear();
                http::Headers extra = cors_headers(request, *shared_options);
                if (extra.empty()) {
                  co_await shared_inner->dispatch(request, writer);
                  co_return;
                }
                HeaderAddingWriter decorated(writer, std::move(extra));
                co_await shared_inner->dispatch(request, decorated);
              });
  }
  return outer;
}

}  // namespace nebula::gateway
