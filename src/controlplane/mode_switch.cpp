// A mode switch as state the controller advances (DESIGN.md §2): the API handler records the
// switch on the target mode (phase Leaving); each controller pass takes the steps the store now
// allows: stop or sleep the outgoing, wait until the GPUs report their VRAM released, start or wake
// the incoming and wait until they are Ready; a failure rolls back to the previous mode the same
// way. Timeouts are measured on the wall clock from the phase's start, kept in the state, so a
// server that restarts mid-switch resumes it where the store says it is.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "controlplane/controlplane.h"
#include "controlplane/modes.h"

namespace nebula::controlplane {

namespace {

// An incoming deployment that stays unschedulable this long will not start by itself.
constexpr int64_t kPendingGraceMs = 3'000;

int64_t now_ms(Resources& resources) {
  return to_unix_ms(resources.clock().wall_now());
}

std::string joined(const std::vector<std::string>& names) {
  return names.empty() ? "-" : fmt::format("{}", fmt::join(names, ","));
}

// ---- writes: each one read-modify-write of a deployment, idempotent ---------------------------

void stop_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  auto updated = resources.modify<api::Deployment>(name, [](api::Deployment& current) {
    if (current.spec.replicas == 0) return false;
    current.metadata.labels[api::kModeReplicasLabel] = std::to_string(current.spec.replicas);
    current.spec.replicas = 0;
    return true;
  });
  if (updated && updated->metadata.labels.count(api::kModeReplicasLabel)) {
    resources.record_event("deployment/" + name, "ModeStop", "stopped by the switch to mode " + mode);
  }
}

void start_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  int64_t now = now_ms(resources);
  bool changed = false;
  auto updated = resources.modify<api::Deployment>(name, [&](api::Deployment& current) {
    int replicas = replicas_to_restore(current);
    bool labelled = current.metadata.labels.count(api::kModeReplicasLabel) > 0;
    bool idle = current.status.idle_since_ms > 0 && current.status.wake_requested_ms < current.status.idle_since_ms;
    changed = current.spec.replicas != replicas || labelled || idle;
    if (!changed) return false;
    current.spec.replicas = replicas;
    current.metadata.labels.erase(api::kModeReplicasLabel);
    // Idle as well (stopped by its idle timeout): a wake request brings it back.
    if (current.status.idle_since_ms > 0) {
      current.status.wake_requested_ms = std::max(now, current.status.idle_since_ms);
    }
    return true;
  });
  if (updated && changed) {
    resources.record_event("deployment/" + name, "ModeStart", "started by the switch to mode " + mode);
  }
}

// The controller puts a deployment to sleep while status.idle_since_ms > 0 and no wake request
// came at or after it (controller.cpp reconcile_idle).
void sleep_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  int64_t now = now_ms(resources);
  bool changed = false;
  auto updated = resources.modify<api::Deployment>(name, [&](api::Deployment& current) {
    changed = !(current.status.idle_since_ms > current.status.wake_requested_ms);
    if (!changed) return false;
    current.status.idle_since_ms = std::max(now, current.status.wake_requested_ms + 1);
    return true;
  });
  if (updated && changed) {
    resources.record_event("deployment/" + name, "ModeSleep", "put to sleep by the switch to mode " + mode);
  }
}

void wake_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  int64_t now = now_ms(resources);
  bool changed = false;
  auto updated = resources.modify<api::Deployment>(name, [&](api::Deployment& current) {
    changed = current.status.idle_since_ms > 0 && current.status.wake_requested_ms < current.status.idle_since_ms;
    if (!changed) return false;
    current.status.wake_requested_ms = std::max(now, current.status.idle_since_ms);
    return true;
  });
  if (updated && changed) {
    resources.record_event("deployment/" + name, "ModeWake", "woken by the switch to mode " + mode);
  }
}

