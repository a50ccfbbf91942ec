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

// A GPU the outgoing deployments of a switch occupy, and the memory_used_mb it must report at
// most once they are gone.
struct GpuReleaseTarget {
  std::string node;
  int index = 0;
  int64_t max_used_mb = 0;
};

// A switch to this mode: desired state the controller advances phase by phase
// (controlplane/mode_switch.cpp), so a server that dies half-way finishes it when it returns.
struct ModeSwitch {
  std::string id;     // the request that asked for it
  std::string phase;  // "" none | Leaving | Releasing | Entering | RollingBack | RollbackReleasing
                      // | RollbackEntering | Done | Failed
  std::string from;   // the mode active before ("" none)
  std::vector<std::string> stop, sleep, start, wake;
  std::vector<GpuReleaseTarget> targets;  // of the phase that waits for VRAM
  int64_t vram_timeout_ms = 60'000;
  int64_t ready_timeout_ms = 120'000;
  int64_t started_ms = 0;        // wall ms
  int64_t phase_started_ms = 0;  // wall ms
  int64_t pending_since_ms = 0;  // an incoming replica unschedulable since (0 = none)
  int64_t stop_ms = 0, vram_release_ms = 0, start_ms = 0, duration_ms = 0;
  int error_status = 0;  // HTTP status of the failure (0 = none)
  std::string error_code;
  std::string message;  // why it failed
  bool rolled_back = false;
};

struct Mode {
  Metadata metadata;
  std::vector<std::string> deployments;
  bool active = false;
  int64_t switched_ms = 0;  // Unix ms of the last switch to or away from this mode
  std::string last_switch;  // human summary of the last switch to this mode
  ModeSwitch switching;     // the last switch to this mode
};

json to_json(const Mode& value);
Result<Mode> mode_from_json(const json& value);

}  // namespace nebula::api
