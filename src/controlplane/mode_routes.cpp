// /api/v1/modes: named sets of deployments, and the switch between them. A switch stops (or
// sleeps) the outgoing deployments, waits until the GPUs report their VRAM released, starts (or
// wakes) the incoming ones and waits until they are Ready; any failure rolls back to the previous
// mode. It runs on the server's one I/O thread: between short store reads it awaits a timer,
// never blocks.
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

// How often a switch re-reads the store for released VRAM and Ready replicas: a read of the
// in-memory resources, so it can be often; the agent reports both the moment they happen.
constexpr milliseconds kPollInterval{10};
// An incoming deployment that stays unschedulable this long will not start by itself.
constexpr milliseconds kPendingGrace{3'000};

// Only one switch at a time. Touched only on the I/O thread.
struct ModeState {
  bool switching = false;
};

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

int64_t elapsed_ms(SteadyClock::time_point since) {
  return std::chrono::duration_cast<milliseconds>(SteadyClock::now() - since).count();
}

int64_t now_ms(Resources& resources) {
  return to_unix_ms(resources.clock().wall_now());
}

std::string joined(const std::vector<std::string>& names) {
  return names.empty() ? "-" : fmt::format("{}", fmt::join(names, ","));
}

// ---- writes: each one read-modify-write of a deployment ------------------------------------

void stop_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  auto updated = resources.modify<api::Deployment>(name, [](api::Deployment& current) {
    if (current.spec.replicas == 0) return false;
    current.metadata.labels[api::kModeReplicasLabel] = std::to_string(current.spec.replicas);
    current.spec.replicas = 0;
    return true;
  });
  if (updated) resources.record_event("deployment/" + name, "ModeStop", "stopped by the switch to mode " + mode);
}

void start_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  int64_t now = now_ms(resources);
  auto updated = resources.modify<api::Deployment>(name, [now](api::Deployment& current) {
    current.spec.replicas = replicas_to_restore(current);
    current.metadata.labels.erase(api::kModeReplicasLabel);
    // Idle as well (stopped by its idle timeout): a wake request brings it back.
    if (current.status.idle_since_ms > 0) {
      current.status.wake_requested_ms = std::max(now, current.status.idle_since_ms);
    }
    return true;
  });
  if (updated) resources.record_event("deployment/" + name, "ModeStart", "started by the switch to mode " + mode);
}

// The controller puts a deployment to sleep while status.idle_since_ms > 0 and no wake request
// came at or after it (controller.cpp reconcile_idle).
void sleep_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  int64_t now = now_ms(resources);
  auto updated = resources.modify<api::Deployment>(name, [now](api::Deployment& current) {
    current.status.idle_since_ms = std::max(now, current.status.wake_requested_ms + 1);
    return true;
  });
  if (updated) resources.record_event("deployment/" + name, "ModeSleep", "put to sleep by the switch to mode " + mode);
}

