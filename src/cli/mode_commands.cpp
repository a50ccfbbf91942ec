// nebula mode create|ls|switch|rm: named sets of deployments and the switch between them.
#include <fmt/format.h>

#include <iostream>

#include "cli/cli.h"
#include "common/config.h"

namespace nebula::cli {

namespace {

void print_switch(const json& result) {
  bool dry_run = result.value("dry_run", false);
  std::cout << (dry_run ? "would switch" : "switched") << " to mode " << result.value("mode", "") << " from "
            << (result.value("from", "").empty() ? "(none)" : result.value("from", "")) << "\n";
  std::cout << "  stopped: " << join_strings(result.value("stopped", json::array()), "-") << "\n"
            << "  slept:   " << join_strings(result.value("slept", json::array()), "-") << "\n"
            << "  started: " << join_strings(result.value("started", json::array()), "-") << "\n"
            << "  woken:   " << join_strings(result.value("woken", json::array()), "-") << "\n";
  if (!dry_run && result.contains("phases")) {
    const json& phases = result["phases"];
    std::cout << fmt::format("  took {} ms (stop {} ms, VRAM release {} ms, start {} ms)\n",
                             result.value("duration_ms", int64_t{0}), phases.value("stop_ms", int64_t{0}),
                             phases.value("vram_release_ms", int64_t{0}), phases.value("start_ms", int64_t{0}));
  }
}

}  // namespace

int run_mode(int argc, char** argv) {
  CLI::App app{"Named sets of deployments, and switching between them", "nebula mode"};
  app.require_subcommand(1);
  app.fallthrough();  // --server, --api-key and -o also work after the subcommand
  ClientFlags flags;
  add_client_flags(app, flags);

  auto* create = app.add_subcommand("create", "Create a mode from existing deployments");
  std::string name, deployments;
  create->add_option("name", name, "Mode name")->required();
  create->add_option("--deployments", deployments, "Comma-separated deployments (a,b,c)")->required();

  app.add_subcommand("ls", "List modes");

  auto* switch_to = app.add_subcommand("switch", "Stop the outgoing deployments, then start the mode's");
  std::string vram_timeout = "60s", ready_timeout = "2m";
  bool dry_run = false;
  switch_to->add_option("name", name, "Mode to switch to")->required();
  switch_to->add_flag("--dry-run", dry_run, "Show what would stop and start; change nothing");
  switch_to->add_option("--vram-timeout", vram_timeout, "How long to wait for the GPUs to release VRAM")
      ->check(duration_value(1))
      ->capture_default_str();
  switch_to->add_option("--ready-timeout", ready_timeout, "How long to wait for the incoming to be Ready")
      ->check(duration_value(1))
      ->capture_default_str();

  auto* remove = app.add_subcommand("rm", "Delete a mode (its deployments are left as they are)");
  remove->add_option("name", name, "Mode name")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;

  if (!name.empty()) {
    if (auto valid = check_name(name); !valid) return usage_error(app, valid.error().message);
  }
  ApiClient client(flags);
  if (create->parsed()) {
    json body = {{"name", name}, {"deployments", split_commas(deployments)}};
    auto created = client.call("POST", "/api/v1/modes", body.dump());
    if (!created) return fail(created.error().message);
    print_as(flags.output, *created, [&] {
      std::cout << "mode " << name << " created: " << join_strings((*created)["deployments"], "-") << "\n";
    });
    return 0;
  }
  if (remove->parsed()) {
    auto removed = client.call("DELETE", api_path({"modes", name}));
    if (!removed) return fail(removed.error().message);
    std::cout << "mode " << name << " deleted\n";
    return 0;
  }
  if (switch_to->parsed()) {
    auto vram = parse_duration(vram_timeout);
    auto ready = parse_duration(ready_timeout);
    if (!vram || !ready) {
      std::cerr << "error: --vram-timeout and --ready-timeout take durations such as 60s or 2m\n";
      return 2;
    }
    json body = {{"vram_timeout_ms", vram->count()}, {"ready_timeout_ms", ready->count()}};
    // The switch answers when it is done (or rolled back): wait for both timeouts and a rollback.
    auto timeout = *vram * 2 + *ready * 2 + std::chrono::seconds(30);
    http::BlockingClient http_client;
    auto response =
        http_client.request("POST",
                            client.server() + (dry_run ? api_path({"modes", name, "switch"}, {{"dry_run", "1"}})
                                                       : api_path({"modes", name, "switch"})),
                            body.dump(), client.headers(), timeout);
    if (!response) return fail(response.error().message);
    auto result = parse_json(response->body);
    if (!result || !result->is_object()) return fail(fmt::format("HTTP {}: {}", response->status, response->body));
    if (response->status != 200) {
      std::string message = result->contains("error") && (*result)["error"].is_object()
                                ? (*result)["error"].value("message", response->body)
                                : response->body;
      if (flags.output != "table") print_as(flags.output, *result, [] {});
      if (result->value("rolled_back", false)) message += " (rolled back to the previous mode)";
      return fail(message);
    }
    print_as(flags.output, *result, [&] { print_switch(*result); });
    return 0;
  }
  auto listing = client.call("GET", "/api/v1/modes");
  if (!listing) return fail(listing.error().message);
  print_as(flags.output, (*listing)["items"], [&] {
    std::vector<std::vector<std::string>> rows = {{"NAME", "ACTIVE", "DEPLOYMENTS", "SWITCHED", "LAST SWITCH"}};
    for (const auto& mode : (*listing)["items"]) {
      int64_t switched = mode.value("switched_ms", int64_t{0});
      rows.push_back({mode["metadata"].value("name", ""), mode.value("active", false) ? "*" : "",
                      join_strings(mode.value("deployments", json::array()), "-"),
                      switched > 0 ? age(switched) + " ago" : "-", mode.value("last_switch", "")});
    }
    print_table(rows);
  });
  return 0;
}

}  // namespace nebula::cli
