// Client commands over the management API: deploy, ls, get, rm, scale, nodes, gpus, events, logs.
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "api/api.h"
#include "cli/cli.h"
#include "common/config.h"

namespace nebula::cli {

namespace {

std::string gib(int64_t mb) {
  return fmt::format("{:.1f}", mb / 1024.0);
}

// Builds a deployment from `-f spec.yaml` (a Deployment document or a bare spec), then flags.
Result<json> read_spec_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::InvalidArgument, "cannot read " + path);
  std::stringstream text;
  text << in.rdbuf();
  auto document = yaml_to_json(text.str());
  if (!document) return make_error(ErrorCode::InvalidArgument, path + ": " + document.error().message);
  if (!document->is_object()) return make_error(ErrorCode::InvalidArgument, path + ": expected a mapping");
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
  auto listing = client.call("GET", "/api/v1/replicas");
  if (!listing) return replicas;
  for (const auto& item : (*listing)["items"]) {
    if (item["spec"].value("deployment", "") == deployment) replicas.push_back(item);
  }
  std::sort(replicas.begin(), replicas.end(), [](const json& a, const json& b) {
    return a["metadata"].value("name", "") < b["metadata"].value("name", "");
  });
  return replicas;
}

// Polls the deployment until all desired replicas are Ready, printing progress as it changes.
int wait_ready(ApiClient& client, const std::string& name, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last_line;
  // When the deployment last turned Pending; the epoch while it is not (a std::optional here
  // drew a g++ 12 -Wmaybe-uninitialized false positive).
  std::chrono::steady_clock::time_point pending_since{};
  while (true) {
    auto deployment = client.call("GET", "/api/v1/deployments/" + name);
    if (!deployment) return fail(deployment.error().message);
    const json& status = (*deployment)["status"];
    int desired = (*deployment)["spec"].value("replicas", 0);
    int ready = status.value("ready_replicas", 0);
    std::string phase = status.value("phase", "");
    std::string message = status.value("message", "");
    std::string line = fmt::format("{}: {}/{} ready{}", name, ready, desired, message.empty() ? "" : " - " + message);
    if (line != last_line) {
      std::cout << line << "\n" << std::flush;
      last_line = line;
    }
    if (ready >= desired && phase == "Ready") return 0;
    // Unschedulable for 15 s in a row: nothing is going to change by itself.
    if (phase == "Pending") {
      if (pending_since == std::chrono::steady_clock::time_point{}) pending_since = std::chrono::steady_clock::now();
      if (std::chrono::steady_clock::now() - pending_since > std::chrono::seconds(15)) {
        return fail(fmt::format("{} cannot be placed: {}", name, message));
      }
    } else {
      pending_since = {};
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return fail(fmt::format("timed out waiting for {} ({}/{} ready)", name, ready, desired));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
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
  app.add_option("name", name, "Deployment name (also the model name clients ask for)");
  app.add_option("--model", model, "Model: a catalog id, a Hugging Face id or a path");
  app.add_option("--engine", engine, "sim, vllm, sglang, llamacpp, tgi, ollama, docker or command");
  app.add_option("--replicas", replicas, "Number of replicas")->check(CLI::Range(0, 1000));
  app.add_option("--gpus", gpus, "GPUs per replica")->check(CLI::Range(0, 64));
  app.add_option("--max-context", max_context, "Context length")->check(CLI::NonNegativeNumber);
  app.add_option("--max-seqs", max_seqs, "Concurrent sequences per replica")->check(CLI::NonNegativeNumber);
  app.add_option("--vram", vram, "VRAM per replica (e.g. 24GB), overriding the estimate");
  app.add_option("--priority", priority, "Priority (higher evicts lower)");
  std::string idle_timeout, on_idle;
  app.add_option("--idle-timeout", idle_timeout,
                 "Sleep or stop after this long without a request (e.g. 10m; 0 = never)");
  app.add_option("--on-idle", on_idle, "What idle does: sleep-l1, sleep-l2 or stop")
      ->check(CLI::IsMember({"sleep-l1", "sleep-l2", "stop"}));
  app.add_option("--engine-arg", engine_args, "Extra engine argument (repeatable)");
  app.add_option("--env", env, "Engine environment variable K=V (repeatable)");
  app.add_option("-f,--file", file, "Deployment spec in YAML");
  app.add_flag("--wait", wait, "Wait until every replica is ready");
  app.add_flag("--dry-run", dry_run, "Show the placement plan and VRAM per GPU; change nothing");
  app.add_option("--timeout", wait_timeout, "How long --wait waits")->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;

  json document = json::object();
  if (!file.empty()) {
    auto from_file = read_spec_file(file);
    if (!from_file) return fail(from_file.error().message);
    document = *from_file;
    if (!document.contains("spec")) document = json{{"spec", document}};  // a bare spec
    if (document.contains("name") && !document.contains("metadata"))
      document["metadata"] = {{"name", document["name"]}};
  }
  if (!name.empty()) document["metadata"]["name"] = name;
  name = document.contains("metadata") ? document["metadata"].value("name", "") : "";
  if (name.empty()) {
    std::cerr << "error: a deployment name is required (argument or metadata.name in -f)\n";
    return 2;
  }
  ApiClient client(flags);
  json& spec = document["spec"];
  if (!spec.is_object()) spec = json::object();
  // Flags change an existing deployment rather than replace it: start from its spec unless a
  // file gives the whole spec.
  auto existing = client.call("GET", "/api/v1/deployments/" + name);
  bool exists = existing.ok();
  if (exists && file.empty()) spec = (*existing)["spec"];
  if (!model.empty()) spec["model"] = model;
  if (!engine.empty()) spec["engine"] = engine;
  if (replicas >= 0) spec["replicas"] = replicas;
  if (gpus >= 0) spec["gpus_per_replica"] = gpus;
  if (max_context >= 0) spec["max_context"] = max_context;
  if (max_seqs >= 0) spec["max_seqs"] = max_seqs;
  if (priority != 0) spec["priority"] = priority;
  if (!idle_timeout.empty()) {
    auto duration = parse_duration(idle_timeout);
    if (!duration) {
      std::cerr << "error: --idle-timeout: " << duration.error().message << "\n";
      return 2;
    }
    spec["idle_timeout_ms"] = duration->count();
  }
  if (!on_idle.empty()) spec["on_idle"] = on_idle;
  if (!vram.empty()) {
    auto mb = parse_size_mb(vram);
    if (!mb) return fail(mb.error().message);
    spec["vram_mb"] = *mb;
  }
  for (const auto& arg : engine_args) spec["engine_args"].push_back(arg);
  for (const auto& pair : env) {
    size_t eq = pair.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::cerr << "error: --env expects K=V, got '" << pair << "'\n";
      return 2;
    }
    spec["env"][pair.substr(0, eq)] = pair.substr(eq + 1);
  }
  auto timeout = parse_duration(wait_timeout);
  if (!timeout) return fail(timeout.error().message);

  if (dry_run) {
    auto plan = client.call("POST", "/api/v1/simulate", document.dump());
    if (!plan) return fail(plan.error().message);
    return print_plan(*plan, flags.output);
  }
  auto result = client.call("PUT", "/api/v1/deployments/" + name, document.dump());
  if (!result) return fail(result.error().message);
  if (flags.output != "table") {
    print_as(flags.output, *result, [] {});
  } else {
    std::cout << "deployment " << name << " " << (exists ? "updated" : "created") << ": "
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
  auto listing = client.call("GET", "/api/v1/deployments");
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
  ApiClient client(flags);
  auto deployment = client.call("GET", "/api/v1/deployments/" + name);
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
  ApiClient client(flags);
  for (const auto& name : names) {
    auto removed = client.call("DELETE", "/api/v1/deployments/" + name);
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
  app.add_option("replicas", replicas, "Replicas")->required()->check(CLI::Range(0, 1000));
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  auto scaled = client.call("PUT", "/api/v1/deployments/" + name + "/scale", json{{"replicas", replicas}}.dump());
  if (!scaled) return fail(scaled.error().message);
  std::cout << "deployment " << name << " scaled to " << replicas << "\n";
  return 0;
}

int run_nodes(int argc, char** argv) {
  CLI::App app{"List nodes; drain or undrain one", "nebula nodes"};
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
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  if (drain->parsed() || undrain->parsed()) {
    std::string action = drain->parsed() ? "drain" : "undrain";
    auto done = client.call("POST", "/api/v1/nodes/" + node + "/" + action);
    if (!done) return fail(done.error().message);
    std::cout << "node " << node << (drain->parsed() ? " draining: its replicas move elsewhere\n" : " undrained\n");
    return 0;
  }
  auto listing = client.call("GET", "/api/v1/nodes");
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
  auto listing = client.call("GET", "/api/v1/gpus");
  if (!listing) return fail(listing.error().message);
  print_as(flags.output, (*listing)["items"], [&] {
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
  auto listing = client.call("GET", "/api/v1/events");
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
  app.add_option("--replica", replica, "Which replica (0-based, in name order)")->capture_default_str();
  app.add_option("--tail", tail, "Bytes from the end of the log")->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  auto status = client.stream_to_stdout(
      fmt::format("/api/v1/deployments/{}/logs?replica={}&follow={}&tail={}", name, replica, follow ? 1 : 0, tail));
  if (!status) return fail(status.error().message);
  if (*status != 200) return fail(fmt::format("no logs for {} replica {} (HTTP {})", name, replica, *status));
  return 0;
}

int run_version(int argc, char** argv) {
  CLI::App app{"Print the version", "nebula version"};
  if (auto exit = parse(app, argc, argv)) return *exit;
  std::cout << "nebula " << NEBULA_VERSION << "\n";
  return 0;
}

}  // namespace nebula::cli
