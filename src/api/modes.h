#pragma once
// Modes (DESIGN.md §2: Mode): a named set of deployments that run together. Switching modes
// stops (or sleeps) what is outgoing, waits for the GPUs to report the VRAM released, then starts
// (or wakes) what is incoming (controlplane/mode_routes.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "api/api.h"

namespace nebula::api {

// Label on a deployment a mode switch scaled to zero: the replica count to restore.
inline constexpr const char* kModeReplicasLabel = "nebula.dev/replicas";

struct Mode {
  Metadata metadata;
  std::vector<std::string> deployments;
  bool active = false;
  int64_t switched_ms = 0;  // Unix ms of the last switch to or away from this mode
  std::string last_switch;  // human summary of the last switch to this mode
};

json to_json(const Mode& value);
Result<Mode> mode_from_json(const json& value);

}  // namespace nebula::api
