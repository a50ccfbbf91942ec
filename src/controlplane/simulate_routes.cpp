// POST /api/v1/simulate: the dry run of a deployment (nebula deploy --dry-run). Reads the
// cluster's nodes, replicas and deployments, plans the deployment with scheduler::simulate and
// answers the plan; nothing is written.
#include <fmt/format.h>

#include "api/spec_check.h"
#include "controlplane/controlplane.h"
#include "scheduler/scheduler.h"

namespace nebula::controlplane {

namespace {

// {"metadata": {"name"}, "spec": {...}}, {"name", "spec"}, or a bare spec; the name defaults to
// "dry-run".
Result<api::Deployment> deployment_to_simulate(const std::string& body) {
  auto document = parse_json(body);
  if (!document) return document.error();
  if (!document->is_object()) return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
  if (!document->contains("spec") && document->contains("model")) *document = json{{"spec", *document}};
  auto deployment = api::deployment_from_user_json(*document);
  if (!deployment) return deployment.error();
  if (deployment->metadata.name.empty() && document->contains("name") && (*document)["name"].is_string()) {
    deployment->metadata.name = (*document)["name"].get<std::string>();
  }
  if (deployment->metadata.name.empty()) deployment->metadata.name = "dry-run";
  if (auto valid = api::validate_name(deployment->metadata.name); !valid) return valid.error();
  if (auto valid = api::validate(deployment->spec); !valid) return valid.error();
  if (auto valid = canonical_routing(deployment->spec); !valid) return valid.error();
  return deployment;
}

json plan_json(const scheduler::Plan& plan) {
  json placements = json::array();
  for (size_t i = 0; i < plan.placements.size(); ++i) {
    const auto& placement = plan.placements[i];
    placements.push_back({{"replica", fmt::format("{}-{}", plan.deployment, i)},
                          {"node", placement.node},
                          {"gpus", placement.gpus},
                          {"vram_mb", placement.vram_mb}});
  }
  json gpus = json::array();
  for (const auto& gpu : plan.gpus) {
    gpus.push_back({{"node", gpu.node},
                    {"index", gpu.index},
                    {"name", gpu.name},
                    {"total_mb", gpu.total_mb},
                    {"reserved_mb", gpu.reserved_mb},
                    {"used_before_mb", gpu.used_before_mb},
                    {"used_after_mb", gpu.used_after_mb},
                    {"replicas", gpu.replicas}});
  }
  json alternatives = json::array();
  for (const auto& alternative : plan.alternatives) {
    alternatives.push_back({{"kind", alternative.kind},
                            {"value", alternative.value},
                            {"summary", alternative.summary},
                            {"saves_mb", alternative.saves_mb}});
  }
  return json{{"deployment", plan.deployment}, {"fits", plan.fits},
              {"replicas", plan.replicas},     {"estimate", models::estimate_to_json(plan.estimate)},
              {"placements", placements},      {"gpus", gpus},
              {"reason", plan.reason},         {"alternatives", alternatives}};
}

http::Response simulate_response(Resources& resources, const std::string& body) {
  auto deployment = deployment_to_simulate(body);
  if (!deployment) return error_response(deployment.error());
  auto plan = scheduler::simulate(*deployment, resources.list<api::Node>(), resources.list<api::Replica>(),
                                  resources.list<api::Deployment>());
  return http::Response::json_body(200, plan_json(plan));
}

}  // namespace

void add_simulate_routes(http::Router& router, Resources& resources) {
  router.add("POST", "/api/v1/simulate",
             [&resources](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
               co_await writer.send(simulate_response(resources, request.body));
             });
}

}  // namespace nebula::controlplane
