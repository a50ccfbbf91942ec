#include "api/modes.h"

#include "api/read.h"

namespace nebula::api {

using detail::read;

namespace {

json switch_json(const ModeSwitch& value) {
  json targets = json::array();
  for (const auto& target : value.targets) {
    targets.push_back({{"node", target.node}, {"index", target.index}, {"max_used_mb", target.max_used_mb}});
  }
  return {{"id", value.id},
          {"phase", value.phase},
          {"from", value.from},
          {"stop", value.stop},
          {"sleep", value.sleep},
          {"start", value.start},
          {"wake", value.wake},
          {"targets", targets},
          {"vram_timeout_ms", value.vram_timeout_ms},
          {"ready_timeout_ms", value.ready_timeout_ms},
          {"started_ms", value.started_ms},
          {"phase_started_ms", value.phase_started_ms},
          {"pending_since_ms", value.pending_since_ms},
          {"stop_ms", value.stop_ms},
          {"vram_release_ms", value.vram_release_ms},
          {"start_ms", value.start_ms},
          {"duration_ms", value.duration_ms},
          {"error_status", value.error_status},
          {"error_code", value.error_code},
          {"message", value.message},
          {"rolled_back", value.rolled_back}};
}

ModeSwitch switch_from(const json& object) {
  ModeSwitch value;
  read(object, "id", value.id);
  read(object, "phase", value.phase);
  read(object, "from", value.from);
  read(object, "stop", value.stop);
  read(object, "sleep", value.sleep);
  read(object, "start", value.start);
  read(object, "wake", value.wake);
  if (auto targets = object.find("targets"); targets != object.end() && targets->is_array()) {
    for (const auto& item : *targets) {
      GpuReleaseTarget target;
      read(item, "node", target.node);
      read(item, "index", target.index);
      read(item, "max_used_mb", target.max_used_mb);
      value.targets.push_back(target);
    }
  }
  read(object, "vram_timeout_ms", value.vram_timeout_ms);
  read(object, "ready_timeout_ms", value.ready_timeout_ms);
  read(object, "started_ms", value.started_ms);
  read(object, "phase_started_ms", value.phase_started_ms);
  read(object, "pending_since_ms", value.pending_since_ms);
  read(object, "stop_ms", value.stop_ms);
  read(object, "vram_release_ms", value.vram_release_ms);
  read(object, "start_ms", value.start_ms);
  read(object, "duration_ms", value.duration_ms);
  read(object, "error_status", value.error_status);
  read(object, "error_code", value.error_code);
  read(object, "message", value.message);
  read(object, "rolled_back", value.rolled_back);
  return value;
}

}  // namespace

json to_json(const Mode& value) {
  json object = {{"kind", "Mode"},         {"metadata", to_json(value.metadata)}, {"deployments", value.deployments},
                 {"active", value.active}, {"switched_ms", value.switched_ms},    {"last_switch", value.last_switch}};
  if (!value.switching.phase.empty()) object["switch"] = switch_json(value.switching);
  return object;
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
    if (auto state = value.find("switch"); state != value.end() && state->is_object()) {
      mode.switching = switch_from(*state);
    }
    return mode;
  } catch (const std::exception& error) {
    return make_error(ErrorCode::InvalidArgument, std::string("invalid Mode: ") + error.what());
  }
}

}  // namespace nebula::api
