// libFuzzer target for the spec reader of `nebula deploy -f`: YAML text (bounded in size, depth
// and alias expansion) to JSON, then the strict deployment reader and validation. Whatever the
// input, the answer is a value or an error, never a crash, a hang or unbounded memory.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/spec_check.h"
#include "common/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nebula;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto document = yaml_to_json(text);
  if (!document) {
    if (document.error().message.empty()) std::abort();
    return 0;
  }
  // What was read must write back as JSON (no NaN, no invalid UTF-8 that dump() refuses to hide).
  (void)document->dump(-1, ' ', false, json::error_handler_t::replace);
  if (!document->is_object()) return 0;
  auto deployment = api::deployment_from_user_json(*document);
  if (!deployment) return 0;
  (void)api::validate_name(deployment->metadata.name);
  (void)api::validate(deployment->spec);
  (void)api::to_json(*deployment).dump(-1, ' ', false, json::error_handler_t::replace);
  return 0;
}