void wake_deployment(Resources& resources, const std::string& name, const std::string& mode) {
  int64_t now = now_ms(resources);
  auto updated = resources.modify<api::Deployment>(name, [now](api::Deployment& current) {
    if (current.status.idle_since_ms == 0) return false;
    current.status.wake_requested_ms = std::max(now, current.status.idle_since_ms);
    return true;
  });
  if (updated) resources.record_event("deployment/" + name, "ModeWake", "woken by the switch to mode " + mode);
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

// ---- checks polled while waiting -----------------------------------------------------------

struct Check {
  bool done = false;
  bool failed = false;  // will not get done by waiting
  std::string message;  // what is still awaited, or why it failed
};

struct ReleaseWait {
  std::set<std::string> stopped;
  std::set<std::string> slept;
  std::map<GpuKey, int64_t> targets;
};

ReleaseWait release_wait_for(Resources& resources, const SwitchPlan& plan) {
  ReleaseWait wait;
  wait.stopped = {plan.stop.begin(), plan.stop.end()};
  wait.slept = {plan.sleep.begin(), plan.sleep.end()};
  std::set<std::string> outgoing = wait.stopped;
  outgoing.insert(wait.slept.begin(), wait.slept.end());
  wait.targets = release_targets(resources.list<api::Node>(), resources.list<api::Replica>(), outgoing);
  return wait;
}

Check check_released(Resources& resources, const ReleaseWait& wait) {
  auto waiting = vram_not_released(resources.list<api::Node>(), resources.list<api::Replica>(), wait.stopped,
                                   wait.slept, wait.targets);
  Check check;
  check.done = waiting.empty();
  if (!waiting.empty()) check.message = fmt::format("{}", fmt::join(waiting, "; "));
  return check;
}

// Every incoming deployment Ready with all its replicas; a replica that failed, or one that stays
// unschedulable past kPendingGrace, fails the wait.
Check check_ready(Resources& resources, const SwitchPlan& plan, std::optional<SteadyClock::time_point>& pending_since) {
  auto replicas = resources.list<api::Replica>();
  Check check;
  std::vector<std::string> waiting;
  bool pending = false;
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
        pending = true;
        if (pending_since && SteadyClock::now() - *pending_since > kPendingGrace) {
          check.failed = true;
          check.message = fmt::format("{} cannot be placed: {}", name, replica.status.message);
          return check;
        }
      }
    }
  }
  if (!pending) {
    pending_since.reset();
  } else if (!pending_since) {
    pending_since = SteadyClock::now();
  }
  check.done = waiting.empty();
  check.message = fmt::format("{}", fmt::join(waiting, ", "));
  return check;
}

