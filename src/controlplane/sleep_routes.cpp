// POST /api/v1/deployments/{name}/sleep and .../wake. Each handler records the ask in the
// deployment's status and answers at once; the controller (reconcile_idle) puts the replicas to
// sleep or wakes them, so an ask survives a server restart and nothing here waits for engines.
#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "controlplane/controlplane.h"

namespace nebula::controlplane {

namespace {

bool asleep_or_going(const api::DeploymentStatus& status) {
  return api::sleep_requested(status) || (status.idle_since_ms > 0 && status.wake_requested_ms < status.idle_since_ms);
}

Error nothing_to_do(const std::string& name, const char* what) {
  return Error{
      ErrorCode::Conflict,
      fmt::format("deployment {} has 0 replicas: there is nothing to {}; scale it up first (nebula scale {} N)", name,
                  what, name)};
}

// The level its replicas sleep at when asleep (0: they stop), from the spec's on_idle.
int level_of(const api::DeploymentSpec& spec) {
  return spec.on_idle == "sleep-l2" ? 2 : spec.on_idle == "sleep-l1" ? 1 : 0;
}

}  // namespace

Result<SleepAnswer> request_sleep(Resources& resources, const std::string& name) {
  int64_t now = to_unix_ms(resources.clock().wall_now());
  std::optional<Error> refused;
  bool changed = false;
  auto updated = resources.modify<api::Deployment>(name, [&](api::Deployment& current) {
    refused.reset();
    changed = false;
    auto& status = current.status;
    if (api::sleep_requested(status)) return false;  // asked before: nothing more to do
    bool asleep = asleep_or_going(status);
    if (!asleep && current.spec.replicas == 0) {
      refused = nothing_to_do(name, "put to sleep");
      return false;
    }
    // Later than the last wake even within one millisecond: asleep until a newer wake. An idle
    // deployment is held asleep too (a later switch-off of its idle timeout does not wake it).
    status.sleep_requested_ms = std::max(now, status.wake_requested_ms + 1);
    changed = !asleep;
    return true;
  });
  if (!updated) return updated.error();
  if (refused) return *refused;
  if (changed) {
    resources.record_event("deployment/" + name, "SleepRequested",
                           fmt::format("sleep asked for by the API ({})", updated->spec.on_idle));
  }
  return SleepAnswer{std::move(*updated), changed};
}

Result<SleepAnswer> request_wake(Resources& resources, const std::string& name) {
  int64_t now = to_unix_ms(resources.clock().wall_now());
  std::optional<Error> refused;
  bool changed = false;
  auto updated = resources.modify<api::Deployment>(name, [&](api::Deployment& current) {
    refused.reset();
    changed = false;
    auto& status = current.status;
    if (!asleep_or_going(status)) {
      // Awake, or a wake is on its way. Zero replicas awake is no state to wake from either.
      if (current.spec.replicas == 0 && status.idle_since_ms == 0) refused = nothing_to_do(name, "wake");
      return false;
    }
    // Not before the sleep ask (so it ends it) nor before the idle period began (so it ends that).
    status.wake_requested_ms = std::max({now, status.sleep_requested_ms, status.idle_since_ms});
    changed = true;
    return true;
  });
  if (!updated) return updated.error();
  if (refused) return *refused;
  if (changed) resources.record_event("deployment/" + name, "WakeRequested", "wake asked for by the API");
  return SleepAnswer{std::move(*updated), changed};
}

namespace {

using http::Request;
using http::ResponseWriter;

std::string answer_message(const SleepAnswer& answer, bool sleep) {
  const auto& deployment = answer.deployment;
  const std::string& name = deployment.metadata.name;
  if (!sleep) {
    if (!answer.changed) {
      return name + (api::sleep_state(deployment) == "awake" ? " is awake" : " is already waking");
    }
    bool stopped = level_of(deployment.spec) == 0 || deployment.status.evicted;
    return fmt::format("{} is waking: its replicas {} and take requests once Ready", name,
                       stopped ? "start again" : "wake");
  }
  if (!answer.changed) {
    std::string state = api::sleep_state(deployment);
    if (state == "sleep-requested") return name + " is already going to sleep";
    if (state == "stopped") return name + " is already asleep (its replicas are stopped)";
    return name + " is already asleep";
  }
  if (level_of(deployment.spec) == 0) {
    return fmt::format(
        "{} goes to sleep: on_idle is stop, so its replicas stop and free their GPUs; the next "
        "request or a wake starts them again",
        name);
  }
  return fmt::format("{} goes to sleep at level {} ({}); the next request or a wake wakes it", name,
                     level_of(deployment.spec), deployment.spec.on_idle);
}

json answer_json(Resources& resources, const SleepAnswer& answer, bool sleep) {
  const auto& deployment = answer.deployment;
  json replicas = json::array();
  for (const auto& replica : resources.list<api::Replica>()) {
    if (replica.spec.deployment != deployment.metadata.name || replica.spec.stop) continue;
    replicas.push_back(
        {{"name", replica.metadata.name}, {"phase", replica.status.phase}, {"sleep_level", replica.spec.sleep_level}});
  }
  return {{"name", deployment.metadata.name},
          {"state", api::sleep_state(deployment)},
          {"changed", answer.changed},
          {"on_idle", deployment.spec.on_idle},
          {"sleep_level", level_of(deployment.spec)},
          {"ready_replicas", deployment.status.ready_replicas},
          {"replicas", replicas},
          {"message", answer_message(answer, sleep)}};
}

http::Response answer_response(Resources& resources, const Result<SleepAnswer>& answer, bool sleep) {
  if (!answer) return error_response(answer.error());
  return http::Response::json_body(200, answer_json(resources, *answer, sleep));
}

}  // namespace

void add_sleep_routes(http::Router& router, Resources& resources) {
  // Sleep and wake take no body: one sent is ignored.
  for (bool sleep : {true, false}) {
    router.add("POST", sleep ? "/api/v1/deployments/{name}/sleep" : "/api/v1/deployments/{name}/wake",
               [&resources, sleep](Request& request, ResponseWriter& writer) -> awaitable<void> {
                 const std::string& name = request.params["name"];
                 auto answer = sleep ? request_sleep(resources, name) : request_wake(resources, name);
                 co_await writer.send(answer_response(resources, answer, sleep));
               });
  }
}

}  // namespace nebula::controlplane
