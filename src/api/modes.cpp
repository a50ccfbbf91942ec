#include "api/modes.h"

#include "api/read.h"

namespace nebula::api {

using detail::read;

json to_json(const Mode& value) {
  return {{"kind", "Mode"},         {"metadata", to_json(value.metadata)}, {"deployments", value.deployments},
          {"active", value.active}, {"switched_ms", value.switched_ms},    {"last_switch", value.last_switch}};
}

Result<Mode> mode_from_json(const json& value) {
  try {
    if (!value.is_object()) return make_error(ErrorCode::InvalidArgument, "a Mode must be a JSON object");
    Mode mode;
    mode.metadata = detail::metadata_from(value);
    read(value, "deployments", mode.deployments);
    read(value, "active", mode.active);
    read(value, "switched_ms", mode.switched_ms);
    read(value, "last_switch", mode.last_switch);
    return mode;
  } catch (const std::exception& error) {
    return make_error(ErrorCode::InvalidArgument, std::string("invalid Mode: ") + error.what());
  }
}

}  // namespace nebula::api