// Polls `check` every kPollInterval until it is done, fails, or `timeout` passes.
awaitable<Check> wait_for(asio::io_context& io, milliseconds timeout, std::function<Check()> check) {
  auto deadline = SteadyClock::now() + timeout;
  asio::steady_timer timer(io);
  while (true) {
    Check result = check();
    if (result.done || result.failed) co_return result;
    if (SteadyClock::now() >= deadline) co_return result;
    timer.expires_after(kPollInterval);
    co_await timer.async_wait(asio::use_awaitable);
  }
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

std::string summary_of(const SwitchOutcome& outcome) {
  const auto& plan = outcome.plan;
  return fmt::format("from {}: stopped {}, slept {}, started {}, woken {} in {} ms",
                     plan.from.empty() ? "-" : plan.from, joined(plan.stop), joined(plan.sleep), joined(plan.start),
                     joined(plan.wake), outcome.duration_ms);
}

// Undoes a switch that failed after it began: stops what it started, waits (bounded) for that
// VRAM, then restores the outgoing deployments and waits for them to be Ready.
awaitable<std::string> roll_back(Resources& resources, asio::io_context& io, const SwitchPlan& plan,
                                 SwitchOptions options) {
  SwitchPlan back = reverse(plan);
  std::string mode_name = plan.from.empty() ? std::string("(none)") : plan.from;
  ReleaseWait release = release_wait_for(resources, back);
  leave(resources, back, mode_name);
  // g++ 12 destroys temporaries in a co_await operand twice: the checks are named locals.
  std::function<Check()> release_check = [&resources, release] { return check_released(resources, release); };
  Check released = co_await wait_for(io, options.vram_timeout, release_check);
  enter(resources, back, mode_name);
  std::optional<SteadyClock::time_point> pending_since;
  std::function<Check()> ready_check = [&resources, back, pending_since]() mutable {
    return check_ready(resources, back, pending_since);
  };
  Check ready = co_await wait_for(io, options.ready_timeout, ready_check);
  std::string problem;
  if (!released.done) problem = "incoming VRAM not released: " + released.message;
  if (!ready.done) problem += (problem.empty() ? "" : "; ") + std::string("outgoing not Ready again: ") + ready.message;
  co_return problem;
}

awaitable<SwitchOutcome> run_switch(Resources& resources, asio::io_context& io, std::string name,
                                    SwitchOptions options) {
  SwitchOutcome outcome;
  auto started = SteadyClock::now();
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
  spdlog::info("mode switch to {}: stop [{}] sleep [{}] start [{}] wake [{}]", name, joined(plan->stop),
               joined(plan->sleep), joined(plan->start), joined(plan->wake));

  // 1. Stop or sleep what is outgoing.
  auto phase_start = SteadyClock::now();
  ReleaseWait release = release_wait_for(resources, *plan);
  leave(resources, *plan, name);
  outcome.stop_ms = elapsed_ms(phase_start);

  // 2. Wait until the GPUs report the outgoing VRAM released.
  phase_start = SteadyClock::now();
  std::function<Check()> release_check = [&resources, release] { return check_released(resources, release); };
  Check released = co_await wait_for(io, options.vram_timeout, release_check);
  outcome.vram_release_ms = elapsed_ms(phase_start);
  std::optional<Error> failure;
  if (!released.done) {
    failure =
        make_error(ErrorCode::Timeout, fmt::format("the GPUs did not report the outgoing VRAM released within {} s: {}",
                                                   options.vram_timeout.count() / 1000, released.message));
  }

  // 3. Start or wake what is incoming and wait until it is Ready.
  if (!failure) {
    resources.record_event("mode/" + name, "VramReleased",
                           fmt::format("outgoing VRAM released after {} ms", outcome.vram_release_ms));
    phase_start = SteadyClock::now();
    enter(resources, *plan, name);
    std::optional<SteadyClock::time_point> pending_since;
    SwitchPlan incoming = *plan;
    std::function<Check()> ready_check = [&resources, incoming, pending_since]() mutable {
      return check_ready(resources, incoming, pending_since);
    };
    Check ready = co_await wait_for(io, options.ready_timeout, ready_check);
    outcome.start_ms = elapsed_ms(phase_start);
    if (!ready.done) {
      std::string why =
          ready.failed ? ready.message
                       : fmt::format("not Ready within {} s: {}", options.ready_timeout.count() / 1000, ready.message);
      failure = make_error(ready.failed ? ErrorCode::Unavailable : ErrorCode::Timeout, why);
    }
  }

  if (failure) {
    resources.record_event("mode/" + name, "SwitchFailed", failure->message + "; rolling back", "Warning");
    std::string problem = co_await roll_back(resources, io, *plan, options);
    outcome.rolled_back = true;
    if (!problem.empty()) failure->message += "; the rollback did not complete: " + problem;
    outcome.error = failure;
    outcome.duration_ms = elapsed_ms(started);
    resources.record_event("mode/" + name, "RolledBack",
                           fmt::format("back to mode {}", plan->from.empty() ? "(none)" : plan->from),
                           problem.empty() ? "Normal" : "Warning");
    co_return outcome;
  }
  outcome.ok = true;
  outcome.duration_ms = elapsed_ms(started);
  mark_active(resources, name, summary_of(outcome));
  resources.record_event("mode/" + name, "Switched", summary_of(outcome));
  co_return outcome;
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

Response busy_response() {
  return error_response(make_error(ErrorCode::Conflict, "another mode switch is running"));
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
  auto state = std::make_shared<ModeState>();
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
             [&resources, &io, state](Request& request, ResponseWriter& writer) -> awaitable<void> {
               auto options = switch_options(request);
               if (!options) {
                 co_await writer.send(error_response(options.error()));
                 co_return;
               }
               if (state->switching) {
                 co_await writer.send(busy_response());
                 co_return;
               }
               // A dry run changes nothing, so it does not take the switch slot.
               bool takes_slot = !options->dry_run;
               if (takes_slot) state->switching = true;
               SwitchOutcome outcome;
               try {
                 std::string name = request.params["name"];
                 SwitchOptions chosen = *options;
                 outcome = co_await run_switch(resources, io, name, chosen);
               } catch (const std::exception& error) {
                 outcome.error = make_error(ErrorCode::Internal, std::string("mode switch failed: ") + error.what());
               }
               if (takes_slot) state->switching = false;
               co_await writer.send(switch_response(outcome, options->dry_run));
             });
}

}  // namespace nebula::controlplane
