// Rolling updates (DESIGN.md §2): plans, and the controller's steps that roll a deployment's
// replicas over to its current plan. Everything here is a pure step of the level-triggered
// reconcile: the state (plan history, rollout status, draining marks) lives in the store, so a
// server that dies half-way resumes where it stopped.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "controlplane/controlplane.h"
#include "scheduler/scheduler.h"

namespace nebula::controlplane {

namespace {

namespace rollout_state = api::rollout_state;

api::PlanRevision* find_plan(std::vector<api::PlanRevision>& plans, int64_t version) {
  for (auto& plan : plans) {
    if (plan.version == version) return &plan;
  }
  return nullptr;
}

std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

// Whether the deployment needs a new plan, and why ("" = it does not).
std::string new_plan_cause(const api::Deployment& deployment) {
  const auto& status = deployment.status;
  if (status.plans.empty() || status.plan_version == 0) return "created";
  const auto& latest = status.plans.back();
  if (status.restart_requested_ms > latest.created_ms) return "restart";
  if (api::same_plan(latest.spec, deployment.spec)) return "";
  for (auto it = status.plans.rbegin(); it != status.plans.rend(); ++it) {
    if (api::same_plan(it->spec, deployment.spec)) return fmt::format("spec changed (as plan {})", it->version);
  }
  return "spec changed";
}

}  // namespace

api::DeploymentSpec spec_of_plan(const api::Deployment& deployment, int64_t version) {
  for (const auto& plan : deployment.status.plans) {
    if (plan.version == version) return plan.spec;
  }
  return deployment.spec;
}

int count_ready(const std::vector<api::Replica*>& replicas) {
  return static_cast<int>(std::count_if(replicas.begin(), replicas.end(), [](const api::Replica* replica) {
    return replica->status.phase == api::phase::kReady;
  }));
}

// A spec change (or a restart request) since the newest plan makes a new plan, which becomes the
// one replicas converge to. Returns the deployment as stored afterwards.
api::Deployment Controller::ensure_plan(const api::Deployment& deployment) {
  if (new_plan_cause(deployment).empty()) return deployment;
  int64_t now = to_unix_ms(resources_.clock().wall_now());
  std::string cause;
  int64_t from = 0;
  int64_t version = 0;
  auto updated = resources_.modify<api::Deployment>(deployment.metadata.name, [&](api::Deployment& current) {
    cause = new_plan_cause(current);
    if (cause.empty()) return false;
    auto& status = current.status;
    from = status.plan_version;
    version = std::max(status.plan_version, status.plans.empty() ? 0 : status.plans.back().version) + 1;
    if (!status.plans.empty() && status.plans.back().outcome.empty()) {
      status.plans.back().outcome = rollout_state::kSuperseded;  // replaced before it completed
    }
    status.plans.push_back({version, now, cause, "", current.spec});
    while (status.plans.size() > api::kMaxPlans) status.plans.erase(status.plans.begin());
    status.plan_version = version;
    status.restart_requested_ms = std::min(status.restart_requested_ms, now);
    status.rollout = {rollout_state::kProgressing, from, version, now, 0, cause};
    return true;
  });
  if (!updated) {
    if (updated.error().code != ErrorCode::NotFound) {
      spdlog::warn("controller: cannot record a new plan of {}: {}", deployment.metadata.name, updated.error().message);
    }
    return deployment;
  }
  if (updated->status.plan_version != version) return *updated;  // nothing was needed after all
  const std::string object = "deployment/" + deployment.metadata.name;
  if (from == 0) {
    resources_.record_event(object, "PlanCreated", fmt::format("plan {} ({})", version, cause));
  } else {
    resources_.record_event(object, "RolloutStarted",
                            fmt::format("plan {} ({}): rolling replicas over from plan {}", version, cause, from));
  }
  return *updated;
}

// Draining replicas stop once no request is in flight to them (as the gateway sees it), once
// they no longer serve anyway, or at the drain timeout.
void Controller::finish_drains(const std::vector<api::Replica*>& draining, const StopReplica& stop_replica) {
  int64_t now = to_unix_ms(resources_.clock().wall_now());
  for (api::Replica* replica : draining) {
    bool serving = replica->status.phase == api::phase::kReady;
    bool expired = now - replica->spec.draining_since_ms >= options_.drain_timeout.count();
    bool drained = options_.replica_drained && options_.replica_drained(replica->metadata.name);
    if (serving && !expired && !drained) continue;
    std::string why = !serving ? "not serving" : drained ? "no request in flight" : "drain timeout";
    stop_replica(*replica, "Drained", fmt::format("{}: stopping", why));
  }
}

// A rollout whose new replicas crash-loop, cannot launch, or make no progress rolls back: the
// deployment's plan_version returns to the plan it came from, so the next pass replaces the new
// replicas with the old plan's (which kept serving meanwhile). Returns true when it rolled back.
bool Controller::rollback_if_failing(const api::Deployment& deployment, const std::vector<api::Replica*>& current,
                                     int64_t* due) {
  const auto& rollout = deployment.status.rollout;
  int64_t target = deployment.status.plan_version;
  if (rollout.state != rollout_state::kProgressing || rollout.to_version != target || rollout.from_version <= 0) {
    return false;
  }
  bool known = std::any_of(deployment.status.plans.begin(), deployment.status.plans.end(),
                           [&](const api::PlanRevision& plan) { return plan.version == rollout.from_version; });
  if (!known || deployment.status.idle_since_ms > 0) return false;
  int64_t now = to_unix_ms(resources_.clock().wall_now());
  std::string why;
  int64_t last_progress = rollout.started_ms;
  for (const api::Replica* replica : current) {
    last_progress = std::max(last_progress, replica->metadata.created_ms);
    const auto& status = replica->status;
    std::string error = first_line(status.last_error.empty() ? status.message : status.last_error);
    if (status.restarts >= options_.rollout_max_crashes) {
      why = fmt::format("replica {} of plan {} crashed {} times: {}", replica->metadata.name, target, status.restarts,
                        error);
      break;
    }
    if (status.phase == api::phase::kFailed && status.restarts == 0) {
      why = fmt::format("replica {} of plan {} cannot start: {}", replica->metadata.name, target, error);
      break;
    }
  }
  int64_t deadline = last_progress + options_.rollout_progress_timeout.count() + 1;
  if (why.empty() && now >= deadline) {
    why = fmt::format("plan {} made no progress for {} s", target, (now - last_progress) / 1000);
  }
  if (why.empty()) {
    *due = std::min(*due, deadline);
    return false;
  }
  std::string message = fmt::format("{}; rolled back to plan {}", why, rollout.from_version);
  auto updated = resources_.modify<api::Deployment>(deployment.metadata.name, [&](api::Deployment& stored) {
    auto& status = stored.status;
    if (status.plan_version != target || status.rollout.state != rollout_state::kProgressing) return false;
    status.plan_version = rollout.from_version;
    if (auto* plan = find_plan(status.plans, target)) plan->outcome = rollout_state::kRolledBack;
    status.rollout.state = rollout_state::kRolledBack;
    status.rollout.finished_ms = now;
    status.rollout.message = message;
    return true;
  });
  if (!updated || updated->status.rollout.state != rollout_state::kRolledBack) return false;
  resources_.record_event("deployment/" + deployment.metadata.name, "RolledBack", message, "Warning");
  return true;
}

// One step of a rolling update with Kubernetes' semantics: new replicas up to desired + max_surge
// in all, old ones taken out while desired - max_unavailable stay Ready. Old replicas that serve
// nothing go at once; Ready ones drain first. When VRAM leaves no room for a surge replica, one
// old replica at a time makes room for it (only when that is enough). Returns how many replicas
// of the current plan to create.
int Controller::replace_old_plan(const api::Deployment& deployment, const api::DeploymentSpec& plan_spec, int desired,
                                 const std::vector<api::Replica*>& current, std::vector<api::Replica*>& old,
                                 size_t draining, const std::vector<api::Node>& nodes,
                                 const std::vector<api::Replica>& replicas, const StopReplica& stop_replica,
                                 int& ready) {
  const std::string& name = deployment.metadata.name;
  const int64_t target = deployment.status.plan_version;
  const int have = static_cast<int>(current.size());
  if (old.empty()) return std::max(0, desired - have);
  // The spec was validated when written; a malformed value falls back to the defaults (1 and 0).
  auto surge_count = api::rollout_count(deployment.spec.max_surge, desired, true, "max_surge");
  auto unavailable_count = api::rollout_count(deployment.spec.max_unavailable, desired, false, "max_unavailable");
  int surge = surge_count ? *surge_count : 1;
  int unavailable = unavailable_count ? *unavailable_count : 0;
  if (surge == 0 && unavailable == 0) surge = 1;

  int total = have + static_cast<int>(old.size());
  int to_create = 0;
  while (have + to_create < desired && total + to_create < desired + surge) ++to_create;

  int64_t now = to_unix_ms(resources_.clock().wall_now());
  auto drain = [&](api::Replica& replica, const std::string& why) {
    if (options_.drain_timeout.count() <= 0) {
      stop_replica(replica, "RolloutReplaced", why + ": stopping");
      return;
    }
    auto updated = resources_.modify<api::Replica>(replica.metadata.name, [&](api::Replica& stored) {
      if (stored.spec.stop || stored.spec.draining_since_ms > 0) return false;
      stored.spec.draining_since_ms = now;
      return true;
    });
    if (!updated) return;
    if (replica.status.phase == api::phase::kReady) --ready;
    replica = *updated;
    resources_.record_event(
        "deployment/" + name, "Draining",
        fmt::format("{}: {} leaves routing and stops once its requests finish", why, replica.metadata.name));
  };
  const std::string superseded = fmt::format("plan {} supersedes plan", target);

  // How many old replicas may go now, as Kubernetes counts it: all replicas less the minimum
  // available less the new ones not yet available. Old ones that serve nothing go first (without
  // lowering what serves), then Ready ones drain, oldest first. The budget keeps an old replica
  // that is briefly not Ready while a new plan crash-loops. An idle deployment serves nobody:
  // its old replicas all go.
  bool idle = deployment.status.idle_since_ms > 0;
  int min_available = std::max(0, desired - unavailable);
  int new_unavailable = have - count_ready(current);
  int budget =
      idle ? static_cast<int>(old.size()) : have + static_cast<int>(old.size()) - min_available - new_unavailable;
  std::vector<api::Replica*> serving;
  for (api::Replica* replica : old) {
    if (replica->status.phase == api::phase::kReady) {
      serving.push_back(replica);
    } else if (budget > 0) {
      stop_replica(*replica, "RolloutReplaced", fmt::format("{} {}: stopping", superseded, replica->spec.plan_version));
      --budget;
    }
  }
  std::sort(serving.begin(), serving.end(), [](const api::Replica* a, const api::Replica* b) {
    return a->metadata.created_ms < b->metadata.created_ms;
  });
  int available = count_ready(current) + static_cast<int>(serving.size());
  size_t taken = 0;
  while (taken < serving.size() && budget > 0) {
    api::Replica* replica = serving[taken++];
    drain(*replica, fmt::format("{} {}", superseded, replica->spec.plan_version));
    --available;
    --budget;
  }
  // No room for a surge replica: replace one old replica at a time (max_unavailable taken as at
  // least 1), when its memory is enough. Counting what serves, not what was taken, keeps it one
  // at a time while the GPUs still report a stopped engine's memory.
  bool stopping = std::any_of(replicas.begin(), replicas.end(), [&](const api::Replica& replica) {
    return replica.spec.deployment == name && replica.spec.stop && !replica.spec.node.empty();
  });
  if (taken == 0 && !serving.empty() && draining == 0 && !stopping &&
      available - 1 >= desired - std::max(unavailable, 1)) {
    auto unplaced = std::find_if(current.begin(), current.end(), [](const api::Replica* replica) {
      return replica->spec.node.empty() && !replica->status.message.empty();
    });
    if (unplaced != current.end()) {
      api::Replica* candidate = serving.front();
      // Every replica as the store has it now (this pass's own writes included), not only this
      // deployment's: the what-if is about the cluster's free memory.
      informer_.sync();
      std::vector<api::Replica> others = informer_.replicas();
      std::erase_if(others,
                    [&](const api::Replica& replica) { return replica.metadata.name == candidate->metadata.name; });
      auto request = scheduler::request_for(**unplaced, plan_spec);
      if (scheduler::place(request, scheduler::without_engines(nodes, {*candidate}), others)) {
        resources_.record_event("deployment/" + name, "RolloutOneAtATime",
                                fmt::format("no VRAM for a replica of plan {} beside the old ones: replacing {} first",
                                            target, candidate->metadata.name));
        drain(*candidate, fmt::format("{} {}", superseded, candidate->spec.plan_version));
        ++taken;
      }
    }
  }
  old.erase(std::remove_if(
                old.begin(), old.end(),
                [](const api::Replica* replica) { return replica->spec.stop || replica->spec.draining_since_ms > 0; }),
            old.end());
  return to_create;
}

void Controller::complete_rollout(const api::Deployment& deployment) {
  int64_t now = to_unix_ms(resources_.clock().wall_now());
  int64_t target = deployment.status.plan_version;
  std::string message;
  auto updated = resources_.modify<api::Deployment>(deployment.metadata.name, [&](api::Deployment& stored) {
    auto& status = stored.status;
    if (status.rollout.state != rollout_state::kProgressing || status.rollout.to_version != target ||
        status.plan_version != target) {
      return false;
    }
    if (auto* plan = find_plan(status.plans, target)) plan->outcome = rollout_state::kComplete;
    if (auto* plan = find_plan(status.plans, status.rollout.from_version);
        plan && (plan->outcome.empty() || plan->outcome == rollout_state::kComplete)) {
      plan->outcome = rollout_state::kSuperseded;
    }
    message = status.rollout.from_version == 0
                  ? fmt::format("plan {} serves", target)
                  : fmt::format("plan {} replaced plan {} on every replica", target, status.rollout.from_version);
    status.rollout.state = rollout_state::kComplete;
    status.rollout.finished_ms = now;
    status.rollout.message = message;
    return true;
  });
  if (updated && !message.empty()) {
    resources_.record_event("deployment/" + deployment.metadata.name, "RolloutComplete", message);
  }
}

}  // namespace nebula::controlplane
