// nebula rollout status|history|undo NAME, nebula restart NAME: rolling updates of a deployment.
#include <fmt/format.h>

#include <iostream>

#include "cli/cli.h"

namespace nebula::cli {

namespace {

void print_status(const json& view) {
  const json& rollout = view["rollout"];
  std::string state = rollout.value("state", "");
  std::cout << "deployment " << view.value("name", "") << ": plan " << view.value("plan_version", int64_t{0}) << ", "
            << view.value("ready_replicas", 0) << "/" << view.value("replicas", 0) << " ready\n";
  if (state.empty()) {
    std::cout << "no rollout yet\n";
  } else {
    std::cout << "rollout: " << state << " (plan " << rollout.value("from_version", int64_t{0}) << " → "
              << rollout.value("to_version", int64_t{0}) << ", started " << age(rollout.value("started_ms", int64_t{0}))
              << " ago)\n";
    if (!rollout.value("message", "").empty()) std::cout << "  " << rollout.value("message", "") << "\n";
  }
  std::vector<std::vector<std::string>> rows = {{"REPLICA", "PLAN", "PHASE", "NODE", "LEAVING", "RESTARTS"}};
  for (const auto& replica : view.value("replica_plans", json::array())) {
    rows.push_back({replica.value("name", ""), std::to_string(replica.value("plan_version", int64_t{0})),
                    replica.value("phase", ""), replica.value("node", ""),
                    replica.value("leaving", "").empty() ? "-" : replica.value("leaving", ""),
                    std::to_string(replica.value("restarts", 0))});
  }
  if (rows.size() > 1) print_table(rows);
}

void print_history(const json& view) {
  std::vector<std::vector<std::string>> rows = {
      {"PLAN", "CURRENT", "CREATED", "OUTCOME", "CAUSE", "MODEL", "ENGINE ARGS"}};
  int64_t current = view.value("plan_version", int64_t{0});
  for (const auto& plan : view.value("plans", json::array())) {
    const json& spec = plan["spec"];
    int64_t version = plan.value("version", int64_t{0});
    std::string outcome = plan.value("outcome", "");
    rows.push_back({std::to_string(version), version == current ? "*" : "",
                    age(plan.value("created_ms", int64_t{0})) + " ago", outcome.empty() ? "-" : outcome,
                    plan.value("cause", ""), spec.value("model", ""),
                    join_strings(spec.value("engine_args", json::array()), "-")});
  }
  print_table(rows);
}

}  // namespace

int run_rollout(int argc, char** argv) {
  CLI::App app{"Rolling updates of a deployment: status, plan history, undo", "nebula rollout"};
  app.require_subcommand(1);
  app.fallthrough();  // --server, --api-key and -o also work after the subcommand
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name;
  int64_t to_version = 0;
  auto* status = app.add_subcommand("status", "The current plan, the rollout and each replica's plan");
  status->add_option("name", name, "Deployment")->required();
  auto* history = app.add_subcommand("history", "The plans the deployment went through");
  history->add_option("name", name, "Deployment")->required();
  auto* undo = app.add_subcommand("undo", "Roll back to an earlier plan (a new rollout)");
  undo->add_option("name", name, "Deployment")->required();
  undo->add_option("--to-plan", to_version, "Plan to go back to (default: the last one unlike the current spec)")
      ->check(CLI::PositiveNumber);
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);

  ApiClient client(flags);
  if (undo->parsed()) {
    json body = json::object();
    if (to_version > 0) body["to_version"] = to_version;
    auto result = client.call("POST", api_path({"deployments", name, "rollout", "undo"}), body.dump());
    if (!result) return fail(result.error().message);
    print_as(flags.output, *result, [&] {
      std::cout << "deployment " << name << ": spec set back to plan " << result->value("restored_from", int64_t{0})
                << "; rolling out (nebula rollout status " << name << ")\n";
    });
    return 0;
  }
  auto view = client.call("GET", api_path({"deployments", name, "rollout"}));
  if (!view) return fail(view.error().message);
  if (history->parsed()) {
    print_as(flags.output, (*view)["plans"], [&] { print_history(*view); });
  } else {
    print_as(flags.output, *view, [&] { print_status(*view); });
  }
  return 0;
}

int run_restart(int argc, char** argv) {
  CLI::App app{"Restart a deployment's replicas one rollout step at a time (same spec, a new plan)", "nebula restart"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name;
  app.add_option("name", name, "Deployment")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  ApiClient client(flags);
  auto result = client.call("POST", api_path({"deployments", name, "restart"}));
  if (!result) return fail(result.error().message);
  print_as(flags.output, *result, [&] {
    std::cout << "deployment " << name << ": rolling restart requested (nebula rollout status " << name << ")\n";
  });
  return 0;
}

}  // namespace nebula::cli
