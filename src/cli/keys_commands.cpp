// nebula keys create|ls|revoke, nebula usage, nebula chat.
#include <fmt/format.h>

#include <iostream>
#include <limits>

#include "cli/cli.h"
#include "common/clock.h"
#include "common/config.h"
#include "http/sse.h"

namespace nebula::cli {

namespace {
std::string limit(int64_t value) {
  return value > 0 ? std::to_string(value) : "-";
}

}  // namespace

int run_keys(int argc, char** argv) {
  CLI::App app{"Manage API keys", "nebula keys"};
  app.require_subcommand(1);
  app.fallthrough();  // --server, --api-key and -o also work after the subcommand
  ClientFlags flags;
  add_client_flags(app, flags);

  auto* create = app.add_subcommand("create", "Create a key; its secret is printed once");
  std::string name, scope = "inference", models, expires, budget;
  int64_t rpm = 0, tpm = 0, concurrency = 0;
  int priority = 0;
  create->add_option("name", name, "A name for the key")->required();
  create->add_option("--scope", scope, "admin or inference")->check(CLI::IsMember({"admin", "inference"}));
  create->add_option("--models", models, "Comma-separated deployments the key may use (default: all)");
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  create->add_option("--rpm", rpm, "Requests per minute")->check(whole_number(0, kMax));
  create->add_option("--tpm", tpm, "Tokens per minute")->check(whole_number(0, kMax));
  create->add_option("--max-concurrency", concurrency, "Concurrent requests")->check(whole_number(0, kMax));
  create->add_option("--budget-tokens", budget, "Tokens per calendar month, e.g. 1000000 or 1000000/month");
  create->add_option("--priority", priority, "Admission queue priority (higher first)")
      ->check(whole_number(-1'000'000, 1'000'000));
  create->add_option("--expires", expires, "Lifetime, e.g. 30d")->check(duration_value(1));

  app.add_subcommand("ls", "List keys");
  auto* revoke = app.add_subcommand("revoke", "Revoke a key");
  std::string id;
  revoke->add_option("id", id, "Key id (the part after nb-)")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;

  ApiClient client(flags);
  if (create->parsed()) {
    json body = {{"name", name},        {"scope", scope}, {"rpm", rpm}, {"tpm", tpm}, {"max_concurrency", concurrency},
                 {"priority", priority}};
    if (!models.empty()) body["models"] = split_commas(models);
    if (!expires.empty()) body["expires"] = expires;
    if (!budget.empty()) {
      std::string number = budget.substr(0, budget.find('/'));
      std::string period = budget.find('/') == std::string::npos ? "month" : budget.substr(budget.find('/') + 1);
      std::string problem = whole_number(0, kMax)(number);
      if (!problem.empty()) return usage_error(*create, "--budget-tokens: " + problem);
      if (period != "month") return usage_error(*create, "--budget-tokens: the budget is per month (N or N/month)");
      body["budget_tokens"] = std::stoll(number);
    }
    auto created = client.call("POST", "/api/v1/keys", body.dump());
    if (!created) return fail(created.error().message);
    print_as(flags.output, *created, [&] {
      std::cout << "key " << (*created)["key"]["metadata"].value("name", "") << " created (" << scope << ")\n"
                << "secret (shown once): " << (*created).value("secret", "") << "\n";
    });
    if (!created->value("enforced", true)) {
      std::cerr << "note: this server runs with --auth none: keys are not checked until it is started with "
                   "--auth keys\n";
    }
    return 0;
  }
  if (revoke->parsed()) {
    auto revoked = client.call("DELETE", api_path({"keys", id}));
    if (!revoked) return fail(revoked.error().message);
    std::cout << "key " << id << " revoked\n";
    return 0;
  }
  auto listing = client.call("GET", "/api/v1/keys");
  if (!listing) return fail(listing.error().message);
  int64_t now_ms = to_unix_ms(std::chrono::system_clock::now());
  print_as(flags.output, (*listing)["items"], [&] {
    std::vector<std::vector<std::string>> rows = {
        {"ID", "NAME", "SCOPE", "MODELS", "RPM", "TPM", "CONCURRENCY", "BUDGET", "EXPIRES", "STATE"}};
    for (const auto& key : (*listing)["items"]) {
      int64_t expires_ms = key.value("expires_ms", int64_t{0});
      std::string state = key.value("revoked", false)              ? "revoked"
                          : expires_ms > 0 && expires_ms <= now_ms ? "expired"
                                                                   : "active";
      rows.push_back({key["metadata"].value("name", ""), key.value("display_name", ""), key.value("scope", ""),
                      join_strings(key.value("models", json::array()), "*"), limit(key.value("rpm", int64_t{0})),
                      limit(key.value("tpm", int64_t{0})), limit(key.value("max_concurrency", int64_t{0})),
                      limit(key.value("budget_tokens", int64_t{0})),
                      expires_ms > 0
                          ? format_rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(expires_ms)))
                          : "-",
                      state});
    }
    print_table(rows);
  });
  return 0;
}

