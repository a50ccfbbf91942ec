// Client commands over the management API: deploy, ls, get, rm, scale, nodes, gpus, events, logs.
#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <limits>
#include <thread>

#include "api/api.h"
#include "api/spec_check.h"
#include "cli/cli.h"
#include "common/config.h"
#include "models/models.h"
#include "router/policy.h"

namespace nebula::cli {

namespace {

std::string gib(int64_t mb) {
  return fmt::format("{:.1f}", mb / 1024.0);
}

// Reads `-f spec.yaml`: a Deployment document, or a bare spec (with an optional `name`).
Result<json> read_spec_file(const std::string& path) {
  auto text = read_input_file(path);
  if (!text) return text.error();
  auto document = yaml_to_json(*text);
  if (!document) return make_error(ErrorCode::InvalidArgument, path + ": " + document.error().message);
  if (!document->is_object()) return make_error(ErrorCode::InvalidArgument, path + ": expected a mapping");
  if (!document->contains("spec")) {
    json spec = std::move(*document);
    document = json{{"spec", json::object()}};
    for (auto& [field, value] : spec.items()) {
      if (field == "name") {
        (*document)["metadata"]["name"] = value;
      } else {
        (*document)["spec"][field] = value;
      }
    }
  }
  return document;
}

std::string replica_gpus(const json& replica) {
  const auto& gpus = replica["spec"]["gpus"];
  if (!gpus.is_array() || gpus.empty()) return "-";
  std::string text;
  for (const auto& gpu : gpus) text += (text.empty() ? "" : ",") + std::to_string(gpu.get<int>());
  return text;
}

std::vector<json> replicas_of(ApiClient& client, const std::string& deployment) {
  std::vector<json> replicas;
  auto listing = client.call("GET", api_path({"replicas"}));
  if (!listing) return replicas;
  for (const auto& item : (*listing)["items"]) {
    if (item["spec"].value("deployment", "") == deployment) replicas.push_back(item);
  }
  std::sort(replicas.begin(), replicas.end(), [](const json& a, const json& b) {
    return a["metadata"].value("name", "") < b["metadata"].value("name", "");
  });
  return replicas;
}

// A replica that will not come up by itself: its launch was refused (Failed before any restart)
// or it crashed again after a restart.
bool crash_looping(const json& replica) {
  const json& status = replica["status"];
  return status.value("phase", "") == api::phase::kFailed && status.value("restarts", 0) != 1;
}

// The first line of a replica's last error (the rest is the engine's log tail).
std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

// Polls the deployment until all desired replicas are Ready, printing each replica's phase and
// message as they change. Fails as soon as every replica is crash-looping, with the last error.
int wait_ready(ApiClient& client, const std::string& name, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last_report;
  // When the deployment became unplaceable; max() while it is not.
  auto pending_since = std::chrono::steady_clock::time_point::max();
  while (true) {
    auto deployment = client.call("GET", api_path({"deployments", name}));
    if (!deployment) return fail(deployment.error().message);
    const json& status = (*deployment)["status"];
    int desired = (*deployment)["spec"].value("replicas", 0);
    int ready = status.value("ready_replicas", 0);
    std::string phase = status.value("phase", "");
    std::string message = status.value("message", "");
    std::vector<json> replicas;
    for (auto& replica : replicas_of(client, name)) {
      if (!replica["spec"].value("stop", false)) replicas.push_back(std::move(replica));
    }
    std::string report =
        fmt::format("{}: {}/{} ready{}\n", name, ready, desired, message.empty() ? "" : " - " + first_line(message));
    for (const auto& replica : replicas) {
      const json& replica_status = replica["status"];
      std::string replica_message = replica_status.value("message", "");
      report += fmt::format("  {}: {}{}\n", replica["metadata"].value("name", ""), replica_status.value("phase", ""),
                            replica_message.empty() ? "" : " - " + first_line(replica_message));
    }
    if (report != last_report) {
      std::cout << report << std::flush;
      last_report = report;
    }
    if (ready >= desired && phase == "Ready") return 0;
    if (!replicas.empty() && std::all_of(replicas.begin(), replicas.end(), crash_looping)) {
      const json& last = replicas.back()["status"];
      std::string error = last.value("last_error", "");
      if (error.empty()) error = last.value("message", "");
      return fail(fmt::format("{} cannot start: every replica is failing; last error: {}", name, error));
    }
    // Unschedulable for 15 s in a row: nothing is going to change by itself.
    if (phase == "Pending") {
      auto now = std::chrono::steady_clock::now();
      pending_since = std::min(pending_since, now);
      if (now - pending_since > std::chrono::seconds(15)) {
        return fail(fmt::format("{} cannot be placed: {}", name, message));
      }
    } else {
      pending_since = std::chrono::steady_clock::time_point::max();
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return fail(fmt::format("timed out waiting for {} ({}/{} ready)", name, ready, desired));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
}

// Catalog names (aliases and ids, quantised variants included) for suggestions.
std::vector<std::string> catalog_names() {
  std::vector<std::string> names;
  for (const auto& entry : models::catalog()) {
    names.push_back(entry.alias);
    names.push_back(entry.id);
    for (const auto& variant : entry.variants) {
      names.push_back(variant.alias);
      names.push_back(variant.id);
    }
  }
  return names;
}

// A model that is neither in the catalog nor a local file is not refused (an engine may know
// it), but its VRAM is a guess: say so, with the catalog names it may have been meant to be.
void warn_unknown_model(const api::DeploymentSpec& spec) {
  if (spec.model.empty() || models::find_in_catalog(spec.model) || models::looks_like_path(spec.model)) return;
  std::string warning = fmt::format("warning: model '{}' is not in the catalog and not a local file", spec.model);
  auto close = api::closest_names(spec.model, catalog_names(), 3);
  if (!close.empty()) warning += fmt::format("; did you mean {}?", fmt::join(close, ", "));
  if (spec.vram_mb == 0) {
    auto estimate = models::estimate(spec);
    warning += estimate.source == "default"
                   ? " Its VRAM is a default guess: set --vram."
                   : fmt::format(" Its VRAM is estimated from its name ({}).", estimate.source);
  }
  std::cerr << warning << "\n";
}

// max_context above what the model was trained for: refused when the model is known (from the
// catalog, or the header of a model file on this machine).
Status check_context(const api::DeploymentSpec& spec) {
  if (spec.max_context <= 0) return {};
  int64_t context_length = 0;
  if (auto match = models::find_in_catalog(spec.model)) {
    context_length = match->info.context_length;
  } else if (models::looks_like_path(spec.model)) {
    if (auto info = models::read_model_path(spec.model)) context_length = info->context_length;
  }
  if (context_length <= 0 || spec.max_context <= context_length) return {};
  return make_error(ErrorCode::InvalidArgument,
                    fmt::format("--max-context {} is more than {}'s own context length ({})", spec.max_context,
                                spec.model, context_length));
}

}  // namespace

int run_deploy(int argc, char** argv) {
  CLI::App app{"Create or update a deployment", "nebula deploy"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name, model, engine, file, wait_timeout = "10m";
  int replicas = -1, gpus = -1, max_context = -1, max_seqs = -1, priority = 0;
  std::string vram;
  std::vector<std::string> engine_args, env;
  bool wait = false, dry_run = false;
  const int64_t kMaxInt = std::numeric_limits<int>::max();
  app.add_option("name", name, "Deployment name (also the model name clients ask for)");
  app.add_option("--model", model, "Model: a catalog id, a Hugging Face id or a path");
  app.add_option("--engine", engine, "sim, vllm, sglang, llamacpp, tgi, ollama, docker or command")
      ->check(engine_value());
  app.add_option("--replicas", replicas, "Number of replicas")->check(whole_number(0, 1000));
  app.add_option("--gpus", gpus, "GPUs per replica")->check(whole_number(0, 64));
  app.add_option("--max-context", max_context, "Context length")->check(whole_number(0, kMaxInt));
  app.add_option("--max-seqs", max_seqs, "Concurrent sequences per replica")->check(whole_number(0, kMaxInt));
  app.add_option("--vram", vram, "VRAM per replica (e.g. 24GB), overriding the estimate")->check(size_value());
  app.add_option("--priority", priority, "Priority (higher evicts lower)")->check(whole_number(-1'000'000, 1'000'000));
  std::string idle_timeout, on_idle;
  app.add_option("--idle-timeout", idle_timeout,
                 "Sleep or stop after this long without a request (e.g. 10m; 0 = never)")
      ->check(duration_value());
  app.add_option("--on-idle", on_idle, "What idle does: sleep-l1, sleep-l2 or stop")
      ->check(CLI::IsMember({"sleep-l1", "sleep-l2", "stop"}));
  std::string max_surge, max_unavailable;
  app.add_option("--max-surge", max_surge, "Rollouts: replicas started beyond --replicas (N or P%; default 1)");
  app.add_option("--max-unavailable", max_unavailable,
                 "Rollouts: Ready replicas that may be missing (N or P%; default 0)");
  std::string routing;
  app.add_option("--routing", routing,
                 "Replica choice: prefix+load (the default, \"\"), least-outstanding, round-robin, power-of-two, "
                 "session, prefix or kv-load, with parameters: NAME[,PARAM=N...] (docs/routing.md)");
  app.add_option("--engine-arg", engine_args, "Extra engine argument (repeatable)");
  app.add_option("--env", env, "Engine environment variable K=V (repeatable)");
  app.add_option("-f,--file", file, "Deployment spec in YAML");
  app.add_flag("--wait", wait, "Wait until every replica is ready");
  app.add_flag("--dry-run", dry_run, "Show the placement plan and VRAM per GPU; change nothing");
  app.add_option("--timeout", wait_timeout, "How long --wait waits")->check(duration_value(1))->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;

  json document = json::object();
  if (!file.empty()) {
    auto from_file = read_spec_file(file);
    if (!from_file) return usage_error(app, from_file.error().message);
    document = *from_file;
  }
  if (!name.empty()) document["metadata"]["name"] = name;
  const json& metadata = document.contains("metadata") ? document["metadata"] : json::object();
  if (!metadata.is_object() || !metadata.contains("name") || !metadata["name"].is_string() ||
      metadata["name"].get<std::string>().empty()) {
    return usage_error(app, "a deployment name is required (argument or metadata.name in -f)");
  }
  name = metadata["name"].get<std::string>();
  // Checked here as the server checks it: a name reaches URLs, and one holding a line break or a
  // slash must never become part of another request.
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  if (!file.empty()) {
    if (auto read = api::deployment_from_user_json(document); !read) {
      return usage_error(app, file + ": " + read.error().message);
    }
  }
  for (const auto& pair : env) {
    size_t eq = pair.find('=');
    if (eq == std::string::npos || eq == 0) return usage_error(app, "--env expects K=V, got '" + pair + "'");
  }
  ApiClient client(flags);
  json& spec = document["spec"];
  if (!spec.is_object()) spec = json::object();
  // Flags change an existing deployment rather than replace it: start from its spec unless a
  // file gives the whole spec.
  auto existing = client.call("GET", api_path({"deployments", name}));
  if (!existing && existing.error().code != ErrorCode::NotFound) return fail(existing.error().message);
  bool exists = existing.ok();
  if (exists && file.empty()) spec = (*existing)["spec"];
  if (!model.empty()) spec["model"] = model;
  if (!engine.empty()) spec["engine"] = engine;
  if (replicas >= 0) spec["replicas"] = replicas;
  if (gpus >= 0) spec["gpus_per_replica"] = gpus;
  if (max_context >= 0) spec["max_context"] = max_context;
  if (max_seqs >= 0) spec["max_seqs"] = max_seqs;
  if (priority != 0) spec["priority"] = priority;
  if (!idle_timeout.empty()) spec["idle_timeout_ms"] = parse_duration(idle_timeout)->count();
  if (!on_idle.empty()) spec["on_idle"] = on_idle;
  if (!max_surge.empty()) spec["max_surge"] = max_surge;
  if (!max_unavailable.empty()) spec["max_unavailable"] = max_unavailable;
  if (app.count("--routing") > 0) spec["routing"] = routing;
  if (!vram.empty()) spec["vram_mb"] = *parse_size_mb(vram);
  // Given flags replace the list, so the same command run twice asks for the same spec (and does
  // not start a second rollout).
  if (!engine_args.empty()) spec["engine_args"] = engine_args;
  for (const auto& pair : env) {
    size_t eq = pair.find('=');
    spec["env"][pair.substr(0, eq)] = pair.substr(eq + 1);
  }
  auto deployment = api::deployment_from_user_json(document);
  if (!deployment) return usage_error(app, deployment.error().message);
  if (auto valid = api::validate(deployment->spec); !valid) return usage_error(app, valid.error().message);
  // The server checks it too; refusing here names the flag's value before anything is sent.
  if (auto policy = router::make_policy(deployment->spec.routing); !policy) {
    return usage_error(app, "spec.routing: " + policy.error().message);
  }
  if (auto valid = check_context(deployment->spec); !valid) return usage_error(app, valid.error().message);
  warn_unknown_model(deployment->spec);
  auto timeout = parse_duration(wait_timeout);

  if (dry_run) {
    auto plan = client.call("POST", api_path({"simulate"}), document.dump());
    if (!plan) return fail(plan.error().message);
    return print_plan(*plan, flags.output);
  }
  // The server says which it did (201 created, 200 updated): another deploy of the name may have
  // come between the GET above and this PUT.
  int status = 0;
  auto result = client.call("PUT", api_path({"deployments", name}), document.dump(), &status);
  if (!result) return fail(result.error().message);
  if (flags.output != "table") {
    print_as(flags.output, *result, [] {});
  } else {
    std::cout << "deployment " << name << " " << (status == 201 ? "created" : "updated") << ": "
              << (*result)["spec"].value("model", "") << " on " << (*result)["spec"].value("engine", "") << " x "
              << (*result)["spec"].value("replicas", 0) << "\n";
  }
  return wait ? wait_ready(client, name, *timeout) : 0;
}

int run_ls(int argc, char** argv) {
  CLI::App app{"List deployments", "nebula ls"};
  ClientFlags flags;
  add_client_flags(app, flags);
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  auto listing = client.call("GET", api_path({"deployments"}));
  if (!listing) return fail(listing.error().message);
  print_as(flags.output, (*listing)["items"], [&] {
    std::vector<std::vector<std::string>> rows = {{"NAME", "ENGINE", "MODEL", "READY", "STATUS", "AGE"}};
    for (const auto& item : (*listing)["items"]) {
      const auto& spec = item["spec"];
      const auto& status = item["status"];
      rows.push_back({item["metadata"].value("name", ""), spec.value("engine", ""), spec.value("model", ""),
                      fmt::format("{}/{}", status.value("ready_replicas", 0), spec.value("replicas", 0)),
                      fmt::format("{}", status.value("phase", "")),
                      age(item["metadata"].value("created_ms", int64_t{0}))});
    }
    print_table(rows);
  });
  return 0;
}

int run_get(int argc, char** argv) {
  CLI::App app{"Show a deployment and its replicas", "nebula get"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name;
  app.add_option("name", name, "Deployment name")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  ApiClient client(flags);
  auto deployment = client.call("GET", api_path({"deployments", name}));
  if (!deployment) return fail(deployment.error().message);
  auto replicas = replicas_of(client, name);
  json combined = *deployment;
  combined["replicas"] = replicas;
  print_as(flags.output, combined, [&] {
    const auto& spec = (*deployment)["spec"];
    const auto& status = (*deployment)["status"];
    std::cout << "Name:      " << name << "\n"
              << "Model:     " << spec.value("model", "") << "\n"
              << "Engine:    " << spec.value("engine", "") << "\n"
              << "Replicas:  " << status.value("ready_replicas", 0) << "/" << spec.value("replicas", 0) << " ready\n"
              << "Routing:   "
              << (spec.value("routing", "").empty() ? std::string("prefix+load (default)") : spec.value("routing", ""))
              << "\n"
              << "Status:    " << status.value("phase", "")
              << (status.value("message", "").empty() ? "" : " - " + status.value("message", "")) << "\n"
              << "VRAM:      "
              << (replicas.empty() ? std::string("-")
                                   : gib(replicas.front()["spec"].value("vram_mb", int64_t{0})) + " GiB per replica")
              << (spec.value("vram_mb", int64_t{0}) > 0 ? " (from the spec)\n\n" : " (estimated)\n\n");
    std::vector<std::vector<std::string>> rows = {
        {"REPLICA", "NODE", "GPUS", "PHASE", "ENDPOINT", "RESTARTS", "LAST ERROR", "MESSAGE"}};
    for (const auto& replica : replicas) {
      const auto& rstatus = replica["status"];
      rows.push_back({replica["metadata"].value("name", ""), replica["spec"].value("node", ""), replica_gpus(replica),
                      rstatus.value("phase", "") + (replica["spec"].value("stop", false) ? " (stopping)" : ""),
                      rstatus.value("endpoint", ""), std::to_string(rstatus.value("restarts", 0)),
                      rstatus.value("last_error", ""), rstatus.value("message", "")});
    }
    print_table(rows);
  });
  return 0;
}

int run_rm(int argc, char** argv) {
  CLI::App app{"Remove a deployment (its engines are stopped)", "nebula rm"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::vector<std::string> names;
  app.add_option("name", names, "Deployment name(s)")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;
  for (const auto& name : names) {
    if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  }
  ApiClient client(flags);
  for (const auto& name : names) {
    auto removed = client.call("DELETE", api_path({"deployments", name}));
    if (!removed) return fail(removed.error().message);
    std::cout << "deployment " << name << " removed\n";
  }
  return 0;
}

int run_scale(int argc, char** argv) {
  CLI::App app{"Set the number of replicas of a deployment", "nebula scale"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name;
  int replicas = 0;
  app.add_option("name", name, "Deployment name")->required();
  app.add_option("replicas", replicas, "Replicas")->required()->check(whole_number(0, 1000));
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  ApiClient client(flags);
  auto scaled = client.call("PUT", api_path({"deployments", name, "scale"}), json{{"replicas", replicas}}.dump());
  if (!scaled) return fail(scaled.error().message);
  std::cout << "deployment " << name << " scaled to " << replicas << "\n";
  return 0;
}

int run_nodes(int argc, char** argv) {
  CLI::App app{"List nodes; add one over SSH, upgrade, drain, undrain or remove one", "nebula nodes"};
  app.require_subcommand(0, 1);
  app.fallthrough();
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string node;
  app.add_subcommand("ls", "List nodes (the default)");
  auto* drain = app.add_subcommand("drain", "Move a node's replicas elsewhere (start new, then stop old)");
  drain->add_option("node", node, "Node name")->required();
  auto* undrain = app.add_subcommand("undrain", "Let the scheduler place replicas on a drained node again");
  undrain->add_option("node", node, "Node name")->required();
  bool force = false;
  auto* remove = app.add_subcommand("rm", "Remove a node: revoke its key and reschedule its replicas");
  remove->add_option("node", node, "Node name")->required();
  remove->add_flag("--force", force, "Remove it even while it is Ready");
  NodeProvisioning provisioning(app, *remove, flags);
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (remove->parsed()) {
    if (auto valid = check_name(node); !valid) return usage_error(app, valid.error().message);
  }
  if (auto exit = provisioning.run(remove->parsed() ? node : "")) return *exit;
  ApiClient client(flags);
  if (remove->parsed()) {
    auto removed = client.call("DELETE", api_path({"nodes", node}) + (force ? "?force=1" : ""));
    if (!removed) return fail(removed.error().message);
    std::cout << "node " << node << " removed: its key is revoked and its replicas are rescheduled\n";
    return 0;
  }
  if (drain->parsed() || undrain->parsed()) {
    if (auto valid = check_name(node); !valid) return usage_error(app, valid.error().message);
    std::string action = drain->parsed() ? "drain" : "undrain";
    auto done = client.call("POST", api_path({"nodes", node, action}));
    if (!done) return fail(done.error().message);
    std::cout << "node " << node << (drain->parsed() ? " draining: its replicas move elsewhere\n" : " undrained\n");
    return 0;
  }
  auto listing = client.call("GET", api_path({"nodes"}));
  if (!listing) return fail(listing.error().message);
  print_as(flags.output, (*listing)["items"], [&] {
    std::vector<std::vector<std::string>> rows = {
        {"NAME", "STATUS", "GPUS", "VRAM (GiB)", "ENGINES", "HEARTBEAT", "AGENT"}};
    for (const auto& item : (*listing)["items"]) {
      const auto& status = item["status"];
      int64_t total = 0;
      for (const auto& gpu : status["gpus"]) total += gpu.value("memory_total_mb", int64_t{0});
      std::string engines;
      for (const auto& engine : status["engines"]) engines += (engines.empty() ? "" : ",") + engine.get<std::string>();
      std::string state = status.value("ready", false) ? "Ready" : "NotReady";
      if (item["spec"].value("drain", false)) state += ",Draining";
      rows.push_back({item["metadata"].value("name", ""), state, std::to_string(status["gpus"].size()), gib(total),
                      engines, age(status.value("heartbeat_ms", int64_t{0})) + " ago", status.value("agent_url", "")});
    }
    print_table(rows);
  });
  return 0;
}

int run_gpus(int argc, char** argv) {
  CLI::App app{"List GPUs across nodes with the VRAM placed on them", "nebula gpus"};
  ClientFlags flags;
  add_client_flags(app, flags);
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  // Right after `nebula up` the local agent has joined but not reported yet: wait a little for
  // the first report rather than print an empty list as if there were no GPUs.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  Result<json> listing = json::object();
  size_t nodes = 0, silent = 0;
  while (true) {
    listing = client.call("GET", api_path({"gpus"}));
    if (!listing) return fail(listing.error().message);
    auto node_listing = client.call("GET", api_path({"nodes"}));
    if (!node_listing) return fail(node_listing.error().message);
    nodes = (*node_listing)["items"].size();
    silent = 0;
    for (const auto& node : (*node_listing)["items"]) {
      if (node["status"].value("heartbeat_ms", int64_t{0}) == 0) ++silent;
    }
    if (!(*listing)["items"].empty() || (nodes > 0 && silent == 0) || std::chrono::steady_clock::now() > deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  print_as(flags.output, (*listing)["items"], [&] {
    if ((*listing)["items"].empty()) {
      if (nodes == 0) {
        std::cout << "no GPUs: no node has joined yet\n";
      } else if (silent > 0) {
        std::cout << fmt::format("no GPUs yet: {} node(s) joined, {} not reported yet\n", nodes, silent);
      } else {
        std::cout << "no GPUs: the nodes reported none\n";
      }
      return;
    }
    std::vector<std::vector<std::string>> rows = {
        {"NODE", "GPU", "NAME", "TOTAL (GiB)", "ALLOCATED", "USED", "UTIL", "REPLICAS"}};
    for (const auto& gpu : (*listing)["items"]) {
      std::string replicas;
      for (const auto& name : gpu["replicas"]) replicas += (replicas.empty() ? "" : ",") + name.get<std::string>();
      rows.push_back({gpu.value("node", ""), std::to_string(gpu.value("index", 0)), gpu.value("name", ""),
                      gib(gpu.value("memory_total_mb", int64_t{0})), gib(gpu.value("memory_allocated_mb", int64_t{0})),
                      gib(gpu.value("memory_used_mb", int64_t{0})),
                      fmt::format("{:.0f}%", gpu.value("utilization", 0.0)), replicas.empty() ? "-" : replicas});
    }
    print_table(rows);
  });
  return 0;
}

int run_events(int argc, char** argv) {
  CLI::App app{"List recent events", "nebula events"};
  ClientFlags flags;
  add_client_flags(app, flags);
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  auto listing = client.call("GET", api_path({"events"}));
  if (!listing) return fail(listing.error().message);
  print_as(flags.output, (*listing)["items"], [&] {
    std::vector<std::vector<std::string>> rows = {{"AGE", "TYPE", "OBJECT", "REASON", "MESSAGE"}};
    for (const auto& event : (*listing)["items"]) {
      rows.push_back({age(event.value("time_ms", int64_t{0})), event.value("type", ""), event.value("object", ""),
                      event.value("reason", ""), event.value("message", "")});
    }
    print_table(rows);
  });
  return 0;
}

int run_logs(int argc, char** argv) {
  CLI::App app{"Print the engine logs of a deployment's replica", "nebula logs"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string name;
  bool follow = false;
  int replica = 0;
  int64_t tail = 65536;
  app.add_option("name", name, "Deployment name")->required();
  app.add_flag("-f,--follow", follow, "Keep printing as the log grows");
  app.add_option("--replica", replica, "Which replica (0-based, in name order)")
      ->check(whole_number(0, 1000))
      ->capture_default_str();
  app.add_option("--tail", tail, "Bytes from the end of the log")
      ->check(whole_number(0, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;
  if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  ApiClient client(flags);
  auto deployment = client.call("GET", api_path({"deployments", name}));
  if (!deployment) return fail(deployment.error().message);
  auto streamed = client.stream_to_stdout(
      api_path({"deployments", name, "logs"},
               {{"replica", std::to_string(replica)}, {"follow", follow ? "1" : "0"}, {"tail", std::to_string(tail)}}));
  if (!streamed) return fail(streamed.error().message);
  return 0;
}

int run_version(int argc, char** argv) {
  CLI::App app{"Print the version", "nebula version"};
  if (auto exit = parse(app, argc, argv)) return *exit;
  std::cout << "nebula " << NEBULA_VERSION << "\n";
  return 0;
}

}  // namespace nebula::cli
