#pragma once
// Private to src/http (it includes Beast): parsing a request straight into an http::Request.
#include "http/beast.h"
#include "http/http.h"

namespace nebula::http {

// Beast's basic_parser filling a Request as it goes: Beast's own request_parser would first store
// every field in a node of its own fields container, to be copied out again. Feed it with put();
// eager, so one put() parses a head and whatever body follows it in the buffer.
class RequestParser final : public bhttp::basic_parser<true> {
 public:
  explicit RequestParser(Request& request) : request_(request) {
    eager(true);
    request_.headers.reserve(8);
  }
  unsigned version() const { return version_; }

 private:
  void on_request_impl(bhttp::verb, beast::string_view method, beast::string_view target, int version,
                       error_code&) override {
    request_.method.assign(method.data(), method.size());
    request_.target.assign(target.data(), target.size());
    version_ = static_cast<unsigned>(version);
  }
  void on_response_impl(int, beast::string_view, int, error_code& ec) override { ec = bhttp::error::bad_version; }
  void on_field_impl(bhttp::field, beast::string_view name, beast::string_view value, error_code&) override {
    request_.headers.push_back({std::string(name.data(), name.size()), std::string(value.data(), value.size())});
  }
  void on_header_impl(error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>& length, error_code&) override {
    // The declared length is already within the body limit; reserve no more than 1 MiB of it up
    // front, so a client that declares much and sends little holds little.
    if (length) request_.body.reserve(static_cast<size_t>(std::min<std::uint64_t>(*length, 1 << 20)));
  }
  size_t on_body_impl(beast::string_view body, error_code&) override {
    request_.body.append(body.data(), body.size());
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
  size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code&) override {
    request_.body.append(body.data(), body.size());
    return body.size();
  }
  void on_finish_impl(error_code&) override {}

  Request& request_;
  unsigned version_ = 11;
};

// Fills request.path (percent-decoded, without the query) and request.query (each name=value
// pair of the query, decoded; a later duplicate wins) from request.target.
void split_target(Request& request);

}  // namespace nebula::http
