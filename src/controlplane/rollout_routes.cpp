// /api/v1/deployments/{name}/restart, .../rollout and .../rollout/undo. Each handler writes one
// piece of desired state and answers; the controller does the rollout (rollout.cpp), so nothing
// here waits for engines.
#include <fmt/format.h>

#include "controlplane/controlplane.h"

namespace nebula::controlplane {

namespace {

using http::Request;
using http::ResponseWriter;

http::Response ok_json(const json& value) {
  return http::Response::json_body(200, value);
}

// The rollout view of a deployment: its plan, the rollout and the plan history.
json rollout_json(const api::Deployment& deployment) {
  json plans = json::array();
  for (const auto& plan : deployment.status.plans) plans.push_back(api::to_json(plan));
  return {{"name", deployment.metadata.name},
          {"plan_version", deployment.status.plan_version},
          {"replicas", deployment.spec.replicas},
          {"ready_replicas", deployment.status.ready_replicas},
          {"rollout", api::to_json(deployment.status.rollout)},
          {"plans", plans}};
}

// The rollout view plus where each replica stands (its plan, phase, whether it drains).
json rollout_with_replicas(Resources& resources, const api::Deployment& deployment) {
  json view = rollout_json(deployment);
  json replicas = json::array();
  for (const auto& replica : resources.list<api::Replica>()) {
    if (replica.spec.deployment != deployment.metadata.name) continue;
    std::string state = replica.spec.stop ? "stopping" : replica.spec.draining_since_ms > 0 ? "draining" : "";
    replicas.push_back({{"name", replica.metadata.name},
                        {"plan_version", replica.spec.plan_version},
                        {"phase", replica.status.phase},
                        {"node", replica.spec.node},
                        {"leaving", state},
                        {"restarts", replica.status.restarts}});
  }
  view["replica_plans"] = replicas;
  return view;
}

// An engine-defining field of `from` copied over `to` (what undo restores; replicas, priority,
// idle and rollout settings stay as they are now).
void restore_plan_fields(api::DeploymentSpec& to, const api::DeploymentSpec& from) {
  to.model = from.model;
  to.engine = from.engine;
  to.gpus_per_replica = from.gpus_per_replica;
  to.max_context = from.max_context;
  to.max_seqs = from.max_seqs;
  to.vram_mb = from.vram_mb;
  to.engine_args = from.engine_args;
  to.env = from.env;
  to.dtype = from.dtype;
  to.kv_cache_dtype = from.kv_cache_dtype;
  to.gpu_memory_utilization = from.gpu_memory_utilization;
  to.node_selector = from.node_selector;
  to.gpu_type = from.gpu_type;
  to.shape = from.shape;
}

}  // namespace

void add_rollout_routes(http::Router& router, Resources& resources) {
  router.add("GET", "/api/v1/deployments/{name}/rollout",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto deployment = resources.get<api::Deployment>(request.params["name"]);
               if (!deployment) {
                 co_await writer.send(error_response(deployment.error()));
                 co_return;
               }
               co_await writer.send(ok_json(rollout_with_replicas(resources, *deployment)));
             });

  // A rolling restart: a new plan with the same spec (the controller makes it).
  router.add("POST", "/api/v1/deployments/{name}/restart",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               int64_t now = to_unix_ms(resources.clock().wall_now());
               auto updated = resources.modify<api::Deployment>(request.params["name"], [&](api::Deployment& current) {
                 int64_t newest = current.status.plans.empty() ? 0 : current.status.plans.back().created_ms;
                 // Later than the newest plan even when both fall in the same millisecond.
                 current.status.restart_requested_ms = std::max(now, newest + 1);
                 return true;
               });
               if (!updated) {
                 co_await writer.send(error_response(updated.error()));
                 co_return;
               }
               resources.record_event("deployment/" + updated->metadata.name, "RestartRequested",
                                      "rolling restart requested by the API");
               co_await writer.send(ok_json(rollout_json(*updated)));
             });

  // Back to an earlier plan: its engine fields become the spec again, which the controller rolls
  // out as a new plan. Body (optional): {"to_version": N}; default the newest plan whose spec differs
  // from the current spec (after a rollback: the plan that kept serving).
  router.add("POST", "/api/v1/deployments/{name}/rollout/undo",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               int64_t wanted = 0;
               if (!request.body.empty()) {
                 auto body = parse_json(request.body);
                 if (!body || !body->is_object()) {
                   co_await writer.send(error_response(make_error(
                       ErrorCode::InvalidArgument, "the body must be a JSON object such as {\"to_version\": 2}")));
                   co_return;
                 }
                 if (auto field = body->find("to_version"); field != body->end()) {
                   if (!field->is_number_integer() || field->get<int64_t>() <= 0) {
                     co_await writer.send(error_response(
                         make_error(ErrorCode::InvalidArgument, "to_version must be a positive integer")));
                     co_return;
                   }
                   wanted = field->get<int64_t>();
                 }
               }
               std::optional<Error> refused;
               int64_t restored = 0;
               auto updated = resources.modify<api::Deployment>(request.params["name"], [&](api::Deployment& current) {
                 refused.reset();
                 const auto& plans = current.status.plans;
                 const api::PlanRevision* chosen = nullptr;
                 for (auto it = plans.rbegin(); it != plans.rend(); ++it) {
                   bool match = wanted > 0 ? it->version == wanted : !api::same_plan(it->spec, current.spec);
                   if (match) {
                     chosen = &*it;
                     break;
                   }
                 }
                 if (!chosen) {
                   std::string known;
                   for (const auto& plan : plans) known += (known.empty() ? "" : ", ") + std::to_string(plan.version);
                   refused = wanted > 0 ? Error{ErrorCode::NotFound,
                                                fmt::format("plan {} is not in the history (plans kept: {})", wanted,
                                                            known.empty() ? "none" : known)}
                                        : Error{ErrorCode::NotFound, "there is no earlier plan to go back to"};
                   return false;
                 }
                 restored = chosen->version;
                 api::DeploymentSpec spec = current.spec;
                 restore_plan_fields(spec, chosen->spec);
                 if (api::same_plan(spec, current.spec)) {
                   refused = Error{ErrorCode::InvalidArgument,
                                   fmt::format("the spec already is plan {}'s: nothing to undo", restored)};
                   return false;
                 }
                 current.spec = spec;
                 return true;
               });
               if (!updated) {
                 co_await writer.send(error_response(updated.error()));
                 co_return;
               }
               if (refused) {
                 co_await writer.send(error_response(*refused));
                 co_return;
               }
               resources.record_event("deployment/" + updated->metadata.name, "UndoRequested",
                                      fmt::format("spec set back to plan {}", restored));
               json view = rollout_json(*updated);
               view["restored_from"] = restored;
               co_await writer.send(ok_json(view));
             });
}

}  // namespace nebula::controlplane
