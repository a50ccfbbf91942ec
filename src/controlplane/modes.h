#pragma once
// Mode switching, the pure part: what a switch stops, sleeps, starts and wakes, whether the
// incoming set fits once the outgoing is gone, and when the GPUs report the outgoing VRAM
// released. Functions of a snapshot of the store, so they are tested without a server; the
// waiting and the writes are in mode_routes.cpp.
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "api/api.h"
#include "api/modes.h"
#include "common/result.h"

namespace nebula::controlplane {
class Resources;
}

namespace nebula::controlplane {

struct SwitchPlan {
  std::string from;  // the active mode; "" when none is
  std::string to;
  std::vector<std::string> stop;   // outgoing: scaled to zero, the count kept in a label
  std::vector<std::string> sleep;  // outgoing: put to sleep (they stay placed)
  std::vector<std::string> start;  // incoming: scaled up from zero
  std::vector<std::string> wake;   // incoming: asleep or idle-stopped now
};

// Sleeping is how a deployment configured for it (on_idle sleep-l1/sleep-l2 with an idle timeout)
// leaves; anything else is stopped.
bool can_sleep(const api::DeploymentSpec& spec);
// The replica count a started deployment gets back: the label a stop left, else its spec if
// non-zero, else 1.
int replicas_to_restore(const api::Deployment& deployment);

// Outgoing = the active mode's deployments not in `target` (no active mode: every deployment not
// in `target` with replicas). Incoming = `target`'s deployments that are at zero or idle.
// With allow_sleep false every outgoing deployment is stopped.
SwitchPlan plan_switch(const std::optional<api::Mode>& active, const api::Mode& target,
                       const std::vector<api::Deployment>& deployments, bool allow_sleep);

// Whether the deployments the plan starts can all be placed once the stopped ones are gone
// (sleeping ones keep their placement). ResourceExhausted naming the first that cannot.
Status incoming_fits(const SwitchPlan& plan, std::vector<api::Node> nodes, const std::vector<api::Replica>& replicas,
                     const std::vector<api::Deployment>& deployments);

// Per GPU (node, index) that holds an outgoing replica: the memory_used_mb it must report at most
// once the outgoing engines are gone = what the other running engines use + what processes
// outside Nebula used before the switch.
using GpuKey = std::pair<std::string, int>;
std::map<GpuKey, int64_t> release_targets(const std::vector<api::Node>& nodes,
                                          const std::vector<api::Replica>& replicas,
                                          const std::set<std::string>& outgoing);

// What still holds the outgoing VRAM: replicas of stopped deployments still present, replicas of
// slept ones not yet Sleeping, GPUs reporting more than their target. Empty = released.
std::vector<std::string> vram_not_released(const std::vector<api::Node>& nodes,
                                           const std::vector<api::Replica>& replicas,
                                           const std::set<std::string>& stopped, const std::set<std::string>& slept,
                                           const std::map<GpuKey, int64_t>& targets);

// Replicas of the deployment that are Ready and not being stopped.
int ready_replicas(const std::vector<api::Replica>& replicas, const std::string& deployment);

// ---- the switch as state in the store (mode_switch.cpp) ---------------------------------------

namespace switch_phase {
inline constexpr const char* kLeaving = "Leaving";          // stop or sleep the outgoing
inline constexpr const char* kReleasing = "Releasing";      // wait for the GPUs to report their VRAM free
inline constexpr const char* kEntering = "Entering";        // start or wake the incoming, wait for Ready
inline constexpr const char* kRollingBack = "RollingBack";  // undo: stop what was started
inline constexpr const char* kRollbackReleasing = "RollbackReleasing";
inline constexpr const char* kRollbackEntering = "RollbackEntering";  // restore the previous mode
inline constexpr const char* kDone = "Done";
inline constexpr const char* kFailed = "Failed";
}  // namespace switch_phase

// True while the switch still has steps to take.
bool switch_in_progress(const api::ModeSwitch& state);
// The plan a switch state carries.
SwitchPlan plan_of(const api::Mode& mode);
// Takes every step the state of each mode's switch allows now (the controller calls it on every
// pass). Each step is a write of the mode's switch state after the deployment writes it implies,
// all idempotent, so a controller that stops between two steps redoes at most the last one.
// Returns whether a switch is still in progress (its timeouts need the controller to look again).
bool advance_switches(Resources& resources);

}  // namespace nebula::controlplane
