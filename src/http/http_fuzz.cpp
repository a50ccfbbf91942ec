// libFuzzer target for the server's request reading (RequestParser over Beast's basic_parser, then
// split_target's path and query decoding): the input is fed in pieces of a size taken from its
// first byte, as a slow or odd client would send it, with the server's own limits. A parsed request
// must satisfy what the server relies on; anything else must be an error, never a crash or a hang.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "http/request_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nebula::http;
  if (size == 0) return 0;
  size_t step = static_cast<size_t>(data[0] % 64) + 1;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  // Requests on one connection, one after another, as the session reads them.
  beast::flat_buffer buffer;
  size_t fed = 0;
  for (int round = 0; round < 8; ++round) {
    Request request;
    RequestParser parser(request);
    parser.body_limit(4096);
    parser.header_limit(2048);
    error_code ec;
    while (parse_buffered(parser, buffer, ec)) {
      if (fed == input.size()) {
        if (parser.got_some()) ec = bhttp::error::partial_message;
        break;
      }
      size_t n = std::min(step, input.size() - fed);
      auto space = buffer.prepare(n);
      std::memcpy(space.data(), input.data() + fed, n);
      buffer.commit(n);
      fed += n;
    }
    if (ec || !parser.is_done()) return 0;
    split_target(request);
    if (request.method.empty() || request.target.empty()) std::abort();
    if (request.body.size() > 4096) std::abort();
    if (request.path.size() > request.target.size()) std::abort();
    (void)parser.keep_alive();
    (void)request.header("content-type");
  }
  return 0;
}
