// /api/v1/modes: named sets of deployments, and the switch between them. A switch is desired
// state: the handler plans it, records it on the target mode, and waits (awaiting a timer between
// short store reads, never blocking the I/O thread) while the controller advances it
// (mode_switch.cpp): stop or sleep the outgoing, wait for their VRAM, start or wake the incoming,
// wait for Ready, and roll back on failure. A server that dies half-way finishes the switch when
// it returns; only this answer is lost.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <functional>
#include <memory>

#include "controlplane/controlplane.h"
#include "controlplane/modes.h"

namespace nebula::controlplane {

namespace {

using http::Request;
using http::Response;
using http::ResponseWriter;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// How often a switch's answer re-reads the mode for the controller's progress: a read of one
// document, so it can be often; the agent reports released VRAM and Ready replicas the moment
// they happen, and the controller wakes on every store change.
constexpr milliseconds kPollInterval{10};

struct SwitchOptions {
  bool dry_run = false;
  milliseconds vram_timeout{60'000};
  milliseconds ready_timeout{120'000};
};

struct SwitchOutcome {
  SwitchPlan plan;
  bool ok = false;
  bool rolled_back = false;
  std::optional<Error> error;
  int64_t stop_ms = 0;
  int64_t vram_release_ms = 0;
  int64_t start_ms = 0;
  int64_t duration_ms = 0;
};

// The ErrorCode a stored switch failure names (to_string's inverse; Internal when unknown).
ErrorCode error_code_of(const std::string& name) {
  for (ErrorCode code : {ErrorCode::InvalidArgument, ErrorCode::NotFound, ErrorCode::Conflict, ErrorCode::Unavailable,
                         ErrorCode::ResourceExhausted, ErrorCode::Timeout}) {
    if (name == to_string(code)) return code;
  }
  return ErrorCode::Internal;
}

int64_t now_ms(Resources& resources) {
  return to_unix_ms(resources.clock().wall_now());
}

std::string joined(const std::vector<std::string>& names) {
  return names.empty() ? "-" : fmt::format("{}", fmt::join(names, ","));
}

// ---- the switch ------------------------------------------------------------------------------

// Reads the snapshot and plans: sleeps where the deployment is configured for it and the incoming
// set still fits beside the sleeping replicas, else stops.
Result<SwitchPlan> make_plan(Resources& resources, const std::string& name) {
  auto target = resources.get<api::Mode>(name);
  if (!target) return target.error();
  std::optional<api::Mode> active;
  for (auto& mode : resources.list<api::Mode>()) {
    if (mode.active && mode.metadata.name != name) active = mode;
  }
  auto deployments = resources.list<api::Deployment>();
  for (const auto& wanted : target->deployments) {
    bool exists = std::any_of(deployments.begin(), deployments.end(),
                              [&](const api::Deployment& deployment) { return deployment.metadata.name == wanted; });
    if (!exists) {
      return make_error(ErrorCode::NotFound,
                        fmt::format("mode {} lists deployment {}, which does not exist", name, wanted));
    }
  }
  auto nodes = resources.list<api::Node>();
  auto replicas = resources.list<api::Replica>();
  SwitchPlan plan = plan_switch(active, *target, deployments, true);
  if (incoming_fits(plan, nodes, replicas, deployments)) return plan;
  plan = plan_switch(active, *target, deployments, false);
  if (auto fits = incoming_fits(plan, nodes, replicas, deployments); !fits) return fits.error();
  return plan;
}

// Records the switch on the target mode for the controller, then waits until it is Done or
// Failed (or the client's patience runs out: the switch goes on without it).
awaitable<SwitchOutcome> run_switch(Resources& resources, asio::io_context& io, std::string name,
                                    SwitchOptions options) {
  SwitchOutcome outcome;
  auto plan = make_plan(resources, name);
  if (!plan) {
    outcome.error = plan.error();
    co_return outcome;
  }
  outcome.plan = *plan;
  if (options.dry_run) {
    outcome.ok = true;
    co_return outcome;
  }
  for (const auto& mode : resources.list<api::Mode>()) {
    if (switch_in_progress(mode.switching)) {
      outcome.error = make_error(ErrorCode::Conflict, fmt::format("another mode switch is running (to {}, {})",
                                                                  mode.metadata.name, mode.switching.phase));
      co_return outcome;
    }
  }
  spdlog::info("mode switch to {}: stop [{}] sleep [{}] start [{}] wake [{}]", name, joined(plan->stop),
               joined(plan->sleep), joined(plan->start), joined(plan->wake));
  api::ModeSwitch state;
  state.id = Resources::new_uid();
  state.phase = switch_phase::kLeaving;
  state.from = plan->from;
  state.stop = plan->stop;
  state.sleep = plan->sleep;
  state.start = plan->start;
  state.wake = plan->wake;
  state.vram_timeout_ms = options.vram_timeout.count();
  state.ready_timeout_ms = options.ready_timeout.count();
  state.started_ms = now_ms(resources);
  state.phase_started_ms = state.started_ms;
  auto recorded = resources.modify<api::Mode>(name, [&](api::Mode& current) {
    if (switch_in_progress(current.switching)) return false;
    current.switching = state;
    return true;
  });
  if (!recorded || recorded->switching.id != state.id) {
    outcome.error = recorded ? make_error(ErrorCode::Conflict, "another mode switch is running") : recorded.error();
    co_return outcome;
  }
  // The controller's steps; the answer waits for the last one.
  auto deadline = SteadyClock::now() + options.vram_timeout * 2 + options.ready_timeout * 2 + milliseconds(30'000);
  asio::steady_timer timer(io);
  while (true) {
    auto mode = resources.get<api::Mode>(name);
    if (!mode || mode->switching.id != state.id) {
      outcome.error = make_error(ErrorCode::Conflict, "the switch was replaced or its mode deleted");
      co_return outcome;
    }
    const auto& now = mode->switching;
    if (!switch_in_progress(now)) {
      outcome.stop_ms = now.stop_ms;
      outcome.vram_release_ms = now.vram_release_ms;
      outcome.start_ms = now.start_ms;
      outcome.duration_ms = now.duration_ms;
      outcome.rolled_back = now.rolled_back;
      outcome.ok = now.phase == switch_phase::kDone;
      if (!outcome.ok) outcome.error = Error{error_code_of(now.error_code), now.message};
      co_return outcome;
    }
    if (SteadyClock::now() >= deadline) {
      outcome.error = make_error(ErrorCode::Timeout, fmt::format("the switch is still in phase {}; it goes on "
                                                                 "(nebula mode ls shows when it is done)",
                                                                 now.phase));
      co_return outcome;
    }
    timer.expires_after(kPollInterval);
    co_await timer.async_wait(asio::use_awaitable);
  }
}

// ---- JSON at the edge -------------------------------------------------------------------------

json outcome_json(const SwitchOutcome& outcome, bool dry_run) {
  const auto& plan = outcome.plan;
  json body = {{"mode", plan.to},     {"from", plan.from},  {"started", plan.start}, {"stopped", plan.stop},
               {"slept", plan.sleep}, {"woken", plan.wake}, {"dry_run", dry_run}};
  if (!dry_run) {
    body["duration_ms"] = outcome.duration_ms;
    body["phases"] = {
        {"stop_ms", outcome.stop_ms}, {"vram_release_ms", outcome.vram_release_ms}, {"start_ms", outcome.start_ms}};
  }
  return body;
}

Response switch_response(const SwitchOutcome& outcome, bool dry_run) {
  if (outcome.ok) return Response::json_body(200, outcome_json(outcome, dry_run));
  const Error& error = *outcome.error;
  int status = http_status(error.code);
  json body = outcome_json(outcome, dry_run);
  body["error"] = {{"message", error.message},
                   {"type", status >= 500 ? "server_error" : "invalid_request_error"},
                   {"param", nullptr},
                   {"code", to_string(error.code)}};
  body["rolled_back"] = outcome.rolled_back;
  return Response::json_body(status, body);
}

Result<SwitchOptions> switch_options(const Request& request) {
  SwitchOptions options;
  std::string dry_run = request.query_or("dry_run", "0");
  options.dry_run = dry_run == "1" || dry_run == "true";
  if (!request.body.empty()) {
    auto body = parse_json(request.body);
    if (!body || !body->is_object()) {
      return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
    }
    if (body->value("dry_run", false)) options.dry_run = true;
    int64_t vram_timeout = body->value("vram_timeout_ms", int64_t{0});
    int64_t ready_timeout = body->value("ready_timeout_ms", int64_t{0});
    if (vram_timeout < 0 || ready_timeout < 0) {
      return make_error(ErrorCode::InvalidArgument, "timeouts must not be negative");
    }
    if (vram_timeout > 0) options.vram_timeout = milliseconds(vram_timeout);
    if (ready_timeout > 0) options.ready_timeout = milliseconds(ready_timeout);
  }
  return options;
}

// {"name", "deployments"} or {"metadata": {"name"}, "deployments"}; every deployment must exist.
Result<api::Mode> mode_from_request(Resources& resources, const std::string& text) {
  auto body = parse_json(text);
  if (!body) return body.error();
  if (!body->is_object()) return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
  auto parsed = api::mode_from_json(*body);
  if (!parsed) return parsed.error();
  api::Mode mode;
  mode.metadata.name = parsed->metadata.name;
  if (mode.metadata.name.empty() && body->contains("name") && (*body)["name"].is_string()) {
    mode.metadata.name = (*body)["name"].get<std::string>();
  }
  if (auto valid = api::validate_name(mode.metadata.name); !valid) return valid.error();
  if (parsed->deployments.empty()) {
    return make_error(ErrorCode::InvalidArgument, "a mode needs at least one deployment");
  }
  for (const auto& deployment : parsed->deployments) {
    if (std::find(mode.deployments.begin(), mode.deployments.end(), deployment) != mode.deployments.end()) continue;
    auto exists = resources.get<api::Deployment>(deployment);
    if (!exists) {
      return make_error(ErrorCode::InvalidArgument, fmt::format("deployment {} does not exist", deployment));
    }
    mode.deployments.push_back(deployment);
  }
  return mode;
}

Response create_response(Resources& resources, const std::string& body) {
  auto mode = mode_from_request(resources, body);
  if (!mode) return error_response(mode.error());
  auto created = resources.create(*mode);
  if (!created) return error_response(created.error());
  resources.record_event("mode/" + created->metadata.name, "Created",
                         fmt::format("deployments {}", joined(created->deployments)));
  return Response::json_body(201, api::to_json(*created));
}

Response list_response(Resources& resources) {
  int64_t revision = 0;
  json items = json::array();
  for (const auto& mode : resources.list<api::Mode>(&revision)) items.push_back(api::to_json(mode));
  return Response::json_body(200, json{{"items", items}, {"revision", revision}});
}

Response get_response(Resources& resources, const std::string& name) {
  auto mode = resources.get<api::Mode>(name);
  if (!mode) return error_response(mode.error());
  return Response::json_body(200, api::to_json(*mode));
}

Response delete_response(Resources& resources, const std::string& name) {
  auto mode = resources.get<api::Mode>(name);
  if (!mode) return error_response(mode.error());
  auto removed = resources.remove<api::Mode>(name);
  if (!removed) return error_response(removed.error());
  resources.record_event("mode/" + name, "Deleted", "deleted by the API");
  return Response::json_body(200, api::to_json(*mode));
}

}  // namespace

void add_mode_routes(http::Router& router, Resources& resources, asio::io_context& io) {
  router.add("POST", "/api/v1/modes", [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(create_response(resources, request.body));
  });
  router.add("GET", "/api/v1/modes", [&resources](Request&, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(list_response(resources));
  });
  router.add("GET", "/api/v1/modes/{name}", [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(get_response(resources, request.params["name"]));
  });
  router.add("DELETE", "/api/v1/modes/{name}",
             [&resources](Request& request, ResponseWriter& writer) -> awaitable<void> {
               co_await writer.send(delete_response(resources, request.params["name"]));
             });
  router.add("POST", "/api/v1/modes/{name}/switch",
             [&resources, &io](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto options = switch_options(request);
               if (!options) {
                 co_await writer.send(error_response(options.error()));
                 co_return;
               }
               SwitchOutcome outcome;
               try {
                 std::string name = request.params["name"];
                 SwitchOptions chosen = *options;
                 outcome = co_await run_switch(resources, io, name, chosen);
               } catch (const std::exception& error) {
                 outcome.error = make_error(ErrorCode::Internal, std::string("mode switch failed: ") + error.what());
               }
               co_await writer.send(switch_response(outcome, options->dry_run));
             });
}

}  // namespace nebula::controlplane
