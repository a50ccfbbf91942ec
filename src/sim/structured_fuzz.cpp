// libFuzzer target for structured output: the input is a response_format schema as a client could
// send it. A schema the checker accepts must give, for any seed, text that is complete JSON (or
// cut at the byte budget), that json_tokens() splits and joins back; nothing may crash or hang.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sim/structured.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nebula::sim;
  if (size == 0) return 0;
  uint64_t seed = data[0];
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  ordered_json schema = ordered_json::parse(input, nullptr, false);
  if (schema.is_discarded()) return 0;
  if (schema_error(schema)) return 0;
  GeneratedJson generated = generate_json(&schema, seed, 8192);
  if (generated.text.size() > 8192) std::abort();
  if (generated.complete && ordered_json::parse(generated.text, nullptr, false).is_discarded()) std::abort();
  std::string joined;
  for (const std::string& token : json_tokens(generated.text)) joined += token;
  if (joined != generated.text) std::abort();
  return 0;
}