void leave(Resources& resources, const SwitchPlan& plan, const std::string& mode) {
  for (const auto& name : plan.stop) stop_deployment(resources, name, mode);
  for (const auto& name : plan.sleep) sleep_deployment(resources, name, mode);
}

void enter(Resources& resources, const SwitchPlan& plan, const std::string& mode) {
  for (const auto& name : plan.start) start_deployment(resources, name, mode);
  for (const auto& name : plan.wake) wake_deployment(resources, name, mode);
}

// The plan that undoes `plan`: what it started is stopped, what it stopped is started.
SwitchPlan reverse(const SwitchPlan& plan) {
  SwitchPlan back;
  back.from = plan.to;
  back.to = plan.from;
  back.stop = plan.start;
  back.sleep = plan.wake;
  back.start = plan.stop;
  back.wake = plan.sleep;
  return back;
}

// ---- checks ---------------------------------------------------------------------------------

struct Check {
  bool done = false;
  bool failed = false;   // will not get done by waiting
  bool pending = false;  // an incoming replica is unschedulable now
  std::string message;   // what is still awaited, or why it failed
};

std::vector<api::GpuReleaseTarget> targets_for(Resources& resources, const SwitchPlan& plan) {
  std::set<std::string> outgoing(plan.stop.begin(), plan.stop.end());
  outgoing.insert(plan.sleep.begin(), plan.sleep.end());
  std::vector<api::GpuReleaseTarget> targets;
  for (const auto& [key, max_used] :
       release_targets(resources.list<api::Node>(), resources.list<api::Replica>(), outgoing)) {
    targets.push_back({key.first, key.second, max_used});
  }
  return targets;
}

Check check_released(Resources& resources, const SwitchPlan& plan, const std::vector<api::GpuReleaseTarget>& targets) {
  std::map<GpuKey, int64_t> by_gpu;
  for (const auto& target : targets) by_gpu[{target.node, target.index}] = target.max_used_mb;
  auto waiting =
      vram_not_released(resources.list<api::Node>(), resources.list<api::Replica>(),
                        {plan.stop.begin(), plan.stop.end()}, {plan.sleep.begin(), plan.sleep.end()}, by_gpu);
  Check check;
  check.done = waiting.empty();
  if (!waiting.empty()) check.message = fmt::format("{}", fmt::join(waiting, "; "));
  return check;
}

// Every incoming deployment Ready with all its replicas; a replica that failed, or one that stays
// unschedulable past kPendingGraceMs (since pending_since_ms), fails the wait.
Check check_ready(Resources& resources, const SwitchPlan& plan, int64_t pending_since_ms, int64_t now) {
  auto replicas = resources.list<api::Replica>();
  Check check;
  std::vector<std::string> waiting;
  std::vector<std::string> incoming = plan.start;
  incoming.insert(incoming.end(), plan.wake.begin(), plan.wake.end());
  for (const auto& name : incoming) {
    auto deployment = resources.get<api::Deployment>(name);
    if (!deployment) {
      check.failed = true;
      check.message = deployment.error().message;
      return check;
    }
    int desired = deployment->spec.replicas;
    int ready = ready_replicas(replicas, name);
    if (ready >= desired && desired > 0 && deployment->status.idle_since_ms == 0) continue;
    waiting.push_back(fmt::format("{} {}/{} ready", name, ready, desired));
    for (const auto& replica : replicas) {
      if (replica.spec.deployment != name || replica.spec.stop) continue;
      if (replica.status.phase == api::phase::kFailed) {
        check.failed = true;
        check.message =
            fmt::format("{} failed to start: replica {}: {}", name, replica.metadata.name,
                        replica.status.last_error.empty() ? replica.status.message : replica.status.last_error);
        return check;
      }
      if (replica.status.phase == api::phase::kPending && !replica.status.message.empty()) {
        check.pending = true;
        if (pending_since_ms > 0 && now - pending_since_ms > kPendingGraceMs) {
          check.failed = true;
          check.message = fmt::format("{} cannot be placed: {}", name, replica.status.message);
          return check;
        }
      }
    }
  }
  check.done = waiting.empty();
  check.message = fmt::format("{}", fmt::join(waiting, ", "));
  return check;
}

