// libFuzzer target for what the gateway parses from the outside: request bodies (read_request,
// and the Responses translation of any that parse), engine answers (usage_of, chat_to_response)
// and engine event
// streams (SseParser, fed in two pieces split where the input says). Any bytes must give a value
// or a clear error, never a crash. Build with clang and -DNEBULA_FUZZ=ON; run as
// `nebula_gateway_fuzz -rss_limit_mb=512 CORPUS`.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "gateway/request_json.h"
#include "gateway/responses.h"
#include "http/sse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto facts = nebula::gateway::read_request(bytes);
  auto body = nebula::parse_json(bytes);
  if (facts && body) (void)nebula::gateway::responses_to_chat(*body);
  // The same bytes as an engine's answer, translated for /v1/responses.
  if (body) {
    // The same bytes as a chunk's delta.tool_calls, twice (a call's first piece, then more).
    nebula::gateway::ResponsesStream stream("resp_1", "m", 0);
    std::string events = stream.begin() + stream.tool_calls(*body);
    events += stream.tool_calls(*body);
    events += stream.end(nebula::json());
  }
  if (body && body->is_object()) {
    (void)nebula::gateway::chat_to_response(*body, "resp_1", "m", 0);
    (void)nebula::gateway::responses_usage(body->value("usage", nebula::json()));
  }
  // Both ways of reading an answer's usage: copied to a padded buffer, and in place from a string
  // with room to spare (as the gateway reads a relayed body); they must agree.
  auto copied = nebula::gateway::usage_of(bytes);
  std::string spare(bytes);
  spare.reserve(size + 64);
  if (nebula::gateway::usage_of(spare, spare.capacity()) != copied) __builtin_trap();
  nebula::http::SseParser parser;
  std::vector<nebula::http::SseEvent> events;
  size_t split = size > 0 ? data[0] % (size + 1) : 0;
  parser.feed(bytes.substr(0, split), events);
  parser.feed(bytes.substr(split), events);
  return 0;
}
