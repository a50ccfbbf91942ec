#include "api/modes.h"

namespace nebula::api {

namespace {
template <typename T>
void read(const json& object, const char* name, T& out) {
  auto it = object.find(name);
  if (it != object.end() && !it->is_null()) out = it->get<T>();
}
}  // namespace

json to_json(const Mode& value) {
  return {{"kind", "Mode"},         {"metadata", to_json(value.metadata)}, {"deployments", value.deployments},
          {"active", value.active}, {"switched_ms", value.switched_ms},    {"last_switch", value.last_switch}};
}

Result<Mode> mode_from_json(const json& value) {
  try {
    if (!value.is_object()) return make_error(ErrorCode::InvalidArgument, "a Mode must be a JSON object");
    Mode mode;
    const json& metadata = value.value("metadata", json::object());
    read(metadata, "name", mode.metadata.name);
    read(metadata, "uid", mode.metadata.uid);
    read(metadata, "created_ms", mode.metadata.created_ms);
    read(metadata, "labels", mode.metadata.labels);
    read(value, "deployments", mode.deployments);
    read(value, "active", mode.active);
    read(value, "switched_ms", mode.switched_ms);
    read(value, "last_switch", mode.last_switch);
    return mode;
  } catch (const json::exception& error) {
    return make_error(ErrorCode::InvalidArgument, std::string("invalid Mode: ") + error.what());
  }
}

}  // namespace nebula::api
