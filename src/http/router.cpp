#include <fmt/format.h>
#include <cctype>

#include "http/http.h"

namespace nebula::http {

namespace {
// The non-empty segments of a path, as views into it.
std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> segments;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (end > start) segments.emplace_back(path.substr(start, end - start));
    start = end + 1;
  }
  return segments;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::string find_header(const Headers& headers, std::string_view name) {
  for (const auto& header : headers) {
    if (iequals(header.name, name)) return header.value;
  }
  return {};
}

std::string url_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(' ');
    } else if (text[i] == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 && hex_value(text[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2])));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

std::string url_encode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string api_path(std::initializer_list<std::string_view> segments,
                     const std::vector<std::pair<std::string, std::string>>& query) {
  std::string path = "/api/v1";
  for (auto segment : segments) path += "/" + url_encode(segment);
  char separator = '?';
  for (const auto& [name, value] : query) {
    path += separator + url_encode(name) + "=" + url_encode(value);
    separator = '&';
  }
  return path;
}

std::string Request::query_or(const std::string& name, const std::string& fallback) const {
  auto it = query.find(name);
  return it == query.end() ? fallback : it->second;
}

Response Response::json_body(int status, const json& body) {
  Response response;
  response.status = status;
  response.headers.push_back({"Content-Type", "application/json"});
  // User bytes (paths, parse errors) may be invalid UTF-8: replace rather than throw.
  response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

// Built outside coroutines: g++ 12 miscompiles braced JSON initialisers inside them.
Response error_json(int status, const std::string& message, const std::string& code, const std::string& type) {
  std::string error_type = type;
  if (error_type.empty()) error_type = status >= 500 ? "server_error" : "invalid_request_error";
  return Response::json_body(
      status, json{{"error", {{"message", message}, {"type", error_type}, {"param", nullptr}, {"code", code}}}});
}

Headers event_stream_headers() {
  return {{"Content-Type", "text/event-stream"}, {"Cache-Control", "no-cache"}};
}

Response Response::text(int status, std::string body, std::string content_type) {
  Response response;
  response.status = status;
  response.headers.push_back({"Content-Type", std::move(content_type)});
  response.body = std::move(body);
  return response;
}

void Router::add(std::string method, std::string pattern, Handler handler) {
  std::vector<std::string> segments;
  for (auto segment : split_path(pattern)) segments.emplace_back(segment);
  routes_.push_back(Route{std::move(method), std::move(segments), std::move(handler)});
}

awaitable<void> Router::dispatch(Request& request, ResponseWriter& writer) const {
  if (guard_) {
    if (std::optional<Response> refusal = guard_(request)) {
      co_await writer.send(std::move(*refusal));
      co_return;
    }
  }
  // Views into request.path, which outlives the matching (handlers get params copied out).
  const std::vector<std::string_view> segments = split_path(request.path);
  bool path_matched = false;
  for (const auto& route : routes_) {
    std::map<std::string, std::string> params;
    bool match = true;
    size_t i = 0;
    for (; i < route.segments.size(); ++i) {
      const std::string& pattern = route.segments[i];
      if (pattern == "*" && i + 1 == route.segments.size()) {
        std::string rest;
        for (size_t j = i; j < segments.size(); ++j) {
          if (j > i) rest += '/';
          rest += segments[j];
        }
        params["*"] = rest;
        i = segments.size();
        break;
      }
      if (i >= segments.size()) {
        match = false;
        break;
      }
      if (pattern.size() > 2 && pattern.front() == '{' && pattern.back() == '}') {
        params[pattern.substr(1, pattern.size() - 2)] = std::string(segments[i]);
      } else if (pattern != segments[i]) {
        match = false;
        break;
      }
    }
    if (!match || i != segments.size()) continue;
    path_matched = true;
    if (route.method != request.method) continue;
    request.params = std::move(params);
    co_await route.handler(request, writer);
    co_return;
  }
  if (path_matched) {
    co_await writer.send(
        error_json(405, "method " + request.method + " not allowed on " + request.path, "method_not_allowed"));
    co_return;
  }
  if (not_found_) {
    co_await not_found_(request, writer);
    co_return;
  }
  co_await writer.send(error_json(404, "no route for " + request.path, "not_found"));
}

Result<Url> Url::parse(std::string_view text) {
  Url url;
  size_t scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos) {
    return make_error(ErrorCode::InvalidArgument,
                      "invalid URL '" + std::string(text) + "': expected http://HOST:PORT/...");
  }
  url.scheme = std::string(text.substr(0, scheme_end));
  if (url.scheme != "http" && url.scheme != "https") {
    return make_error(ErrorCode::InvalidArgument, "unsupported URL scheme '" + url.scheme + "' (only http and https)");
  }
  uint16_t default_port = url.scheme == "https" ? 443 : 80;
  std::string_view rest = text.substr(scheme_end + 3);
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  url.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (authority.empty())
    return make_error(ErrorCode::InvalidArgument, "invalid URL '" + std::string(text) + "': no host");
  if (authority.find(':') == std::string_view::npos || (authority.front() == '[' && authority.back() == ']')) {
    url.host = std::string(authority);
    if (url.host.front() == '[') url.host = url.host.substr(1, url.host.size() - 2);
    url.port = default_port;
    return url;
  }
  auto host_port = parse_host_port(authority);
  if (!host_port) return host_port.error();
  url.host = host_port->host;
  url.port = host_port->port;
  return url;
}

std::string Url::origin() const {
  return scheme + "://" + HostPort{host, port}.to_string();
}

}  // namespace nebula::http