int run_usage(int argc, char** argv) {
  CLI::App app{"Show token usage per key, model and day", "nebula usage"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string key, model, since = "30d";
  app.add_option("--key", key, "Only this key id");
  app.add_option("--model", model, "Only this deployment");
  app.add_option("--since", since, "A duration back from now (7d) or a day (2026-11-01)")->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  std::vector<std::pair<std::string, std::string>> query = {{"since", since}};
  if (!key.empty()) query.emplace_back("key", key);
  if (!model.empty()) query.emplace_back("model", model);
  auto usage = client.call("GET", api_path({"usage"}, query));
  if (!usage) return fail(usage.error().message);
  print_as(flags.output, *usage, [&] {
    std::vector<std::vector<std::string>> rows = {
        {"DAY", "KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "CACHED", "TOTAL"}};
    auto row = [&](const json& record, const std::string& day) {
      rows.push_back(
          {day, record.value("key", ""), record.value("model", ""), std::to_string(record.value("requests", 0)),
           std::to_string(record.value("errors", 0)), std::to_string(record.value("prompt_tokens", 0)),
           std::to_string(record.value("completion_tokens", 0)), std::to_string(record.value("cached_tokens", 0)),
           std::to_string(record.value("total_tokens", 0))});
    };
    for (const auto& record : (*usage)["items"]) row(record, record.value("day", ""));
    row((*usage)["total"], "TOTAL");
    print_table(rows);
  });
  return 0;
}

int run_chat(int argc, char** argv) {
  CLI::App app{"Send a prompt through the gateway and stream the answer", "nebula chat"};
  ClientFlags flags;
  add_client_flags(app, flags);
  std::string model, prompt;
  int max_tokens = 256;
  app.add_option("model", model, "Deployment name")->required();
  app.add_option("prompt", prompt, "The user message")->required();
  app.add_option("--max-tokens", max_tokens, "Output tokens at most")
      ->check(whole_number(1, 10'000'000))
      ->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;
  json body = {{"model", model},
               {"stream", true},
               {"max_tokens", max_tokens},
               {"messages", json::array({json{{"role", "user"}, {"content", prompt}}})}};
  http::BlockingClient client;
  ApiClient api(flags);
  http::Headers headers = api.headers();
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  std::string error_body;
  auto status =
      client.stream("POST", api.server() + "/v1/chat/completions", body.dump(), headers, [&](std::string_view piece) {
        events.clear();
        parser.feed(piece, events);
        if (events.empty()) error_body += piece;
        for (const auto& event : events) {
          if (event.data == "[DONE]") continue;
          auto chunk = parse_json(event.data);
          if (!chunk || !chunk->contains("choices") || (*chunk)["choices"].empty()) continue;
          const auto& delta = (*chunk)["choices"][0].value("delta", json::object());
          if (delta.contains("content") && delta["content"].is_string()) {
            std::cout << delta["content"].get<std::string>() << std::flush;
          }
        }
        return true;
      });
  if (!status) return fail(status.error().message);
  if (*status != 200) {
    auto error = parse_json(error_body);
    std::string message = error_body;
    if (error && error->contains("error")) message = (*error)["error"].value("message", error_body);
    return fail(message);
  }
  std::cout << "\n";
  return 0;
}

int run_token(int argc, char** argv) {
  CLI::App app{"Manage join tokens for agents", "nebula token"};
  app.require_subcommand(1);
  app.fallthrough();
  ClientFlags flags;
  add_client_flags(app, flags);
  auto* create = app.add_subcommand("create", "Create a join token; it is printed once");
  std::string ttl = "24h", description, id;
  create->add_option("--ttl", ttl, "Lifetime, e.g. 1h or 7d; 0 = never expires")
      ->check(duration_value())
      ->capture_default_str();
  create->add_option("--description", description, "What the token is for");
  app.add_subcommand("ls", "List join tokens");
  auto* revoke = app.add_subcommand("revoke", "Revoke a join token");
  revoke->add_option("id", id, "Token id")->required();
  if (auto exit = parse(app, argc, argv)) return *exit;
  ApiClient client(flags);
  if (create->parsed()) {
    json body = {{"ttl", ttl}, {"description", description}};
    auto created = client.call("POST", "/api/v1/tokens", body.dump());
    if (!created) return fail(created.error().message);
    print_as(flags.output, *created, [&] {
      std::cout << "join token (shown once): " << created->value("token", "") << "\n"
                << "use: nebula agent --server " << client.server() << " --token " << created->value("token", "")
                << "\n";
    });
    return 0;
  }
  if (revoke->parsed()) {
    auto revoked = client.call("DELETE", api_path({"tokens", id}));
    if (!revoked) return fail(revoked.error().message);
    std::cout << "join token " << id << " revoked\n";
    return 0;
  }
  auto listing = client.call("GET", "/api/v1/tokens");
  if (!listing) return fail(listing.error().message);
  print_as(flags.output, (*listing)["items"], [&] {
    std::vector<std::vector<std::string>> rows = {{"ID", "DESCRIPTION", "CREATED", "EXPIRES"}};
    for (const auto& item : (*listing)["items"]) {
      int64_t expires = item.value("expires_ms", int64_t{0});
      rows.push_back(
          {item.value("id", ""), item.value("description", ""), age(item.value("created_ms", int64_t{0})) + " ago",
           expires == 0 ? "never"
                        : format_rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(expires)))});
    }
    print_table(rows);
  });
  return 0;
}

}  // namespace nebula::cli