void mark_active(Resources& resources, const std::string& name, const std::string& summary) {
  int64_t now = now_ms(resources);
  for (const auto& mode : resources.list<api::Mode>()) {
    bool is_target = mode.metadata.name == name;
    if (mode.active == is_target && !is_target) continue;
    (void)resources.modify<api::Mode>(mode.metadata.name, [&](api::Mode& current) {
      if (current.active != is_target) current.switched_ms = now;
      current.active = is_target;
      if (is_target) {
        current.switched_ms = now;
        current.last_switch = summary;
      }
      return true;
    });
  }
}

std::string summary_of(const api::ModeSwitch& state) {
  return fmt::format("from {}: stopped {}, slept {}, started {}, woken {} in {} ms",
                     state.from.empty() ? "-" : state.from, joined(state.stop), joined(state.sleep),
                     joined(state.start), joined(state.wake), state.duration_ms);
}

// Writes the next state of the switch `id` on `mode` (nothing when another switch replaced it).
bool write_state(Resources& resources, const std::string& mode, const api::ModeSwitch& next) {
  auto updated = resources.modify<api::Mode>(mode, [&](api::Mode& current) {
    if (current.switching.id != next.id) return false;
    current.switching = next;
    return true;
  });
  return updated && updated->switching.id == next.id && updated->switching.phase == next.phase;
}

void fail(api::ModeSwitch& state, ErrorCode code, const std::string& message, int64_t now) {
  state.error_status = http_status(code);
  state.error_code = to_string(code);
  state.message = message;
  state.phase = switch_phase::kRollingBack;
  state.phase_started_ms = now;
}

// One step of the switch on `mode`; true when it moved to another phase.
bool step(Resources& resources, const api::Mode& mode) {
  api::ModeSwitch state = mode.switching;
  const std::string& name = mode.metadata.name;
  SwitchPlan plan = plan_of(mode);
  SwitchPlan back = reverse(plan);
  std::string previous = plan.from.empty() ? std::string("(none)") : plan.from;
  int64_t now = now_ms(resources);
  int64_t in_phase = now - state.phase_started_ms;
  const std::string& phase = state.phase;

  if (phase == switch_phase::kLeaving) {
    state.targets = targets_for(resources, plan);  // before the outgoing engines stop
    leave(resources, plan, name);
    state.stop_ms = now_ms(resources) - state.started_ms;
    state.phase = switch_phase::kReleasing;
    state.phase_started_ms = now_ms(resources);
  } else if (phase == switch_phase::kReleasing) {
    Check released = check_released(resources, plan, state.targets);
    if (released.done) {
      state.vram_release_ms = in_phase;
      resources.record_event("mode/" + name, "VramReleased",
                             fmt::format("outgoing VRAM released after {} ms", in_phase));
      enter(resources, plan, name);
      state.phase = switch_phase::kEntering;
      state.phase_started_ms = now_ms(resources);
      state.pending_since_ms = 0;
    } else if (in_phase > state.vram_timeout_ms) {
      state.vram_release_ms = in_phase;
      fail(state, ErrorCode::Timeout,
           fmt::format("the GPUs did not report the outgoing VRAM released within {} s: {}",
                       state.vram_timeout_ms / 1000, released.message),
           now);
    } else {
      return false;
    }
  } else if (phase == switch_phase::kEntering) {
    Check ready = check_ready(resources, plan, state.pending_since_ms, now);
    if (ready.done) {
      state.start_ms = in_phase;
      state.duration_ms = now - state.started_ms;
      state.phase = switch_phase::kDone;
      if (!write_state(resources, name, state)) return false;
      mark_active(resources, name, summary_of(state));
      resources.record_event("mode/" + name, "Switched", summary_of(state));
      return true;
    }
    if (ready.failed || in_phase > state.ready_timeout_ms) {
      state.start_ms = in_phase;
      std::string why = ready.failed
                            ? ready.message
                            : fmt::format("not Ready within {} s: {}", state.ready_timeout_ms / 1000, ready.message);
      fail(state, ready.failed ? ErrorCode::Unavailable : ErrorCode::Timeout, why, now);
    } else if (ready.pending != (state.pending_since_ms > 0)) {
      state.pending_since_ms = ready.pending ? now : 0;  // start or stop the unschedulable grace
      write_state(resources, name, state);
      return false;
    } else {
      return false;
    }
  } else if (phase == switch_phase::kRollingBack) {
    resources.record_event("mode/" + name, "SwitchFailed", state.message + "; rolling back", "Warning");
    state.targets = targets_for(resources, back);
    leave(resources, back, previous);
    state.phase = switch_phase::kRollbackReleasing;
    state.phase_started_ms = now_ms(resources);
  } else if (phase == switch_phase::kRollbackReleasing) {
    Check released = check_released(resources, back, state.targets);
    if (!released.done && in_phase <= state.vram_timeout_ms) return false;
    if (!released.done) {
      state.message += "; the rollback did not complete: incoming VRAM not released: " + released.message;
    }
    enter(resources, back, previous);
    state.phase = switch_phase::kRollbackEntering;
    state.phase_started_ms = now_ms(resources);
    state.pending_since_ms = 0;
  } else if (phase == switch_phase::kRollbackEntering) {
    Check ready = check_ready(resources, back, state.pending_since_ms, now);
    if (!ready.done && !ready.failed && in_phase <= state.ready_timeout_ms) {
      if (ready.pending != (state.pending_since_ms > 0)) {
        state.pending_since_ms = ready.pending ? now : 0;
        write_state(resources, name, state);
      }
      return false;
    }
    bool complete = ready.done;
    if (!complete) {
      std::string problem = "outgoing not Ready again: " + ready.message;
      state.message += state.message.find("the rollback did not complete") == std::string::npos
                           ? "; the rollback did not complete: " + problem
                           : "; " + problem;
    }
    state.rolled_back = true;
    state.duration_ms = now - state.started_ms;
    state.phase = switch_phase::kFailed;
    if (!write_state(resources, name, state)) return false;
    resources.record_event("mode/" + name, "RolledBack", "back to mode " + previous, complete ? "Normal" : "Warning");
    return true;
  } else {
    return false;
  }
  return write_state(resources, name, state);
}

}  // namespace

bool switch_in_progress(const api::ModeSwitch& state) {
  return !state.phase.empty() && state.phase != switch_phase::kDone && state.phase != switch_phase::kFailed;
}

SwitchPlan plan_of(const api::Mode& mode) {
  SwitchPlan plan;
  plan.from = mode.switching.from;
  plan.to = mode.metadata.name;
  plan.stop = mode.switching.stop;
  plan.sleep = mode.switching.sleep;
  plan.start = mode.switching.start;
  plan.wake = mode.switching.wake;
  return plan;
}

bool advance_switches(Resources& resources) {
  bool in_progress = false;
  for (const auto& mode : resources.list<api::Mode>()) {
    if (!switch_in_progress(mode.switching)) continue;
    // Take every step that is possible now (a few at most), rereading the mode after each.
    bool still = true;
    for (int steps = 0; steps < 8; ++steps) {
      auto current = resources.get<api::Mode>(mode.metadata.name);
      if (!current) {
        still = current.error().code != ErrorCode::NotFound;  // a store error: tried again
        break;
      }
      if (!switch_in_progress(current->switching)) {
        still = false;
        break;
      }
      if (!step(resources, *current)) break;
    }
    in_progress = in_progress || still;
  }
  return in_progress;
}

}  // namespace nebula::controlplane
